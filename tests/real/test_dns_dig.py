"""The real ``dig`` against ``serve_dns`` on 127.0.0.1: answers over UDP and TCP (``+tcp``),
NXDOMAIN with the SOA, REFUSED outside the zone, and a big answer truncated over UDP that dig
then retries over TCP by itself. Fails (never skips) when dig is missing: install dnsutils
(``scripts/ensure-system-deps.sh test``)."""

from __future__ import annotations

import shutil

import pytest
import trio

from node.names.records import INSTANCE_TTL_S, NEGATIVE_TTL_S, Zone, build_label
from node.names.server import serve_dns

pytestmark = pytest.mark.real

BUILD, BIG = "ab" * 32, "ee" * 32
IID = "11" * 20
_SLOTS = {f"slot:{IID}:0": "10.42.0.10"}
_INSTANCES: list[dict[str, object]] = [
    {"instance_id": IID, "build_id": BUILD, "slots": [{"slot": 0, "status": "Started"}]}
]
for _k in range(60):
    _iid = f"{_k:040x}"
    _INSTANCES.append(
        {"instance_id": _iid, "build_id": BIG, "slots": [{"slot": 0, "status": "Started"}]}
    )
    _SLOTS[f"slot:{_iid}:0"] = f"10.43.0.{_k + 1}"
ZONE = Zone(_INSTANCES, [], {"shop.fog": BUILD}, _SLOTS.get)


def _dig_path() -> str:
    dig = shutil.which("dig")
    if dig is None:
        pytest.fail("dig is missing: install dnsutils (scripts/ensure-system-deps.sh test)")
    return dig


async def _dig(port: int, *args: str) -> str:
    result = await trio.run_process(
        [_dig_path(), "@127.0.0.1", "-p", str(port), "+tries=1", "+time=5", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


@pytest.mark.parametrize("transport", [[], ["+tcp"]], ids=["udp", "tcp"])
async def test_dig_gets_the_running_address_nxdomain_and_refused(transport: list[str]) -> None:
    _dig_path()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve_dns, lambda: ZONE, "127.0.0.1", 0)
        port = int(bound.rsplit(":", 1)[1])
        short = await _dig(port, *transport, "+short", build_label(BUILD) + ".fog")
        assert short.split() == ["10.42.0.10"]
        full = await _dig(port, *transport, "+noall", "+answer", "shop.fog")
        fields = full.split()
        assert fields == ["shop.fog.", str(INSTANCE_TTL_S), "IN", "A", "10.42.0.10"]
        nx = await _dig(port, *transport, "nope.fog")
        assert "status: NXDOMAIN" in nx
        authority = nx.split("AUTHORITY SECTION:")[1].strip().splitlines()[0].split()
        assert authority[:6] == [
            "fog.",
            str(NEGATIVE_TTL_S),
            "IN",
            "SOA",
            "ns.fog.",
            "hostmaster.fog.",
        ]
        refused = await _dig(port, *transport, "example.com")
        assert "status: REFUSED" in refused
        nursery.cancel_scope.cancel()


async def test_dig_retries_a_truncated_answer_over_tcp() -> None:
    _dig_path()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve_dns, lambda: ZONE, "127.0.0.1", 0)
        port = int(bound.rsplit(":", 1)[1])
        name = build_label(BIG) + ".fog"
        # Without EDNS the UDP answer is cut at 512 bytes: TC set, dig told not to retry.
        cut = await _dig(port, "+noedns", "+ignore", name)
        assert " tc" in cut.split("flags:")[1].split(";")[0]
        # By default dig sees TC and asks again over TCP: all 60 records.
        whole = await _dig(port, "+noedns", "+short", name)
        assert sorted(whole.split()) == sorted(f"10.43.0.{k + 1}" for k in range(60))
        nursery.cancel_scope.cancel()
