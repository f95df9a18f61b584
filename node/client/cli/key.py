"""``form key``: delegate keys (grant one the right to act for your account, revoke it, list
them, create a keystore for one)."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from node.client.cli._common import (
    Commands,
    UsageError,
    _address,
    _col,
    _json_out,
    _op,
    _Session,
    _table,
    _when,
    _write_new_keystore,
)
from node.identity.keys import checksum_address

# The scopes the gateway knows for a delegate key (POST /key/grant).
SCOPES: Final = ("account", "instance", "agent", "model", "read", "hire")
# A grant lasts a day unless asked otherwise: long enough for a work session, short enough
# that a forgotten key on a laptop stops working by itself.
EXPIRES_IN_DEFAULT: Final = "24h"
_DURATION: Final = re.compile(r"(\d+)([smhdw]?)")
_DURATION_UNIT_S: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


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


def register(commands: Commands) -> None:
    key = commands.branch("key", "delegate keys: let another key act for your account")
    grant = key.leaf("grant", cmd_key_grant, "let a delegate key act for you")
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
    revoke = key.leaf("revoke", cmd_key_revoke, "withdraw a delegate key's grant")
    revoke.add_argument("--delegate", required=True, metavar="ADDRESS")
    key.leaf("list", cmd_key_list, "the delegate keys you granted")
    new = key.leaf("new", cmd_key_new, "create a keystore for a delegate key")
    new.add_argument("--out", required=True, type=Path, metavar="PATH")
