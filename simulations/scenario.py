"""Scenario files: what to simulate, which faults to inject, and what must hold at the end.

A scenario is a TOML file in ``simulations/scenarios/`` (run it by name) or anywhere (by path).
Every key is optional except ``description``; ``formation-sim list`` shows the descriptions.

```toml
description = "One line: what this scenario shows."
nodes = 25                 # initial nodes n0..n24 (--nodes overrides)
seed = 1                   # --seed overrides
duration_s = 30.0          # virtual seconds (--duration overrides)
core = "gossip"          # default: gossip if node.gossip.core imports, else flood
seeds = 3                  # nodes n0..n2 are the bootstrap seeds every node starts with
join_spread_s = 0.0        # nodes start at uniform random times in [0, join_spread_s]
state_nodes = "all"        # nodes that also keep a full State (an int: a seeded sample)
clock_skew_ms_max = 0.0    # each node's clock is off by uniform(-max, +max)
check_interval_s = 0.1     # how often digests are compared (convergence timing resolution)
stop_when_settled = false  # end early once the last op and fault are done and digests agree
settle_margin_s = 2.0      # ... plus this long

[gossip]                   # node.gossip.config.GossipConfig: a preset plus any field
preset = "lan"             # lan | wan | local
flush_interval_s = 0.025

[network]                  # simulations.network.LinkConfig
latency = "uniform"        # constant (latency_ms) | uniform (latency_ms_min/max)
latency_ms_min = 20.0      # | lognormal (latency_ms_median, latency_sigma, latency_ms_max cap)
latency_ms_max = 100.0     # | pareto (latency_ms_min scale, latency_pareto_alpha, max cap)
loss_ratio = 0.01

[workload]                 # signed ops written at random live nodes
ops_per_s = 100.0          # Poisson arrivals ... or ops_total = 10000 (evenly spaced)
start_s = 2.0
stop_s = 22.0

[[faults]]                 # at_s + action + the action's knobs, see FAULT_KNOBS
at_s = 5.0
action = "partition"
sides = 2

[placement]                # set: a placement run instead of gossip (simulations.placement_spec)
[mesh]                     # set: a mesh address run instead of gossip (simulations.mesh_spec)
[ledger]                   # set: a billing run instead of gossip (simulations.ledger_spec)

[check]
converged = true           # identical digest roots and state hashes on every live node
[check.max]                # upper bounds on metrics (names as in --json)
propagation_ms_p50 = 1000.0
```

Node selections (``crash``, ``restart``, ``leave``, ``skew``, ``slow``): ``nodes = ["n3"]``,
``count = 3`` or ``fraction = 0.1`` (a seeded random pick among the eligible nodes); none means
every eligible node (``restart``: every crashed node).
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final

from node.gossip.config import GossipConfig
from simulations.ledger_spec import LedgerSpec, ledger_table
from simulations.mesh_spec import MeshSpec, MeshSpecError, parse_mesh
from simulations.network import LinkConfig
from simulations.placement_spec import (
    PLACEMENT_FAULTS,
    PlacementSpec,
    PlacementSpecError,
    parse_placement,
)

__all__ = [
    "FAULT_KNOBS",
    "SCENARIO_DIR",
    "CheckSpec",
    "Fault",
    "Scenario",
    "ScenarioError",
    "WorkloadSpec",
    "list_scenarios",
    "load_scenario",
]

SCENARIO_DIR: Final = Path(__file__).parent / "scenarios"
_NODE_NAME = re.compile(r"n(0|[1-9][0-9]*)")
_SELECT: Final = frozenset({"nodes", "count", "fraction"})

# action -> the knobs it accepts (besides at_s and action).
FAULT_KNOBS: Final[dict[str, frozenset[str]]] = {
    "partition": frozenset(
        {"sides", "fraction", "groups", "bridge", "oneway", "flap_period_s", "heal_after_s"}
    ),
    "heal": frozenset(),
    "crash": _SELECT | {"restart_after_s", "disk"},
    "restart": _SELECT | {"disk"},
    "join": frozenset({"count"}),
    "leave": _SELECT,
    "skew": _SELECT | {"skew_ms", "skew_ms_max"},
    "slow": _SELECT | {"delay_ms"},
    "network": frozenset(f.name for f in fields(LinkConfig)),
    "churn": frozenset({"until_s", "interval_s", "count", "down_s", "disk_lost_ratio"}),
}
_DISKS: Final = ("kept", "lost")


class ScenarioError(ValueError):
    """A scenario file or override is invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class WorkloadSpec:
    ops_per_s: float = 0.0
    ops_total: int = 0
    start_s: float = 0.0
    stop_s: float = math.inf
    # Accounts and node keys the generator signs for (simulations.workload.Workload).
    users: int = 200
    authors_nodes: int = 20


