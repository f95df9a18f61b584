"""Three real node processes on loopback, driven only through their gateways.

A write signed by a user and accepted by one node's gateway is a request op that every other
replica verifies for itself (``node.ledger.request_op``), so whatever one gateway accepted
must become readable through every other gateway, and an entity created through one node can
be changed through another. Refusals happen before anything is stored: a request altered
after signing, or sent a second time, is answered 401 and adds no op. A delegated key acts
for its account through any node once the grant op has reached that node.

Nodes run with ``--heartbeat-s 0`` so that their op counts change only through our requests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from node.client.api import ApiError, GatewayClient
from node.client.signer import sign_request
from node.devnet import LocalFog
from node.ledger.state import instance_id_of
from tests.helpers import seeded_keys
from tests.real.fogs import running_fog

pytestmark = pytest.mark.real

ACCOUNT, DELEGATE = seeded_keys(2, seed=31)
NODES: Final = 3
CONVERGE_S_MAX: Final = 30.0
GOSSIP_S_MAX: Final = 15.0  # how long a write may take to reach another node
GRANT_S: Final = 3600


def _poll(what: str, read: Callable[[], Any], timeout_s: float = GOSSIP_S_MAX) -> Any:
    """``read()`` once it returns something truthy; 403/404 (not there yet) are retried."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = read()
        except ApiError as exc:
            if exc.status not in (403, 404):
                raise
            value, last = None, f"{exc.status} {exc.code}: {exc.message}"
        else:
            last = repr(value)[:300]
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s:.0f} s; last {last}"
        time.sleep(0.05)


@pytest.fixture
def fog(tmp_path: Path) -> Iterator[LocalFog]:
    with running_fog(tmp_path, NODES, CONVERGE_S_MAX) as started:
        yield started


def _gateways(fog: LocalFog) -> list[str]:
    urls = []
    for i in range(NODES):
        status = fog.status(i)
        assert status is not None, f"node {i} does not answer on its control socket"
        assert status["gateway"], f"node {i} reports no gateway"
        urls.append(status["gateway"])
    return urls


def _signed(
    url: str, path: str, body: bytes, *, nonce: str, signed_body: bytes | None = None
) -> httpx.Request:
    """A POST signed as ACCOUNT; ``signed_body`` signs other bytes than those sent."""
    headers = sign_request(
        ACCOUNT,
        "POST",
        path,
        body if signed_body is None else signed_body,
        int(time.time()),
        nonce,
    )
    headers["Content-Type"] = "application/json"
    return httpx.Request("POST", url + path, content=body, headers=headers)


def test_writes_through_one_gateway_are_served_and_refused_alike_by_the_others(
    fog: LocalFog,
) -> None:
    urls = _gateways(fog)
    as_account = [GatewayClient(url, ACCOUNT) for url in urls]
    http = httpx.Client(timeout=10, trust_env=False)  # loopback only: no proxy from the env
    try:
        # -- an account and an agent written through node 0 are read through node 2
        as_account[0].account_create(name="alice", description="first")
        agent_id = as_account[0].agent_create({"name": "helper", "description": "answers"})[
            "agent_id"
        ]
        account = _poll("the account on node 2", lambda: as_account[2].account_get(ACCOUNT.address))
        assert (account["address"], account["name"]) == (ACCOUNT.address, "alice")
        agent = _poll("the agent on node 2", lambda: as_account[2].agent_get(agent_id))
        assert (agent["owner_id"], agent["name"]) == (ACCOUNT.address, "helper")

        # -- an instance created on node 0 and stopped through node 1 is stopped on node 2
        instance_id = as_account[0].instance_create("web", "NAME web\n")["instance_id"]
        _poll("the instance on node 1", lambda: as_account[1].instance_get(instance_id))
        # Signed two seconds back, so the start below is a later second than this stop.
        stop_path = f"/v1/instance/{instance_id}/stop"
        stop = sign_request(
            ACCOUNT, "POST", stop_path, b"{}", int(time.time()) - 2, "stop-web-00000001"
        )
        stop["Content-Type"] = "application/json"
        stopped = http.post(urls[1] + stop_path, content=b"{}", headers=stop)
        assert stopped.status_code == 200, stopped.text
        _poll(
            "the stop on node 2",
            lambda: as_account[2].instance_get(instance_id)["desired_state"] == "stopped",
        )
        # The same stop sent through another gateway later, whose nonce cache never saw it,
        # sorts before the start the user signed after it: it cannot undo it.
        as_account[1].instance_start(instance_id)
        fog.wait(lambda: fog.converged(NODES), timeout_s=CONVERGE_S_MAX)
        replayed = http.post(urls[2] + stop_path, content=b"{}", headers=stop)
        assert replayed.status_code in (200, 401), replayed.text
        fog.wait(lambda: fog.converged(NODES), timeout_s=CONVERGE_S_MAX)
        assert [c.instance_get(instance_id)["desired_state"] for c in as_account] == [
            "running"
        ] * NODES

        # -- a tampered and a replayed request to node 1 are 401 and store nothing
        ops = as_account[1].node_info()["ops"]
        update = json.dumps({"description": "second"}).encode()
        tampered = _signed(
            urls[1],
            "/v1/account/update",
            json.dumps({"description": "mallory"}).encode(),
            nonce="tampered-00000001",
            signed_body=update,
        )
        refused = http.send(tampered)
        assert (refused.status_code, refused.json()["error"]) == (401, "message_mismatch")
        assert as_account[1].node_info()["ops"] == ops

        original = _signed(urls[1], "/v1/account/update", update, nonce="update-0000000001")
        assert http.send(original).status_code == 200
        assert as_account[1].node_info()["ops"] == ops + 1
        again = http.send(original)
        assert (again.status_code, again.json()["error"]) == (401, "replayed")
        assert as_account[1].node_info()["ops"] == ops + 1
        assert as_account[1].account_get(ACCOUNT.address)["description"] == "second"

        # -- a delegated key granted on node 0 acts for the account through node 2
        as_account[0].key_grant(
            DELEGATE.address, ["instance", "read"], int(time.time()) + GRANT_S, label="ci"
        )
        _poll(
            "the grant on node 2",
            lambda: any(
                k["delegate"] == DELEGATE.address for k in as_account[2].key_list()["keys"]
            ),
        )
        with GatewayClient(urls[2], DELEGATE, act_as=ACCOUNT.address) as delegate:
            made = delegate.instance_create("job", "NAME job\n")
        job_id = instance_id_of(ACCOUNT.address, "job")
        assert made["instance_id"] == job_id
        job = _poll("the delegate's instance on node 1", lambda: as_account[1].instance_get(job_id))
        assert (job["instance_owner"], job["name"]) == (ACCOUNT.address, "job")
    finally:
        http.close()
        for client in as_account:
            client.close()
