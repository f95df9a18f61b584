"""What every ``form`` command shares: the session, the global options, output and errors.

* ``_Session``: one invocation's options, the key (unlocked on first use) and its clients;
* argument helpers that turn a bad value into a ``UsageError`` (exit status 2);
* output: aligned ``name  value`` lines (``_fields``), tables (``_table``), ``--json``;
* ``Commands``: where a command group's module adds its commands, each with the global options
  (``--gateway``, ``--keystore``, ``--password-file``, ``--act-as``, ``--json``, ``--timeout-s``);
* ``_report``: an error as one line on stderr, and its exit status (1 the gateway, 2 usage).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from node.client.api import ApiError, ClientError, GatewayClient, GatewayUnreachable
from node.identity.keys import NodeKey, normalize_address
from node.identity.keystore import read_keystore, read_password, write_keystore

# The upstream form-state's port, so a user's muscle memory and scripts keep working.
GATEWAY_DEFAULT: Final = "http://127.0.0.1:3004"


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
        keystore_kw: Mapping[str, Any],
    ) -> None:
        self.args = args
        self.clock = clock
        self.keystore_kw = keystore_kw
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


# -------------------------------------------------------------------------------- keystore


def _write_new_keystore(session: _Session, path: Path, what: str) -> NodeKey:
    if path.exists() or path.is_symlink():
        raise UsageError(
            f"{path} already exists; {what} never overwrites a key: use it, move it away, or "
            "choose another path"
        )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    password = session.password(confirm=True)
    key = NodeKey.generate()
    write_keystore(path, key, password, **session.keystore_kw)
    return key


# ---------------------------------------------------------------------------------- parser

Handler = Callable[[_Session], int]


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


class Commands:
    """Where a command group's module adds its commands (its ``register(commands)``): leaves,
    each with a handler and the global options, and branches (``form GROUP COMMAND``)."""

    def __init__(
        self,
        subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
        common: argparse.ArgumentParser,
    ) -> None:
        self._subparsers = subparsers
        self._common = common

    def leaf(self, name: str, func: Handler, help_text: str) -> argparse.ArgumentParser:
        """``form [GROUP] NAME``, run by ``func``; returns its parser for the options."""
        sub = self._subparsers.add_parser(
            name, parents=[self._common], help=help_text, description=help_text
        )
        sub.set_defaults(func=func)
        return sub

    def branch(self, name: str, help_text: str) -> Commands:
        """``form NAME COMMAND``: a group whose leaves the returned ``Commands`` adds."""
        sub = self._subparsers.add_parser(name, help=help_text, description=help_text)
        return Commands(
            sub.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True),
            self._common,
        )


def _root_parser(description: str, version: str) -> tuple[argparse.ArgumentParser, Commands]:
    """``form`` itself, its global options and ``--version``; its commands come from the groups."""
    parser = argparse.ArgumentParser(
        prog="form",
        description=description,
        epilog="Run 'form COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"form {version}")
    _global_options(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, defaults=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    return parser, Commands(commands, common)


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
