"""Domain state: authorization on apply, schemas, reads, snapshots."""

import itertools
import random

import pytest

from node.ledger.op import OpRejected
from node.ledger.state import KINDS, State, build_id_of, instance_id_of
from tests.helpers import NET, T0_MS, op, seeded_keys

ALICE, BOB, NODE_A, NODE_B = seeded_keys(4)


def ingest(state: State, *ops_: object) -> None:
    for made in ops_:
        state.ingest(made.body, made.sig)  # type: ignore[attr-defined]


def rejected(state: State, made: object) -> OpRejected:
    before = state.state_hash()
    with pytest.raises(OpRejected) as info:
        state.ingest(made.body, made.sig)  # type: ignore[attr-defined]
    assert state.state_hash() == before, "a refused op must change nothing"
    return info.value


def test_an_account_is_created_by_its_own_key() -> None:
    state = State(NET)
    ingest(state, op(ALICE, "account.create", {"name": "alice"}))
    account = state.account(ALICE.address)
    assert account is not None
    assert account["address"] == ALICE.address
    assert account["name"] == "alice"
    assert account["created_at"] == T0_MS
    assert state.account(BOB.address) is None


def test_nobody_changes_another_account() -> None:
    state = State(NET)
    ingest(state, op(ALICE, "account.create", {"name": "alice"}))
    err = rejected(state, op(BOB, "account.update", {"address": ALICE.address, "name": "pwned"}))
    assert err.code == "unauthorized"
    assert "only the key of account" in str(err)
    err = rejected(state, op(BOB, "account.delete", {"address": ALICE.address}))
    assert err.code == "unauthorized"


@pytest.mark.parametrize(
    "payload",
    [{"is_global_admin": True}, {"credits": 10**9}, {"name": "x", "admin": True}],
)
def test_nobody_makes_themselves_admin_or_mints_credits(payload: dict[str, object]) -> None:
    state = State(NET)
    err = rejected(state, op(ALICE, "account.create", payload))
    assert err.code == "invalid_payload"
    assert "is not a known field" in str(err)


def test_only_an_instances_owner_stops_or_deletes_it() -> None:
    state = State(NET)
    ingest(state, op(ALICE, "instance.create", {"name": "web", "formfile": "NAME web"}))
    iid = instance_id_of(ALICE.address, "web")
    for kind in ("instance.stop", "instance.delete", "instance.update"):
        err = rejected(state, op(BOB, kind, {"id": iid, "name": "web"}))
        assert err.code == "unauthorized"
        assert "only its owner" in str(err)
    # Bob naming "web" without an id reaches only his own (nonexistent) instance.
    ingest(state, op(BOB, "instance.delete", {"name": "web"}))
    instance = state.instance(iid)
    assert instance is not None
    assert instance["desired_state"] == "running"
    ingest(state, op(ALICE, "instance.stop", {"id": iid, "name": "web"}, wall_ms=T0_MS + 1))
    assert state.instance(iid)["desired_state"] == "stopped"  # type: ignore[index]
    ingest(state, op(ALICE, "instance.delete", {"name": "web"}, wall_ms=T0_MS + 2))
    assert state.instance(iid) is None
    assert state.instances() == []


def test_only_a_nodes_key_reports_its_capacity() -> None:
    capacity = {
        "cpu_total_cores": 8,
        "cpu_available_millicores": 6000,
        "memory_total_bytes": 2**34,
        "memory_available_bytes": 2**33,
        "storage_total_bytes": 2**40,
        "storage_available_bytes": 2**39,
    }
    state = State(NET)
    ingest(state, op(NODE_A, "node.announce", {"host_region": "eu"}))
    ingest(state, op(NODE_A, "node.capacity", {"capacity": capacity}, wall_ms=T0_MS + 5))
    node = state.node(NODE_A.address)
    assert node is not None
    assert node["capacity"] == capacity
    assert node["last_heartbeat"] == T0_MS + 5
    err = rejected(
        state, op(NODE_B, "node.capacity", {"node_id": NODE_A.address, "capacity": capacity})
    )
    assert err.code == "unauthorized"
    assert "own key" in str(err)


def test_instance_status_is_what_the_claiming_host_reports() -> None:
    state = State(NET)
    ingest(state, op(ALICE, "instance.create", {"name": "job", "formfile": "NAME job"}))
    iid = instance_id_of(ALICE.address, "job")
    assert state.instance(iid)["status"] is None  # type: ignore[index]  # nothing runs yet
    later_claim = op(NODE_B, "instance.claim", {"instance_id": iid}, wall_ms=T0_MS + 20)
    early_claim = op(NODE_A, "instance.claim", {"instance_id": iid}, wall_ms=T0_MS + 10)
    reports = [
        op(
            NODE_A,
            "instance.status",
            {"instance_id": iid, "status": "Started", "formnet_ip": "10.42.0.7"},
            wall_ms=T0_MS + 30,
        ),
        op(
            NODE_B,
            "instance.status",
            {"instance_id": iid, "status": "CriticalError"},
            wall_ms=T0_MS + 40,
        ),
    ]
    ingest(state, later_claim, *reports, early_claim)
    instance = state.instance(iid)
    assert instance is not None
    assert (instance["node_id"], instance["status"], instance["formnet_ip"]) == (
        NODE_A.address,
        "Started",
        "10.42.0.7",
    )


