"""The ``[mesh]`` table of a scenario: a mesh address run instead of a gossip run.

```toml
[mesh]
cidr = "10.42.0.0/16"        # the mesh range (node.mesh.addresses; /8 to /24)
join_spread_ms = 100.0       # every node joins at a uniform random time in [0, join_spread_ms]
gossip_ms_min = 50.0         # a claim reaches a given node this much later (fixed per pair)
gossip_ms_max = 400.0
reclaim_delay_ms = 5.0       # a node that sees it lost re-claims this much later
ledger_check = false         # also sign every claim as a real mesh.claim op, apply them all to a
                             # State and compare its mesh_view with the simulation's outcome
```

The nodes are the scenario's ``nodes``; a mesh scenario takes no ``[[faults]]``. The model and
the metrics: ``simulations.mesh``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from node.mesh.addresses import check_cidr, mesh_cidr_for

__all__ = ["LEDGER_NETWORK", "MeshSpec", "MeshSpecError", "parse_mesh"]

# The network whose range the ledger check's ops are signed for.
LEDGER_NETWORK = "local"


@dataclass(frozen=True)
class MeshSpec:
    cidr: str = "10.42.0.0/16"
    join_spread_ms: float = 100.0
    gossip_ms_min: float = 50.0
    gossip_ms_max: float = 400.0
    reclaim_delay_ms: float = 5.0
    ledger_check: bool = False


class MeshSpecError(ValueError):
    pass


def parse_mesh(data: dict[str, Any]) -> MeshSpec:
    """A ``MeshSpec`` from the ``[mesh]`` table (MeshSpecError names a bad key)."""
    known = {f.name for f in fields(MeshSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise MeshSpecError(
            f"[mesh] has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    values: dict[str, Any] = {}
    for name, raw in data.items():
        where = f"mesh.{name}"
        if name == "cidr":
            if not isinstance(raw, str):
                raise MeshSpecError(f'{where} = {raw!r}: use a range such as "10.42.0.0/16"')
            try:
                check_cidr(raw)
            except ValueError as exc:
                raise MeshSpecError(f"{where}: {exc}") from None
            values[name] = raw
        elif name == "ledger_check":
            if not isinstance(raw, bool):
                raise MeshSpecError(f"{where} = {raw!r}: use true or false")
            values[name] = raw
        else:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise MeshSpecError(f"{where} = {raw!r}: use a number of milliseconds")
            if not (raw >= 0 and math.isfinite(raw)):
                raise MeshSpecError(f"{where} = {raw!r}: use a number >= 0")
            values[name] = float(raw)
    spec = MeshSpec(**values)
    if spec.gossip_ms_max < spec.gossip_ms_min:
        raise MeshSpecError("mesh.gossip_ms_max is below gossip_ms_min: swap them")
    ledger_cidr = check_cidr(mesh_cidr_for(LEDGER_NETWORK))
    if spec.ledger_check and not check_cidr(spec.cidr).subnet_of(ledger_cidr):
        raise MeshSpecError(
            f"mesh.ledger_check signs ops for the {LEDGER_NETWORK!r} network: use a cidr "
            f"inside its range {ledger_cidr}"
        )
    return spec
