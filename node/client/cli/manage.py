"""``form manage``: your instances (create from a Formfile, list, get, their IPs, stop, start,
delete)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from node.client.cli._common import (
    Commands,
    UsageError,
    _col,
    _fields,
    _json_out,
    _op,
    _Session,
    _table,
)

_INSTANCE_COLUMNS: Final = [
    _col("INSTANCE ID", "instance_id"),
    _col("NAME", "name"),
    _col("STATUS", "status"),
    _col("DESIRED", "desired_state"),
    _col("NODE", "node_id"),
    _col("IP", "formnet_ip"),
]


def _checked_formfile(session: _Session, path: Path, text: str) -> str | None:
    """The text to send: validated here first (the node checks again; errors as PATH:LINE:COL
    on stderr, None), with plain passwords hashed in place (the text replicates to every
    node; a plain password must not leave this machine)."""
    from node.client.cli._pack_build import _text_with_hashes, passwd_salt
    from node.client.cli.pack import _limits_name
    from node.pack.formfile import LIMITS, FormfileError, parse
    from node.pack.password import hash_passwords

    limits_name, note = _limits_name(session)
    if note is not None:
        print(note, file=sys.stderr)
    limits = LIMITS[limits_name]
    try:
        parsed = parse(text, path=str(path), limits=limits)
    except FormfileError as exc:
        print(str(exc), file=sys.stderr)
        return None
    secret = session.key().secret
    hashed = hash_passwords(parsed, lambda user: passwd_salt(secret, parsed.name, user))
    if hashed == parsed:
        return text
    return _text_with_hashes(
        text, parsed, hashed, lambda t: parse(t, path=str(path), limits=limits)
    )


def cmd_manage_create(session: _Session) -> int:
    args = session.args
    path: Path = args.formfile
    try:
        formfile = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--formfile {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --formfile {path}: {exc}") from None
    checked = _checked_formfile(session, path, formfile)
    if checked is None:
        return 1
    formfile = checked
    resources = {
        name: value
        for name, value in (
            ("vcpus", args.vcpus),
            ("memory_mb", args.memory_mb),
            ("disk_gb", args.disk_gb),
            ("gpu_count", args.gpu_count),
        )
        if value is not None
    }
    result = session.client().instance_create(
        args.name, formfile, description=args.description, resources=resources or None
    )
    if args.json:
        _json_out(result)
        return 0
    summary = {k: result.get(k) for k in ("instance_id", "build_id", "status", "op_id")}
    print(f"created instance {args.name!r}")
    _fields(summary)
    return 0


def cmd_manage_list(session: _Session) -> int:
    result = session.client().instance_list()
    if session.args.json:
        _json_out(result)
    else:
        _table(result.get("instances") if isinstance(result, Mapping) else None, _INSTANCE_COLUMNS)
    return 0


def cmd_manage_get(session: _Session) -> int:
    args = session.args
    client = session.client()
    if args.build_id is not None:
        result = client.instance_get_by_build_id(args.build_id)
        if args.json:
            _json_out(result)
        else:
            _table(
                result.get("instances") if isinstance(result, Mapping) else None,
                _INSTANCE_COLUMNS,
            )
        return 0
    result = client.instance_get(args.id)
    if args.json:
        _json_out(result)
        return 0
    _fields(result, skip=("slots", "formfile"))
    for slot in result.get("slots") or [] if isinstance(result, Mapping) else []:
        where = slot.get("node_id") or "not placed"
        why = f", {slot['reason']}" if slot.get("reason") else ""
        print(
            f"slot {slot['slot']}: {slot.get('status') or '-'} on {where} "
            f"(attempt {slot.get('attempt_asked')}{why})"
        )
        for endpoint in slot.get("endpoints") or []:
            print(f"  {endpoint['host']}:{endpoint['port']} -> {endpoint['guest_port']}")
        for refusal in slot.get("refusals") or []:
            print(f"  refused by {refusal['node_id']}: {refusal['reason']}")
        if slot.get("error"):
            print(f"  error: {slot['error']}")
    return 0


def cmd_manage_get_ip(session: _Session) -> int:
    args = session.args
    result = session.client().instance_ips(args.build_id)
    if args.json:
        _json_out(result)
        return 0
    ips = result.get("ips") if isinstance(result, Mapping) else None
    if not ips:
        print(
            f"no IPs yet for build {args.build_id}: its instances have not reported one",
            file=sys.stderr,
        )
    for ip in ips or []:
        print(ip)
    return 0


def cmd_manage_logs(session: _Session) -> int:
    args = session.args
    result = session.client().instance_logs(args.id, slot=args.slot, bytes_max=args.bytes)
    if args.json:
        _json_out(result)
    else:
        sys.stdout.write(str(result.get("log", "")))
    return 0


def cmd_manage_metrics(session: _Session) -> int:
    args = session.args
    result = session.client().instance_metrics(args.id)
    if args.json:
        _json_out(result)
        return 0
    for slot in result.get("slots", []):
        print(f"slot {slot.get('slot')} on node {slot.get('node_id')}:")
        for name, value in sorted((slot.get("metrics") or {}).items()):
            print(f"  {name:<20} {value:g}")
    return 0


def _instance_action(action: str) -> Callable[[_Session], int]:
    def command(session: _Session) -> int:
        client = session.client()
        instance_id: str = session.args.id
        call = {
            "stop": client.instance_stop,
            "start": client.instance_start,
            "delete": client.instance_delete,
            "reboot": client.instance_reboot,
        }[action]
        result = call(instance_id)
        if session.args.json:
            _json_out(result)
        else:
            print(f"{action} requested for instance {instance_id}{_op(result)}")
        return 0

    return command


def register(commands: Commands) -> None:
    manage = commands.branch("manage", "your instances")
    create = manage.leaf("create", cmd_manage_create, "create an instance from a Formfile")
    create.add_argument("--name", required=True, metavar="N", help="instance name")
    create.add_argument("--formfile", required=True, type=Path, metavar="PATH")
    create.add_argument(
        "--limits",
        choices=("devnet", "mainnet"),
        help="check the Formfile against these limits (default: the gateway's network)",
    )
    create.add_argument("--description", metavar="D")
    create.add_argument("--vcpus", type=int, metavar="N")
    create.add_argument("--memory-mb", type=int, metavar="MB")
    create.add_argument("--disk-gb", type=int, metavar="GB")
    create.add_argument("--gpu-count", type=int, metavar="N")
    manage.leaf("list", cmd_manage_list, "your instances")
    get = manage.leaf("get", cmd_manage_get, "one instance, or every instance of a build")
    which = get.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", metavar="INSTANCE_ID")
    which.add_argument("--build-id", metavar="BUILD_ID")
    get_ip = manage.leaf("get-ip", cmd_manage_get_ip, "the IPs of a build's instances")
    get_ip.add_argument("--build-id", required=True, metavar="BUILD_ID")
    for action in ("stop", "start", "reboot", "delete"):
        sub = manage.leaf(action, _instance_action(action), f"{action} an instance")
        sub.add_argument("--id", required=True, metavar="INSTANCE_ID")
    logs = manage.leaf(
        "logs", cmd_manage_logs, "an instance's console log (from the node that runs it)"
    )
    logs.add_argument("--id", required=True, metavar="INSTANCE_ID")
    logs.add_argument("--slot", type=int, default=0, metavar="K", help="which replica (default 0)")
    logs.add_argument(
        "--bytes", type=int, default=65536, metavar="N", help="the last N bytes (default 65536)"
    )
    metrics = manage.leaf(
        "metrics", cmd_manage_metrics, "an instance's CPU, memory, disk and network use"
    )
    metrics.add_argument("--id", required=True, metavar="INSTANCE_ID")
