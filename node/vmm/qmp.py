"""A small QMP (QEMU Machine Protocol) client on Trio, over QEMU's unix socket.

Theory of operation
-------------------
QMP is JSON lines: on connect QEMU sends a greeting ``{"QMP": {...}}``; the client must send
``{"execute": "qmp_capabilities"}`` before anything else; then each command
``{"execute": NAME, "arguments": {...}, "id": N}`` gets exactly one answer carrying the same id,
``{"return": ...}`` or ``{"error": {"class": ..., "desc": ...}}``, and asynchronous events
``{"event": NAME, "data": {...}, "timestamp": {...}}`` may arrive between them at any time.

The official client (``qemu.qmp``) is asyncio, which cannot run inside the node's Trio loop,
so this is a minimal one (docs/decisions.md). ``open_qmp`` connects, reads the greeting,
negotiates, and runs one reader task that routes each answer to the waiting ``execute`` by id
and queues events. Everything is bounded: a line longer than ``line_bytes_max`` is a protocol
error that closes the client (QEMU's answers are a few KB); at most ``events_max`` events are
kept (the oldest are dropped and counted in ``events_dropped``: events are hints, callers
that need the truth ask ``query-status``); each ``execute`` has a timeout. When the socket
closes (QEMU exited), pending and later calls raise ``QmpClosed``.
"""

from __future__ import annotations

import collections
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import trio

__all__ = [
    "EVENTS_MAX",
    "LINE_BYTES_MAX",
    "QmpClient",
    "QmpClosed",
    "QmpError",
    "open_qmp",
]

LINE_BYTES_MAX: Final = 1 << 20
EVENTS_MAX: Final = 256
_RECV_BYTES: Final = 65536


class QmpError(Exception):
    """QEMU answered a command with an error, or broke the protocol."""

    def __init__(self, message: str, error_class: str = "") -> None:
        super().__init__(message)
        self.error_class = error_class


class QmpClosed(QmpError):
    """The QMP connection is closed (QEMU exited or the client was closed)."""


class _Pending:
    __slots__ = ("answer", "done")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.answer: dict[str, Any] | None = None


