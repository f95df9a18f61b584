"""Which node builds a build: a pure rule every node computes alone from the replicated state.

Theory of operation
-------------------
There is no coordinator to hand builds out, so every node ranks the candidates for a build the
same way from the same state and the first in the ranking builds it. A node whose view differs
for a moment (an announce or a heartbeat not yet arrived) may build too; that costs work, not
correctness: reports are kept per node (``node.ledger.builds``) and a build is content-addressed,
so two ``Built`` reports name images that both verify on fetch.

**Candidates** are nodes that announced the ``builder`` role (they have debootstrap, qemu-img and
mkfs.ext4; ``node.node.announce``) and, when they report capacity, have room: at least
``BUILD_STORAGE_BYTES_MIN`` of disk and ``BUILD_MEMORY_BYTES_MIN`` of memory free. A node that
has not reported capacity yet counts (its first heartbeat comes ``heartbeat_s`` after it starts;
leaving it out would leave a fresh fog with no builder at all).

**Ranking**: ``via``, the node the user uploaded the context to, comes first when it is a
candidate (it already holds the files: nothing moves). The others follow in rendezvous-hash order
(highest ``sha256(build_id ‖ address)`` first), which spreads builds evenly and moves few of them
when a node joins or leaves.

**Turns**: the first node builds at once. The node at position ``k`` takes over when nobody has
shown life on the build for ``k * takeover_ms``: a node building reports ``Building`` at every
step and at least every ``REPORT_INTERVAL_MS``, so a silent build is a dead builder. A build that
is ``Built`` or that failed (``CriticalError``: the same inputs fail the same way anywhere) is
nobody's turn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

__all__ = [
    "BUILDER_ROLE",
    "BUILD_MEMORY_BYTES_MIN",
    "BUILD_STORAGE_BYTES_MIN",
    "REPORT_INTERVAL_MS",
    "TAKEOVER_MS",
    "candidates",
    "is_my_turn",
    "ranking",
]

BUILDER_ROLE: Final = "builder"
# A base root (~400 MB), its layers and one image (~400 MB) with room to spare.
BUILD_STORAGE_BYTES_MIN: Final = 4 * 1024**3
# apt and mkfs.ext4 in the chroot; the builder itself is small.
BUILD_MEMORY_BYTES_MIN: Final = 512 * 1024**2
# A building node says so at least this often, even inside one long step.
REPORT_INTERVAL_MS: Final = 15_000
# Silence after which the next node in the ranking takes a build over (per position).
TAKEOVER_MS: Final = 60_000


def _has_room(node: Mapping[str, Any]) -> bool | None:
    """True or False by the node's last capacity report; None when it has reported none."""
    capacity = node.get("capacity")
    if not isinstance(capacity, Mapping):
        return None
    return (
        int(capacity.get("storage_available_bytes", 0)) >= BUILD_STORAGE_BYTES_MIN
        and int(capacity.get("memory_available_bytes", 0)) >= BUILD_MEMORY_BYTES_MIN
    )


def candidates(nodes: Iterable[Mapping[str, Any]]) -> list[str]:
    """Node ids that may build: builders with room, or not yet measured; sorted."""
    return sorted(
        str(node["node_id"])
        for node in nodes
        if BUILDER_ROLE in (node.get("roles") or ()) and _has_room(node) is not False
    )


def _score(build_id: str, node_id: str) -> bytes:
    return hashlib.sha256(f"formation:build-at:v1\n{build_id}\n{node_id.lower()}".encode()).digest()


def ranking(build_id: str, candidate_ids: Sequence[str], via: str | None = None) -> tuple[str, ...]:
    """The order in which nodes take ``build_id``: ``via`` first if it is a candidate, then
    rendezvous order (the same on every node, whatever order ``candidate_ids`` come in)."""
    ids = set(candidate_ids)
    first = [via] if via is not None and via in ids else []
    rest = sorted(ids - set(first), key=lambda n: _score(build_id, n), reverse=True)
    return tuple(first + rest)


def is_my_turn(
    build: Mapping[str, Any],
    order: Sequence[str],
    me: str,
    now_ms: int,
    *,
    takeover_ms: int = TAKEOVER_MS,
) -> bool:
    """Whether node ``me`` should start ``build`` now (``build`` is a ``State.build`` view with
    ``reports``: node id -> {"status", "reported_at"}). The driver remembers what it started
    in this process; after a restart a node takes its own unfinished builds up again (its
    cached layers make that cheap)."""
    if build.get("status") in ("Built", "CriticalError"):
        return False
    if me not in order:
        return False
    reports: Mapping[str, Mapping[str, Any]] = build.get("reports") or {}
    position = order.index(me)
    if position == 0:
        return True
    last_sign_of_life_ms = max(
        [int(build.get("created_at") or 0)]
        + [int(r.get("reported_at") or 0) for r in reports.values()]
    )
    return now_ms - last_sign_of_life_ms >= position * takeover_ms
