"""The rights protocol's frames (node/p2p/rights.py): what an ask and an answer may hold, and
how an answer is cut to its bounds. Pure; no libp2p (the exchange itself runs in
tests/real/test_billing_fog.py). About 0.1 s."""

from __future__ import annotations

import json

import pytest

from node.p2p import rights

ACCOUNT = "0x" + "ab" * 20
SIG = "0x" + "11" * 65


def test_a_good_ask_parses() -> None:
    raw = json.dumps({"account": ACCOUNT, "amount": 5, "have": 0}).encode()
    assert rights.parse_ask(raw) == rights.RightsAsk(ACCOUNT, 5, 0)


@pytest.mark.parametrize(
    "ask",
    [
        b"not json",
        b"[1]",
        json.dumps({"account": ACCOUNT, "amount": 5}).encode(),
        json.dumps({"account": ACCOUNT, "amount": 5, "have": 0, "x": 1}).encode(),
        json.dumps({"account": ACCOUNT.upper(), "amount": 5, "have": 0}).encode(),
        json.dumps({"account": ACCOUNT, "amount": 0, "have": 0}).encode(),
        json.dumps({"account": ACCOUNT, "amount": True, "have": 0}).encode(),
        json.dumps({"account": ACCOUNT, "amount": 2**62 + 1, "have": 0}).encode(),
        json.dumps({"account": ACCOUNT, "amount": 5, "have": -1}).encode(),
        json.dumps({"account": ACCOUNT, "amount": 5.0, "have": 0}).encode(),
    ],
)
def test_a_bad_ask_is_refused(ask: bytes) -> None:
    assert rights.parse_ask(ask) is None


def test_an_answer_round_trips_and_keeps_the_grant_end_of_the_chain() -> None:
    ops = [(f'{{"n":{i}}}'.encode(), bytes(65)) for i in range(rights.OPS_MAX + 5)]
    got = rights.parse_answer(rights.answer_frame(7, 40, ops))
    assert (got.granted, got.seq) == (7, 40)
    assert got.ops == ops[-rights.OPS_MAX :]  # the last ones: the grant is the last
    nothing = rights.parse_answer(rights.answer_frame(0, None, []))
    assert (nothing.granted, nothing.seq, nothing.ops) == (0, None, [])


def test_an_answer_is_cut_to_its_byte_bound() -> None:
    big = b"x" * (rights.OPS_BYTES_MAX // 3)
    ops = [(big, bytes(65)) for _ in range(5)]
    got = rights.parse_answer(rights.answer_frame(1, 5, ops))
    assert 1 <= len(got.ops) < 5
    assert sum(len(body) for body, _ in got.ops) <= rights.OPS_BYTES_MAX


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        ({"error": "forbidden", "message": "not a node"}, "refused"),
        ([1], "JSON object"),
        ({"granted": -1, "seq": None, "ops": []}, "non-negative"),
        ({"granted": 1, "seq": 0, "ops": []}, "seq"),
        ({"granted": 1, "seq": 1, "ops": [["body", "0x12"]]}, "signature"),
        ({"granted": 1, "seq": 1, "ops": [["b", SIG]] * (rights.OPS_MAX + 1)}, "at most"),
    ],
)
def test_a_bad_answer_is_a_value_error(answer: object, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        rights.parse_answer(json.dumps(answer).encode())
