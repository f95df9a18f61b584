"""Mesh addresses without a coordinator: hash-ordered candidates, earliest claim wins.

Theory of operation
-------------------
Every node (subject ``"node:<node_id>"``) and every instance slot (``"slot:<instance_id>:<k>"``)
holds one IPv4 address in its network's mesh range (``mesh_cidr_for``; ``bootstrap.profiles``
sets it per network, ``10.42.0.0/16`` by default, the upstream's). Nobody hands addresses out:
a subject *claims* one with a signed ``mesh.claim`` op (``node.ledger.mesh``), and every replica
decides who holds what from the claims alone, with one pure rule (``resolve``):

Rule 1: **a subject's claim is its latest one** (a re-claim replaces the earlier claim).

Rule 2: **an address goes to the claim with the smallest priority**, where the priority of a
claim is the stamp of the *first* time that subject claimed that address (``(wall_ms, logical)``
of the op), ties broken by the smaller subject. A refreshed claim keeps its first stamp, so
re-announcing never demotes a holder. Every claim that is not the smallest on its address has
*lost*: the loser sees it in its own view and re-claims.

Rule 3: **candidates come in a hash order per subject** (``candidate``): attempt ``a`` of subject
``s`` is ``sha256("formation:mesh:v1" ‖ s ‖ a)`` mapped onto the usable addresses of the range.
A subject picks the first of its candidates that its view does not show as taken
(``next_candidate``), so two subjects that collided once draw independent next candidates and
rarely collide again; a fog of 1,000 nodes in a /16 has about eight first-round collisions.

Reserved addresses: the network and broadcast addresses of the range, and every address whose
last octet is 0 or 255 (they look like network/broadcast addresses of a /24 to tools and people,
and some stacks treat them so). Ranges are IPv4, prefix /8 to /24.

All functions are pure: no clock, no I/O, no global random. Because the priority is a function
of the ops and the rule is a function of the priorities, every replica that applied the same ops
reaches the same holders, whatever order the ops arrived in.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from bootstrap.profiles import PROFILES

__all__ = [
    "ATTEMPTS_HASHED_MAX",
    "MESH_CIDR_DEFAULT",
    "Claim",
    "Resolution",
    "candidate",
    "check_cidr",
    "first_candidate",
    "is_usable",
    "mesh_cidr_for",
    "next_candidate",
    "resolve",
    "usable_count",
]

MESH_CIDR_DEFAULT: Final = "10.42.0.0/16"
# Hashed candidates tried before a linear scan from the last one: with the range 1/e full, 64
# draws all taken has probability e^-64; the scan only guards an almost full range.
ATTEMPTS_HASHED_MAX: Final = 64
_PREFIX_MIN: Final = 8
_PREFIX_MAX: Final = 24
_USABLE_PER_24: Final = 254  # .1 .. .254

# (wall_ms, logical) of the first op in which the subject claimed that address.
Priority = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Claim:
    """A subject's current claim: the address and its priority (rule 2)."""

    subject: str
    address: str
    priority: Priority


@dataclass(frozen=True, slots=True)
class Resolution:
    """Who holds what after the rule: ``held`` subject -> address, ``lost`` subjects."""

    held: Mapping[str, str]
    holders: Mapping[str, str]  # address -> subject
    lost: frozenset[str]


def mesh_cidr_for(network: str) -> str:
    """The mesh range of ``network`` (its profile's ``mesh_cidr``; unknown: the default)."""
    for profile in PROFILES.values():
        if profile.network == network:
            return profile.mesh_cidr
    return MESH_CIDR_DEFAULT


@lru_cache(maxsize=64)
def check_cidr(cidr: str) -> ipaddress.IPv4Network:
    """The range as a network; ValueError names what to fix."""
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        raise ValueError(
            f"mesh range {cidr!r} is not a network such as 10.42.0.0/16: {exc}"
        ) from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ValueError(f"mesh range {cidr!r}: use an IPv4 range such as 10.42.0.0/16")
    if not _PREFIX_MIN <= net.prefixlen <= _PREFIX_MAX:
        raise ValueError(f"mesh range {cidr!r}: use a prefix from /{_PREFIX_MIN} to /{_PREFIX_MAX}")
    return net


def usable_count(cidr: str) -> int:
    """How many addresses of the range a subject may hold."""
    net = check_cidr(cidr)
    return (1 << (_PREFIX_MAX - net.prefixlen)) * _USABLE_PER_24


def _address_at(net: ipaddress.IPv4Network, index: int) -> str:
    block, octet = divmod(index, _USABLE_PER_24)
    return str(ipaddress.IPv4Address(int(net.network_address) + block * 256 + octet + 1))


def is_usable(address: str, cidr: str) -> bool:
    """In the range and not reserved (network, broadcast, last octet 0 or 255)."""
    net = check_cidr(cidr)
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return False
    if ip not in net or str(ip) != address:  # one spelling only (no leading zeros)
        return False
    last = int(ip) & 0xFF
    return last not in (0, 255) and ip not in (net.network_address, net.broadcast_address)


def candidate(subject: str, cidr: str, attempt: int) -> str:
    """Attempt ``attempt`` (>= 0) of ``subject``'s hash order (rule 3)."""
    if attempt < 0:
        raise ValueError(f"attempt {attempt}: use 0 or more")
    net = check_cidr(cidr)
    digest = hashlib.sha256(f"formation:mesh:v1\n{subject}\n{attempt}".encode()).digest()
    return _address_at(net, int.from_bytes(digest[:8], "big") % usable_count(cidr))


def first_candidate(subject: str, cidr: str) -> str:
    """Where ``subject`` claims first (attempt 0)."""
    return candidate(subject, cidr, 0)


def next_candidate(subject: str, taken: Collection[str], cidr: str, attempt: int) -> str:
    """The first of ``subject``'s candidates from ``attempt`` on that ``taken`` lacks.

    After ``ATTEMPTS_HASHED_MAX`` taken draws, scans on linearly from the last one. Raises
    ValueError when every usable address is taken.
    """
    for a in range(attempt, attempt + ATTEMPTS_HASHED_MAX):
        address = candidate(subject, cidr, a)
        if address not in taken:
            return address
    net = check_cidr(cidr)
    count = usable_count(cidr)
    start = int(ipaddress.IPv4Address(address)) - int(net.network_address)
    start_index = (start // 256) * _USABLE_PER_24 + (start % 256) - 1
    for step in range(1, count + 1):
        address = _address_at(net, (start_index + step) % count)
        if address not in taken:
            return address
    raise ValueError(f"mesh range {cidr} is full: all {count} usable addresses are taken")


def resolve(claims: Iterable[Claim]) -> Resolution:
    """Apply rule 2 to the current claims (one per subject; a repeated subject keeps the
    claim with the greater priority, its latest)."""
    current: dict[str, Claim] = {}
    for claim in claims:
        ours = current.get(claim.subject)
        if ours is None or (claim.priority, claim.address) > (ours.priority, ours.address):
            current[claim.subject] = claim
    holders: dict[str, Claim] = {}
    for claim in current.values():
        best = holders.get(claim.address)
        if best is None or (claim.priority, claim.subject) < (best.priority, best.subject):
            holders[claim.address] = claim
    held = {c.subject: a for a, c in holders.items()}
    lost = frozenset(s for s in current if s not in held)
    return Resolution(
        held=dict(sorted(held.items())),
        holders={a: c.subject for a, c in sorted(holders.items())},
        lost=lost,
    )
