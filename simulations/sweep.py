"""``formation-sim sweep``: one scenario over a range of seeds, summarized per metric.

```
formation-sim sweep SCENARIO --seeds A..B [--jobs N] [--nodes N] [--duration S] [--core NAME]
                             [--json]
```

A single seed shows one draw of the randomness; a tail (one late op in forty runs) needs many.
For every numeric metric of ``formation-sim run --json`` (nested counters flattened with dots,
``messages_by_kind.Gossip``) the sweep reports min / median / p99 / max over the seeds and the
*worst* seed with its value, so the run behind a tail is one ``formation-sim run --seed`` away.
Worst means highest, except for the metrics in ``HIGHER_IS_BETTER`` (and ``converged``: a seed
that did not converge is the worst). Ties go to the lowest seed.

Seeds run in ``--jobs`` worker processes; the output does not depend on how many (results are
collected in seed order), except for the host metrics (wall time, memory), which measure the
process a run happened to share. The exit status is 0 when every check held on every seed, 1
when any failed (the failing seeds and the command that reproduces each are listed), 2 for a
bad command line or scenario.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from simulations.cores import load_core
from simulations.engine import run_scenario
from simulations.metrics import percentile
from simulations.scenario import ScenarioError, load_scenario

__all__ = ["HIGHER_IS_BETTER", "SeedRun", "parse_seeds", "summarize", "sweep"]

# Metrics where a lower value is the bad one.
HIGHER_IS_BETTER = frozenset(
    {
        "converged",
        "live_nodes",
        "speed_factor",
        "events_per_wall_s",
        "state_hashes_checked",
        # placement runs (simulations.placement)
        "placements",
        "placements_per_s",
        "placements_per_wall_s",
        "oracle_placed",
        "utilization",
        "oracle_utilization",
        # ledger runs (simulations.ledger)
        "local_decision_fraction",
        "ops_per_s",
    }
)
# A sweep of more seeds than this is a typo (and would take hours).
SEEDS_MAX = 100_000


@dataclass(frozen=True)
class SeedRun:
    """What one seed's run left for the summary (picklable, so workers can return it)."""

    seed: int
    metrics: dict[str, Any]
    failures: list[str]
    reproduce: str


def parse_seeds(text: str) -> list[int]:
    """``A..B`` (inclusive), ``A,B,C`` or a mix (``1..5,9``) -> sorted distinct seeds."""
    seeds: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if ".." in part:
                low_text, high_text = part.split("..", 1)
                low, high = int(low_text), int(high_text)
                if high < low:
                    raise ScenarioError(f"--seeds {text}: {part} is empty (write low..high)")
                if high - low + 1 > SEEDS_MAX:
                    raise ScenarioError(f"--seeds {text}: more than {SEEDS_MAX:,} seeds")
                seeds.update(range(low, high + 1))
            else:
                seeds.add(int(part))
        except ValueError:
            raise ScenarioError(
                f"--seeds {text}: use A..B, A,B,C or a mix such as 1..40,77"
            ) from None
    if len(seeds) > SEEDS_MAX:
        raise ScenarioError(f"--seeds {text}: more than {SEEDS_MAX:,} seeds")
    return sorted(seeds)


def _run_one(args: tuple[str, str, int, int | None, float | None]) -> SeedRun:
    scenario_arg, core_name, seed, nodes, duration_s = args
    scenario = load_scenario(scenario_arg).with_overrides(
        nodes=nodes, seed=seed, duration_s=duration_s, core=core_name
    )
    result = run_scenario(scenario, load_core(core_name))
    return SeedRun(seed, result.metrics, list(result.failures), result.reproduce())


def _flatten(metrics: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            yield name, float(value)
        elif isinstance(value, int | float):
            if not math.isnan(value):
                yield name, float(value)
        elif isinstance(value, dict):
            yield from _flatten(value, f"{name}.")


def _plain(value: float) -> float | int:
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def summarize(runs: Sequence[SeedRun]) -> dict[str, dict[str, Any]]:
    """Per metric: min, median, p99, max over the seeds, and the worst seed and its value.

    ``seeds`` counts the seeds that reported the metric (a metric can be null on some, e.g.
    ``heal_converge_s`` when nothing healed). Metrics keep the order of the first run's JSON.
    """
    values: dict[str, list[tuple[float, int]]] = {}
    for run in sorted(runs, key=lambda r: r.seed):
        for name, value in _flatten(run.metrics):
            values.setdefault(name, []).append((value, run.seed))
    out: dict[str, dict[str, Any]] = {}
    for name, pairs in values.items():
        ordered = sorted(v for v, _ in pairs)
        if name in HIGHER_IS_BETTER:
            worst_value, worst_seed = min(pairs, key=lambda p: (p[0], p[1]))
        else:
            worst_value, worst_seed = min(pairs, key=lambda p: (-p[0], p[1]))
        out[name] = {
            "min": _plain(ordered[0]),
            "median": _plain(percentile(ordered, 0.5)),
            "p99": _plain(percentile(ordered, 0.99)),
            "max": _plain(ordered[-1]),
            "worst": _plain(worst_value),
            "worst_seed": worst_seed,
            "seeds": len(ordered),
        }
    return out


def sweep(
    scenario_arg: str,
    seeds: Sequence[int],
    *,
    core_name: str,
    jobs: int = 1,
    nodes: int | None = None,
    duration_s: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run ``scenario_arg`` once per seed (``jobs`` processes) and summarize: one JSON object."""
    if jobs < 1:
        raise ScenarioError(f"--jobs {jobs}: use 1 or more")
    # Fail on a bad scenario or override here, once, not in every worker.
    load_scenario(scenario_arg).with_overrides(
        nodes=nodes, seed=seeds[0] if seeds else None, duration_s=duration_s, core=core_name
    )
    tasks = [(scenario_arg, core_name, seed, nodes, duration_s) for seed in seeds]
    runs: list[SeedRun] = []
    if jobs == 1 or len(tasks) <= 1:
        for task in tasks:
            runs.append(_run_one(task))
            if progress is not None:
                progress(len(runs), len(tasks))
    else:
        # spawn, not fork: a forked worker would inherit whatever threads the parent runs.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=context) as pool:
            for run in pool.map(_run_one, tasks):  # in seed order, whatever finishes first
                runs.append(run)
                if progress is not None:
                    progress(len(runs), len(tasks))
    first = runs[0].metrics if runs else {}
    failed = [run for run in runs if run.failures]
    return {
        "scenario": first.get("scenario", scenario_arg),
        "core": first.get("core", core_name),
        "nodes": first.get("nodes", nodes),
        "seeds": list(seeds),
        "runs": len(runs),
        "jobs": jobs,
        "seeds_failed": [run.seed for run in failed],
        "checks_failed": {str(run.seed): run.failures for run in failed},
        "reproduce": {str(run.seed): run.reproduce for run in failed},
        "trace_hashes": {str(run.seed): run.metrics.get("trace_hash") for run in runs},
        "metrics": summarize(runs),
    }
