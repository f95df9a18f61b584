"""Ledger ops per second through the gateway of one real node, beside the billing core's.

Run: ``.venv/bin/python benchmarks/bench_ledger_gateway.py [--clients 1 8] [--ops 600]``.
Starts one ``formation-node run`` process on the local network (``node.devnet.LocalFog``,
``--heartbeat-s 0``) and, for each number of concurrent clients (threads, one keep-alive
``httpx.Client`` each), sends ``--ops`` signed requests of each kind:

* ``mint``: ``POST /v1/billing/credits/mint`` signed by the well-known local issuer
  (``bootstrap/local/issuer-keystore.json``), a fresh idempotency key each;
* ``transfer``: ``POST /v1/billing/credits/transfer`` of 1 credit from one of the clients'
  payers (each client its own, minted to beforehand on this node, so every spend is decided
  locally) to a recipient, a fresh key each.

Each becomes one chain op signed by the node, verified, stored with fsync and applied before
the answer (the node's chain is written one op at a time: see docs/decisions.md D22).
Signing happens before the clock starts. ``service``: the same transfers handed straight to
``CreditsService.carry_out`` in this process (a replica with fsync, no HTTP, no client
threads), by 1 and 8 concurrent tasks, with the chain ops stored per commit. Beside them, in
this process and on one core: the
core's ``billing.decide`` per second on the same replica shape, and chain ops ingested per
second (``State.ingest``: the op's and the embedded order's signatures, the check, the apply
and the evaluation), which is what every other replica spends on each movement.

Prints a table; writes ``benchmarks/results/ledger_gateway.json``. Loopback only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from node.client.api import GatewayClient
from node.client.signer import sign_request
from node.credits.service import CreditsService
from node.devnet import LocalFog, process_usage
from node.identity.keys import NodeKey
from node.identity.keystore import read_keystore
from node.ledger import billing
from node.ledger.op import Op, decode_op
from node.ledger.request_op import request_op_body
from node.ledger.state import State
from node.replica import Replica

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "ledger_gateway.json"
ISSUER = read_keystore(ROOT / "bootstrap/local/issuer-keystore.json", "local")
NET = "local"
WARMUP = 10  # per client, before the clock starts
TIMEOUT_S = 30.0
_NONCES = itertools.count()


def _key(i: int) -> NodeKey:
    return NodeKey((i + 1).to_bytes(32, "big"))


def _prepared(
    url: str, node: str, signer: NodeKey, route: str, to: str, amount: int, key: str
) -> tuple[str, bytes, dict[str, str]]:
    body = json.dumps(
        {"to": to, "amount": amount, "idempotency_key": key, "node": node}, separators=(",", ":")
    ).encode()
    headers = sign_request(signer, "POST", route, body, int(time.time()), f"lg{next(_NONCES):014d}")
    headers["Content-Type"] = "application/json"
    return url + route, body, headers


def _client(
    requests: list[tuple[str, bytes, dict[str, str]]],
    barrier: threading.Barrier,
    latencies_s: list[float],
    errors: list[str],
) -> None:
    with httpx.Client(timeout=TIMEOUT_S, trust_env=False) as http:
        for url, body, headers in requests[:WARMUP]:
            http.post(url, content=body, headers=headers).raise_for_status()
        barrier.wait()
        for url, body, headers in requests[WARMUP:]:
            started = time.perf_counter()
            response = http.post(url, content=body, headers=headers)
            latencies_s.append(time.perf_counter() - started)
            if response.status_code != 200 or response.json().get("replayed"):
                errors.append(f"{response.status_code} {response.text[:200]}")


def bench_gateway(
    url: str, pid: int, node: str, kind: str, clients: int, count: int, round_: int
) -> dict[str, Any]:
    route = f"/v1/billing/credits/{kind}"
    per_client = [count // clients + (c < count % clients) for c in range(clients)]
    work = []
    for c, share in enumerate(per_client):
        signer = ISSUER if kind == "mint" else _key(c)
        work.append(
            [
                _prepared(
                    url, node, signer, route, _key(1000 + c).address, 1, f"{kind}-{round_}-{c}-{i}"
                )
                for i in range(share + WARMUP)
            ]
        )
    latencies_s: list[float] = []
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)
    threads = [
        threading.Thread(target=_client, args=(w, barrier, latencies_s, errors), daemon=True)
        for w in work
    ]
    for thread in threads:
        thread.start()
    barrier.wait()
    cpu_before = process_usage(pid)[0]
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall_s = time.perf_counter() - started
    cpu_s = process_usage(pid)[0] - cpu_before
    assert not errors, f"{kind} x {clients}: {len(errors)} failed, e.g. {errors[0]}"
    assert len(latencies_s) == count
    ms = sorted(1000 * s for s in latencies_s)
    return {
        "layer": "gateway",
        "kind": kind,
        "clients": clients,
        "ops": count,
        "ops_per_s": round(count / wall_s, 1),
        "latency_ms_p50": round(ms[len(ms) // 2], 3),
        "latency_ms_p99": round(ms[int(len(ms) * 0.99)], 3),
        "server_cpu_ms_per_op": round(1000 * cpu_s / count, 3),
    }


def bench_core(count: int) -> list[dict[str, Any]]:
    """``decide`` and ``State.ingest`` of mint and transfer chain ops, in this process."""
    node = _key(500)
    payer, payee = _key(501), _key(502)
    chain: list[Op] = []
    for seq in range(1, 2 * count + 2):
        if seq == 1 or seq % 2 == 0:
            order = billing.sign_order(
                ISSUER,
                NET,
                (seq, 0),
                "billing.order.mint",
                to=payer.address,
                amount=10,
                idempotency_key=f"m{seq}",
                node=node.address,
            )
            kind = "billing.mint"
        else:
            order = billing.sign_order(
                payer,
                NET,
                (seq, 0),
                "billing.order.transfer",
                to=payee.address,
                amount=1,
                idempotency_key=f"t{seq}",
                node=node.address,
            )
            kind = "billing.transfer"
        chain.append(billing.sign_chain(node, NET, (seq, 1), kind, seq=seq, order=order))
    state = State(NET)
    started = time.perf_counter()
    for op in chain:
        state.ingest(op.body, op.sig)
        billing.balance(state, payer.address)
    ingest_s = time.perf_counter() - started
    assert billing.balance(state, payee.address)["available"] == count
    orders = [
        billing.sign_order(
            payer,
            NET,
            (10**6 + i, 0),
            "billing.order.transfer",
            to=payee.address,
            amount=1,
            idempotency_key=f"d{i}",
            node=node.address,
        )
        for i in range(count)
    ]
    started = time.perf_counter()
    for order in orders:
        assert billing.decide(state, node.address, order).action == "execute"
    decide_s = time.perf_counter() - started
    return [
        {"layer": "core", "kind": "ingest (mint + transfer)", "ops": len(chain),
         "ops_per_s": round(len(chain) / ingest_s, 1)},
        {"layer": "core", "kind": "decide (transfer)", "ops": count,
         "ops_per_s": round(count / decide_s, 1)},
    ]  # fmt: skip


class _LocalHost:
    """One node's replica (fsync and all) as the credits service's host, without a network."""

    def __init__(self, key: NodeKey, replica: Replica) -> None:
        self.key, self.replica, self.network = key, replica, NET

    @property
    def address(self) -> str:
        return self.key.address

    def read(self, fn: Any) -> Any:
        with self.replica.lock:
            return fn(self.replica.state)

    def sign(self, kind: str, payload: dict[str, Any]) -> Op:
        return self.replica.sign(self.key, kind, payload, int(time.time() * 1000))

    async def store(self, ops: list[Op]) -> None:
        checked = [(op, State.check_op(op)) for op in ops]
        now_ms = int(time.time() * 1000)
        result = await trio.to_thread.run_sync(self.replica.submit_checked, checked, now_ms)
        assert len(result.accepted) == len(ops)

    async def ingest(self, ops: list[tuple[bytes, bytes]]) -> None:
        raise AssertionError("one node: nothing to ingest")

    async def get_wire(self, op_ids: list[bytes]) -> list[tuple[bytes, bytes]]:
        return self.replica.get_wire(op_ids)

    async def ask(self, peer: str, account: str, amount: int, have: int) -> None:
        raise AssertionError("one node: nobody to ask")


def bench_service(tasks: int, count: int) -> dict[str, Any]:
    """``CreditsService.carry_out`` of signed transfers (v: 2 orders, as the gateway makes
    them) by ``tasks`` concurrent tasks, in this process: the node's work without HTTP."""
    node, payer, payee = _key(600), _key(601), _key(602)
    orders = []
    for i in range(count + 1):
        kind = "mint" if i == 0 else "transfer"
        route = f"/v1/billing/credits/{kind}"
        signer = ISSUER if i == 0 else payer
        to = payer.address if i == 0 else payee.address
        _, body, headers = _prepared(
            "", node.address, signer, route, to, 10**6 if i == 0 else 1, f"s{i}"
        )
        line = headers["X-Message"]
        t, nonce = int(line.split(":")[-2]), line.split(":")[-1]
        op_body = request_op_body(
            net=NET, author=signer.address, method="POST", path=route,
            body_text=body.decode(), timestamp_s=t, nonce=nonce,
        )  # fmt: skip
        orders.append(decode_op(op_body, bytes.fromhex(headers["X-Signature"][2:]), NET))

    async def run() -> float:
        with tempfile.TemporaryDirectory(prefix="bench-credits-") as tmp:
            replica = Replica.open(Path(tmp), NET)
            service = CreditsService(_LocalHost(node, replica))
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(service.run)
                    await service.carry_out(orders[0])
                    todo = iter(orders[1:])

                    async def worker() -> None:
                        for order in todo:
                            await service.carry_out(order)

                    started = time.perf_counter()
                    async with trio.open_nursery() as workers:
                        for _ in range(tasks):
                            workers.start_soon(worker)
                    wall_s = time.perf_counter() - started
                    assert billing.balance(replica.state, payee.address)["available"] == count
                    nursery.cancel_scope.cancel()
                commits = service.stats.commits
            finally:
                replica.close()
        rows_extra["commits"] = commits
        return wall_s

    rows_extra: dict[str, Any] = {}
    wall_s = trio.run(run)
    return {
        "layer": "service",
        "kind": "transfer",
        "clients": tasks,
        "ops": count,
        "ops_per_s": round(count / wall_s, 1),
        "ops_per_commit": round((count + 1) / rows_extra["commits"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--ops", type=int, default=600, help="requests per kind and setting")
    args = parser.parse_args()
    assert all(c >= 1 for c in args.clients) and args.ops >= max(args.clients)

    rows = bench_core(args.ops)
    for clients in args.clients:
        print(f"service transfer x {args.ops} with {clients} tasks ...", flush=True)
        rows.append(bench_service(clients, args.ops))
    with tempfile.TemporaryDirectory(prefix="bench-ledger-gw-") as tmp:
        fog = LocalFog(Path(tmp), extra_args=("--heartbeat-s", "0"))
        try:
            fog.start(0)
            status = fog.status(0)
            assert status is not None and status["gateway"] and status["network"] == NET
            url, pid = status["gateway"], fog.procs[0].pid
            with GatewayClient(url, ISSUER) as issuer:
                node = issuer.node_address()
                for c in range(max(args.clients)):  # each payer can pay every transfer
                    issuer.credits_mint(_key(c).address, 10**9, f"fund-{c}")
            for round_, clients in enumerate(args.clients):
                for kind in ("mint", "transfer"):
                    print(f"{kind} x {args.ops} with {clients} clients ...", flush=True)
                    rows.append(bench_gateway(url, pid, node, kind, clients, args.ops, round_))
            with GatewayClient(url) as reader:
                received = sum(
                    reader.credits_balance(_key(1000 + c).address)["available"]
                    for c in range(max(args.clients))
                )
        finally:
            fog.stop_all()
    # Every mint and transfer (warm-ups included) credited its recipient exactly once.
    sent = sum(2 * (args.ops + WARMUP * clients) for clients in args.clients)
    assert received == sent, (received, sent)

    print(
        f"{'layer':<8} {'kind':<26} {'clients':>7} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms/op':>9}"
    )
    for row in rows:
        print(
            f"{row['layer']:<8} {row['kind']:<26} {row.get('clients', '-'):>7} "
            f"{row['ops_per_s']:>9} {row.get('latency_ms_p50', '-'):>8} "
            f"{row.get('latency_ms_p99', '-'):>8} {row.get('server_cpu_ms_per_op', '-'):>9}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "cpus": os.cpu_count(),
                "args": vars(args),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
