"""The marketplace listing commands agents and models share: ``publish``, ``list``, ``show``,
``delete``, ``allow`` and ``disallow``, made for one kind of listing from a ``_Listing``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from node.client.api import ApiError, GatewayClient
from node.client.cli._common import (
    Commands,
    _address,
    _Column,
    _fields,
    _json_out,
    _op,
    _Session,
    _table,
)


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


def listing_commands(commands: Commands, listing: _Listing, use: str) -> None:
    """``list``, ``show``, ``delete``, ``allow`` and ``disallow`` for ``listing`` (``use``: the
    verb an allowed address may do, as in "allow an address to hire your private agent")."""
    noun = listing.noun
    listed = commands.leaf("list", _list(listing), f"the {listing.plural} on the marketplace")
    show = commands.leaf("show", _show(listing), f"one {noun}")
    show.add_argument("entity_id", metavar="ID")
    for sub in (listed, show):
        sub.add_argument(
            "--signed",
            action="store_true",
            help=f"sign the request (unlocks your key) to also see private {listing.plural} "
            "you own or may use",
        )
    delete = commands.leaf("delete", _delete(listing), f"remove your {noun}")
    delete.add_argument("--name", required=True, metavar="N")
    for name, allow in (("allow", True), ("disallow", False)):
        sub = commands.leaf(
            name,
            _access(listing, allow),
            f"{name} an address to {use} your private {noun}",
        )
        sub.add_argument("entity_id", metavar="ID")
        sub.add_argument("--address", required=True, metavar="ADDRESS")
