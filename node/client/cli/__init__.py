"""``form``: the user's command line for a formation node's gateway.

Theory of operation
-------------------
``form`` is a plain synchronous program: parse the arguments, maybe unlock the user's key,
make one or two requests through ``node.client.api.GatewayClient``, print the answer. The key
is read (and its password asked for) only by commands that sign, so ``form agent list``,
``form model list``, ``form node list`` or ``form status`` work without one.

Where things come from, first match wins:

* gateway: ``--gateway``, ``$FORM_GATEWAY``, ``http://127.0.0.1:3004`` (the upstream port);
* keystore: ``--keystore``, ``$FORM_KEYSTORE``, ``$XDG_CONFIG_HOME/formation/form-key.json``
  (``~/.config/...``), an Ethereum keystore v3 file that any wallet can also open;
* password: ``--password-file``, ``$FORM_PASSWORD``, a prompt on the terminal.

Global options may come before or after the command (``form --json agent list`` and
``form agent list --json`` mean the same).

Output is for people by default (aligned ``key  value`` lines and tables) and the gateway's JSON
verbatim with ``--json``. An agent's answer (``agent hire``, ``agent run``) is copied to stdout
byte for byte as it streams in, in both modes.

Exit status: 0 done; 1 the gateway refused (``error: <message> (<code>)`` on stderr) or could not
be reached or answered badly; 2 a usage problem the user can fix before any request (bad
option, missing keystore, wrong password, unreadable file); 130 interrupted; 141 (as if killed
by SIGPIPE) when stdout closes early, as in ``form agent list | head -1``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from node import __version__
from node.client.api import ApiError, ClientError, GatewayClient, GatewayUnreachable
from node.identity.keys import NodeKey, checksum_address, normalize_address
from node.identity.keystore import KeystoreError, read_keystore, read_password, write_keystore

__all__ = ["GATEWAY_DEFAULT", "SCOPES", "default_keystore", "main"]

# The upstream form-state's port, so a user's muscle memory and scripts keep working.
GATEWAY_DEFAULT: Final = "http://127.0.0.1:3004"
# The scopes the gateway knows for a delegate key (POST /key/grant).
SCOPES: Final = ("account", "instance", "agent", "model", "read", "hire")
# A grant lasts a day unless asked otherwise: long enough for a work session, short enough
# that a forgotten key on a laptop stops working by itself.
EXPIRES_IN_DEFAULT: Final = "24h"
_DURATION: Final = re.compile(r"(\d+)([smhdw]?)")
_DURATION_UNIT_S: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Keyword arguments for write_keystore (tests lower the scrypt work factor here; a user's key
# keeps geth's standard parameters).
_KEYSTORE_KW: dict[str, Any] = {}


class UsageError(Exception):
    """A problem the user can fix before any request is sent; exit status 2."""


def default_keystore() -> Path:
    explicit = os.environ.get("FORM_KEYSTORE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "formation" / "form-key.json"


# ------------------------------------------------------------------------------- session


class _Session:
    """What one invocation needs: its options, the key (unlocked on first use), the client."""

    def __init__(
        self,
        args: argparse.Namespace,
        transport: httpx.BaseTransport | None,
        clock: Callable[[], float],
    ) -> None:
        self.args = args
        self.clock = clock
        self._transport = transport
        self._key: NodeKey | None = None
        self._clients: list[GatewayClient] = []

    def password(self, *, confirm: bool) -> str:
        if self.args.password_file is not None:
            return read_password(self.args.password_file, confirm=confirm)
        from_env = os.environ.get("FORM_PASSWORD")
        if from_env is not None:
            if confirm and not from_env:
                raise UsageError("FORM_PASSWORD is empty; a key needs a password")
            return from_env
        return read_password(None, confirm=confirm)

    def key(self) -> NodeKey:
        if self._key is None:
            path: Path = self.args.keystore
            if not path.exists():
                raise UsageError(
                    f"no keystore at {path}; create one with `form init`, or pass "
                    "--keystore PATH (or set FORM_KEYSTORE)"
                )
            self._key = read_keystore(path, self.password(confirm=False))
        return self._key

    def act_as(self) -> str | None:
        text: str | None = self.args.act_as
        return None if text is None else _address(text, "--act-as")

    def account(self) -> str:
        """The account requests act for: --act-as, else the key's own."""
        return self.act_as() or self.key().address

    def client(self, *, signed: bool = True) -> GatewayClient:
        if not self.args.timeout_s > 0:
            raise UsageError(f"--timeout-s must be more than 0, got {self.args.timeout_s}")
        act_as = self.act_as()
        try:
            client = GatewayClient(
                self.args.gateway,
                None,
                timeout_s=self.args.timeout_s,
                clock=self.clock,
                act_as=act_as,
                transport=self._transport,
            )
        except ValueError as exc:
            raise UsageError(f"{exc}; pass --gateway URL or set FORM_GATEWAY") from None
        self._clients.append(client)
        if signed:
            # Last: unlocking asks for the password and spends a second in scrypt, wasted if
            # an option above was wrong.
            client.key = self.key()
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()


