"""What must hold of a run: convergence while it runs and at its end, and the scenario's bounds.

Rules
-----
* **Digests agree** (``roots_agree``): every live node (up, not left) holds the same op-set
  digest root. The engine asks every ``check_interval_s``: the first agreement after a heal
  times the heal, and ``stop_when_settled`` ends a run that has agreed for
  ``settle_margin_s`` with no disturbance pending.
* **Converged** (``convergence``), at the end: one digest root over the live nodes *and* at most
  one ``state_hash`` over those that keep a full ``State``. Equal digests with different states
  would mean the CRDT is not a function of the op set.
* **Nothing lost** (``ops_lost``): every op written is held by some live node.
* **Crashes detected** (``crashes_undetected``): a node down for at least ``detect_within_s`` is
  reported dead by someone within ``detect_within_s`` of its crash.
* **Bounds** (``failures``): the scenario's ``[check]``: ``converged``, and each metric under
  its ``max`` and over its ``min``; each failure says what was measured against what.

All of these read the nodes and the report and change nothing; the simulation stays a pure
function of (scenario, seed, code) whether or not anyone checks it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from simulations.metrics import CrashRecord
from simulations.nodes import SimNode
from simulations.scenario import CheckSpec

__all__ = [
    "Convergence",
    "convergence",
    "crashes_undetected",
    "failures",
    "ops_lost",
    "roots_agree",
]


def roots_agree(nodes: Iterable[SimNode]) -> bool:
    """Every live node has the same digest root (and there is at least one)."""
    root: bytes | None = None
    for node in nodes:
        if node.up and not node.left:
            mine = node.log.digest.root()
            if root is None:
                root = mine
            elif mine != root:
                return False
    return root is not None


@dataclass(frozen=True)
class Convergence:
    roots_distinct: int
    state_hashes_distinct: int
    state_hashes_checked: int

    @property
    def converged(self) -> bool:
        return self.roots_distinct == 1 and self.state_hashes_distinct <= 1


def convergence(live: Sequence[SimNode]) -> Convergence:
    """Digest roots and state hashes over ``live`` (the run's live nodes)."""
    roots = {n.log.digest.root() for n in live}
    with_state = [n for n in live if n.log.state is not None]
    hashes = {n.log.state.state_hash() for n in with_state if n.log.state is not None}
    return Convergence(len(roots), len(hashes), len(with_state))


def ops_lost(op_ids: Iterable[bytes], live: Sequence[SimNode]) -> int:
    """How many of the ops written no live node holds."""
    held = [n.log.digest for n in live]
    return sum(1 for op_id in op_ids if not any(op_id in d for d in held))


def crashes_undetected(crashes: Iterable[CrashRecord], sim_s: float, within_s: float) -> int:
    """Crashes that lasted ``within_s`` or more and nobody reported dead within ``within_s``."""
    undetected = 0
    for crash in crashes:
        down_until = crash.restarted_at if crash.restarted_at is not None else sim_s
        if down_until - crash.at >= within_s and (
            crash.first_dead_at is None or crash.first_dead_at - crash.at > within_s
        ):
            undetected += 1
    return undetected


def failures(check: CheckSpec, report: dict[str, Any]) -> list[str]:
    """The scenario's checks that the report fails, each with its measurement and bound."""
    out: list[str] = []
    if check.converged and not report["converged"]:
        out.append(
            f"not converged: {report['digest_roots_distinct']} distinct digest roots and "
            f"{report['state_hashes_distinct']} distinct state hashes over {report['live_nodes']} live nodes"
        )
    for name, bound in sorted(check.max.items()):
        value = report.get(name)
        if value is None or value > bound:
            out.append(f"{name} = {value} is over the bound {bound:g}")
    for name, bound in sorted(check.min.items()):
        value = report.get(name)
        if value is None or value < bound:
            out.append(f"{name} = {value} is under the bound {bound:g}")
    return out
