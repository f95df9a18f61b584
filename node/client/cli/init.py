"""``form init`` (create your key) and ``form status`` (the gateway's health and its node):
the two commands outside any group, the first a user runs."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from node.client.cli._common import (
    Commands,
    _fields,
    _json_out,
    _Session,
    _write_new_keystore,
)
from node.identity.keys import checksum_address


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


def register(commands: Commands) -> None:
    commands.leaf("init", cmd_init, "create your key at --keystore and print its address")
    commands.leaf("status", cmd_status, "the gateway's health and its node's identity")