@dataclass(frozen=True)
class Fault:
    at_s: float
    action: str
    knobs: dict[str, Any]

    def describe(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in sorted(self.knobs.items()))
        return f"{self.at_s:g}s {self.action} {extra}".rstrip()


@dataclass(frozen=True)
class CheckSpec:
    converged: bool = True
    # A crash counts as undetected if the node stays down this long and no live node reports
    # it dead within that time (``crashes_undetected``).
    detect_within_s: float = 30.0
    # A suspicion is false only if the target had been up and reachable from the accuser for
    # this long (a probe that began while it really was down or cut off is not a mistake).
    # None: 2 x probe_interval_s + probe_timeout_s of the scenario's gossip config.
    suspicion_grace_s: float | None = None
    max: dict[str, float] = field(default_factory=dict)
    min: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    nodes: int = 5
    seed: int = 1
    duration_s: float = 30.0
    core: str | None = None
    seeds: int = 3
    join_spread_s: float = 0.0
    state_nodes: int | None = None  # None = all
    clock_skew_ms_max: float = 0.0
    check_interval_s: float = 0.1
    stop_when_settled: bool = False
    settle_margin_s: float = 2.0
    gossip: GossipConfig = field(default_factory=GossipConfig)
    network: LinkConfig = field(default_factory=LinkConfig)
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    faults: tuple[Fault, ...] = ()
    check: CheckSpec = field(default_factory=CheckSpec)
    source: str = ""
    # Set: a placement run (``simulations.placement``) instead of a gossip run.
    placement: PlacementSpec | None = None
    # Set: a mesh address run (``simulations.mesh``) instead of a gossip run.
    mesh: MeshSpec | None = None
    ledger: LedgerSpec | None = None  # set: a billing run (``simulations.ledger``)

    def with_overrides(
        self,
        *,
        nodes: int | None = None,
        seed: int | None = None,
        duration_s: float | None = None,
        core: str | None = None,
    ) -> Scenario:
        """The scenario with command-line overrides applied, validated again."""
        changes: dict[str, Any] = {}
        if nodes is not None:
            if nodes < 1:
                raise ScenarioError(f"--nodes {nodes}: a simulation needs at least 1 node")
            changes["nodes"] = nodes
        if seed is not None:
            changes["seed"] = seed
        if duration_s is not None:
            if not (duration_s > 0 and math.isfinite(duration_s)):
                raise ScenarioError(f"--duration {duration_s}: use a positive number of seconds")
            changes["duration_s"] = duration_s
        if core is not None:
            changes["core"] = core
        scenario = replace(self, **changes)
        scenario.validate()
        return scenario

    def total_nodes(self) -> int:
        joined = sum(int(f.knobs.get("count", 1)) for f in self.faults if f.action == "join")
        return self.nodes + joined

    def validate(self) -> None:
        total = self.total_nodes()
        for fault in self.faults:
            for name in (
                fault.knobs.get("nodes", []) if isinstance(fault.knobs.get("nodes"), list) else []
            ):
                if int(name[1:]) >= total:
                    raise ScenarioError(
                        f"fault '{fault.describe()}' names {name}, but this run has nodes n0..n{total - 1}"
                        f" (--nodes {self.nodes}); pick by count/fraction to scale with --nodes"
                    )
            groups = fault.knobs.get("groups")
            if isinstance(groups, list):
                for group in groups:
                    for name in group:
                        if int(name[1:]) >= total:
                            raise ScenarioError(
                                f"partition at {fault.at_s:g}s names {name}, but this run has nodes "
                                f"n0..n{total - 1}; use sides/fraction to scale with --nodes"
                            )
        if self.seeds < 0:
            raise ScenarioError(f"seeds = {self.seeds}: use 0 or more seed nodes")


