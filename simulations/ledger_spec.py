"""The ``[ledger]`` table of a scenario: a billing run instead of a gossip run.

```toml
[ledger]
accounts = 4                 # paying accounts; the first is the hot one every node spends
payees = 3                   # accounts that only receive
orders_per_node = 3          # honest spend orders sent to each node (transfers and holds)
hot_fraction = 0.5           # share of orders on the hot account (many nodes spend it at once)
amount_max = 20              # an order moves 1..amount_max credits
hold_fraction = 0.25         # share of orders that are holds (drawn 1-3 times, then released
                             # or left to expire)
provision_factor = 2.0       # rights minted per (account, node) = factor x that pair's demand
overdraw_fraction = 0.005    # share of orders for more than the node holds: it must ask peers
spend_spread_ms = 2000.0     # orders arrive uniformly over this long, after the mints
gossip_ms_min = 20.0         # an op reaches each replica this much later (each message drawn
gossip_ms_max = 300.0        # anew, so ops arrive reordered)
duplicate_probability = 0.1  # a delivery happens twice
double_submit_probability = 0.2  # an order is sent again: to its node, and to another node
reuse_key_probability = 0.05 # the client signs a second, different order with the same key
partition = true             # the fog splits in two for partition_ms during the spends
partition_ms = 800.0
crashes = 2                  # nodes that crash during the spends (their state survives)
crash_ms = 500.0
ask_timeout_ms = 400.0       # a spend waiting for rights is refused after this long
byzantine = true             # node 0 also executes orders it cannot cover, forges mints and
                             # executes orders that name other nodes
```

The nodes are the scenario's ``nodes``; a ledger scenario takes no ``[[faults]]`` (its faults
are the knobs above). ``[check.max]`` bounds hold for every seed; ``[check.min]`` bounds
(``local_decision_fraction``) for the sum of ``formation-sim run SCENARIO --seeds N``, since one
seed's few dozen decisions are one noisy sample. The model and the metrics:
``simulations.ledger``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["LEDGER_NETWORK", "LedgerSpec", "LedgerSpecError", "ledger_table", "parse_ledger"]

# The network the run's ops are signed for: its genesis issuer is the well-known local key.
LEDGER_NETWORK = "local"

_COUNTS = ("accounts", "payees", "orders_per_node", "amount_max", "crashes")
_FRACTIONS = (
    "hot_fraction",
    "hold_fraction",
    "overdraw_fraction",
    "duplicate_probability",
    "double_submit_probability",
    "reuse_key_probability",
)
_BOOLS = ("partition", "byzantine")


@dataclass(frozen=True)
class LedgerSpec:
    accounts: int = 4
    payees: int = 3
    orders_per_node: int = 3
    hot_fraction: float = 0.5
    amount_max: int = 20
    hold_fraction: float = 0.25
    provision_factor: float = 2.0
    overdraw_fraction: float = 0.005
    spend_spread_ms: float = 2000.0
    gossip_ms_min: float = 20.0
    gossip_ms_max: float = 300.0
    duplicate_probability: float = 0.1
    double_submit_probability: float = 0.2
    reuse_key_probability: float = 0.05
    partition: bool = True
    partition_ms: float = 800.0
    crashes: int = 2
    crash_ms: float = 500.0
    ask_timeout_ms: float = 400.0
    byzantine: bool = True


class LedgerSpecError(ValueError):
    pass


def parse_ledger(data: dict[str, Any]) -> LedgerSpec:
    """A ``LedgerSpec`` from the ``[ledger]`` table (LedgerSpecError names a bad key)."""
    known = {f.name for f in fields(LedgerSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise LedgerSpecError(
            f"[ledger] has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    values: dict[str, Any] = {}
    for name, raw in data.items():
        where = f"ledger.{name}"
        if name in _BOOLS:
            if not isinstance(raw, bool):
                raise LedgerSpecError(f"{where} = {raw!r}: use true or false")
            values[name] = raw
        elif name in _COUNTS:
            low = 0 if name == "crashes" else 1
            if isinstance(raw, bool) or not isinstance(raw, int) or raw < low:
                raise LedgerSpecError(f"{where} = {raw!r}: use an integer >= {low}")
            values[name] = raw
        else:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise LedgerSpecError(f"{where} = {raw!r}: use a number")
            if not (raw >= 0 and math.isfinite(raw)):
                raise LedgerSpecError(f"{where} = {raw!r}: use a number >= 0")
            if name in _FRACTIONS and raw > 1:
                raise LedgerSpecError(f"{where} = {raw!r}: use a fraction in 0..1")
            values[name] = float(raw)
    spec = LedgerSpec(**values)
    if spec.gossip_ms_max < spec.gossip_ms_min:
        raise LedgerSpecError("ledger.gossip_ms_max is below gossip_ms_min: swap them")
    if spec.provision_factor <= 0:
        raise LedgerSpecError("ledger.provision_factor must be above 0: nothing could be spent")
    return spec


def ledger_table(
    data: dict[str, Any], other_run: bool, faults: Sequence[Any], error: type[Exception]
) -> LedgerSpec | None:
    """The scenario's ``[ledger]`` table parsed, or None; a bad one raises ``error`` (the
    scenario's error type) naming what to fix. ``other_run``: it has [placement] or [mesh]."""
    if "ledger" not in data:
        return None
    if not isinstance(data["ledger"], dict):
        raise error("ledger must be a table: [ledger] accounts = ...")
    if other_run:
        raise error("a scenario has one of [placement], [mesh] or [ledger]")
    if faults:
        raise error(
            f"fault '{faults[0].describe()}': a ledger scenario takes no [[faults]]; "
            "its faults are [ledger] knobs"
        )
    try:
        return parse_ledger(data["ledger"])
    except LedgerSpecError as exc:
        raise error(str(exc)) from None
