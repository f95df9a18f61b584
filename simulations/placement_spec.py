"""The ``[placement]`` table of a scenario: a placement run instead of a gossip run.

```toml
[placement]
policy = "spread"            # node.placement.core policy: spread | binpack
choices = 2                  # power-of-d: candidates sampled per ask
attempts_max = 6             # asks per slot before it fails
answer_timeout_ms = 1000     # an ask unanswered this long goes to the next candidate
load = 0.8                   # offered load: demand / capacity on the busiest dimension
lifetime_s_mean = 1.0        # instance lifetimes are exponential with this mean
lifetime_s_min = 0.05
start_s = 0.0                # requests arrive (Poisson) in [start_s, stop_s)
stop_s = 10.0
heartbeat_ms = 300           # each host reports its free this often (random phase)
gossip_ms_min = 50           # a report reaches a given node this much later (fixed per pair)
gossip_ms_max = 250
dead_after_ms = 1500         # a silent host is declared dead after this; its slots move
host_vcpus = [2, 4, 8, 16, 32]
host_weights = [20, 25, 25, 20, 10]
host_memory_mb_per_vcpu = 4096
host_disk_gb_per_vcpu = 50
gpu_host_ratio = 0.1         # of hosts with 16+ vCPU
gpus_per_host = 2
request_vcpus = [1, 2, 4, 8, 16]
request_weights = [35, 30, 20, 10, 5]
request_memory_mb_per_vcpu = [1024, 2048, 4096]   # one drawn per request
request_disk_gb_per_vcpu = [10, 20, 40]
request_gpu_ratio = 0.02     # requests that also want 1 GPU
```

The nodes are the hosts (``nodes`` of the scenario); ``[[faults]]`` may ``crash`` hosts (with
``restart_after_s``) and ``churn`` them (see ``simulations.scenario``); other actions are
gossip-only and refused. The model and the metrics: ``simulations.placement``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Final

from node.placement.core import ATTEMPTS_MAX_LIMIT, CHOICES_MAX, POLICIES

__all__ = ["PLACEMENT_FAULTS", "PlacementSpec", "PlacementSpecError", "parse_placement"]

PLACEMENT_FAULTS: Final = ("crash", "churn")


@dataclass(frozen=True)
class PlacementSpec:
    policy: str = "spread"
    choices: int = 2
    attempts_max: int = 6
    answer_timeout_ms: int = 1000
    load: float = 0.8
    lifetime_s_mean: float = 1.0
    lifetime_s_min: float = 0.05
    start_s: float = 0.0
    stop_s: float = 10.0
    heartbeat_ms: int = 300
    gossip_ms_min: int = 50
    gossip_ms_max: int = 250
    dead_after_ms: int = 1500
    host_vcpus: tuple[int, ...] = (2, 4, 8, 16, 32)
    host_weights: tuple[float, ...] = (20, 25, 25, 20, 10)
    host_memory_mb_per_vcpu: int = 4096
    host_disk_gb_per_vcpu: int = 50
    gpu_host_ratio: float = 0.1
    gpus_per_host: int = 2
    request_vcpus: tuple[int, ...] = (1, 2, 4, 8, 16)
    request_weights: tuple[float, ...] = (35, 30, 20, 10, 5)
    request_memory_mb_per_vcpu: tuple[int, ...] = (1024, 2048, 4096)
    request_disk_gb_per_vcpu: tuple[int, ...] = (10, 20, 40)
    request_gpu_ratio: float = 0.02


class PlacementSpecError(ValueError):
    pass


def _int(value: Any, where: str, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PlacementSpecError(f"{where} = {value!r}: use an integer >= {minimum}")
    if maximum is not None and value > maximum:
        raise PlacementSpecError(f"{where} = {value!r}: use an integer <= {maximum}")
    return value


def _float(value: Any, where: str, minimum: float, maximum: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PlacementSpecError(f"{where} = {value!r}: use a number")
    if not (minimum <= value <= maximum and math.isfinite(value)):
        raise PlacementSpecError(f"{where} = {value!r}: use a number in [{minimum:g}, {maximum:g}]")
    return float(value)


def _ints(value: Any, where: str, minimum: int) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or len(value) > 64:
        raise PlacementSpecError(f"{where} = {value!r}: use a list of 1-64 integers")
    return tuple(_int(v, f"{where}[{i}]", minimum) for i, v in enumerate(value))


def _floats(value: Any, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not value or len(value) > 64:
        raise PlacementSpecError(f"{where} = {value!r}: use a list of 1-64 weights")
    out = tuple(_float(v, f"{where}[{i}]", 0.0) for i, v in enumerate(value))
    if sum(out) <= 0:
        raise PlacementSpecError(f"{where}: the weights add up to 0")
    return out


def parse_placement(data: dict[str, Any]) -> PlacementSpec:
    """A ``PlacementSpec`` from the ``[placement]`` table (ValueError names a bad key)."""
    known = {f.name for f in fields(PlacementSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PlacementSpecError(
            f"[placement] has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    base = PlacementSpec()
    w = "placement"
    values: dict[str, Any] = {}
    for f in fields(PlacementSpec):
        if f.name not in data:
            continue
        raw = data[f.name]
        where = f"{w}.{f.name}"
        default = getattr(base, f.name)
        if f.name == "policy":
            if raw not in POLICIES:
                raise PlacementSpecError(f"{where} = {raw!r}: use one of {', '.join(POLICIES)}")
            values[f.name] = raw
        elif f.name == "choices":
            values[f.name] = _int(raw, where, 1, CHOICES_MAX)
        elif f.name == "attempts_max":
            values[f.name] = _int(raw, where, 1, ATTEMPTS_MAX_LIMIT)
        elif f.name in ("load", "gpu_host_ratio", "request_gpu_ratio"):
            values[f.name] = _float(raw, where, 0.0, 1.0 if f.name != "load" else 2.0)
        elif f.name.endswith("_weights"):
            values[f.name] = _floats(raw, where)
        elif isinstance(default, tuple):
            values[f.name] = _ints(raw, where, 1)
        elif isinstance(default, int):
            values[f.name] = _int(raw, where, 0 if f.name == "gpus_per_host" else 1)
        else:
            values[f.name] = _float(raw, where, 1e-3 if f.name.startswith("lifetime") else 0.0)
    spec = PlacementSpec(**{**{f.name: getattr(base, f.name) for f in fields(base)}, **values})
    if len(spec.host_vcpus) != len(spec.host_weights):
        raise PlacementSpecError("placement.host_vcpus and host_weights need the same length")
    if len(spec.request_vcpus) != len(spec.request_weights):
        raise PlacementSpecError("placement.request_vcpus and request_weights need the same length")
    if spec.stop_s <= spec.start_s:
        raise PlacementSpecError(
            f"placement.stop_s ({spec.stop_s:g}) must be after start_s ({spec.start_s:g})"
        )
    if spec.gossip_ms_max < spec.gossip_ms_min:
        raise PlacementSpecError("placement.gossip_ms_max is below gossip_ms_min: swap them")
    if spec.lifetime_s_min > spec.lifetime_s_mean:
        raise PlacementSpecError("placement.lifetime_s_min is above lifetime_s_mean")
    return spec
