"""A mesh address run: many nodes join at once and claim addresses with the real rule.

Theory of operation
-------------------
Every node is a subject (``node:<a random node id>``, drawn from the seed) that claims one address of the range with the real
pure functions of ``node.mesh.addresses``: on joining it picks ``next_candidate`` against the
addresses *its own view* shows as taken, and a claim reaches every other node a gossip delay
later (``gossip_ms_min..gossip_ms_max``, fixed per (sender, receiver) pair and salted by the
seed, so claims between two nodes arrive in the order they were made, as on one gossip path).
Everything is an event in one heap ordered by (virtual ms, sequence), drawn from one seeded
rng, so a run is a pure function of (scenario, seed, code) and ``trace_hash`` proves it.
Claims are never lost (gossip's anti-entropy delivers every op in the end; a loss is only a
longer delay, which ``gossip_ms_max`` stands for). Only node subjects are simulated: a slot's
claim follows the same rule, signed by its host.

A claim's priority is its stamp ``(wall_ms, logical)``, the logical part a run-wide claim
counter (an HLC never hands out one stamp twice); the earliest priority wins an address
(rule 2 of ``node.mesh.addresses``). A node learns it lost only when the winning claim reaches
it: whenever two current claims name one address, each claimant gets a *check* at the moment
the other's claim reaches it. At a check the node compares priorities, ignoring a claim its
view already knows to be superseded (the sender's next claim has arrived); if it lost it
re-claims ``reclaim_delay_ms`` later, at its next candidate. Views are never copied (a
1,000-node run would hold a million entries): a node's taken set is computed when it claims,
from the global list of claims and their arrival times at that node.

At the end (no event left, or ``duration_s``) the run resolves the current claims with
``node.mesh.addresses.resolve`` and reports ``duplicate_addresses`` (addresses that two or more
nodes believe they hold: must be 0), ``lost_at_end`` (claims the rule says lost that their node
never learned of: must be 0), ``reclaims``, ``first_claim_collisions`` and
``time_to_stable_ms`` (the max over nodes of the virtual time their address last changed; p50
and p99 too). With ``ledger_check`` every claim is also signed as a real ``mesh.claim`` op
(with announces), applied to a ``node.ledger.state.State`` in a shuffled order, and
``ledger_mismatches`` counts nodes whose address in ``mesh_view`` differs from the run's.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import time
from dataclasses import replace
from typing import IO, Any, Final

from node.mesh.addresses import Claim, next_candidate, resolve, usable_count
from simulations import invariants
from simulations.mesh_spec import LEDGER_NETWORK, MeshSpec
from simulations.metrics import json_safe, percentile
from simulations.report import RunResult
from simulations.scenario import Scenario

__all__ = ["MESH_CORE", "MeshSim", "run_mesh"]

MESH_CORE: Final = "mesh"
_JOIN, _CHECK, _RECLAIM = range(3)


class _Claim:
    __slots__ = ("address", "cid", "prio", "src", "t_ms")

    def __init__(self, cid: int, src: int, address: str, t_ms: float) -> None:
        self.cid = cid
        self.src = src
        self.address = address
        self.t_ms = t_ms
        self.prio = (int(t_ms), cid)


class _Node:
    __slots__ = ("attempt", "claims", "current", "join_ms", "last_change_ms", "subject")

    def __init__(self, subject: str, join_ms: float) -> None:
        self.subject = subject
        self.join_ms = join_ms
        self.attempt = 0
        self.current = -1  # claim id
        self.claims: list[int] = []  # this node's claim ids, oldest first
        self.last_change_ms = join_ms


class MeshSim:
    """One mesh run: nodes, every claim made, the event loop."""

    def __init__(self, scenario: Scenario, trace: IO[str] | None) -> None:
        spec = scenario.mesh
        assert spec is not None
        self.spec: MeshSpec = spec
        self.scenario = scenario
        rng = random.Random(scenario.seed)
        self.salt = rng.getrandbits(32)
        # Node ids are random in a real fog: each seed draws its own, so candidates differ.
        self.nodes = [
            _Node(f"node:0x{rng.randbytes(20).hex()}", rng.uniform(0.0, spec.join_spread_ms))
            for _ in range(scenario.nodes)
        ]
        self.claims: list[_Claim] = []
        self.by_addr: dict[str, set[int]] = {}
        self.heap: list[tuple[float, int, int, int, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.events = 0
        self.checks = 0
        self.reclaims = 0
        self.first_collisions = 0
        self.wall_s = 0.0
        self.trace = trace
        self.digest = hashlib.blake2b(digest_size=16)
        for i, node in enumerate(self.nodes):
            self.push(node.join_ms, _JOIN, i, None)

    def push(self, at: float, kind: int, a: int, b: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, a, b))

    def lag_ms(self, src: int, dst: int) -> float:
        # Fixed per pair, cheap and seeded: an integer hash, not Python's hash().
        h = (src * 2654435761 + dst * 40503 + self.salt) % 100_003
        span = self.spec.gossip_ms_max - self.spec.gossip_ms_min
        return self.spec.gossip_ms_min + span * h / 100_002.0

    def record(self, line: str) -> None:
        self.digest.update(line.encode())
        self.digest.update(b"\n")
        if self.trace is not None:
            self.trace.write(line + "\n")

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        duration_ms = self.scenario.duration_s * 1000.0
        handlers = (self._join, self._check, self._reclaim)
        heap = self.heap
        while heap:
            at, _, kind, a, b = heapq.heappop(heap)
            if at > duration_ms:
                break
            self.now = at
            self.events += 1
            handlers[kind](a, b)

    def _taken(self, v: int) -> set[str]:
        """The addresses node ``v``'s view shows as claimed now (each sender's latest)."""
        latest: dict[int, str] = {}
        now = self.now
        for c in self.claims:
            if c.src != v and c.t_ms + self.lag_ms(c.src, v) <= now:
                latest[c.src] = c.address  # claims are in time order: the later one wins
        return set(latest.values())

    def _claim(self, v: int) -> None:
        node = self.nodes[v]
        address = next_candidate(node.subject, self._taken(v), self.spec.cidr, node.attempt)
        node.attempt += 1
        c = _Claim(len(self.claims), v, address, self.now)
        self.claims.append(c)
        if node.current >= 0:
            self.by_addr[self.claims[node.current].address].discard(v)
        node.current = c.cid
        node.claims.append(c.cid)
        node.last_change_ms = self.now
        self.record(f"{self.now:.3f} claim n{v} {address} attempt={node.attempt - 1}")
        others = self.by_addr.setdefault(address, set())
        for u in sorted(others):
            cu = self.claims[self.nodes[u].current]
            self.push(self.now + self.lag_ms(v, u), _CHECK, u, (c.cid, cu.cid))
            # v chose an address its view showed free: u's claim is still on its way to v.
            self.push(max(self.now, cu.t_ms + self.lag_ms(u, v)), _CHECK, v, (cu.cid, c.cid))
        others.add(v)

    def _join(self, v: int, _: Any) -> None:
        self._claim(v)

    def _check(self, v: int, b: tuple[int, int]) -> None:
        other_id, mine_id = b
        node = self.nodes[v]
        if node.current != mine_id:
            return  # v has moved on since
        self.checks += 1
        other = self.claims[other_id]
        sender = self.nodes[other.src]
        later = sender.claims.index(other_id) + 1
        if later < len(sender.claims):
            newer = self.claims[sender.claims[later]]
            if newer.t_ms + self.lag_ms(other.src, v) <= self.now:
                return  # v's view already holds the sender's newer claim
        mine = self.claims[mine_id]
        if (other.prio, self.nodes[other.src].subject) < (mine.prio, node.subject):
            self.record(f"{self.now:.3f} lost n{v} {mine.address} to n{other.src}")
            if len(node.claims) == 1:
                self.first_collisions += 1
            self.push(self.now + self.spec.reclaim_delay_ms, _RECLAIM, v, mine_id)

    def _reclaim(self, v: int, mine_id: int) -> None:
        if self.nodes[v].current == mine_id:
            self.reclaims += 1
            self._claim(v)


def _ledger_mismatches(sim: MeshSim) -> int:
    """Sign every claim as a real op, apply them shuffled to a State, compare mesh_view."""
    from node.identity.keys import NodeKey
    from node.ledger.mesh import mesh_view, node_subject
    from node.ledger.op import sign_op
    from node.ledger.state import State

    # The local network's range holds the run's (parse_mesh checks): its ops authorize.
    network = LEDGER_NETWORK
    rng = random.Random(sim.scenario.seed ^ 0x6D657368)
    keys = [NodeKey(rng.randbytes(32)) for _ in sim.nodes]
    ops = [
        sign_op(k, network, (0, i), "node.announce", {"listen_addrs": []})
        for i, k in enumerate(keys)
    ]
    for c in sim.claims:
        payload = {"address": c.address, "subject": node_subject(keys[c.src].address)}
        ops.append(sign_op(keys[c.src], network, c.prio, "mesh.claim", payload))
    rng.shuffle(ops)
    state = State(network)
    for made in ops:
        state.ingest(made.body, made.sig)
    view = mesh_view(state, network)
    mismatches = 0
    for node, key in zip(sim.nodes, keys, strict=True):
        mine = sim.claims[node.current].address if node.current >= 0 else None
        if view.address_of(node_subject(key.address)) != mine:
            mismatches += 1
    return mismatches


def run_mesh(
    scenario: Scenario, core_name: str = MESH_CORE, *, trace: IO[str] | None = None
) -> RunResult:
    """Run a scenario with a ``[mesh]`` table; ``core_name`` only goes into ``reproduce``."""
    started = time.perf_counter()
    sim = MeshSim(scenario, trace)
    sim.run()
    sim.wall_s = time.perf_counter() - started
    spec = sim.spec
    current = [
        Claim(n.subject, sim.claims[n.current].address, sim.claims[n.current].prio)
        for n in sim.nodes
        if n.current >= 0
    ]
    believed: dict[str, int] = {}
    for claim in current:
        believed[claim.address] = believed.get(claim.address, 0) + 1
    resolution = resolve(current)
    stable = sorted(n.last_change_ms for n in sim.nodes)
    report: dict[str, Any] = {
        "scenario": scenario.name,
        "core": MESH_CORE,
        "kind": "mesh",
        "nodes": len(sim.nodes),
        "seed": scenario.seed,
        "cidr": spec.cidr,
        "usable_addresses": usable_count(spec.cidr),
        "claims": len(sim.claims),
        "reclaims": sim.reclaims,
        "first_claim_collisions": sim.first_collisions,
        "duplicate_addresses": sum(1 for count in believed.values() if count > 1),
        "lost_at_end": len(resolution.lost),
        "unclaimed": sum(1 for n in sim.nodes if n.current < 0),
        "time_to_stable_ms": round(stable[-1], 3) if stable else None,
        "time_to_stable_ms_p50": round(percentile(stable, 0.5), 3),
        "time_to_stable_ms_p99": round(percentile(stable, 0.99), 3),
        "checks": sim.checks,
        "events": sim.events,
        "sim_s": scenario.duration_s,
        "wall_s": round(sim.wall_s, 3),
    }
    if spec.ledger_check:
        report["ledger_mismatches"] = _ledger_mismatches(sim)
    sim.record(" ".join(f"{k}={v}" for k, v in report.items() if k != "wall_s"))
    report["trace_hash"] = sim.digest.hexdigest()
    report = json_safe(report)
    check = replace(scenario.check, converged=False)
    return RunResult(scenario, core_name, report, invariants.failures(check, report))
