"""Billing-core benchmark: ledger ops per second in node/ledger/billing.py through State.

Run: ``.venv/bin/python benchmarks/bench_ledger.py [--ops N] [--seeds N]`` (about a minute at
the defaults; signing the workload is not measured). Prints a table and writes
``benchmarks/results/ledger.json``. One core.

Measured:

* ``ingest``: billing chain ops from outside, verified (the op's ECDSA, then the embedded
  order's for a mint, transfer or hold), checked and applied, then evaluated, per second.
* ``apply``: the same ops already verified (replay from our own log), applied and evaluated
  after every op (``balance`` read each time), per second; and applied in a shuffled order
  with the evaluation once at the end (the memo catches up in one pass).
* ``decide``: ``billing.decide`` on a fresh order (the spend decision a gateway makes), per
  second, and ``balance`` reads per second.
* ``sim``: ``formation-sim run ledger`` on ``--seeds`` seeds: wall ms per seed and core ops
  applied per wall second across the 20 replicas.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from node.identity.keys import NodeKey, keccak256
from node.ledger import billing
from node.ledger.op import Op
from node.ledger.state import State
from simulations.ledger import run_ledger
from simulations.scenario import load_scenario

SEED = 42
NET = "local"
T0_MS = 1_764_000_000_000
RESULTS = Path(__file__).parent / "results" / "ledger.json"
ISSUER = NodeKey(keccak256(b"formation local issuer: a well-known dev key, never for real credits"))


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def workload(rng: random.Random, count: int) -> tuple[list[Op], list[NodeKey], list[NodeKey]]:
    """Mints, then transfers, holds with draws and releases, and grants with accepts."""
    nodes = [NodeKey(rng.randbytes(32)) for _ in range(20)]
    accounts = [NodeKey(rng.randbytes(32)) for _ in range(50)]
    seqs = [0] * len(nodes)
    ops: list[Op] = []
    clock = 0

    def chain(n: int, kind: str, **payload: Any) -> Op:
        nonlocal clock
        clock += 1
        seqs[n] += 1
        op = billing.sign_chain(nodes[n], NET, (T0_MS + clock, 0), kind, seq=seqs[n], **payload)
        ops.append(op)
        return op

    def order(key: NodeKey, kind: str, **fields: Any) -> Op:
        nonlocal clock
        clock += 1
        return billing.sign_order(key, NET, (T0_MS + clock, 0), kind, **fields)

    for n in range(len(nodes)):
        for a, account in enumerate(accounts):
            mint = order(
                ISSUER,
                "billing.order.mint",
                to=account.address,
                amount=10**9,
                idempotency_key=f"g{n}-{a}",
                node=nodes[n].address,
            )
            chain(n, "billing.mint", order=mint)
    k = 0
    while len(ops) < count:
        k += 1
        n = rng.randrange(len(nodes))
        payer = rng.choice(accounts)
        roll = rng.random()
        if roll < 0.6:
            o = order(
                payer,
                "billing.order.transfer",
                to=rng.choice([a for a in accounts if a is not payer]).address,
                amount=rng.randint(1, 1000),
                idempotency_key=f"t{k}",
                node=nodes[n].address,
            )
            chain(n, "billing.transfer", order=o)
        elif roll < 0.85:
            o = order(
                payer,
                "billing.order.hold",
                payee=rng.choice(accounts).address,
                amount=1000,
                expires_ms=T0_MS + 10**9,
                idempotency_key=f"h{k}",
                node=nodes[n].address,
            )
            chain(n, "billing.hold", order=o)
            chain(n, "billing.draw", hold=o.id.hex(), amount=rng.randint(1, 500))
            chain(n, "billing.release", hold=o.id.hex())
        else:
            m = (n + rng.randint(1, len(nodes) - 1)) % len(nodes)
            chain(n, "billing.grant", account=payer.address, amount=100, to_node=nodes[m].address)
            chain(m, "billing.accept", from_node=nodes[n].address, from_seq=seqs[n])
    return ops[:count], nodes, accounts


def bench_core(ops: list[Op], rng: random.Random) -> dict[str, Any]:
    state = State(NET)
    started = time.perf_counter()
    for op in ops:
        state.ingest(op.body, op.sig)
    billing.totals(state)
    ingest_s = time.perf_counter() - started
    reference = billing.totals(state)
    assert reference["minted"] == reference["available"] + reference["held"]

    checked = [(op, State.check_op(op)) for op in ops]
    account = json.loads(ops[0].payload["order"]["body"])["payload"]["to"]
    replay = State(NET)
    started = time.perf_counter()
    for op, payload in checked:
        replay.apply(op, payload)
        billing.balance(replay, account)
    apply_s = time.perf_counter() - started
    assert billing.totals(replay) == reference

    shuffled = checked[:]
    rng.shuffle(shuffled)
    late = State(NET)
    started = time.perf_counter()
    for op, payload in shuffled:
        late.apply(op, payload)
    billing.totals(late)
    shuffled_s = time.perf_counter() - started
    assert billing.totals(late) == reference
    return {
        "ops": len(ops),
        "ingest_ops_per_s": round(rate(len(ops), ingest_s)),
        "apply_evaluate_each_ops_per_s": round(rate(len(ops), apply_s)),
        "apply_shuffled_evaluate_once_ops_per_s": round(rate(len(ops), shuffled_s)),
        "state": replay,
        "account": account,
    }


def bench_decide(state: State, node: NodeKey, payer: NodeKey) -> dict[str, Any]:
    node_id = node.address
    orders = [
        billing.sign_order(
            payer,
            NET,
            (T0_MS, i),
            "billing.order.transfer",
            to=ISSUER.address,
            amount=1,
            idempotency_key=f"d{i}",
            node=node_id,
        )
        for i in range(2000)
    ]
    started = time.perf_counter()
    actions = [billing.decide(state, node_id, o).action for o in orders]
    decide_s = time.perf_counter() - started
    assert set(actions) == {"execute"}
    started = time.perf_counter()
    for _ in range(20_000):
        billing.balance(state, ISSUER.address)
    balance_s = time.perf_counter() - started
    return {
        "decide_per_s": round(rate(len(orders), decide_s)),
        "balance_reads_per_s": round(rate(20_000, balance_s)),
    }


def bench_sim(seeds: int) -> dict[str, Any]:
    scenario = load_scenario("ledger")
    run_ledger(scenario)  # warm: imports, the issuer keystore
    walls, applied, violations = [], 0, 0
    for seed in range(1, seeds + 1):
        m = run_ledger(replace(scenario, seed=seed)).metrics
        walls.append(m["wall_s"])
        applied += m["ops_applied"]
        violations += m["invariant_violations"]
    total = sum(walls)
    return {
        "seeds": seeds,
        "nodes": scenario.nodes,
        "wall_ms_per_seed_mean": round(1000 * total / seeds, 1),
        "wall_ms_per_seed_max": round(1000 * max(walls), 1),
        "ops_applied_per_s": round(rate(applied, total)),
        "invariant_violations": violations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=20_000, help="billing ops in the core runs")
    parser.add_argument("--seeds", type=int, default=50, help="ledger scenario seeds")
    args = parser.parse_args()
    rng = random.Random(SEED)
    print("billing core benchmark (one core)")
    print(f"  signing {args.ops:,} billing ops (not measured) ...", flush=True)
    ops, nodes, accounts = workload(random.Random(rng.random()), args.ops)
    core = bench_core(ops, rng)
    state = core.pop("state")
    core.pop("account")
    print(f"  ingest (verify op + order, check, apply)  {core['ingest_ops_per_s']:>9,} ops/s")
    print(
        f"  apply + evaluate after each op            {core['apply_evaluate_each_ops_per_s']:>9,} ops/s"
    )
    print(
        f"  apply shuffled, evaluate once             {core['apply_shuffled_evaluate_once_ops_per_s']:>9,} ops/s"
    )
    decide = bench_decide(state, nodes[0], accounts[0])
    print(f"  decide (a spend at a node)                {decide['decide_per_s']:>9,} /s")
    print(f"  balance reads                             {decide['balance_reads_per_s']:>9,} /s")
    sim = bench_sim(args.seeds)
    print(
        f"  sim ledger x {sim['seeds']} seeds ({sim['nodes']} nodes): {sim['wall_ms_per_seed_mean']} ms/seed"
        f" (max {sim['wall_ms_per_seed_max']}), {sim['ops_applied_per_s']:,} ops applied/s,"
        f" {sim['invariant_violations']} violations"
    )
    result = {
        "benchmark": "ledger",
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "seed": SEED,
        "core": core,
        "decide": decide,
        "sim": sim,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