# -- loading ---------------------------------------------------------------------------------


def _number(
    data: dict[str, Any], key: str, where: str, default: float, *, minimum: float = 0.0
) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= minimum:
        raise ScenarioError(f"{where}.{key} = {value!r}: use a number >= {minimum:g}")
    return float(value)


def _integer(data: dict[str, Any], key: str, where: str, default: int, *, minimum: int = 0) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ScenarioError(f"{where}.{key} = {value!r}: use an integer >= {minimum}")
    return value


def _boolean(data: dict[str, Any], key: str, where: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ScenarioError(f"{where}.{key} = {value!r}: use true or false")
    return value


def _only(data: dict[str, Any], allowed: set[str] | frozenset[str], where: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ScenarioError(
            f"{where} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}"
        )


def _gossip(data: dict[str, Any]) -> GossipConfig:
    data = dict(data)
    preset = data.pop("preset", "lan")
    presets = {"lan": GossipConfig.lan, "wan": GossipConfig.wan, "local": GossipConfig.local}
    if preset not in presets:
        raise ScenarioError(f"gossip.preset = {preset!r}: use one of {', '.join(presets)}")
    base = presets[preset]()
    known = {f.name: type(getattr(base, f.name)) for f in fields(base)}
    _only(data, set(known), "[gossip]")
    for key, value in data.items():
        want = known[key]
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            data[key] = float(value)
        elif not isinstance(value, want) or isinstance(value, bool) is not (want is bool):
            raise ScenarioError(f"gossip.{key} = {value!r}: use a {want.__name__}")
    return replace(base, **data)


def _network(data: dict[str, Any], where: str = "[network]") -> LinkConfig:
    clean = {
        k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
        for k, v in data.items()
    }
    try:
        return LinkConfig.from_dict(clean, where.strip("[]"))
    except (TypeError, ValueError) as exc:
        raise ScenarioError(str(exc)) from None


def _workload(data: dict[str, Any]) -> WorkloadSpec:
    w = "workload"
    _only(data, {f.name for f in fields(WorkloadSpec)}, "[workload]")
    spec = WorkloadSpec(
        ops_per_s=_number(data, "ops_per_s", w, 0.0),
        ops_total=_integer(data, "ops_total", w, 0),
        start_s=_number(data, "start_s", w, 0.0),
        stop_s=_number(data, "stop_s", w, math.inf),
        users=_integer(data, "users", w, 200, minimum=1),
        authors_nodes=_integer(data, "authors_nodes", w, 20, minimum=1),
    )
    if spec.ops_per_s and spec.ops_total:
        raise ScenarioError("[workload] sets both ops_per_s and ops_total: keep one")
    if spec.ops_total and not math.isfinite(spec.stop_s):
        raise ScenarioError(
            "[workload] ops_total needs stop_s (the ops are spread over start_s..stop_s)"
        )
    if spec.stop_s < spec.start_s:
        raise ScenarioError(
            f"[workload] stop_s ({spec.stop_s:g}) is before start_s ({spec.start_s:g})"
        )
    return spec


def _selection(knobs: dict[str, Any], where: str) -> None:
    chosen = [k for k in ("nodes", "count", "fraction") if k in knobs]
    if len(chosen) > 1:
        raise ScenarioError(f"{where} sets {' and '.join(chosen)}: pick nodes by one of them")
    if "nodes" in knobs:
        names = knobs["nodes"]
        if not (
            isinstance(names, list)
            and all(isinstance(n, str) and _NODE_NAME.fullmatch(n) for n in names)
        ):
            raise ScenarioError(
                f'{where}.nodes = {names!r}: use a list of node ids like ["n0", "n3"]'
            )
    if "count" in knobs:
        _integer(knobs, "count", where, 1, minimum=1)
    if "fraction" in knobs:
        value = knobs["fraction"]
        if not (isinstance(value, int | float) and 0 < value <= 1):
            raise ScenarioError(f"{where}.fraction = {value!r}: use a number in (0, 1]")


def _fault(data: dict[str, Any], index: int) -> Fault:
    where = f"faults[{index}]"
    if "action" not in data or "at_s" not in data:
        raise ScenarioError(f"{where} needs at_s and action (one of {', '.join(FAULT_KNOBS)})")
    action = data["action"]
    if action not in FAULT_KNOBS:
        raise ScenarioError(f"{where}.action = {action!r}: use one of {', '.join(FAULT_KNOBS)}")
    at_s = _number(data, "at_s", where, 0.0)
    knobs = {k: v for k, v in data.items() if k not in ("at_s", "action")}
    _only(knobs, FAULT_KNOBS[action], f"{where} ({action})")
    where = f"{where} ({action} at {at_s:g}s)"
    if action in ("crash", "restart", "leave", "skew", "slow"):
        _selection(knobs, where)
    if "disk" in knobs and knobs["disk"] not in _DISKS:
        raise ScenarioError(f'{where}.disk = {knobs["disk"]!r}: use "kept" or "lost"')
    for key in (
        "restart_after_s",
        "flap_period_s",
        "heal_after_s",
        "interval_s",
        "down_s",
        "delay_ms",
        "skew_ms_max",
    ):
        if key in knobs:
            minimum = 0.0 if key == "delay_ms" else 1e-6
            knobs[key] = _number(knobs, key, where, 0.0, minimum=minimum)
    if "skew_ms" in knobs:
        value = knobs["skew_ms"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScenarioError(
                f"{where}.skew_ms = {value!r}: use a number of milliseconds (may be negative)"
            )
        knobs["skew_ms"] = float(value)
    if action == "skew" and ("skew_ms" in knobs) == ("skew_ms_max" in knobs):
        raise ScenarioError(
            f"{where} needs exactly one of skew_ms (fixed) or skew_ms_max (random +-)"
        )
    if action == "slow" and "delay_ms" not in knobs:
        raise ScenarioError(
            f"{where} needs delay_ms (extra processing time per event; 0 undoes it)"
        )
    if action == "partition":
        ways = [k for k in ("sides", "fraction", "groups") if k in knobs]
        if len(ways) > 1:
            raise ScenarioError(f"{where} sets {' and '.join(ways)}: split by one of them")
        if "sides" in knobs:
            _integer(knobs, "sides", where, 2, minimum=2)
        if "fraction" in knobs and not (
            isinstance(knobs["fraction"], int | float) and 0 < knobs["fraction"] < 1
        ):
            raise ScenarioError(f"{where}.fraction = {knobs['fraction']!r}: use a number in (0, 1)")
        if "groups" in knobs:
            groups = knobs["groups"]
            if not (
                isinstance(groups, list)
                and len(groups) >= 2
                and all(
                    isinstance(g, list)
                    and all(isinstance(n, str) and _NODE_NAME.fullmatch(n) for n in g)
                    for g in groups
                )
            ):
                raise ScenarioError(
                    f'{where}.groups: use two or more lists of node ids, e.g. [["n0"], ["n1", "n2"]]'
                )
        bridge = knobs.get("bridge")
        if bridge is not None and not (
            (isinstance(bridge, int) and not isinstance(bridge, bool) and bridge >= 0)
            or (
                isinstance(bridge, list)
                and all(isinstance(n, str) and _NODE_NAME.fullmatch(n) for n in bridge)
            )
        ):
            raise ScenarioError(f"{where}.bridge = {bridge!r}: use a count or a list of node ids")
        if "oneway" in knobs:
            _boolean(knobs, "oneway", where, False)
    if action == "join":
        knobs["count"] = _integer(knobs, "count", where, 1, minimum=1)
    if action == "network":
        _network(knobs, where)
    if action == "churn":
        for key in ("until_s", "interval_s", "down_s"):
            if key not in knobs:
                raise ScenarioError(f"{where} needs {key}")
        knobs["until_s"] = _number(knobs, "until_s", where, 0.0, minimum=at_s)
        knobs["count"] = _integer(knobs, "count", where, 1, minimum=1)
        ratio = knobs.get("disk_lost_ratio", 0.0)
        if not (isinstance(ratio, int | float) and 0 <= ratio <= 1):
            raise ScenarioError(f"{where}.disk_lost_ratio = {ratio!r}: use a ratio in [0, 1]")
        knobs["disk_lost_ratio"] = float(ratio)
    return Fault(at_s, action, knobs)


def _check(data: dict[str, Any], converged_default: bool = True) -> CheckSpec:
    _only(data, {"converged", "detect_within_s", "suspicion_grace_s", "max", "min"}, "[check]")
    bounds: dict[str, dict[str, float]] = {}
    for side in ("max", "min"):
        table = data.get(side, {})
        if not isinstance(table, dict):
            raise ScenarioError(f"[check.{side}] must be a table of metric = bound")
        for key, value in table.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ScenarioError(f"check.{side}.{key} = {value!r}: use a number")
        bounds[side] = {k: float(v) for k, v in table.items()}
    return CheckSpec(
        converged=_boolean(data, "converged", "check", converged_default),
        detect_within_s=_number(data, "detect_within_s", "check", 30.0, minimum=1e-6),
        suspicion_grace_s=(
            _number(data, "suspicion_grace_s", "check", 0.0)
            if "suspicion_grace_s" in data
            else None
        ),
        max=bounds["max"],
        min=bounds["min"],
    )


_TOP: Final = frozenset(
    {
        "description",
        "nodes",
        "seed",
        "duration_s",
        "core",
        "seeds",
        "join_spread_s",
        "state_nodes",
        "clock_skew_ms_max",
        "check_interval_s",
        "stop_when_settled",
        "settle_margin_s",
        "gossip",
        "network",
        "workload",
        "faults",
        "check",
        "placement",
        "mesh",
        "ledger",
    }
)


def parse_scenario(data: dict[str, Any], name: str, source: str = "") -> Scenario:
    """Build a ``Scenario`` from parsed TOML (``ScenarioError`` names any bad key)."""
    _only(data, _TOP, f"scenario {name}")
    description = data.get("description")
    if not isinstance(description, str) or not description.strip():
        raise ScenarioError(f'scenario {name} needs a one-line description = "..."')
    top = "scenario"
    state_nodes = data.get("state_nodes", "all")
    if state_nodes == "all":
        state_nodes_n: int | None = None
    elif isinstance(state_nodes, int) and not isinstance(state_nodes, bool) and state_nodes >= 1:
        state_nodes_n = state_nodes
    else:
        raise ScenarioError(
            f'state_nodes = {state_nodes!r}: use "all" or a positive number of nodes'
        )
    core = data.get("core")
    if core is not None and not isinstance(core, str):
        raise ScenarioError(f'core = {core!r}: use a core name such as "gossip" or "flood"')
    faults_raw = data.get("faults", [])
    if not isinstance(faults_raw, list) or not all(isinstance(f, dict) for f in faults_raw):
        raise ScenarioError("faults must be an array of tables: [[faults]] at_s = ... action = ...")
    faults = sorted((_fault(f, i) for i, f in enumerate(faults_raw)), key=lambda f: f.at_s)
    seed = data.get("seed", 1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ScenarioError(f"seed = {seed!r}: use an integer")
    placement = None
    if "placement" in data:
        if not isinstance(data["placement"], dict):
            raise ScenarioError("placement must be a table: [placement] policy = ...")
        try:
            placement = parse_placement(data["placement"])
        except PlacementSpecError as exc:
            raise ScenarioError(str(exc)) from None
        for fault in faults:
            if fault.action not in PLACEMENT_FAULTS:
                raise ScenarioError(
                    f"fault '{fault.describe()}': a placement scenario takes only "
                    f"{', '.join(PLACEMENT_FAULTS)} faults"
                )
    mesh = None
    if "mesh" in data:
        if not isinstance(data["mesh"], dict):
            raise ScenarioError('mesh must be a table: [mesh] cidr = "10.42.0.0/16" ...')
        if placement is not None:
            raise ScenarioError("a scenario has [placement] or [mesh], not both")
        try:
            mesh = parse_mesh(data["mesh"])
        except MeshSpecError as exc:
            raise ScenarioError(str(exc)) from None
        if faults:
            raise ScenarioError(f"fault '{faults[0].describe()}': a mesh scenario takes no faults")
    ledger = ledger_table(data, placement is not None or mesh is not None, faults, ScenarioError)
    scenario = Scenario(
        name=name,
        description=description.strip(),
        nodes=_integer(data, "nodes", top, 5, minimum=1),
        seed=seed,
        duration_s=_number(data, "duration_s", top, 30.0, minimum=1e-3),
        core=core,
        seeds=_integer(data, "seeds", top, 3),
        join_spread_s=_number(data, "join_spread_s", top, 0.0),
        state_nodes=state_nodes_n,
        clock_skew_ms_max=_number(data, "clock_skew_ms_max", top, 0.0),
        check_interval_s=_number(data, "check_interval_s", top, 0.1, minimum=1e-3),
        stop_when_settled=_boolean(data, "stop_when_settled", top, False),
        settle_margin_s=_number(data, "settle_margin_s", top, 2.0),
        gossip=_gossip(data.get("gossip", {})),
        network=_network(data.get("network", {})),
        workload=_workload(data.get("workload", {})),
        faults=tuple(faults),
        # A placement or mesh run has no gossip state to converge.
        check=_check(data.get("check", {}), converged_default=placement is None and mesh is None),
        source=source,
        placement=placement,
        mesh=mesh,
        ledger=ledger,
    )
    scenario.validate()
    return scenario


def _path_of(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ScenarioError(f"scenario file {path} does not exist")
        return path
    candidate = SCENARIO_DIR / f"{name_or_path}.toml"
    if not candidate.is_file():
        names = ", ".join(name for name, _ in list_scenarios())
        raise ScenarioError(
            f"no scenario named {name_or_path!r}; known: {names} (or give a path to a .toml file)"
        )
    return candidate


def load_scenario(name_or_path: str) -> Scenario:
    """Load a scenario by name (``simulations/scenarios/NAME.toml``) or by path."""
    path = _path_of(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    return parse_scenario(data, path.stem, str(path))


def list_scenarios() -> list[tuple[str, str]]:
    """(name, description) of every scenario shipped in ``SCENARIO_DIR``, sorted by name."""
    out: list[tuple[str, str]] = []
    for path in sorted(SCENARIO_DIR.glob("*.toml")):
        try:
            description = str(
                tomllib.loads(path.read_text(encoding="utf-8")).get("description", "")
            )
        except tomllib.TOMLDecodeError as exc:
            description = f"(invalid TOML: {exc})"
        out.append((path.stem, description.strip()))
    return out
