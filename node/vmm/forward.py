"""EXPOSE ports: a listener on 127.0.0.1:<free port> per guest port, bytes copied to the guest.

Theory of operation
-------------------
Like ``docker run -p 127.0.0.1::8000``: ``open_forward`` binds a Trio listener on
``127.0.0.1`` port 0 (the kernel picks a free port, reported in the VM's endpoints) and, for
each accepted connection, asks ``dial()`` for a stream to the guest and copies bytes both ways
until both directions ended (a half-close is passed on with ``send_eof``, so request/response
protocols that close their sending side still work). The QEMU driver's ``dial`` makes the
socket inside the VM netns (``node.vmm.netns.socket_in_netns``) and connects it to
``guest_ip:guest_port``; the simulated driver needs no forward at all.

Bounds: at most ``connections_max`` connections at once (one more is accepted and closed at
once, so clients see a reset instead of hanging in the backlog); each copy moves at most
``chunk_bytes_max`` per read, so a forward holds at most two chunks per connection; the dial
has a timeout. A dial that fails (the VM is stopped, the guest's server is not up) closes the
client's connection: the same thing a client sees from a closed port.

The listener stays open while the VM stops and starts again, so a VM keeps its host port for
its whole life; ``Forward.close()`` (at delete) cancels it and every connection.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import trio

__all__ = [
    "CHUNK_BYTES_MAX",
    "CONNECTIONS_MAX",
    "Forward",
    "open_forward",
]

log = logging.getLogger(__name__)

CONNECTIONS_MAX: Final = 64
CHUNK_BYTES_MAX: Final = 65536
DIAL_TIMEOUT_S: Final = 10.0

Dial = Callable[[], Awaitable[trio.abc.Stream]]


@dataclass(eq=False)
class Forward:
    """One open forward: ``host:port`` on this machine to ``guest_port`` of the VM."""

    guest_port: int
    host: str
    port: int
    connections_max: int = CONNECTIONS_MAX
    chunk_bytes_max: int = CHUNK_BYTES_MAX
    connections: int = 0
    connections_total: int = 0
    refused_total: int = 0
    _scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def endpoint(self) -> dict[str, Any]:
        return {"guest_port": self.guest_port, "host": self.host, "port": self.port}

    def close(self) -> None:
        self._scope.cancel()


async def _copy(src: trio.abc.Stream, dst: trio.abc.Stream, chunk_bytes_max: int) -> None:
    try:
        while True:
            data = await src.receive_some(chunk_bytes_max)
            if not data:
                break
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    # Pass the half-close on; a stream that cannot (or is gone) is closed by the caller.
    send_eof = getattr(dst, "send_eof", None)
    if send_eof is not None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await send_eof()


async def _serve_one(
    forward: Forward, client: trio.SocketStream, dial: Dial, chunk_bytes_max: int
) -> None:
    forward.connections += 1
    forward.connections_total += 1
    try:
        async with client:
            try:
                with trio.fail_after(DIAL_TIMEOUT_S):
                    upstream = await dial()
            except (OSError, trio.TooSlowError) as e:
                log.debug("forward :%d -> guest :%d: %s", forward.port, forward.guest_port, e)
                return
            async with upstream, trio.open_nursery() as nursery:
                nursery.start_soon(_copy, client, upstream, chunk_bytes_max)
                nursery.start_soon(_copy, upstream, client, chunk_bytes_max)
    finally:
        forward.connections -= 1


async def _serve(
    forward: Forward,
    listener: trio.SocketListener,
    dial: Dial,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    with forward._scope:
        async with listener, trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    client = await listener.accept()
                except OSError as e:  # EMFILE and the like: wait, do not spin
                    log.warning("forward :%d accept failed: %s", forward.port, e)
                    await trio.sleep(0.1)
                    continue
                if forward.connections >= forward.connections_max:
                    forward.refused_total += 1
                    await client.aclose()
                    continue
                nursery.start_soon(_serve_one, forward, client, dial, forward.chunk_bytes_max)


async def open_forward(
    nursery: trio.Nursery,
    guest_port: int,
    dial: Dial,
    *,
    host: str = "127.0.0.1",
    connections_max: int = CONNECTIONS_MAX,
    chunk_bytes_max: int = CHUNK_BYTES_MAX,
) -> Forward:
    """Listen on ``host``:<free port> in ``nursery``; each connection goes to ``dial()``."""
    listeners = await trio.open_tcp_listeners(0, host=host)
    listener = listeners[0]
    for extra in listeners[1:]:
        await extra.aclose()
    port = int(listener.socket.getsockname()[1])
    forward = Forward(guest_port, host, port, connections_max, chunk_bytes_max)
    await nursery.start(_serve, forward, listener, dial)
    return forward
