"""``form pack ship``: build if needed, place, boot, and wait until the instance answers.

The client does nothing a node could not check: it asks for the build (``start_build``, the
same path as ``form pack build``) or reads the one named by ``--build-id``, then signs one
``instance.create`` with the build id, the replica count and ``via`` (the gateway's node, which
places the slots). The node answers 409 ``no_capacity`` at once when no node's reported room
fits (naming the largest free slot); otherwise the command follows the instance until every
slot is ``Started`` (its endpoints printed, like ``docker run -p``), or one fails.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Final

from node.client.api import ClientError
from node.client.cli._common import Commands, UsageError, _json_out, _Session
from node.client.cli._pack_build import (
    WAIT_S_DEFAULT,
    _print_outcome,
    _progress,
    follow_build,
    start_build,
)

__all__ = ["add_ship_command", "endpoint_lines"]

POLL_S: Final = 0.5
# Statuses after which a slot will not become Started without the owner asking again.
_FINAL: Final = ("Killed", "CriticalError", "Stopped")


def endpoint_lines(instance: dict[str, Any]) -> list[str]:
    """``http://127.0.0.1:41234 -> 8000 (node 0x…)`` for each endpoint of each slot."""
    lines = []
    for slot in instance.get("slots") or []:
        for endpoint in slot.get("endpoints") or []:
            lines.append(
                f"{endpoint['host']}:{endpoint['port']} -> {endpoint['guest_port']}"
                f"  (slot {slot['slot']}, node {str(slot.get('node_id'))[:10]})"
            )
    return lines


def _built(session: _Session, client: Any, quiet: bool) -> dict[str, Any] | int:
    args = session.args
    if args.build_id:
        build = client.request("GET", f"/builds/{args.build_id}/get")
        if build.get("status") not in ("Built", "CriticalError"):
            build = follow_build(session, client, args.build_id, quiet=quiet)
        return dict(build)
    started = start_build(session)
    if isinstance(started, int):
        return started
    client, created, _ = started
    return follow_build(session, client, str(created["build_id"]), quiet=quiet)


def cmd_pack_ship(session: _Session) -> int:
    args = session.args
    if args.replicas < 1:
        raise UsageError(f"--replicas must be at least 1, got {args.replicas}")
    client = session.client()
    quiet = bool(args.json) or not sys.stderr.isatty()
    build = _built(session, client, quiet)
    if isinstance(build, int):
        return build
    if build.get("status") != "Built":
        _print_outcome(build)
        return 1
    build_id = str(build["build_id"])
    info = client.node_info()
    body: dict[str, Any] = {
        "name": args.name or build.get("name"),
        "build_id": build_id,
        "replicas": args.replicas,
    }
    if isinstance(info, dict) and info.get("address"):
        body["via"] = info["address"]
    created = client.request("POST", "/instance/create", body)
    instance_id = str(created["instance_id"])
    if not args.json:
        print(f"instance {instance_id} of build {build_id[:12]}", file=sys.stderr)
    if args.no_wait:
        if args.json:
            _json_out({"instance_id": instance_id, "build_id": build_id})
        else:
            print(instance_id)
        return 0
    instance = _follow(client, instance_id, quiet=quiet, wait_s=args.wait_s)
    started = all(s.get("status") == "Started" for s in instance.get("slots") or [{}])
    if args.json:
        _json_out(
            {
                "instance_id": instance_id,
                "build_id": build_id,
                "status": instance.get("status"),
                "node_id": instance.get("node_id"),
                "endpoints": instance.get("endpoints"),
                "error": instance.get("error"),
                "slots": instance.get("slots"),
            }
        )
    elif started:
        print(instance_id)
        for line in endpoint_lines(instance):
            print(f"  {line}", file=sys.stderr)
    else:
        _print_failure(instance)
    return 0 if started else 1


def _print_failure(instance: dict[str, Any]) -> None:
    for slot in instance.get("slots") or []:
        if slot.get("error"):
            print(f"error: slot {slot['slot']}: {slot['error']}", file=sys.stderr)
        elif slot.get("status") != "Started":
            detail = f": {slot.get('detail')}" if slot.get("detail") else ""
            print(
                f"error: slot {slot['slot']} is {slot.get('status') or 'not placed'}{detail}; "
                f"see `form manage logs --id {instance['instance_id']}`",
                file=sys.stderr,
            )


def _phase(instance: dict[str, Any]) -> str:
    slots = instance.get("slots") or []
    placed = sum(1 for s in slots if s.get("node_id"))
    started = sum(1 for s in slots if s.get("status") == "Started")
    if placed < len(slots):
        return f"placing {placed}/{len(slots)}"
    if started < len(slots):
        return f"booting {started}/{len(slots)} started"
    return "started"


def _follow(client: Any, instance_id: str, *, quiet: bool, wait_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    with _progress(quiet) as bar:
        task = bar.add_task("placing", total=None)
        while True:
            instance = dict(client.instance_get(instance_id))
            slots = instance.get("slots") or []
            bar.update(task, description=_phase(instance))
            if slots and all(s.get("status") == "Started" for s in slots):
                return instance
            if any(s.get("error") or s.get("status") in _FINAL for s in slots):
                return instance
            if time.monotonic() > deadline:
                raise ClientError(
                    f"instance {instance_id} is still {_phase(instance)} after {wait_s:g} s; "
                    f"follow it with `form manage get --id {instance_id}`"
                )
            time.sleep(POLL_S)


def add_ship_command(pack: Commands) -> None:
    ship = pack.leaf(
        "ship",
        cmd_pack_ship,
        "build DIR (or take --build-id), place it on nodes with room, boot it and wait until "
        "it is Started; prints the instance id and its 127.0.0.1 endpoints",
    )
    ship.add_argument(
        "dir",
        nargs="?",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="the build context, as for `form pack build` (default .)",
    )
    ship.add_argument(
        "-f", "--file", type=Path, metavar="PATH", help="the Formfile (default DIR/Formfile)"
    )
    ship.add_argument("--build-id", metavar="BUILD_ID", help="ship this Built build; no build")
    ship.add_argument(
        "--replicas", type=int, default=1, metavar="N", help="copies on distinct nodes (1-16)"
    )
    ship.add_argument("--name", metavar="NAME", help="instance name (default: the Formfile's NAME)")
    ship.add_argument(
        "--limits",
        choices=("devnet", "mainnet"),
        help="validate against these limits (default: the node's network)",
    )
    ship.add_argument("-v", "--verbose", action="store_true", help="stream the build's log")
    ship.add_argument(
        "--no-wait", action="store_true", help="print the instance id once created; do not follow"
    )
    ship.add_argument(
        "--wait-s",
        type=float,
        default=WAIT_S_DEFAULT,
        metavar="SECONDS",
        help=f"give up following after this long (default {WAIT_S_DEFAULT:g})",
    )
