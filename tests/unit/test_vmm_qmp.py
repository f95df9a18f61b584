"""node.vmm.qmp against a fake QMP server on a unix socket (no QEMU)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from node.vmm.qmp import QmpClosed, QmpError, open_qmp

GREETING = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}

Handler = Callable[[trio.SocketStream, "Lines"], Awaitable[None]]


class Lines:
    """Reads the client's JSON lines on the fake server's side."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""
        self.seen: list[dict[str, Any]] = []

    async def next(self) -> dict[str, Any] | None:
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some(4096)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        doc: dict[str, Any] = json.loads(line)
        self.seen.append(doc)
        return doc

    async def send(self, doc: dict[str, Any] | bytes) -> None:
        data = doc if isinstance(doc, bytes) else json.dumps(doc).encode() + b"\n"
        await self.stream.send_all(data)


async def serve(path: Path, handler: Handler, nursery: trio.Nursery) -> list[Lines]:
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(1)
    listener = trio.SocketListener(sock)
    sessions: list[Lines] = []

    async def run() -> None:
        async with listener:
            stream = await listener.accept()
            lines = Lines(stream)
            sessions.append(lines)
            async with stream:
                await handler(stream, lines)

    nursery.start_soon(run)
    return sessions


async def negotiate(lines: Lines) -> None:
    await lines.send(GREETING)
    cap = await lines.next()
    assert cap is not None
    assert cap["execute"] == "qmp_capabilities"
    await lines.send({"return": {}})


async def test_execute_matches_answers_by_id_and_queues_events(tmp_path: Path) -> None:
    async def handler(stream: trio.SocketStream, lines: Lines) -> None:
        await negotiate(lines)
        first = await lines.next()
        second = await lines.next()
        assert first is not None
        assert second is not None
        # An event between commands, then the answers in reverse order: matched by id.
        await lines.send({"event": "RESET", "data": {"guest": True}, "timestamp": {}})
        await lines.send({"return": {"status": "running"}, "id": second["id"]})
        await lines.send({"return": [{"device": "disk0"}], "id": first["id"]})
        await lines.next()  # until the client closes

    async with trio.open_nursery() as nursery:
        sessions = await serve(tmp_path / "q.sock", handler, nursery)
        async with open_qmp(tmp_path / "q.sock") as qmp:
            assert qmp.greeting["version"]["qemu"]["major"] == 7
            results: dict[str, Any] = {}

            async def run(name: str) -> None:
                results[name] = await qmp.execute(name)

            async with trio.open_nursery() as calls:
                calls.start_soon(run, "query-blockstats")
                await trio.sleep(0.01)
                calls.start_soon(run, "query-status")
            event = await qmp.next_event()
    assert results == {
        "query-blockstats": [{"device": "disk0"}],
        "query-status": {"status": "running"},
    }
    assert event["event"] == "RESET"
    assert event["data"] == {"guest": True}
    sent = [d["execute"] for d in sessions[0].seen]
    assert sent == ["qmp_capabilities", "query-blockstats", "query-status"]


async def test_error_answer_raises_with_class_and_arguments_are_sent(tmp_path: Path) -> None:
    async def handler(stream: trio.SocketStream, lines: Lines) -> None:
        await negotiate(lines)
        cmd = await lines.next()
        assert cmd is not None
        assert cmd["arguments"] == {"device": "nope"}
        await lines.send(
            {
                "error": {"class": "DeviceNotFound", "desc": "Device 'nope' not found"},
                "id": cmd["id"],
            }
        )
        await lines.next()

    async with trio.open_nursery() as nursery:
        await serve(tmp_path / "q.sock", handler, nursery)
        async with open_qmp(tmp_path / "q.sock") as qmp:
            with pytest.raises(QmpError, match="Device 'nope' not found") as err:
                await qmp.execute("device_del", {"device": "nope"})
            assert err.value.error_class == "DeviceNotFound"


async def test_closed_socket_fails_pending_and_later_calls(tmp_path: Path) -> None:
    async def handler(stream: trio.SocketStream, lines: Lines) -> None:
        await negotiate(lines)
        await lines.next()  # the command, never answered: QEMU exits

    async with trio.open_nursery() as nursery:
        await serve(tmp_path / "q.sock", handler, nursery)
        async with open_qmp(tmp_path / "q.sock") as qmp:
            with pytest.raises(QmpClosed):
                await qmp.execute("system_powerdown")
            assert qmp.closed
            with pytest.raises(QmpClosed):
                await qmp.execute("query-status")
            with pytest.raises(QmpClosed):
                await qmp.next_event()


async def test_a_line_over_the_bound_closes_the_client(tmp_path: Path) -> None:
    async def handler(stream: trio.SocketStream, lines: Lines) -> None:
        await negotiate(lines)
        cmd = await lines.next()
        assert cmd is not None
        await lines.send(b'{"return": "' + b"x" * 5000)  # no newline, longer than the bound
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await serve(tmp_path / "q.sock", handler, nursery)
        async with open_qmp(tmp_path / "q.sock", line_bytes_max=1024) as qmp:
            with pytest.raises(QmpClosed, match="longer than 1024 bytes"):
                await qmp.execute("query-status")
        nursery.cancel_scope.cancel()


async def test_events_are_bounded_oldest_dropped(tmp_path: Path) -> None:
    async def handler(stream: trio.SocketStream, lines: Lines) -> None:
        await negotiate(lines)
        for i in range(10):
            await lines.send({"event": "TICK", "data": {"i": i}, "timestamp": {}})
        cmd = await lines.next()
        assert cmd is not None
        await lines.send({"return": {}, "id": cmd["id"]})
        await lines.next()

    async with trio.open_nursery() as nursery:
        await serve(tmp_path / "q.sock", handler, nursery)
        async with open_qmp(tmp_path / "q.sock", events_max=4) as qmp:
            await qmp.execute("query-status")  # answered after all events: all were read
            events = qmp.events_nowait()
            assert [e["data"]["i"] for e in events] == [6, 7, 8, 9]
            assert qmp.events_dropped == 6


async def test_no_greeting_is_a_clear_error(tmp_path: Path) -> None:
    async def handler(stream: trio.SocketStream, lines: Lines) -> None:
        await lines.send({"hello": "not qmp"})
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await serve(tmp_path / "q.sock", handler, nursery)
        with pytest.raises(QmpError, match="no QMP greeting"):
            async with open_qmp(tmp_path / "q.sock"):
                pass
        nursery.cancel_scope.cancel()


async def test_connect_gives_up_with_the_path_in_the_message(tmp_path: Path) -> None:
    with pytest.raises(QmpError, match=r"cannot connect to QMP at .*absent\.sock"):
        async with open_qmp(tmp_path / "absent.sock", connect_timeout_s=0.1):
            pass


async def test_execute_timeout_leaves_the_client_usable(tmp_path: Path) -> None:
    async def handler(stream: trio.SocketStream, lines: Lines) -> None:
        await negotiate(lines)
        slow = await lines.next()  # never answered in time
        fast = await lines.next()
        assert slow is not None
        assert fast is not None
        await lines.send({"return": "late", "id": slow["id"]})  # dropped: nobody waits
        await lines.send({"return": "ok", "id": fast["id"]})
        await lines.next()

    async with trio.open_nursery() as nursery:
        await serve(tmp_path / "q.sock", handler, nursery)
        async with open_qmp(tmp_path / "q.sock") as qmp:
            with pytest.raises(trio.TooSlowError):
                await qmp.execute("query-status", timeout_s=0.05)
            assert await qmp.execute("query-status") == "ok"
