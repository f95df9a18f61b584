"""The faults a scenario injects, done to the engine's nodes and network.

Theory of operation
-------------------
A scenario's ``[[faults]]`` (``simulations.scenario.Fault``: ``at_s``, ``action``, knobs) are
disturbance events in the engine's heap; when one is popped the engine hands it to
``Faults.apply``. So are the follow-ups a fault schedules for itself, as tuples: a crash's
``("restart", node, disk)``, a partition's ``("heal", generation)`` and
``("flap", generation, period_s)``, and the next round of a ``("churn", knobs)``. Each fault
writes one ``F`` trace line before it acts.

``partition``
    splits the nodes into groups (``sides``, a ``fraction``, or listed ``groups``), optionally
    with ``bridge`` nodes that reach every group and ``oneway`` cuts; ``flap_period_s`` turns it
    on and off, ``heal_after_s`` heals it. Every partition and heal bumps ``generation``, so a
    heal or flap scheduled by an older partition does nothing.
``heal``
    removes the partition; the heal's time goes into the metrics (time to identical digests).
``crash`` / ``restart``
    a crashed node loses everything in flight to it and its timers (the engine drops packets to
    a node that is down and skips its stale timers); it restarts with its log
    (``disk = "kept"``: new core, incarnation + 1) or with an empty one (``"lost"``: a fresh log,
    incarnation 0), and its HLC restarts from that log as ``node.replica``'s does
    (``node.ledger.admission.restart_clock``). ``restart_after_s`` schedules the restart.
``join`` / ``leave``
    new nodes start; leaving nodes run their core's ``leave`` and are gone for good.
``churn``
    every ``interval_s`` until ``until_s``, ``count`` random live nodes (never the last one)
    crash and restart ``down_s`` later, losing their disk with probability ``disk_lost_ratio``.
``skew`` / ``slow``
    step a node's wall clock (``SimNode.wall_skew_s``; monotonic clocks never jump), or make it
    handle each event ``delay_ms`` after the previous one finished (a CPU-starved process).
``network``
    replaces the link model's knobs (loss, latency, duplication...) from then on.

Nodes are picked by ``nodes`` (ids), ``count`` or ``fraction`` (a seeded sample of the eligible
ones), or all of them. Every random choice is drawn from the engine's RNG, in event order.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from node.ledger.admission import restart_clock
from simulations.metrics import CrashRecord
from simulations.network import BRIDGE
from simulations.nodes import SimLog, SimNode
from simulations.scenario import Fault

if TYPE_CHECKING:
    from simulations.engine import Simulation

__all__ = ["Faults"]


class Faults:
    """The fault side of one run. ``apply`` each fault event; ``crash``/``restart`` a node."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        # Bumped by every partition and heal: what an older partition scheduled is void.
        self.generation = 0

    def apply(self, at: float, fault: Any) -> None:
        if isinstance(fault, tuple):
            self._follow_up(at, fault)
            return
        assert isinstance(fault, Fault)
        sim = self.sim
        sim.trace(f"{at!r} F {fault.describe()}")
        knobs = fault.knobs
        action = fault.action
        live = [n for n in sim.nodes if n.live]
        if action == "partition":
            self.partition(at, knobs)
        elif action == "heal":
            self.heal(at)
        elif action == "crash":
            for node in self._select(knobs, live):
                self.crash(node, at)
                if "restart_after_s" in knobs:
                    sim.push_fault(
                        at + knobs["restart_after_s"],
                        ("restart", node.index, knobs.get("disk", "kept")),
                    )
        elif action == "restart":
            down = [n for n in sim.nodes if n.started and not n.up and not n.left]
            for node in self._select(knobs, down):
                self.restart(node, at, knobs.get("disk", "kept"))
        elif action == "join":
            for _ in range(int(knobs["count"])):
                node = sim.add_node(sim.state_for_joiners)
                sim.start(node, at)
        elif action == "leave":
            for node in self._select(knobs, live):
                assert node.core is not None
                effects = node.core.leave(at + node.clock_s)
                sim.handle(node, at, effects)
                node.left = True
                sim.stop(node)
        elif action == "skew":
            for node in self._select(knobs, live):
                if "skew_ms" in knobs:
                    node.wall_skew_s = knobs["skew_ms"] / 1000.0
                else:
                    limit = knobs["skew_ms_max"] / 1000.0
                    node.wall_skew_s = sim.rng.uniform(-limit, limit)
        elif action == "slow":
            for node in self._select(knobs, live):
                node.slow_s = knobs["delay_ms"] / 1000.0
        elif action == "network":
            sim.net.reconfigure(sim.net.config.updated(knobs, f"fault at {at:g}s"))
        elif action == "churn":
            self._follow_up(at, ("churn", knobs))

    def _follow_up(self, at: float, fault: tuple[Any, ...]) -> None:
        sim = self.sim
        what = fault[0]
        sim.trace(f"{at!r} F {what} {fault[1:]!r}")
        if what == "restart":
            self.restart(sim.nodes[fault[1]], at, fault[2])
        elif what == "heal" and fault[1] == self.generation:
            self.heal(at)
        elif what == "flap" and fault[1] == self.generation:
            sim.net.active = not sim.net.active
            sim.net.changed_at = at
            sim.push_fault(at + fault[2], fault)
        elif what == "churn":
            knobs = fault[1]
            live = [n for n in sim.nodes if n.live]
            count = min(int(knobs["count"]), max(0, len(live) - 1))
            for node in sorted(sim.rng.sample(live, count), key=lambda n: n.index):
                self.crash(node, at)
                disk = "lost" if sim.rng.random() < knobs["disk_lost_ratio"] else "kept"
                sim.push_fault(at + knobs["down_s"], ("restart", node.index, disk))
            following = at + knobs["interval_s"]
            if following <= knobs["until_s"]:
                sim.push_fault(following, fault)

    def _select(self, knobs: dict[str, Any], eligible: list[SimNode]) -> list[SimNode]:
        if "nodes" in knobs:
            wanted = set(knobs["nodes"])
            return [n for n in eligible if n.node_id in wanted]
        if "count" in knobs:
            count = min(int(knobs["count"]), len(eligible))
        elif "fraction" in knobs:
            count = min(len(eligible), max(1, round(float(knobs["fraction"]) * len(eligible))))
        else:
            return list(eligible)
        picked = self.sim.rng.sample(eligible, count)
        return sorted(picked, key=lambda n: n.index)

    # -- nodes ---------------------------------------------------------------------------------

    def crash(self, node: SimNode, at: float) -> None:
        if not node.up:
            return
        self.sim.stop(node)
        self.sim.metrics.crashes.append(CrashRecord(node.index, at))

    def restart(self, node: SimNode, at: float, disk: str) -> None:
        sim = self.sim
        if node.up or node.left:
            return
        for crash in reversed(sim.metrics.crashes):
            if crash.node == node.index:
                crash.restarted_at = at
                break
        if disk == "lost":
            node.log = SimLog(sim.wires, at, keep_state=node.keep_state)
            if sim.tracer.on:
                sim.tracer.log_born(node.index, at)
            incarnation = 0
        else:
            incarnation = node.incarnation + 1
        # As node.replica.Replica.open: the clock restarts from the log (past every op held).
        node.hlc = restart_clock(node.log.clock_max())
        sim.start(node, at, incarnation=incarnation)

    # -- the network ---------------------------------------------------------------------------

    def partition(self, at: float, knobs: dict[str, Any]) -> None:
        sim = self.sim
        n = len(sim.nodes)
        order = list(range(n))
        sim.rng.shuffle(order)
        groups = [0] * n
        if "groups" in knobs:
            listed = knobs["groups"]
            for i in range(n):
                groups[i] = len(listed) - 1
            for g, names in enumerate(listed):
                for name in names:
                    if name in sim.index:
                        groups[sim.index[name]] = g
        elif "fraction" in knobs:
            cut = round(float(knobs["fraction"]) * n)
            for pos, i in enumerate(order):
                groups[i] = 0 if pos < cut else 1
        else:
            sides = int(knobs.get("sides", 2))
            for pos, i in enumerate(order):
                groups[i] = pos * sides // n
        bridge = knobs.get("bridge", 0)
        if isinstance(bridge, list):
            for name in bridge:
                if name in sim.index:
                    groups[sim.index[name]] = BRIDGE
        elif bridge:
            for i in sim.rng.sample(range(n), min(int(bridge), n)):
                groups[i] = BRIDGE
        sim.net.partition(groups, oneway=bool(knobs.get("oneway", False)))
        sim.net.changed_at = at
        self.generation += 1
        gen = self.generation
        if "flap_period_s" in knobs:
            sim.push_fault(at + knobs["flap_period_s"], ("flap", gen, knobs["flap_period_s"]))
        if "heal_after_s" in knobs:
            sim.push_fault(at + knobs["heal_after_s"], ("heal", gen))

    def heal(self, at: float) -> None:
        sim = self.sim
        sim.net.heal()
        sim.net.changed_at = at
        self.generation += 1
        sim.metrics.heals.append([at, math.nan])
