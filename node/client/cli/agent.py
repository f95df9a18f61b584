"""``form agent``: publish your agents, find others' and hire them (answers stream to stdout)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final

from node.client.api import GatewayClient
from node.client.cli._common import Commands, UsageError, _col, _json_input, _Session
from node.client.cli._listing import _Listing, _publish, listing_commands


def _agent_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": args.name,
        # Explicit on every publish: re-publishing without --private makes the agent public.
        "access": "private" if args.private else "public",
    }
    if args.description is not None:
        spec["description"] = args.description
    given = [args.endpoint_host is not None, args.endpoint_port is not None]
    if any(given) and not all(given):
        raise UsageError("an endpoint needs both --endpoint-host and --endpoint-port")
    if args.endpoint_path is not None and not all(given):
        raise UsageError("--endpoint-path needs --endpoint-host and --endpoint-port")
    if all(given):
        if not 1 <= args.endpoint_port <= 65535:
            raise UsageError(f"--endpoint-port must be 1-65535, got {args.endpoint_port}")
        endpoint: dict[str, Any] = {"host": args.endpoint_host, "port": args.endpoint_port}
        if args.endpoint_path is not None:
            if not args.endpoint_path.startswith("/"):
                raise UsageError(
                    f"--endpoint-path must be an absolute path such as /run, got {args.endpoint_path!r}"
                )
            endpoint["path"] = args.endpoint_path
        spec["endpoint"] = endpoint
    if args.price_per_request is not None:
        if args.price_per_request < 0:
            raise UsageError("--price-per-request cannot be negative")
        spec["pricing"] = {"price_per_request": args.price_per_request}
    if args.tag:
        spec["tags"] = list(args.tag)
    return spec


_AGENTS: Final = _Listing(
    noun="agent",
    columns=(
        _col("AGENT ID", "agent_id"),
        _col("NAME", "name"),
        _col("OWNER", "owner_id"),
        _col("ACCESS", "access"),
        _col("PRICE/REQUEST", "pricing", "price_per_request"),
    ),
    spec=_agent_spec,
    list_=GatewayClient.agent_list,
    get=GatewayClient.agent_get,
    create=GatewayClient.agent_create,
    update=GatewayClient.agent_update,
    delete=GatewayClient.agent_delete,
    allow=GatewayClient.agent_allow,
    disallow=GatewayClient.agent_disallow,
)


def _copy_stream(chunks: Any) -> None:
    """Copy an agent's answer to stdout as it arrives, bytes unchanged."""
    sys.stdout.flush()
    binary = getattr(sys.stdout, "buffer", None)
    last = b""
    for chunk in chunks:
        if not chunk:
            continue
        if binary is not None:
            binary.write(chunk)
            binary.flush()
        else:
            sys.stdout.write(chunk.decode("utf-8", "replace"))
            sys.stdout.flush()
        last = chunk
    # A prompt glued to the answer's last line is hard to read; files and pipes get the bytes.
    if last and not last.endswith(b"\n") and sys.stdout.isatty():
        print()


def cmd_agent_hire(session: _Session) -> int:
    args = session.args
    body = _json_input(args.input, "--input") if args.input is not None else {}
    with session.client().open_agent_hire(args.agent_id, body) as answer:
        _copy_stream(answer.chunks)
    return 0


def cmd_agent_run(session: _Session) -> int:
    args = session.args
    task = _json_input(args.task, "--task")
    with session.client().open_agent_run_task(args.agent_id, task) as answer:
        _copy_stream(answer.chunks)
    return 0


def register(commands: Commands) -> None:
    agent = commands.branch("agent", "agents: publish yours, find and hire others'")
    publish = agent.leaf(
        "publish",
        _publish(_AGENTS),
        "list an agent on the marketplace (again with the same --name: update it)",
    )
    publish.add_argument("--name", required=True, metavar="N")
    publish.add_argument("--description", metavar="D")
    publish.add_argument("--endpoint-host", metavar="H", help="where the agent listens")
    publish.add_argument("--endpoint-port", type=int, metavar="P")
    publish.add_argument("--endpoint-path", metavar="/PATH", help="e.g. /run")
    publish.add_argument("--price-per-request", type=int, metavar="N", help="credits per call")
    publish.add_argument("--tag", action="append", metavar="T", help="repeatable")
    publish.add_argument(
        "--private", action="store_true", help="only allowed addresses may hire it"
    )
    listing_commands(agent, _AGENTS, "hire")
    hire = agent.leaf("hire", cmd_agent_hire, "hire an agent; its answer streams to stdout")
    hire.add_argument("agent_id", metavar="ID")
    hire.add_argument(
        "--input", metavar="JSON", help="what to send it (JSON, or - for stdin; default {})"
    )
    run = agent.leaf("run", cmd_agent_run, "run one task on an agent; the answer streams back")
    run.add_argument("agent_id", metavar="ID")
    run.add_argument("--task", required=True, metavar="JSON", help="the task (JSON, or -)")