class QmpClient:
    """One negotiated QMP connection; make it with ``open_qmp``."""

    def __init__(self, stream: trio.abc.Stream, *, line_bytes_max: int, events_max: int) -> None:
        self._stream = stream
        self._line_bytes_max = line_bytes_max
        self._buf = bytearray()
        self._next_id = 0
        self._pending: dict[int, _Pending] = {}
        self._send_lock = trio.Lock()
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=events_max)
        self._event_ready = trio.Event()
        self._closed_reason: str | None = None
        self.greeting: dict[str, Any] = {}
        self.events_dropped = 0

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    async def _read_line(self) -> dict[str, Any] | None:
        """The next JSON object from QEMU, or None at end of stream."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except ValueError as e:
                    raise QmpError(f"QMP sent a line that is not JSON: {line[:200]!r}") from e
                if not isinstance(doc, dict):
                    raise QmpError(f"QMP sent a JSON {type(doc).__name__}, not an object")
                return doc
            if len(self._buf) > self._line_bytes_max:
                raise QmpError(f"QMP sent a line longer than {self._line_bytes_max} bytes")
            chunk = await self._stream.receive_some(_RECV_BYTES)
            if not chunk:
                return None
            self._buf += chunk

    async def _handshake(self) -> None:
        greeting = await self._read_line()
        if greeting is None or not isinstance(greeting.get("QMP"), dict):
            raise QmpError(f"no QMP greeting from QEMU (got {greeting!r})")
        self.greeting = greeting["QMP"]
        await self._send({"execute": "qmp_capabilities"})
        while True:
            doc = await self._read_line()
            if doc is None:
                raise QmpClosed("QMP closed during capabilities negotiation")
            if "event" in doc:
                self._push_event(doc)
                continue
            if "error" in doc:
                raise QmpError(f"qmp_capabilities failed: {_desc(doc)}")
            return

    async def _send(self, doc: dict[str, Any]) -> None:
        data = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
        async with self._send_lock:
            await self._stream.send_all(data)

    def _push_event(self, doc: dict[str, Any]) -> None:
        if len(self._events) == self._events.maxlen:
            self.events_dropped += 1
        self._events.append(doc)
        self._event_ready.set()

    async def _reader(self) -> None:
        reason = "QMP connection closed by QEMU"
        try:
            while True:
                doc = await self._read_line()
                if doc is None:
                    break
                if "event" in doc:
                    self._push_event(doc)
                    continue
                ident = doc.get("id")
                pending = self._pending.get(ident) if isinstance(ident, int) else None
                if pending is not None:
                    pending.answer = doc
                    pending.done.set()
                # An answer nobody waits for (its caller timed out): dropped.
        except QmpError as e:
            reason = str(e)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            reason = f"QMP connection lost: {e}"
        finally:
            self._close(reason)

    def _close(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason
        for pending in self._pending.values():
            pending.done.set()
        self._event_ready.set()

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *, timeout_s: float = 10.0
    ) -> Any:
        """Run ``command``; its ``return`` value. ``QmpError`` on an error answer,
        ``QmpClosed`` when the connection is or gets closed, ``trio.TooSlowError`` on timeout."""
        if self._closed_reason is not None:
            raise QmpClosed(self._closed_reason)
        self._next_id += 1
        ident = self._next_id
        pending = _Pending()
        self._pending[ident] = pending
        doc: dict[str, Any] = {"execute": command, "id": ident}
        if arguments:
            doc["arguments"] = arguments
        try:
            with trio.fail_after(timeout_s):
                try:
                    await self._send(doc)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                    self._close(f"QMP connection lost: {e}")
                await pending.done.wait()
        finally:
            del self._pending[ident]
        answer = pending.answer
        if answer is None:
            raise QmpClosed(self._closed_reason or "QMP closed")
        if "error" in answer:
            err = answer["error"]
            cls = err.get("class", "") if isinstance(err, dict) else ""
            raise QmpError(f"{command}: {_desc(answer)}", str(cls))
        return answer.get("return")

    def events_nowait(self) -> list[dict[str, Any]]:
        """The events queued so far (oldest first); the queue is emptied."""
        out = list(self._events)
        self._events.clear()
        self._event_ready = trio.Event()
        if self._closed_reason is not None:
            self._event_ready.set()
        return out

    async def next_event(self) -> dict[str, Any]:
        """The oldest queued event, waiting for one; ``QmpClosed`` once closed and drained."""
        while not self._events:
            if self._closed_reason is not None:
                raise QmpClosed(self._closed_reason)
            self._event_ready = trio.Event()
            await self._event_ready.wait()
        return self._events.popleft()


def _desc(doc: dict[str, Any]) -> str:
    err = doc.get("error")
    if isinstance(err, dict):
        return f"{err.get('desc', '?')} ({err.get('class', '?')})"
    return repr(err)


@asynccontextmanager
async def open_qmp(
    path: Path,
    *,
    connect_timeout_s: float = 10.0,
    line_bytes_max: int = LINE_BYTES_MAX,
    events_max: int = EVENTS_MAX,
) -> AsyncIterator[QmpClient]:
    """Connect to QEMU's QMP socket at ``path`` (retrying while QEMU creates it), negotiate,
    and yield the client; closed on exit."""
    deadline = trio.current_time() + connect_timeout_s
    delay_s = 0.02
    while True:
        try:
            stream = await trio.open_unix_socket(str(path))
            break
        except OSError as e:
            if trio.current_time() + delay_s > deadline:
                raise QmpError(
                    f"cannot connect to QMP at {path} within {connect_timeout_s:g} s: {e}"
                ) from e
            await trio.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.25)
    async with stream:
        client = QmpClient(stream, line_bytes_max=line_bytes_max, events_max=events_max)
        with trio.fail_after(connect_timeout_s):
            await client._handshake()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._reader)
            try:
                yield client
            finally:
                client._close("QMP client closed")
                nursery.cancel_scope.cancel()
