"""Replicas that exchange signed ops in any order, with duplicates and drops, converge.

Several replicas, each with its own HLC, sign random ops for a few authors. Ops travel
between replicas through lossy, duplicating, reordering links (every send picks a random
subset of replicas; anything can be delivered again later). After a final full exchange, every
replica must hold byte-identical state. Physical time is drawn from a tiny range and authors
are shared between replicas (one key on two devices), so equal HLCs from one author happen
often: a tie-break that is not total (say, one that ignores the op id) makes replicas diverge,
and this test finds it.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from node.ledger.hlc import HLC
from node.ledger.op import Op, sign_op
from node.ledger.state import State, build_id_of, instance_id_of
from tests.helpers import NET, T0_MS, seeded_keys

USERS = seeded_keys(3, seed=11)
NODES = seeded_keys(2, seed=12)
REPLICAS = 3
NAMES = ("a", "b")


def _payloads(author_index: int, state: State) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    user = USERS[author_index]
    name = st.sampled_from(NAMES)
    return st.one_of(
        st.tuples(
            st.just("account.create"), st.fixed_dictionaries({"name": st.sampled_from(["x", "y"])})
        ),
        st.tuples(
            st.just("account.update"),
            st.fixed_dictionaries({"name": st.sampled_from(["x", "y", "z"])}),
        ),
        st.tuples(st.just("account.delete"), st.just({})),
        st.tuples(
            st.just("instance.create"),
            st.fixed_dictionaries({"name": name, "formfile": st.sampled_from(["f1", "f2"])}),
        ),
        st.tuples(
            st.sampled_from(["instance.stop", "instance.start", "instance.delete"]),
            st.fixed_dictionaries({"name": name}),
        ),
        st.tuples(
            st.just("agent.register"),
            st.fixed_dictionaries({"name": name, "description": st.sampled_from(["d1", "d2"])}),
        ),
        st.tuples(
            st.just("agent.allow"),
            st.fixed_dictionaries(
                {"name": name, "address": st.sampled_from([u.address for u in USERS])}
            ),
        ),
        name.flatmap(
            lambda n: st.sampled_from([u.address for u in USERS]).map(
                lambda addr: (
                    "agent.disallow",
                    {
                        "name": n,
                        "address": addr,
                        "tags": state.allow_tags("agents", build_id_of(user.address, n), addr),
                    },
                )
            )
        ),
    )


class Replicas(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**32 - 1))
    def setup(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.states = [State(NET) for _ in range(REPLICAS)]
        self.clocks = [HLC() for _ in range(REPLICAS)]
        self.sent: list[Op] = []

    def _sign(
        self, replica: int, author: Any, kind: str, payload: dict[str, Any], physical: int
    ) -> Op:
        made = sign_op(author, NET, self.clocks[replica].now(T0_MS + physical), kind, payload)
        self.states[replica].apply(made)
        self.sent.append(made)
        return made

    @rule(
        data=st.data(),
        replica=st.integers(0, REPLICAS - 1),
        author=st.integers(0, len(USERS) - 1),
        physical=st.integers(0, 3),
    )
    def user_writes(self, data: st.DataObject, replica: int, author: int, physical: int) -> None:
        kind, payload = data.draw(_payloads(author, self.states[replica]))
        self._sign(replica, USERS[author], kind, payload, physical)

    @rule(
        data=st.data(),
        replica=st.integers(0, REPLICAS - 1),
        author=st.integers(0, len(USERS) - 1),
        forged_logical=st.integers(0, 1),
    )
    def same_key_two_devices(
        self, data: st.DataObject, replica: int, author: int, forged_logical: int
    ) -> None:
        # A second device with the same key, same millisecond and logical counter: only the
        # op id can break this tie.
        kind, payload = data.draw(_payloads(author, self.states[replica]))
        made = sign_op(USERS[author], NET, (T0_MS + 1, forged_logical), kind, payload)
        self.states[replica].apply(made)
        self.sent.append(made)

    @rule(
        replica=st.integers(0, REPLICAS - 1),
        node=st.integers(0, len(NODES) - 1),
        owner=st.integers(0, len(USERS) - 1),
        name=st.sampled_from(NAMES),
        status=st.sampled_from(["Created", "Started", "Stopped"]),
        claim=st.booleans(),
    )
    def node_reports(
        self, replica: int, node: int, owner: int, name: str, status: str, claim: bool
    ) -> None:
        iid = instance_id_of(USERS[owner].address, name)
        if claim:
            self._sign(replica, NODES[node], "instance.claim", {"instance_id": iid}, 2)
        self._sign(
            replica, NODES[node], "instance.status", {"instance_id": iid, "status": status}, 2
        )

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        # Any op sent so far (so: late, reordered, duplicated) to a random subset (so: dropped).
        made = data.draw(st.sampled_from(self.sent))
        targets = data.draw(st.sets(st.integers(0, REPLICAS - 1), max_size=REPLICAS))
        for target in sorted(targets):
            self.clocks[target].observe(T0_MS + 3, (made.wall_ms, made.logical))
            self.states[target].ingest(made.body, made.sig)

    @rule(a=st.integers(0, REPLICAS - 1), b=st.integers(0, REPLICAS - 1))
    def state_merge(self, a: int, b: int) -> None:
        # Delta-state join of a whole replica is just another way to deliver ops.
        self.states[a].merge(self.states[b])

    @invariant()
    def every_applied_op_is_counted(self) -> None:
        for state in self.states:
            assert state.op_count == len(state.applied)

    def teardown(self) -> None:
        # The full exchange is the expensive check, so it runs once per generated history.
        finals = []
        for state in self.states:
            copy = State.from_snapshot(state.snapshot())
            pending = list(self.sent)
            self.rng.shuffle(pending)
            for made in pending:
                copy.apply(made)
            finals.append(copy)
        hashes = {s.state_hash() for s in finals}
        assert len(hashes) == 1, "replicas diverged after exchanging every op"
        views = [(s.accounts(), s.instances(), s.agents(), s.nodes()) for s in finals]
        assert all(view == views[0] for view in views)


TestConvergence = Replicas.TestCase