# ------------------------------------------------------------------------- argument helpers


def _address(text: str, option: str) -> str:
    try:
        return normalize_address(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _duration_s(text: str) -> int:
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise UsageError(
            f"--expires-in {text!r} is not a duration; use a number with s, m, h, d or w (e.g. 24h, 7d)"
        )
    return int(match.group(1)) * _DURATION_UNIT_S[match.group(2)]


def _scopes(text: str) -> list[str]:
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        raise UsageError(
            f"--scopes {text!r}: {'unknown ' + ', '.join(unknown) if unknown else 'none given'}; "
            f"choose from {','.join(SCOPES)}"
        )
    return list(dict.fromkeys(scopes))  # drop repeats, keep the order given


def _json_input(text: str, option: str) -> Any:
    raw = sys.stdin.read() if text == "-" else text
    try:
        return json.loads(raw)
    except ValueError as exc:
        source = "stdin" if text == "-" else option
        raise UsageError(
            f'{source} is not JSON ({exc}); pass a JSON value such as \'{{"prompt": "hi"}}\', or - to read it from stdin'
        ) from None


# ---------------------------------------------------------------------------------- output


def _json_out(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _when(value: int) -> str:
    # The state reports times in unix milliseconds, grants in unix seconds: tell by magnitude
    # (1e11 s is the year 5138, 1e11 ms is 1973).
    seconds = value / 1000 if value > 10**11 else value
    try:
        moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return str(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _is_time(name: str) -> bool:
    return name.endswith("_at") or name in ("expires_s", "last_heartbeat")


def _text(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and _is_time(name):
        return _when(value)
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":")) if value else "-"
    return str(value)


def _fields(obj: Any, skip: Sequence[str] = ()) -> None:
    """An object as aligned ``name  value`` lines; multi-line text indented below its name."""
    if not isinstance(obj, Mapping):
        print(_text("", obj))
        return
    shown = [(str(k), v) for k, v in obj.items() if k not in skip]
    width = max((len(k) for k, _ in shown), default=0)
    for name, value in shown:
        text = _text(name, value)
        if "\n" in text:
            print(name)
            for line in text.splitlines():
                print(f"  {line}")
        else:
            print(f"{name:<{width}}  {text}")


def _span(seconds: int) -> str:
    """A duration in its largest whole unit: 12s, 5m, 3h, 2d."""
    for unit, unit_s in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= unit_s:
            return f"{seconds // unit_s}{unit}"
    return f"{seconds}s"


def _age(now_s: float, value: Any) -> str:
    """How long ago a unix-milliseconds time was: ``12s ago``; ``3s ahead`` past our clock."""
    if not isinstance(value, int) or isinstance(value, bool):
        return _text("", value)
    delta_s = now_s - value / 1000
    # A node whose clock runs ahead of ours stamps heartbeats "in the future": say so rather
    # than hide the skew behind "0s ago".
    return f"{_span(int(delta_s))} ago" if delta_s >= 0 else f"{_span(int(-delta_s))} ahead"


def _bytes_text(value: Any) -> str:
    """A byte count in binary units: 512 B, 1.5 KiB, 8.0 GiB."""
    if not isinstance(value, int) or isinstance(value, bool):
        return _text("", value)
    if value < 1024:
        return f"{value} B"
    size = value / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _millicores_text(value: Any) -> str:
    if not isinstance(value, int) or isinstance(value, bool):
        return _text("", value)
    return f"{value}m"


@dataclass(frozen=True)
class _Column:
    """A table column: its header and where its value sits in a row (``count``: a list's
    length; ``render``: how to show the value, else ``_text``)."""

    header: str
    path: tuple[str, ...]
    count: bool = False
    render: Callable[[Any], str] | None = None

    def cell(self, row: Mapping[str, Any]) -> str:
        value: Any = row
        for name in self.path:
            value = value.get(name) if isinstance(value, Mapping) else None
        if self.count:
            return str(len(value) if isinstance(value, list) else 0)
        if self.render is not None:
            return self.render(value)
        return _text(self.path[-1], value)


def _col(
    header: str, *path: str, count: bool = False, render: Callable[[Any], str] | None = None
) -> _Column:
    return _Column(header, path, count, render)


def _table(rows: Any, columns: Sequence[_Column]) -> None:
    items = [r for r in rows if isinstance(r, Mapping)] if isinstance(rows, list) else []
    cells = [[c.header for c in columns]]
    cells += [[c.cell(row) for c in columns] for row in items]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def _op(result: Any) -> str:
    op_id = result.get("op_id") if isinstance(result, Mapping) else None
    return f" (op {op_id})" if op_id else ""


# -------------------------------------------------------------------------------- commands


def _write_new_keystore(session: _Session, path: Path, what: str) -> NodeKey:
    if path.exists() or path.is_symlink():
        raise UsageError(
            f"{path} already exists; {what} never overwrites a key: use it, move it away, or "
            "choose another path"
        )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    password = session.password(confirm=True)
    key = NodeKey.generate()
    write_keystore(path, key, password, **_KEYSTORE_KW)
    return key


def cmd_init(session: _Session) -> int:
    path: Path = session.args.keystore
    key = _write_new_keystore(session, path, "`form init`")
    if session.args.json:
        _json_out({"address": key.address, "keystore": str(path)})
    else:
        # The address only on stdout (scripts capture it); the secret never reaches a terminal.
        print(checksum_address(key.address))
        print(f"wrote {path}; next: form account create --name NAME", file=sys.stderr)
    return 0


def cmd_key_new(session: _Session) -> int:
    path: Path = session.args.out
    key = _write_new_keystore(session, path, "`form key new`")
    if session.args.json:
        _json_out({"address": key.address, "keystore": str(path)})
    else:
        print(checksum_address(key.address))
        print(
            f"wrote {path}; let it act for you with: form key grant --delegate {key.address} "
            "--scopes read",
            file=sys.stderr,
        )
    return 0


def _show_account_result(session: _Session, result: Any, verb: str) -> int:
    if session.args.json:
        _json_out(result)
        return 0
    account = result.get("account") if isinstance(result, Mapping) else None
    address = account.get("address") if isinstance(account, Mapping) else None
    print(f"{verb} account {address or '?'}{_op(result)}")
    if account is not None:
        _fields(account)
    return 0


def cmd_account_create(session: _Session) -> int:
    args = session.args
    result = session.client().account_create(args.name, args.description)
    return _show_account_result(session, result, "created")


def cmd_account_update(session: _Session) -> int:
    args = session.args
    if args.name is None and args.description is None:
        raise UsageError("nothing to update; pass --name and/or --description")
    result = session.client().account_update(args.name, args.description)
    return _show_account_result(session, result, "updated")


def cmd_account_delete(session: _Session) -> int:
    if not session.args.yes:
        raise UsageError("deleting an account cannot be undone; pass --yes to confirm")
    result = session.client().account_delete()
    if session.args.json:
        _json_out(result)
    else:
        print(f"deleted account {session.account()}{_op(result)}")
    return 0


def cmd_account_show(session: _Session) -> int:
    text: str | None = session.args.address
    address = _address(text, "ADDRESS") if text is not None else session.account()
    result = session.client().account_get(address)
    if session.args.json:
        _json_out(result)
    else:
        _fields(result)
    return 0


def cmd_account_list(session: _Session) -> int:
    result = session.client().account_list()
    if session.args.json:
        _json_out(result)
        return 0
    _table(
        result.get("accounts") if isinstance(result, Mapping) else None,
        [
            _col("ADDRESS", "address"),
            _col("NAME", "name"),
            _col("INSTANCES", "owned_instances", count=True),
            _col("AGENTS", "owned_agents", count=True),
            _col("MODELS", "owned_models", count=True),
        ],
    )
    return 0


_INSTANCE_COLUMNS: Final = [
    _col("INSTANCE ID", "instance_id"),
    _col("NAME", "name"),
    _col("STATUS", "status"),
    _col("DESIRED", "desired_state"),
    _col("NODE", "node_id"),
    _col("IP", "formnet_ip"),
]


def cmd_manage_create(session: _Session) -> int:
    args = session.args
    path: Path = args.formfile
    try:
        formfile = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--formfile {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --formfile {path}: {exc}") from None
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
    else:
        _fields(result)
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


def _instance_action(action: str) -> Callable[[_Session], int]:
    def command(session: _Session) -> int:
        client = session.client()
        instance_id: str = session.args.id
        call = {
            "stop": client.instance_stop,
            "start": client.instance_start,
            "delete": client.instance_delete,
        }[action]
        result = call(instance_id)
        if session.args.json:
            _json_out(result)
        else:
            print(f"{action} requested for instance {instance_id}{_op(result)}")
        return 0

    return command


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


def _model_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": args.name,
        # Explicit on every publish, as for agents: without --private the model is public.
        "access": "private" if args.private else "public",
    }
    if args.description is not None:
        spec["description"] = args.description
    if args.model_type is not None:
        spec["model_type"] = args.model_type
    for option, name, value in (
        ("--parameters", "parameters", args.parameters),
        ("--context-length", "context_length", args.context_length),
    ):
        if value is not None:
            if value < 0:
                raise UsageError(f"{option} cannot be negative")
            spec[name] = value
    if args.price_per_1m_tokens is not None:
        if args.price_per_1m_tokens < 0:
            raise UsageError("--price-per-1m-tokens cannot be negative")
        spec["pricing"] = {"price_per_1m_tokens": args.price_per_1m_tokens}
    return spec


@dataclass(frozen=True)
class _Listing:
    """What differs between the agent and the model commands: the noun, the table, and which
    of the client's methods to call. The commands themselves are the same."""

    noun: str
    columns: tuple[_Column, ...]
    spec: Callable[[argparse.Namespace], dict[str, Any]]
    list_: Callable[..., Any]  # (client, *, signed) -> answer
    get: Callable[..., Any]  # (client, id, *, signed) -> answer
    create: Callable[[GatewayClient, Mapping[str, Any]], Any]
    update: Callable[[GatewayClient, Mapping[str, Any]], Any]
    delete: Callable[[GatewayClient, str], Any]
    allow: Callable[[GatewayClient, str, str], Any]
    disallow: Callable[[GatewayClient, str, str], Any]

    @property
    def plural(self) -> str:
        return f"{self.noun}s"


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
_MODELS: Final = _Listing(
    noun="model",
    columns=(
        _col("MODEL ID", "model_id"),
        _col("NAME", "name"),
        _col("OWNER", "owner_id"),
        _col("TYPE", "model_type"),
        _col("PARAMETERS", "parameters"),
        _col("CONTEXT", "context_length"),
        _col("ACCESS", "access"),
        _col("PRICE/1M TOKENS", "pricing", "price_per_1m_tokens"),
    ),
    spec=_model_spec,
    list_=GatewayClient.model_list,
    get=GatewayClient.model_get,
    create=GatewayClient.model_create,
    update=GatewayClient.model_update,
    delete=GatewayClient.model_delete,
    allow=GatewayClient.model_allow,
    disallow=GatewayClient.model_disallow,
)


def _publish(listing: _Listing) -> Callable[[_Session], int]:
    def command(session: _Session) -> int:
        spec = listing.spec(session.args)
        client = session.client()
        verb = "published"
        try:
            result = listing.create(client, spec)
        except ApiError as exc:
            if exc.code != "exists":
                raise
            # Publishing again is how an owner changes a listing: the name identifies it.
            result = listing.update(client, spec)
            verb = "updated"
        if session.args.json:
            _json_out(result)
            return 0
        id_field = f"{listing.noun}_id"
        entity = result.get(listing.noun) if isinstance(result, Mapping) else None
        entity_id = (result.get(id_field) if isinstance(result, Mapping) else None) or (
            entity.get(id_field) if isinstance(entity, Mapping) else None
        )
        print(f"{verb} {listing.noun} {spec['name']!r} as {entity_id or '?'}{_op(result)}")
        return 0

    return command


def _list(listing: _Listing) -> Callable[[_Session], int]:
    def command(session: _Session) -> int:
        signed = bool(session.args.signed)
        result = listing.list_(session.client(signed=signed), signed=signed)
        if session.args.json:
            _json_out(result)
        else:
            rows = result.get(listing.plural) if isinstance(result, Mapping) else None
            _table(rows, listing.columns)
        return 0

    return command


def _show(listing: _Listing) -> Callable[[_Session], int]:
    def command(session: _Session) -> int:
        signed = bool(session.args.signed)
        result = listing.get(session.client(signed=signed), session.args.entity_id, signed=signed)
        if session.args.json:
            _json_out(result)
        else:
            _fields(result)
        return 0

    return command


def _delete(listing: _Listing) -> Callable[[_Session], int]:
    def command(session: _Session) -> int:
        result = listing.delete(session.client(), session.args.name)
        if session.args.json:
            _json_out(result)
        else:
            print(f"deleted {listing.noun} {session.args.name!r}{_op(result)}")
        return 0

    return command


def _access(listing: _Listing, allow: bool) -> Callable[[_Session], int]:
    def command(session: _Session) -> int:
        args = session.args
        address = _address(args.address, "--address")
        call = listing.allow if allow else listing.disallow
        result = call(session.client(), args.entity_id, address)
        if args.json:
            _json_out(result)
        else:
            verb = "allowed" if allow else "disallowed"
            print(f"{verb} {address} on {listing.noun} {args.entity_id}{_op(result)}")
        return 0

    return command


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


def cmd_key_grant(session: _Session) -> int:
    args = session.args
    delegate = _address(args.delegate, "--delegate")
    scopes = _scopes(args.scopes)
    expires_s = int(session.clock()) + _duration_s(args.expires_in)
    if args.spend_cap is not None and args.spend_cap < 0:
        raise UsageError("--spend-cap cannot be negative")
    result = session.client().key_grant(
        delegate, scopes, expires_s, spend_cap=args.spend_cap, label=args.label
    )
    if args.json:
        _json_out(result)
    else:
        print(f"granted {delegate} {','.join(scopes)} until {_when(expires_s)}{_op(result)}")
    return 0


def cmd_key_revoke(session: _Session) -> int:
    delegate = _address(session.args.delegate, "--delegate")
    result = session.client().key_revoke(delegate)
    if session.args.json:
        _json_out(result)
    else:
        print(f"revoked {delegate}{_op(result)}")
    return 0


def cmd_key_list(session: _Session) -> int:
    result = session.client().key_list()
    if session.args.json:
        _json_out(result)
        return 0
    _table(
        result.get("keys") if isinstance(result, Mapping) else None,
        [
            _col("DELEGATE", "delegate"),
            _col("SCOPES", "scopes"),
            _col("EXPIRES", "expires_s"),
            _col("SPEND CAP", "spend_cap"),
            _col("LABEL", "label"),
            _col("REVOKED", "revoked"),
        ],
    )
    return 0


def cmd_status(session: _Session) -> int:
    client = session.client(signed=False)
    health = client.health()
    info = client.node_info()
    if session.args.json:
        _json_out({"gateway": client.base_url, "health": health, "node": info})
        return 0
    _fields(
        {
            "gateway": client.base_url,
            **(health if isinstance(health, Mapping) else {"health": health}),
            **(info if isinstance(info, Mapping) else {"node": info}),
        }
    )
    return 0


def cmd_node_info(session: _Session) -> int:
    result = session.client(signed=False).node_info()
    if session.args.json:
        _json_out(result)
    else:
        _fields(result)
    return 0


def cmd_node_list(session: _Session) -> int:
    result = session.client(signed=False).node_list()
    if session.args.json:
        _json_out(result)
        return 0
    now_s = session.clock()
    _table(
        result.get("nodes") if isinstance(result, Mapping) else None,
        [
            _col("NODE ID", "node_id"),
            _col("VERSION", "version"),
            _col("LAST HEARTBEAT", "last_heartbeat", render=lambda ms: _age(now_s, ms)),
            _col("FREE CPU", "capacity", "cpu_available_millicores", render=_millicores_text),
            _col("FREE MEMORY", "capacity", "memory_available_bytes", render=_bytes_text),
            _col("FREE STORAGE", "capacity", "storage_available_bytes", render=_bytes_text),
        ],
    )
    return 0


# ---------------------------------------------------------------------------------- parser


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The global options; on subcommands with no defaults, so they override only if given."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    group = parser.add_argument_group(
        "global options" if defaults else "global options (also accepted before the command)"
    )
    group.add_argument(
        "--gateway",
        metavar="URL",
        default=default(os.environ.get("FORM_GATEWAY") or GATEWAY_DEFAULT),
        help=f"the node's gateway (env FORM_GATEWAY; default {GATEWAY_DEFAULT})",
    )
    group.add_argument(
        "--keystore",
        type=Path,
        metavar="PATH",
        default=default(default_keystore()),
        help="your key, an Ethereum keystore v3 file (env FORM_KEYSTORE; default "
        "~/.config/formation/form-key.json)",
    )
    group.add_argument(
        "--password-file",
        type=Path,
        metavar="PATH",
        default=default(None),
        help="the keystore's password on the first line (else env FORM_PASSWORD, else a prompt)",
    )
    group.add_argument(
        "--act-as",
        metavar="ADDRESS",
        default=default(None),
        help="act for this account with a delegate key it granted (sent as X-Act-As)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print the gateway's JSON instead of tables",
    )
    group.add_argument(
        "--timeout-s",
        type=float,
        metavar="SECONDS",
        default=default(10.0),
        help="give up on a request after this long (default 10; agent answers may take 300)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="form",
        description=(
            "Use the Formation marketplace through a node's gateway: your account, instances, "
            "agents, models, the fog's nodes and delegate keys. Requests that change or read private state are signed "
            "with your key (an Ethereum keystore); see 'form init'."
        ),
        epilog="Run 'form COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"form {__version__}")
    _global_options(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, defaults=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def leaf(
        group: Any, name: str, func: Callable[[_Session], int], help_text: str
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name, parents=[common], help=help_text, description=help_text
        )
        sub.set_defaults(func=func)
        return sub

    def branch(name: str, help_text: str) -> Any:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        return sub.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)

    def listing_commands(group: Any, listing: _Listing, use: str) -> None:
        noun = listing.noun
        listed = leaf(group, "list", _list(listing), f"the {listing.plural} on the marketplace")
        show = leaf(group, "show", _show(listing), f"one {noun}")
        show.add_argument("entity_id", metavar="ID")
        for sub in (listed, show):
            sub.add_argument(
                "--signed",
                action="store_true",
                help=f"sign the request (unlocks your key) to also see private {listing.plural} "
                "you own or may use",
            )
        delete = leaf(group, "delete", _delete(listing), f"remove your {noun}")
        delete.add_argument("--name", required=True, metavar="N")
        for name, allow in (("allow", True), ("disallow", False)):
            sub = leaf(
                group,
                name,
                _access(listing, allow),
                f"{name} an address to {use} your private {noun}",
            )
            sub.add_argument("entity_id", metavar="ID")
            sub.add_argument("--address", required=True, metavar="ADDRESS")

    leaf(commands, "init", cmd_init, "create your key at --keystore and print its address")
    leaf(commands, "status", cmd_status, "the gateway's health and its node's identity")

    account = branch("account", "your account")
    for name, func, help_text in (
        ("create", cmd_account_create, "create your account"),
        ("update", cmd_account_update, "change your account's name or description"),
    ):
        sub = leaf(account, name, func, help_text)
        sub.add_argument("--name", metavar="N", help="display name")
        sub.add_argument("--description", metavar="D", help="free text")
    show = leaf(account, "show", cmd_account_show, "an account (default: yours)")
    show.add_argument("address", nargs="?", metavar="ADDRESS", help="default: your own")
    leaf(account, "list", cmd_account_list, "the accounts you may read")
    delete = leaf(account, "delete", cmd_account_delete, "delete your account")
    delete.add_argument("--yes", action="store_true", help="confirm: this cannot be undone")

    manage = branch("manage", "your instances")
    create = leaf(manage, "create", cmd_manage_create, "create an instance from a Formfile")
    create.add_argument("--name", required=True, metavar="N", help="instance name")
    create.add_argument("--formfile", required=True, type=Path, metavar="PATH")
    create.add_argument("--description", metavar="D")
    create.add_argument("--vcpus", type=int, metavar="N")
    create.add_argument("--memory-mb", type=int, metavar="MB")
    create.add_argument("--disk-gb", type=int, metavar="GB")
    create.add_argument("--gpu-count", type=int, metavar="N")
    leaf(manage, "list", cmd_manage_list, "your instances")
    get = leaf(manage, "get", cmd_manage_get, "one instance, or every instance of a build")
    which = get.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", metavar="INSTANCE_ID")
    which.add_argument("--build-id", metavar="BUILD_ID")
    get_ip = leaf(manage, "get-ip", cmd_manage_get_ip, "the IPs of a build's instances")
    get_ip.add_argument("--build-id", required=True, metavar="BUILD_ID")
    for action in ("stop", "start", "delete"):
        sub = leaf(manage, action, _instance_action(action), f"{action} an instance")
        sub.add_argument("--id", required=True, metavar="INSTANCE_ID")

    agent = branch("agent", "agents: publish yours, find and hire others'")
    publish = leaf(
        agent,
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
    hire = leaf(agent, "hire", cmd_agent_hire, "hire an agent; its answer streams to stdout")
    hire.add_argument("agent_id", metavar="ID")
    hire.add_argument(
        "--input", metavar="JSON", help="what to send it (JSON, or - for stdin; default {})"
    )
    run = leaf(agent, "run", cmd_agent_run, "run one task on an agent; the answer streams back")
    run.add_argument("agent_id", metavar="ID")
    run.add_argument("--task", required=True, metavar="JSON", help="the task (JSON, or -)")

    model = branch("model", "models: publish yours, find others'")
    publish = leaf(
        model,
        "publish",
        _publish(_MODELS),
        "list a model on the marketplace (again with the same --name: update it)",
    )
    publish.add_argument("--name", required=True, metavar="N")
    publish.add_argument("--description", metavar="D")
    publish.add_argument("--model-type", metavar="T", help="e.g. llm, embedding")
    publish.add_argument("--parameters", type=int, metavar="N", help="parameter count")
    publish.add_argument("--context-length", type=int, metavar="N", help="in tokens")
    publish.add_argument(
        "--price-per-1m-tokens", type=int, metavar="N", help="credits per million tokens"
    )
    publish.add_argument("--private", action="store_true", help="only allowed addresses may use it")
    listing_commands(model, _MODELS, "use")

    node = branch("node", "the nodes of the fog")
    leaf(node, "list", cmd_node_list, "every node known, with its free capacity and heartbeat")
    leaf(node, "info", cmd_node_info, "the node whose gateway answers")

    key = branch("key", "delegate keys: let another key act for your account")
    grant = leaf(key, "grant", cmd_key_grant, "let a delegate key act for you")
    grant.add_argument("--delegate", required=True, metavar="ADDRESS")
    grant.add_argument(
        "--scopes", required=True, metavar="LIST", help=f"comma-separated: {','.join(SCOPES)}"
    )
    grant.add_argument(
        "--expires-in",
        default=EXPIRES_IN_DEFAULT,
        metavar="DURATION",
        help="e.g. 30m, 24h, 7d (default %(default)s)",
    )
    grant.add_argument("--spend-cap", type=int, metavar="N", help="credits it may spend")
    grant.add_argument("--label", metavar="L", help="a note to recognise it by")
    revoke = leaf(key, "revoke", cmd_key_revoke, "withdraw a delegate key's grant")
    revoke.add_argument("--delegate", required=True, metavar="ADDRESS")
    leaf(key, "list", cmd_key_list, "the delegate keys you granted")
    new = leaf(key, "new", cmd_key_new, "create a keystore for a delegate key")
    new.add_argument("--out", required=True, type=Path, metavar="PATH")
    return parser


def _report(exc: BaseException) -> int:
    if isinstance(exc, ApiError):
        print(f"error: {exc.message} ({exc.code})", file=sys.stderr)
    elif isinstance(exc, GatewayUnreachable):
        print(
            f"error: no gateway answers at {exc.url}; is `formation-node run` running? "
            "pass --gateway URL (or set FORM_GATEWAY)",
            file=sys.stderr,
        )
    else:
        print(f"error: {exc}", file=sys.stderr)
    return 1 if isinstance(exc, ClientError) else 2


def main(
    argv: Sequence[str] | None = None,
    *,
    transport: httpx.BaseTransport | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """Run ``form`` with ``argv``; returns the exit status. ``transport``/``clock`` for tests."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse printed
        return exc.code if isinstance(exc.code, int) else 2
    session = _Session(args, transport, clock)
    try:
        status: int = args.func(session)
    except (ClientError, UsageError, KeystoreError, FileExistsError, FileNotFoundError) as exc:
        return _report(exc)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`form agent list | head -1`): not an error worth a traceback.
        # Python flushes stdout again at exit; point it at /dev/null so that cannot fail too.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE  # what a shell reports for a writer killed by SIGPIPE
    finally:
        session.close()
    return status

