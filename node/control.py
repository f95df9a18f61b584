"""The node's local control socket: ``formation-node status`` asks the running node.

A Unix socket at ``<data_dir>/node.sock`` (mode 0600: only the operator's user can reach it;
the network-facing front door is the signed-request gateway, not this). One request per
connection: the client sends a command line (``status\\n``) and reads one JSON object. Bounded:
requests over 1 KiB are refused, and a client has 5 s to send its line.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import trio

__all__ = ["SOCKET_NAME", "ControlError", "query", "serve_control"]

SOCKET_NAME: Final = "node.sock"
_REQUEST_BYTES_MAX: Final = 1024
_CLIENT_TIMEOUT_S: Final = 5.0


class ControlError(Exception):
    """No node answers on the control socket."""


async def serve_control(
    data_dir: Path,
    handlers: dict[str, Callable[[], dict[str, Any]]],
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    path = data_dir / SOCKET_NAME
    path.unlink(missing_ok=True)  # a stale socket from a killed node
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    try:
        task_status.started(path)
        await trio.serve_listeners(lambda stream: _serve_one(stream, handlers), [listener])
    finally:
        path.unlink(missing_ok=True)


async def _serve_one(
    stream: trio.SocketStream, handlers: dict[str, Callable[[], dict[str, Any]]]
) -> None:
    async with stream:
        data = b""
        with trio.move_on_after(_CLIENT_TIMEOUT_S):
            while b"\n" not in data and len(data) <= _REQUEST_BYTES_MAX:
                chunk = await stream.receive_some(_REQUEST_BYTES_MAX)
                if not chunk:
                    break
                data += chunk
        command = data.split(b"\n", 1)[0].decode("ascii", "replace").strip()
        handler = handlers.get(command)
        if handler is None:
            reply: dict[str, Any] = {
                "error": "unknown_command",
                "message": f"unknown command {command!r}; known: {', '.join(sorted(handlers))}",
            }
        else:
            reply = handler()
        await stream.send_all(json.dumps(reply).encode() + b"\n")


def query(data_dir: Path, command: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """Ask the node running on ``data_dir`` (blocking; for the CLI)."""
    path = data_dir / SOCKET_NAME
    if not path.exists():
        raise ControlError(
            f"no node is running on {data_dir} (no {SOCKET_NAME}); start one with "
            f"'formation-node run --data-dir {data_dir}'"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout_s)
        try:
            client.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            raise ControlError(
                f"no node is running on {data_dir} (a stale {SOCKET_NAME}: the node was killed);"
                " start it again"
            ) from None
        client.sendall(command.encode("ascii") + b"\n")
        chunks = []
        while True:
            chunk = client.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    reply: dict[str, Any] = json.loads(b"".join(chunks))
    return reply