def test_bad_status_values_name_the_field_and_the_allowed_values() -> None:
    err = rejected(
        State(NET), op(NODE_A, "instance.status", {"instance_id": "ab" * 20, "status": "Running"})
    )
    assert err.code == "invalid_payload"
    assert "field 'status' must be one of Building, Built, Created" in str(err)


def test_unknown_kinds_and_bad_names_are_refused() -> None:
    err = rejected(State(NET), op(ALICE, "account.mint", {"amount": 5}))
    assert err.code == "unknown_kind"
    err = rejected(State(NET), op(ALICE, "instance.create", {"name": "-bad name", "formfile": ""}))
    assert err.code == "invalid_payload"
    assert "'name'" in str(err)
    err = rejected(State(NET), op(ALICE, "instance.create", {"name": "ok"}))
    assert "give a formfile" in str(err)
    assert err.code == "invalid_payload"


def test_agent_listing_with_private_access_and_allow_list() -> None:
    state = State(NET)
    ingest(
        state,
        op(
            ALICE,
            "agent.register",
            {
                "name": "summarizer",
                "description": "tl;dr",
                "access": "private",
                "pricing": {"cost_per_call": 3},
            },
        ),
        op(ALICE, "agent.allow", {"name": "summarizer", "address": BOB.address}, wall_ms=T0_MS + 1),
    )
    agent_id = build_id_of(ALICE.address, "summarizer")
    agent = state.agent(agent_id)
    assert agent is not None
    assert agent["owner_id"] == ALICE.address
    assert agent["access"] == "private"
    assert agent["allow_list"] == [BOB.address]
    assert agent["pricing"] == {"cost_per_call": 3}
    tags = state.allow_tags("agents", agent_id, BOB.address)
    ingest(
        state,
        op(
            ALICE,
            "agent.disallow",
            {"name": "summarizer", "address": BOB.address, "tags": tags},
            wall_ms=T0_MS + 2,
        ),
    )
    assert state.agent(agent_id)["allow_list"] == []  # type: ignore[index]
    err = rejected(
        state,
        op(BOB, "agent.update", {"id": agent_id, "name": "summarizer", "description": "mine"}),
    )
    assert err.code == "unauthorized"


def test_duplicates_are_no_ops_and_order_does_not_matter() -> None:
    rng = random.Random(3)
    ops_ = [
        op(ALICE, "account.create", {"name": "a"}, wall_ms=T0_MS),
        op(ALICE, "account.update", {"name": "b"}, wall_ms=T0_MS + 1),
        op(ALICE, "account.update", {"name": "c"}, wall_ms=T0_MS + 1),  # same HLC: op id decides
        op(ALICE, "instance.create", {"name": "w", "formfile": "f"}, wall_ms=T0_MS + 2),
        op(ALICE, "instance.delete", {"name": "w"}, wall_ms=T0_MS + 3),
        op(ALICE, "instance.create", {"name": "w", "formfile": "g"}, wall_ms=T0_MS + 4),
    ]
    hashes = set()
    for order in itertools.islice(itertools.permutations(ops_), 0, None, 37):
        state = State(NET)
        for made in order + tuple(rng.sample(ops_, 3)):
            state.apply(made)
        hashes.add(state.state_hash())
    assert len(hashes) == 1
    instance = state.instance(instance_id_of(ALICE.address, "w"))
    assert instance is not None
    assert instance["formfile"] == "g"


def test_snapshot_round_trip_and_state_merge() -> None:
    a, b = State(NET), State(NET)
    a.apply(op(ALICE, "account.create", {"name": "alice"}))
    b.apply(op(BOB, "model.register", {"name": "llm", "parameters": 7_000_000_000}))
    restored = State.from_snapshot(a.snapshot())
    assert restored.state_hash() == a.state_hash()
    assert restored.applied == a.applied
    a.merge(b)
    b.merge(restored)
    assert a.state_hash() == b.state_hash()
    assert a.op_count == b.op_count == 2
    assert [m["model_id"] for m in a.models()] == [build_id_of(BOB.address, "llm")]


def test_every_kind_is_documented_in_the_formats_doc() -> None:
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "formats.md").read_text()
    missing = [kind for kind in KINDS if f"`{kind}`" not in text]
    assert not missing, f"docs/formats.md does not describe {missing}"
