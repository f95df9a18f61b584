"""``form account``: create, change, show, list and delete accounts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from node.client.cli._common import (
    Commands,
    UsageError,
    _address,
    _col,
    _fields,
    _json_out,
    _op,
    _Session,
    _table,
)


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


def register(commands: Commands) -> None:
    account = commands.branch("account", "your account")
    for name, func, help_text in (
        ("create", cmd_account_create, "create your account"),
        ("update", cmd_account_update, "change your account's name or description"),
    ):
        sub = account.leaf(name, func, help_text)
        sub.add_argument("--name", metavar="N", help="display name")
        sub.add_argument("--description", metavar="D", help="free text")
    show = account.leaf("show", cmd_account_show, "an account (default: yours)")
    show.add_argument("address", nargs="?", metavar="ADDRESS", help="default: your own")
    account.leaf("list", cmd_account_list, "the accounts you may read")
    delete = account.leaf("delete", cmd_account_delete, "delete your account")
    delete.add_argument("--yes", action="store_true", help="confirm: this cannot be undone")
