"""``formation-sim``: run deterministic gossip simulations from scenario files.

```
formation-sim list
formation-sim run SCENARIO [--nodes N] [--seed S] [--duration S] [--core NAME]
                           [--json] [--plot FILE.png] [--trace FILE]
formation-sim run ledger --seeds N [--nodes N] [--json]
formation-sim sweep SCENARIO --seeds A..B [--jobs N] [--nodes N] [--duration S] [--core NAME]
                             [--json]
```

SCENARIO is a name from ``simulations/scenarios`` (see ``list``) or a path to a .toml file.
The exit status is 0 when every check of the scenario holds, 1 when one fails (with the
command that reproduces the run), 2 for a bad command line or scenario. ``sweep`` runs one
scenario over many seeds and reports every metric's distribution and worst seed
(``simulations.sweep``); it exits 1 when a check failed on any seed. ``run --seeds N`` runs a
ledger scenario on seeds 1..N and sums them into one report (``simulations.ledger``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from simulations.cores import CORE_NAMES, CoreError, default_core_name, load_core
from simulations.engine import RunResult, SimError, run_scenario
from simulations.scenario import ScenarioError, list_scenarios, load_scenario
from simulations.sweep import parse_seeds, sweep

__all__ = ["main"]

_EXIT_CHECK_FAILED = 1
_EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="formation-sim",
        description="Deterministic simulation of formation-node's gossip on many virtual nodes.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the shipped scenarios")
    run = sub.add_parser("run", help="run one scenario")
    run.add_argument("scenario", help="a scenario name (see `formation-sim list`) or a .toml path")
    run.add_argument("--nodes", type=int, help="initial node count (overrides the scenario)")
    run.add_argument("--seed", type=int, help="random seed (overrides the scenario)")
    run.add_argument("--duration", type=float, metavar="S", help="virtual seconds to simulate")
    run.add_argument(
        "--core", choices=CORE_NAMES, help="gossip core (default: gossip if it imports)"
    )
    run.add_argument("--json", action="store_true", help="print one JSON object, nothing else")
    run.add_argument(
        "--plot", metavar="FILE.png", help="draw the propagation CDF (needs matplotlib)"
    )
    run.add_argument("--trace", metavar="FILE", help="write the event trace (one line per event)")
    run.add_argument(
        "--seeds",
        type=int,
        metavar="N",
        help="a ledger scenario: run seeds 1..N, one summed report",
    )
    sw = sub.add_parser(
        "sweep", help="run one scenario over many seeds: each metric's spread and worst seed"
    )
    sw.add_argument("scenario", help="a scenario name (see `formation-sim list`) or a .toml path")
    sw.add_argument(
        "--seeds", required=True, metavar="A..B", help="seeds: A..B (inclusive), A,B,C or a mix"
    )
    sw.add_argument("--jobs", type=int, default=1, metavar="N", help="worker processes (default 1)")
    sw.add_argument("--nodes", type=int, help="initial node count (overrides the scenario)")
    sw.add_argument("--duration", type=float, metavar="S", help="virtual seconds to simulate")
    sw.add_argument(
        "--core", choices=CORE_NAMES, help="gossip core (default: gossip if it imports)"
    )
    sw.add_argument("--json", action="store_true", help="print one JSON object, nothing else")
    return parser


class _Progress:
    """A one-line progress bar on stderr, redrawn at most 10 times a second."""

    def __init__(self, stream: IO[str], label: str) -> None:
        self.stream = stream
        self.label = label
        self.started = time.perf_counter()
        self.drawn_at = 0.0

    def __call__(self, sim_s: float, duration_s: float) -> None:
        now = time.perf_counter()
        if now - self.drawn_at < 0.1:
            return
        self.drawn_at = now
        done = min(1.0, sim_s / duration_s) if duration_s > 0 else 1.0
        width = 30
        bar = "#" * int(done * width) + "-" * (width - int(done * width))
        wall = now - self.started
        speed = sim_s / wall if wall > 0 else 0.0
        self.stream.write(
            f"\r{self.label} [{bar}] {sim_s:7.1f}/{duration_s:g} s sim  {wall:6.1f} s wall  {speed:6.1f}x"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.drawn_at:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()


def _fmt(value: Any, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        text = f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.1f}"
    elif isinstance(value, int):
        text = f"{value:,}"
    else:
        text = str(value)
    return f"{text} {unit}".rstrip()


def _placement_table(result: RunResult) -> str:
    m = result.metrics
    rows = [
        ("scenario", f"{m['scenario']} ({result.scenario.description})"),
        ("hosts", f"{_fmt(m['nodes'])} ({_fmt(m['live_nodes'])} live at the end)"),
        ("seed", str(m["seed"])),
        ("policy", f"{m['policy']}, power of {m['choices']} choices"),
        ("network", m["network"]),
        (
            "requests",
            f"{_fmt(m['requests'])} at {_fmt(m['arrivals_per_s'])}/s "
            f"(offered load {_fmt(m['offered_load'])})",
        ),
        (
            "placed",
            f"{_fmt(m['placements'])} ({_fmt(m['placements_per_s'])}/s virtual, "
            f"{_fmt(m['placements_per_wall_s'])}/s wall), {_fmt(m['unplaceable'])} failed, "
            f"{_fmt(m['unresolved'])} unresolved",
        ),
        (
            "oracle",
            f"placed {_fmt(m['oracle_placed'])}: gap {_fmt(m['oracle_gap'])}; utilization "
            f"{_fmt(m['utilization'])} vs {_fmt(m['oracle_utilization'])}",
        ),
        ("double bookings", _fmt(m["double_bookings"])),
        (
            "asks",
            f"{_fmt(m['asks_per_placement'])} per placement: {_fmt(m['refusals'])} refusals, "
            f"{_fmt(m['retries'])} retries, {_fmt(m['timeouts'])} timeouts",
        ),
        (
            "time to place",
            f"p50 {_fmt(m['p50_place_ms'])} / p99 {_fmt(m['p99_place_ms'])} / max "
            f"{_fmt(m['max_place_ms'])} ms",
        ),
        (
            "host deaths",
            f"{_fmt(m['crashes'])} crashes, {_fmt(m['restarts'])} restarts, "
            f"{_fmt(m['rescheduled'])} rescheduled ({_fmt(m['reschedule_failed'])} failed)",
        ),
        ("simulated", f"{_fmt(m['sim_s'], 's')} in {_fmt(m['wall_s'], 's')} wall"),
    ]
    width = max(len(label) for label, _ in rows)
    lines = ["PLACEMENT", *(f"  {label:<{width}}  {value}" for label, value in rows)]
    lines.append(f"trace_hash {m['trace_hash']}")
    return "\n".join(lines)


def _mesh_table(result: RunResult) -> str:
    m = result.metrics
    rows = [
        ("scenario", f"{m['scenario']} ({result.scenario.description})"),
        ("nodes", f"{_fmt(m['nodes'])} in {m['cidr']} ({_fmt(m['usable_addresses'])} usable)"),
        ("seed", str(m["seed"])),
        (
            "claims",
            f"{_fmt(m['claims'])}: {_fmt(m['first_claim_collisions'])} first-claim collisions, "
            f"{_fmt(m['reclaims'])} reclaims",
        ),
        (
            "after convergence",
            f"{_fmt(m['duplicate_addresses'])} duplicate addresses, {_fmt(m['lost_at_end'])} "
            f"lost unnoticed, {_fmt(m['unclaimed'])} unclaimed",
        ),
        (
            "time to stable",
            f"p50 {_fmt(m['time_to_stable_ms_p50'])} / p99 {_fmt(m['time_to_stable_ms_p99'])} / "
            f"max {_fmt(m['time_to_stable_ms'])} ms",
        ),
        ("simulated", f"{_fmt(m['events'])} events in {_fmt(m['wall_s'], 's')} wall"),
    ]
    if "ledger_mismatches" in m:
        rows.append(("ledger check", f"{_fmt(m['ledger_mismatches'])} mismatches"))
    width = max(len(label) for label, _ in rows)
    lines = ["MESH", *(f"  {label:<{width}}  {value}" for label, value in rows)]
    lines.append(f"trace_hash {m['trace_hash']}")
    return "\n".join(lines)


def _ledger_table(m: dict[str, Any], description: str) -> str:
    seeds = f"{m['seeds']} seeds" if "seeds" in m and "seed" not in m else f"seed {m['seed']}"
    violations = m["invariant_violations"]
    count = len(violations) if isinstance(violations, list) else violations
    rows = [
        ("scenario", f"{m['scenario']} ({description})"),
        ("nodes", f"{_fmt(m['nodes'])}, {seeds}"),
        ("invariant violations", _fmt(count)),
        (
            "spend decisions",
            f"{_fmt(m['decisions'])}: {m['local_decision_fraction']:.4f} local, "
            f"{_fmt(m['refused_spends'])} refused",
        ),
        (
            "no effect",
            f"{_fmt(m['duplicates_noop'])} duplicate submits, {_fmt(m['wrong_node_refused'])} "
            "sent to a node the order does not name",
        ),
        ("core", f"{_fmt(m['ops_applied'])} ops applied, {_fmt(m['ops_per_s'])} ops/s wall"),
    ]
    width = max(len(label) for label, _ in rows)
    lines = ["LEDGER", *(f"  {label:<{width}}  {value}" for label, value in rows)]
    if "trace_hash" in m:
        lines.append(f"trace_hash {m['trace_hash']}")
    return "\n".join(lines)


def _run_ledger_seeds(args: argparse.Namespace) -> int:
    from simulations.ledger import run_ledger_seeds

    scenario = load_scenario(args.scenario)
    if scenario.ledger is None:
        raise ScenarioError(
            f"--seeds {args.seeds}: run --seeds is for ledger scenarios; for {scenario.name} use "
            f"formation-sim sweep {args.scenario} --seeds 1..{args.seeds}"
        )
    if args.seeds < 1:
        raise ScenarioError(f"--seeds {args.seeds}: use 1 or more")
    scenario = scenario.with_overrides(nodes=args.nodes, duration_s=args.duration)
    report = run_ledger_seeds(scenario, range(1, args.seeds + 1))
    if args.json:
        print(json.dumps(report))
    else:
        print(_ledger_table(report, scenario.description))
    if report["invariant_violations"] or report["checks_failed"]:
        out = sys.stderr if args.json else sys.stdout
        for seed, failures in report["checks_failed"].items():
            for failure in failures:
                print(f"CHECK FAILED (seed {seed}): {failure}", file=out)
        for v in report["invariant_violations"][:20]:
            print(
                f"VIOLATION {v['invariant']} (seed {v['seed']}): {v['detail']}; reproduce with: "
                f"formation-sim run {args.scenario} --seed {v['seed']}",
                file=out,
            )
        return _EXIT_CHECK_FAILED
    return 0


def _table(result: RunResult) -> str:
    m = result.metrics
    if m.get("kind") == "ledger":
        return _ledger_table(m, result.scenario.description)
    if m.get("kind") == "placement":
        return _placement_table(result)
    if m.get("kind") == "mesh":
        return _mesh_table(result)
    mib = 1024 * 1024
    rows: list[tuple[str, list[tuple[str, str]]]] = [
        (
            "run",
            [
                ("scenario", f"{m['scenario']} ({result.scenario.description})"),
                ("core", m["core"]),
                ("nodes", f"{_fmt(m['nodes'])} ({_fmt(m['live_nodes'])} live at the end)"),
                ("seed", str(m["seed"])),
                ("network", m["network"]),
                (
                    "simulated",
                    f"{_fmt(m['sim_s'], 's')} in {_fmt(m['wall_s'], 's')} wall "
                    f"({_fmt(m['speed_factor'])}x real time, {_fmt(m['events'])} events)",
                ),
            ],
        ),
        (
            "propagation",
            [
                ("ops written", _fmt(m["ops"])),
                (
                    "p50 / p99 / max",
                    f"{_fmt(m['propagation_ms_p50'])} / {_fmt(m['propagation_ms_p99'])} / "
                    f"{_fmt(m['propagation_ms_max'])} ms",
                ),
                (
                    "to 99% of nodes",
                    f"p50 {_fmt(m['time_to_99pct_ms_p50'])} ms, max "
                    f"{_fmt(m['time_to_99pct_ms_max'])} ms ({_fmt(m['ops_not_reaching_99pct'])} ops never)",
                ),
            ],
        ),
        (
            "traffic",
            [
                (
                    "messages",
                    f"{_fmt(m['msgs'])} ({_fmt(m['msgs_per_op'])} per op, "
                    f"{_fmt(m['msgs_per_op_maelstrom'])} Maelstrom-style, "
                    f"{_fmt(m['msgs_per_node_per_s'])} per node per s)",
                ),
                (
                    "bytes",
                    f"{_fmt(m['bytes'] / mib)} MiB ({_fmt(m['bytes_per_op'])} per op, "
                    f"{_fmt(m['bytes_per_node_per_s'])} per node per s)",
                ),
                ("payload copies", f"{_fmt(m['payload_copies_per_op'])} per op"),
                (
                    "by kind",
                    ", ".join(f"{k} {v:,}" for k, v in m["messages_by_kind"].items()) or "-",
                ),
                ("dropped", ", ".join(f"{k} {v:,}" for k, v in m["dropped"].items())),
            ],
        ),
        (
            "convergence",
            [
                (
                    "converged",
                    f"{_fmt(m['converged'])} ({m['digest_roots_distinct']} digest roots, "
                    f"{m['state_hashes_distinct']} state hashes over {m['state_hashes_checked']} states)",
                ),
                ("after heal", _fmt(m["heal_converge_s"], "s")),
                ("settled", f"{_fmt(m['settle_s'], 's')} after the last op or fault"),
                ("ops lost", _fmt(m["ops_lost"])),
            ],
        ),
        (
            "membership",
            [
                ("notifications", ", ".join(f"{k} {v:,}" for k, v in m["notifies"].items()) or "-"),
                ("false suspicions", _fmt(m["false_suspicions"])),
                (
                    "crashes",
                    f"{_fmt(m['crashes'])} ({_fmt(m['crashes_undetected'])} undetected; first "
                    f"dead report <= {_fmt(m['dead_detect_s_first_max'], 's')}, all <= "
                    f"{_fmt(m['dead_detect_s_all_max'], 's')})",
                ),
            ],
        ),
        (
            "memory",
            [("per node", f"{_fmt(m['memory_per_node_bytes'] / 1024)} KiB (RSS growth / nodes)")],
        ),
    ]
    width = max(len(label) for _, items in rows for label, _ in items)
    lines = []
    for section, items in rows:
        lines.append(section.upper())
        lines.extend(f"  {label:<{width}}  {value}" for label, value in items)
    lines.append(f"trace_hash {m['trace_hash']}")
    return "\n".join(lines)


def _plot(result: RunResult, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [x for x, _ in result.cdf]
    ys = [y for _, y in result.cdf]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(xs, ys, drawstyle="steps-post")
    m = result.metrics
    ax.set_xlabel("propagation delay (ms)")
    ax.set_ylabel("fraction of (op, node) arrivals")
    ax.set_title(f"{m['scenario']}: {m['nodes']} nodes, core {m['core']}, seed {m['seed']}")
    if xs and xs[0] > 0 and xs[-1] / xs[0] > 100:
        ax.set_xscale("log")  # partitions and restarts stretch the tail over decades
    ax.grid(True, alpha=0.3)
    ax.set_ylim(0, 1.01)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _run(args: argparse.Namespace) -> int:
    if args.seeds is not None:
        return _run_ledger_seeds(args)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "--plot needs matplotlib, an optional extra: pip install 'formation-node[plot]'",
                file=sys.stderr,
            )
            return _EXIT_USAGE
    scenario = load_scenario(args.scenario)
    core_name = args.core or scenario.core
    if core_name is None:
        core_name, why = default_core_name()
        if why and not args.json:
            print(f"note: {why}", file=sys.stderr)
    core = load_core(core_name)
    scenario = scenario.with_overrides(
        nodes=args.nodes, seed=args.seed, duration_s=args.duration, core=core_name
    )
    show_progress = not args.json and sys.stderr.isatty()
    progress = _Progress(sys.stderr, scenario.name) if show_progress else None
    trace = open(args.trace, "w", encoding="utf-8") if args.trace else None  # noqa: SIM115
    try:
        result = run_scenario(scenario, core, trace=trace, progress=progress)
    finally:
        if progress is not None:
            progress.close()
        if trace is not None:
            trace.close()
    if args.json:
        print(json.dumps({**result.metrics, "checks_failed": result.failures}, sort_keys=False))
    else:
        print(_table(result))
    if args.plot:
        _plot(result, args.plot)
        if not args.json:
            print(f"propagation CDF written to {args.plot}")
    if result.failures:
        out = sys.stderr if args.json else sys.stdout
        for failure in result.failures:
            print(f"CHECK FAILED: {failure}", file=out)
        print(f"reproduce with: {result.reproduce()}", file=out)
        return _EXIT_CHECK_FAILED
    return 0


# The sweep table: the metrics worth a glance; --json has every one.
_SWEEP_TABLE = (
    "converged",
    "propagation_ms_p50",
    "propagation_ms_p99",
    "propagation_ms_max",
    "time_to_99pct_ms_max",
    "ops_not_reaching_99pct",
    "msgs_per_op",
    "msgs_per_op_maelstrom",
    "bytes_per_op",
    "ops_lost",
    "digest_roots_distinct",
    "state_hashes_distinct",
    "false_suspicions",
    "heal_converge_s",
    "dead_detect_s_all_max",
    "wall_s",
)


# ... and for a placement scenario.
_SWEEP_TABLE_PLACEMENT = (
    "placements_per_s",
    "double_bookings",
    "oracle_gap",
    "unplaceable",
    "refusals",
    "retries",
    "timeouts",
    "rescheduled",
    "p50_place_ms",
    "p99_place_ms",
    "utilization",
    "placements_per_wall_s",
    "wall_s",
)


# ... and for a mesh scenario.
# ... and for a ledger scenario (``run ledger --seeds N`` sums them instead).
_SWEEP_TABLE_LEDGER = (
    "invariant_violations",
    "local_decision_fraction",
    "refused_spends",
    "decisions",
    "asks_sent",
    "grants",
    "ops_per_s",
    "wall_s",
)


_SWEEP_TABLE_MESH = (
    "duplicate_addresses",
    "lost_at_end",
    "first_claim_collisions",
    "reclaims",
    "time_to_stable_ms_p50",
    "time_to_stable_ms_p99",
    "time_to_stable_ms",
    "wall_s",
)


def _sweep_table(report: dict[str, Any]) -> str:
    seeds = report["seeds"]
    span = f"{seeds[0]}..{seeds[-1]}" if seeds else "-"
    lines = [
        f"{report['scenario']}: {report['runs']} seeds ({span}), core {report['core']}, "
        f"{report['nodes']} nodes",
        f"  {'metric':<24} {'min':>10} {'median':>10} {'p99':>10} {'max':>10}  worst seed",
    ]
    placement = "placements_per_s" in report["metrics"]
    names: tuple[str, ...] = _SWEEP_TABLE_PLACEMENT if placement else _SWEEP_TABLE
    if "duplicate_addresses" in report["metrics"]:
        names = _SWEEP_TABLE_MESH
    if "local_decision_fraction" in report["metrics"]:
        names = _SWEEP_TABLE_LEDGER
    for name in names:
        row = report["metrics"].get(name)
        if row is None:
            continue
        cells = " ".join(f"{_fmt(row[k]):>10}" for k in ("min", "median", "p99", "max"))
        lines.append(f"  {name:<24} {cells}  {row['worst_seed']} ({_fmt(row['worst'])})")
    failed = report["seeds_failed"]
    lines.append(f"checks failed on {len(failed)} seed(s)" + (f": {failed}" if failed else ""))
    return "\n".join(lines)


def _sweep(args: argparse.Namespace) -> int:
    seeds = parse_seeds(args.seeds)
    core_name = args.core or load_scenario(args.scenario).core
    if core_name is None:
        core_name, why = default_core_name()
        if why and not args.json:
            print(f"note: {why}", file=sys.stderr)
    load_core(core_name)
    progress = None
    if not args.json and sys.stderr.isatty():

        def progress(done: int, total: int) -> None:
            sys.stderr.write(f"\r{args.scenario}: {done}/{total} seeds")
            sys.stderr.flush()

    report = sweep(
        args.scenario,
        seeds,
        core_name=core_name,
        jobs=args.jobs,
        nodes=args.nodes,
        duration_s=args.duration,
        progress=progress,
    )
    if progress is not None:
        sys.stderr.write("\r" + " " * 60 + "\r")
    if args.json:
        print(json.dumps(report))
    else:
        print(_sweep_table(report))
    if report["seeds_failed"]:
        out = sys.stderr if args.json else sys.stdout
        for seed, failures in report["checks_failed"].items():
            for failure in failures:
                print(f"CHECK FAILED (seed {seed}): {failure}", file=out)
            print(f"reproduce with: {report['reproduce'][seed]}", file=out)
        return _EXIT_CHECK_FAILED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        scenarios = list_scenarios()
        width = max((len(name) for name, _ in scenarios), default=0)
        for name, description in scenarios:
            print(f"{name:<{width}}  {description}")
        return 0
    try:
        return _sweep(args) if args.command == "sweep" else _run(args)
    except (ScenarioError, CoreError) as exc:
        print(f"formation-sim: {exc}", file=sys.stderr)
        return _EXIT_USAGE
    except SimError as exc:
        print(f"formation-sim: simulation error: {exc}", file=sys.stderr)
        return _EXIT_CHECK_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
