"""The op kinds of vanity DNS names: an owner points a domain at one of its builds.

Theory of operation
-------------------
``dns.add {"domain": D, "build_id": B}`` and ``dns.remove {"domain": D}`` are signed by an
account (through the gateway as request ops). Whether the signer owns build ``B`` cannot be told
from the op alone (a build id is a digest; rule 2 of ``node.ledger.state``), so the op is always
merged and **which add counts is decided when reading** (``names_of``), like placement reports:

- Each signer's word on a domain is its own LWW report (``Record.reports``), and its first add
  is a min-register ``claim:<signer>``: merging commutes, any order of arrival gives one view.
- A signer's add counts only while its latest word is an add and the build it names is the
  signer's (``state.owners``), and exists (some instance or build record names it).
- A domain belongs to its **first adder**: among the signers whose add counts, the one with the
  earliest claim stamp (ties: the smaller address). Another account's later add of the same
  domain does not count while the first adder holds it. ``dns.remove`` by the holder releases
  it; the next counting claimant (if any) then holds it. A holder that re-adds after a remove
  takes it back (its claim stamp is the earliest): first come is first served, for good.

Domains are checked in the op (stateless): DNS labels of letters, digits and '-' (no label
starting or ending with '-', each 1-63 characters), 253 characters at most, lower-cased, and
ending in ``.fog`` or not (the zone is ``fog``; ``D`` is served as ``D.fog`` when it does not end
in it). A domain must not fall under the reserved ``instance.fog`` / ``node.fog`` names, nor be a
bare hex name (that is how ``<build>.fog`` names are spelled).
"""

from __future__ import annotations

import re
from typing import Any, Final

from node.ledger.op import Op, OpRejected
from node.ledger.record import Kind, Tables
from node.ledger.schema import Str

__all__ = ["KINDS", "TABLES", "domain_problem", "holders_of", "names_of", "zone_name"]

TABLES: Final = ("names",)
DOMAIN_CHARS_MAX: Final = 253
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_BARE_HEX = re.compile(r"[0-9a-f]+")
_RESERVED: Final = ("instance.fog", "node.fog")
_DIGEST = Str(
    required=True,
    length_min=64,
    length_max=64,
    pattern=r"[0-9a-f]+",
    hint="a build id: 64 lower-case hex digits",
)
# The schema bound is looser than the rule so that ``domain_problem`` names what to fix.
_DOMAIN = Str(required=True, length_min=1, length_max=2 * DOMAIN_CHARS_MAX)


def zone_name(domain: str) -> str:
    """The name a domain is served as: lower case, no final dot, ending in ``.fog``."""
    name = domain.lower().rstrip(".")
    return name if name.endswith(".fog") else name + ".fog"


def domain_problem(domain: str) -> str | None:
    """What is wrong with ``domain`` as a vanity name, or None when it is fine."""
    name = zone_name(domain)
    if len(name) > DOMAIN_CHARS_MAX:
        return f"the domain is {len(name)} characters with .fog; at most {DOMAIN_CHARS_MAX}"
    labels = name.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            return (
                f"label {label!r} is not a DNS label: use 1-63 letters, digits or '-', "
                "not starting or ending with '-'"
            )
    for reserved in _RESERVED:
        if name == reserved or name.endswith("." + reserved):
            return f"names under {reserved} are the fog's own; choose another domain"
    if len(labels) == 2 and _BARE_HEX.fullmatch(labels[0]):
        return "a bare hex label names a build (<build>.fog); add a letter outside a-f"
    return None


def _check_domain(op: Op, payload: dict[str, Any]) -> None:
    problem = domain_problem(payload["domain"])
    if problem is not None:
        raise OpRejected("invalid_payload", f"{op.kind}: domain {payload['domain']!r}: {problem}")


def _add(state: Tables, op: Op, payload: dict[str, Any]) -> None:
    record = state.record("names", zone_name(payload["domain"]))
    record.first(f"claim:{op.author}", op.stamp)
    record.set_report(op.author, {"build_id": payload["build_id"], "live": True}, op.stamp)


def _remove(state: Tables, op: Op, payload: dict[str, Any]) -> None:
    record = state.record("names", zone_name(payload["domain"]))
    record.set_report(op.author, {"live": False}, op.stamp)


def names_of(state: Any) -> dict[str, str]:
    """``{domain: build_id}`` of every domain held now (the rule above), sorted by domain.
    ``state`` is a ``node.ledger.state.State`` (its ``tables``, ``owners``, ``instances()``)."""
    return {domain: build_id for domain, (_, build_id) in holders_of(state).items()}


def holders_of(state: Any) -> dict[str, tuple[str, str]]:
    """``{domain: (holding account, build_id)}``, sorted by domain (see ``names_of``)."""
    owners: dict[str, str] = state.owners
    shipped: dict[str, set[str]] | None = None  # build id -> owners of instances booting it

    def owns(signer: str, build_id: Any) -> bool:
        nonlocal shipped
        if owners.get(build_id) == signer:  # a pack build (``build.request``) it asked for
            return True
        if shipped is None:
            shipped = {}
            for instance in state.instances():
                shipped.setdefault(instance["build_id"], set()).add(instance["instance_owner"])
        return signer in shipped.get(build_id, set())

    out: dict[str, tuple[str, str]] = {}
    for domain, record in sorted(state.tables["names"].items()):
        counting = []
        for signer, report in record.reports.items():
            word = report.to_dict()
            build_id = word.get("build_id")
            claim = record.firsts.get(f"claim:{signer}")
            if word.get("live") and claim is not None and owns(signer, build_id):
                counting.append((claim, signer, build_id))
        if counting:
            _, signer, build_id = min(counting)
            out[domain] = (signer, build_id)
    return out


KINDS: Final[list[Kind]] = [
    Kind("dns.add", {"domain": _DOMAIN, "build_id": _DIGEST}, _check_domain, _add),
    Kind("dns.remove", {"domain": _DOMAIN}, _check_domain, _remove),
]
