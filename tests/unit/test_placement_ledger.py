"""Placement ops in the replicated state: who holds a slot, whatever order the ops arrive in."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from node.ledger.op import Op, OpRejected
from node.ledger.state import State, instance_id_of
from node.placement.core import Resources
from node.placement.duty import (
    asks_for,
    bound_to,
    capacity_view,
    need_of,
    place_duties,
    placer_of,
)
from tests.helpers import NET, T0_MS, op, seeded_keys

OWNER, NODE_A, NODE_B, NODE_C, STRANGER = seeded_keys(5)
BUILD = "ab" * 32
IID = instance_id_of(OWNER.address, "web")


def _announce(key: Any, t: int = T0_MS) -> Op:
    return op(key, "node.announce", {"listen_addrs": []}, wall_ms=t)


def _ship(replicas: int = 1, via: Any = NODE_A) -> Op:
    payload = {"name": "web", "build_id": BUILD, "replicas": replicas, "via": via.address}
    return op(OWNER, "instance.create", payload, wall_ms=T0_MS + 1)


def _ask(placer: Any, host: Any, attempt: int, slot: int = 0, t: int = T0_MS + 10) -> Op:
    payload = {"instance_id": IID, "slot": slot, "host": host.address, "attempt": attempt}
    return op(placer, "placement.request", payload, wall_ms=t)


def _answer(host: Any, attempt: int, accepted: bool, slot: int = 0, t: int = T0_MS + 20) -> Op:
    payload: dict[str, Any] = {
        "instance_id": IID,
        "slot": slot,
        "attempt": attempt,
        "accepted": accepted,
        "free": {"vcpus": 1, "memory_mb": 512, "disk_gb": 5},
    }
    if not accepted:
        payload["reason"] = "needs 2 vCPU; free 1 vCPU"
    return op(host, "placement.answer", payload, wall_ms=t)


def _state(*ops: Op) -> State:
    state = State(NET)
    for made in ops:
        state.ingest(made.body, made.sig)
    return state


def _nodes() -> list[Op]:
    return [_announce(NODE_A), _announce(NODE_B), _announce(NODE_C)]


def _slot(state: State, slot: int = 0) -> dict[str, Any]:
    instance = state.instance(IID)
    assert instance is not None
    return dict(instance["slots"][slot])


def test_a_shipped_instance_has_one_slot_per_replica_and_no_host_until_one_accepts() -> None:
    state = _state(*_nodes(), _ship(replicas=3))
    instance = state.instance(IID)
    assert instance is not None
    assert instance["build_id"] == BUILD
    assert instance["replicas"] == 3
    assert [s["slot"] for s in instance["slots"]] == [0, 1, 2]
    assert instance["node_id"] is None
    assert instance["status"] is None
    state = _state(*_nodes(), _ship(), _ask(NODE_A, NODE_B, 1))
    assert _slot(state)["node_id"] is None  # asked, not answered
    state = _state(*_nodes(), _ship(), _ask(NODE_A, NODE_B, 1), _answer(NODE_B, 1, True))
    assert _slot(state)["node_id"] == NODE_B.address


def test_a_refusal_binds_nothing_and_the_next_ask_moves_the_slot() -> None:
    ops = [*_nodes(), _ship(), _ask(NODE_A, NODE_B, 1), _answer(NODE_B, 1, False)]
    slot = _slot(_state(*ops))
    assert slot["node_id"] is None
    assert slot["refusals"] == [{"node_id": NODE_B.address, "reason": "needs 2 vCPU; free 1 vCPU"}]
    ops += [_ask(NODE_A, NODE_C, 2, t=T0_MS + 30), _answer(NODE_C, 2, True, t=T0_MS + 40)]
    assert _slot(_state(*ops))["node_id"] == NODE_C.address


def test_a_host_whose_attempt_is_no_longer_asked_holds_nothing() -> None:
    # B accepted attempt 1, then the placer rescheduled to C (attempt 2): B holds nothing at
    # once, and C holds the slot once it accepts.
    ops = [*_nodes(), _ship(), _ask(NODE_A, NODE_B, 1), _answer(NODE_B, 1, True)]
    ops.append(_ask(NODE_A, NODE_C, 2, t=T0_MS + 30))
    assert _slot(_state(*ops))["node_id"] is None
    ops.append(_answer(NODE_C, 2, True, t=T0_MS + 40))
    state = _state(*ops)
    assert _slot(state)["node_id"] == NODE_C.address
    assert bound_to(state.instances(), {}, NODE_B.address) == []


def test_two_placers_at_the_same_attempt_bind_the_smaller_address_only() -> None:
    ops = [
        *_nodes(),
        _ship(),
        _ask(NODE_A, NODE_B, 1),
        _ask(NODE_C, NODE_C, 1),
        _answer(NODE_B, 1, True),
        _answer(NODE_C, 1, True),
    ]
    expected = min(NODE_B.address, NODE_C.address)
    assert _slot(_state(*ops))["node_id"] == expected


def test_only_announced_nodes_count_as_placers_or_hosts() -> None:
    ops = [*_nodes(), _ship(), _ask(STRANGER, STRANGER, 1), _answer(STRANGER, 1, True)]
    assert _slot(_state(*ops))["node_id"] is None
    ops += [_announce(STRANGER, T0_MS + 50)]
    assert _slot(_state(*ops))["node_id"] == STRANGER.address


def test_only_the_bound_hosts_vm_status_shows() -> None:
    status = {"instance_id": IID, "slot": 0, "status": "Started", "pid": 42}
    ops = [
        *_nodes(),
        _ship(),
        _ask(NODE_A, NODE_B, 1),
        _answer(NODE_B, 1, True),
        op(NODE_C, "vm.status", {**status, "pid": 7}, wall_ms=T0_MS + 60),
    ]
    assert _slot(_state(*ops))["status"] is None
    ops.append(op(NODE_B, "vm.status", status, wall_ms=T0_MS + 70))
    instance = _state(*ops).instance(IID)
    assert instance is not None
    assert (instance["status"], instance["pid"], instance["node_id"]) == (
        "Started",
        42,
        NODE_B.address,
    )


def test_a_failure_shows_until_a_later_ask() -> None:
    fail = {"instance_id": IID, "slot": 0, "attempt": 0, "error": "no node has room"}
    ops = [*_nodes(), _ship(), op(NODE_A, "placement.fail", fail, wall_ms=T0_MS + 5)]
    instance = _state(*ops).instance(IID)
    assert instance is not None
    assert instance["error"] == "no node has room"
    ops.append(_ask(NODE_A, NODE_B, 1))
    assert _slot(_state(*ops))["error"] is None


def test_any_order_of_the_same_ops_gives_the_same_state_and_view() -> None:
    ops = [
        *_nodes(),
        _ship(2),
        _ask(NODE_A, NODE_B, 1),
        _answer(NODE_B, 1, True),
        _ask(NODE_A, NODE_C, 1, slot=1),
        _answer(NODE_C, 1, False, slot=1),
        _ask(NODE_A, NODE_B, 2, slot=1, t=T0_MS + 30),
        _answer(NODE_B, 2, True, slot=1, t=T0_MS + 40),
        op(
            NODE_B,
            "vm.status",
            {
                "instance_id": IID,
                "slot": 1,
                "status": "Started",
                "endpoints": [{"guest_port": 8000, "host": "127.0.0.1", "port": 41234}],
            },
            wall_ms=T0_MS + 50,
        ),
    ]
    reference = _state(*ops)
    rng = random.Random(5)
    for _ in range(30):
        shuffled = ops[:]
        rng.shuffle(shuffled)
        state = _state(*shuffled, *shuffled[:3])  # duplicates too
        assert state.state_hash() == reference.state_hash()
        assert state.instance(IID) == reference.instance(IID)


def test_bad_placement_payloads_are_refused_and_change_nothing() -> None:
    state = _state(*_nodes(), _ship())
    before = state.state_hash()
    bad = [
        ("placement.request", {"instance_id": IID, "slot": 0, "host": "nope", "attempt": 1}),
        (
            "placement.request",
            {"instance_id": IID, "slot": 99, "host": NODE_B.address, "attempt": 1},
        ),
        ("placement.answer", {"instance_id": IID, "slot": 0, "attempt": 0, "accepted": True}),
        (
            "placement.answer",
            {"instance_id": IID, "slot": 0, "attempt": 1, "accepted": True, "reason": "x"},
        ),
        ("vm.status", {"instance_id": IID, "slot": 0, "status": "Running"}),
        ("instance.create", {"name": "web", "replicas": 2}),
    ]
    for kind, payload in bad:
        made = op(NODE_A, kind, payload, wall_ms=T0_MS + 99)
        with pytest.raises(OpRejected):
            state.ingest(made.body, made.sig)
    assert state.state_hash() == before


FORMFILE = 'NAME web\nVCPU 2\nMEM 1024\nDISK 10\nEXPOSE 8000\nENTRYPOINT ["true"]\n'


def test_need_of_reads_the_formfile_and_a_broken_one_places_nothing() -> None:
    assert need_of(FORMFILE) == (Resources(vcpus=2, memory_mb=1024, disk_gb=10), (8000,))
    assert need_of("VCPU lots\n") is None
    assert need_of(None) is None


def test_the_placer_is_via_while_alive_else_one_rendezvous_choice() -> None:
    instance = {"instance_id": IID, "via": NODE_A.address}
    alive = {NODE_A.address, NODE_B.address, NODE_C.address}
    assert placer_of(instance, alive) == NODE_A.address
    without_a = alive - {NODE_A.address}
    chosen = placer_of(instance, without_a)
    assert chosen in without_a
    # Every node that sees the same alive set picks the same placer.
    for order in itertools.permutations(sorted(without_a)):
        assert placer_of(instance, list(order)) == chosen
    assert placer_of(instance, set()) is None


def test_duties_place_new_slots_and_reschedule_off_a_dead_host() -> None:
    need = Resources(vcpus=1, memory_mb=512, disk_gb=5)
    ops = [*_nodes(), _ship(2), _ask(NODE_A, NODE_B, 1), _answer(NODE_B, 1, True)]
    state = _state(*ops)
    alive = {NODE_A.address, NODE_B.address, NODE_C.address}
    kwargs: dict[str, Any] = {"alive": alive, "now_ms": T0_MS + 100, "answer_timeout_ms": 5000}
    duties = place_duties(state.instances(), {BUILD: need}, me=NODE_A.address, dead=set(), **kwargs)
    assert [(d.slot, d.attempt_first, d.exclude) for d in duties] == [(1, 1, (NODE_B.address,))]
    # Not the placer: nothing to do.
    assert (
        place_duties(state.instances(), {BUILD: need}, me=NODE_C.address, dead=set(), **kwargs)
        == []
    )
    # B declared dead: slot 0 moves, never back to B.
    kwargs["alive"] = alive - {NODE_B.address}
    duties = place_duties(
        state.instances(), {BUILD: need}, me=NODE_A.address, dead={NODE_B.address}, **kwargs
    )
    moved = next(d for d in duties if d.slot == 0)
    assert moved.attempt_first == 2
    assert NODE_B.address in moved.exclude
    assert moved.reason == f"host {NODE_B.address} declared dead"


def test_a_host_sees_each_ask_once_and_the_slots_it_holds() -> None:
    need = Resources(vcpus=1, memory_mb=512, disk_gb=5)
    state = _state(*_nodes(), _ship(), _ask(NODE_A, NODE_B, 1))
    asks = asks_for(state.instances(), {BUILD: need}, NODE_B.address)
    assert [(a.key, a.attempt, a.need) for a in asks] == [(f"{IID}:0", 1, need)]
    assert asks_for(state.instances(), {BUILD: need}, NODE_C.address) == []
    state = _state(*_nodes(), _ship(), _ask(NODE_A, NODE_B, 1), _answer(NODE_B, 1, True))
    assert asks_for(state.instances(), {BUILD: need}, NODE_B.address) == []
    held = bound_to(state.instances(), {BUILD: (need, (8000,))}, NODE_B.address)
    assert [(d.slot, d.need, d.expose, d.running) for d in held] == [(0, need, (8000,), True)]


def test_the_capacity_view_holds_alive_vm_hosts_only() -> None:
    nodes: list[dict[str, Any]] = [
        {"node_id": "a", "capacity": {"vm_free": {"vcpus": 2, "memory_mb": 1024}}},
        {"node_id": "b", "capacity": {"vm_free": {"vcpus": 8}}},
        {"node_id": "c", "capacity": {"cpu_total_cores": 4}},  # offers no VMs
        {"node_id": "d"},
    ]
    view = capacity_view(nodes, {"a", "c", "d"})
    assert view == {"a": Resources(vcpus=2, memory_mb=1024)}
