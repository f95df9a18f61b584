"""Vanity DNS names in the replicated state: validation, the first adder holds a domain, only
the build's owner counts, removal releases, and every order of arrival gives one view."""

import itertools

import pytest

from node.identity.keys import NodeKey
from node.ledger.builds import build_digest
from node.ledger.names import domain_problem, holders_of, names_of, zone_name
from node.ledger.op import Op, OpRejected
from node.ledger.state import State
from tests.helpers import NET, T0_MS, op, seeded_keys

ALICE, BOB = seeded_keys(2, seed=13)
FORMFILE = "NAME web\n"
A_BUILD = build_digest(ALICE.address, FORMFILE, "ab" * 32)
B_BUILD = build_digest(BOB.address, FORMFILE, "ab" * 32)


def _builds() -> list[Op]:
    return [
        op(k, "build.request", {"name": "web", "formfile": FORMFILE, "context": "ab" * 32})
        for k in (ALICE, BOB)
    ]


def _add(key: NodeKey, domain: str, build_id: str, wall_ms: int) -> Op:
    return op(key, "dns.add", {"domain": domain, "build_id": build_id}, wall_ms)


def _remove(key: NodeKey, domain: str, wall_ms: int) -> Op:
    return op(key, "dns.remove", {"domain": domain}, wall_ms)


def _ingest(state: State, *ops: object) -> None:
    for made in ops:
        state.ingest(made.body, made.sig)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("domain", "fragment"),
    [
        ("-bad", "not a DNS label"),
        ("a..b", "not a DNS label"),
        ("x" * 64, "not a DNS label"),
        ("under_score", "not a DNS label"),
        (".".join(["a" * 60] * 5), "at most 253"),
        ("web.instance.fog", "fog's own"),
        ("n.node.fog", "fog's own"),
        ("node", "fog's own"),
        ("abc123", "bare hex"),
    ],
)
def test_bad_domains_are_refused_naming_the_problem_and_change_nothing(
    domain: str, fragment: str
) -> None:
    assert fragment in (domain_problem(domain) or "")
    state = State(NET)
    before = state.state_hash()
    with pytest.raises(OpRejected) as info:
        _ingest(state, _add(ALICE, domain, A_BUILD, T0_MS))
    assert info.value.code == "invalid_payload"
    assert fragment in str(info.value)
    assert state.state_hash() == before


def test_good_domains_are_served_under_fog() -> None:
    assert domain_problem("shop") is None
    assert domain_problem("My-Shop.example.fog.") is None
    assert zone_name("My-Shop.example.fog.") == "my-shop.example.fog"
    assert zone_name("shop") == "shop.fog"
    assert zone_name("fog") == "fog.fog", "a bare 'fog' is a name under the zone, not its apex"


def test_the_first_adder_holds_the_domain_and_a_later_one_does_not_count() -> None:
    state = State(NET)
    _ingest(state, *_builds(), _add(BOB, "shop", B_BUILD, T0_MS + 20))
    assert names_of(state) == {"shop.fog": B_BUILD}
    # Alice's add is later: Bob keeps the name.
    _ingest(state, _add(ALICE, "shop.fog", A_BUILD, T0_MS + 30))
    assert holders_of(state) == {"shop.fog": (BOB.address, B_BUILD)}
    # Bob removes it: Alice, the next adder that counts, holds it.
    _ingest(state, _remove(BOB, "shop", T0_MS + 40))
    assert holders_of(state) == {"shop.fog": (ALICE.address, A_BUILD)}


def test_an_add_naming_someone_elses_build_does_not_count() -> None:
    state = State(NET)
    _ingest(state, *_builds(), _add(BOB, "shop", A_BUILD, T0_MS + 10))
    assert names_of(state) == {}
    # Alice adds later but owns the build: she holds it (Bob's add never counted).
    _ingest(state, _add(ALICE, "shop", A_BUILD, T0_MS + 20))
    assert names_of(state) == {"shop.fog": A_BUILD}


def test_an_add_before_its_build_is_known_counts_once_the_build_arrives() -> None:
    state = State(NET)
    _ingest(state, _add(ALICE, "shop", A_BUILD, T0_MS + 10))
    assert names_of(state) == {}
    _ingest(state, *_builds())
    assert names_of(state) == {"shop.fog": A_BUILD}


def test_a_later_add_repoints_and_every_arrival_order_gives_one_view() -> None:
    ops = [
        *_builds(),
        _add(ALICE, "shop", A_BUILD, T0_MS + 10),
        _add(BOB, "shop", B_BUILD, T0_MS + 5),
        _remove(BOB, "shop", T0_MS + 15),
        _add(ALICE, "blog", A_BUILD, T0_MS + 20),
        _remove(ALICE, "blog", T0_MS + 30),
        _add(ALICE, "blog", A_BUILD, T0_MS + 40),
    ]
    views = set()
    hashes = set()
    for order in itertools.islice(itertools.permutations(ops), 0, None, 97):
        state = State(NET)
        _ingest(state, *order)
        views.add(tuple(sorted(holders_of(state).items())))
        hashes.add(state.state_hash())
    assert len(hashes) == 1
    assert views == {
        (("blog.fog", (ALICE.address, A_BUILD)), ("shop.fog", (ALICE.address, A_BUILD))),
    }
