"""The mesh from replicated state, on real node processes (``node.mesh.link``).

Needs root, ip, wireguard-go and ping (``scripts/ensure-system-deps.sh run test``); a missing
one fails the tests, never skips them.

* Two ``formation-node run`` processes in two namespaces the test makes, joined by a veth
  (``tests.real.mesh_net``). Each node claims its mesh address, publishes its WireGuard key
  and endpoint (the veth address) in a signed ``mesh.key`` and makes its interface in a netns
  of its own. A process in A's mesh namespace pings B's mesh address and fetches a page from
  a server on it, while a raw capture on A's veth end records every frame: the mesh traffic
  is WireGuard UDP between the two published ports, the rest is the nodes' libp2p TCP
  (Noise-encrypted), and neither the page's secret nor the ping's pattern appears anywhere.
* Three nodes on loopback: a node that joins appears as a peer on the others, one that
  leaves disappears, and no node's wireguard-go restarts for it; a node killed with SIGKILL
  leaves a wireguard-go behind that its next start stops.

No node puts a 10.x address in the host's namespace (checked before and after).
"""

from __future__ import annotations

import secrets
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from node.devnet import LocalFog
from node.mesh.wireguard import UAPI_DIR, wireguard_tools_missing
from tests.real.mesh_net import SERVER, UNDERLAY, capture_on, classify, two_netns

pytestmark = [pytest.mark.real, pytest.mark.slow]

_WAIT_S = 60.0


def _need_tools() -> None:
    missing = wireguard_tools_missing() + [t for t in ("ping",) if shutil.which(t) is None]
    assert not missing, f"missing {missing}: run scripts/ensure-system-deps.sh run test"


def _host_private_addresses() -> list[str]:
    out = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if " inet 10." in line]


def _mesh(fog: LocalFog, i: int) -> dict[str, Any]:
    status = fog.status(i)
    assert status is not None, f"node {i} does not answer; log:\n{fog.log(i)[-3000:]}"
    mesh: dict[str, Any] = status["mesh"]
    return mesh


def _status(fog: LocalFog, i: int) -> dict[str, Any]:
    status = fog.status(i)
    assert status is not None, f"node {i} does not answer; log:\n{fog.log(i)[-3000:]}"
    return status


def _wait_mesh(fog: LocalFog, nodes: list[int], ready: Callable[[dict[str, Any]], bool]) -> None:
    def all_ready() -> bool:
        return all(ready(_mesh(fog, i)) for i in nodes)

    try:
        fog.wait(all_ready, timeout_s=_WAIT_S)
    except TimeoutError:
        raise AssertionError(
            f"mesh not ready: {[_mesh(fog, i) for i in nodes]}\n{fog.log(nodes[0])[-3000:]}"
        ) from None


def _in_ns(ns: str, *argv: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout_s
    )


def _wireguard_pids() -> set[int]:
    """Running wireguard-go processes. A zombie does not count: a killed node's orphan is
    reparented to PID 1, which in some sandboxes never reaps (it holds no device or socket)."""
    out = subprocess.run(["pgrep", "-x", "wireguard-go"], capture_output=True, text=True)
    pids = set()
    for pid in out.stdout.split():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            pids.add(int(pid))
    return pids


def _uapi_sockets() -> set[str]:
    """The mesh interfaces' wireguard-go control sockets on this machine, by file name."""
    return {p.name for p in UAPI_DIR.glob("fm*.sock")} if UAPI_DIR.exists() else set()


def _libp2p_port(fog: LocalFog, i: int) -> int:
    status = fog.status(i)
    assert status is not None
    return int(status["listen_addrs"][0].split("/")[4])


async def test_two_nodes_in_two_namespaces_talk_over_the_mesh_and_the_veth_shows_only_wireguard(
    tmp_path: Path,
) -> None:
    _need_tools()
    assert _host_private_addresses() == [], "the host already has a 10.x address"
    # Control sockets of other runs on this machine (a SIGKILLed wireguard-go leaves its
    # socket file behind) are not ours to judge: only what this test adds must be gone.
    sockets_before = _uapi_sockets()
    secret = "formation-" + secrets.token_hex(16)
    pattern = secrets.token_hex(16)  # ping -p fills each echo's payload with these bytes
    async with two_netns() as pair:
        fog = LocalFog(
            tmp_path / "fog",
            mesh="on",
            netns=pair.ns,
            listen_of=lambda i: f"/ip4/{UNDERLAY[i]}/tcp/0",
        )
        (tmp_path / "fog").mkdir()
        server: subprocess.Popen[str] | None = None
        try:
            await trio.to_thread.run_sync(fog.start, 0)
            await trio.to_thread.run_sync(fog.start, 1)
            await trio.to_thread.run_sync(
                _wait_mesh, fog, [0, 1], lambda m: m.get("peers") == 1 and "address" in m
            )
            mesh = [_mesh(fog, 0), _mesh(fog, 1)]
            # The endpoint each node published is its veth address: the replicated key op.
            for i in (0, 1):
                assert mesh[i]["endpoint"].startswith(f"{UNDERLAY[i]}:"), mesh[i]
                assert mesh[i]["netns"].startswith("fmn-"), mesh[i]
            wg_ports = {int(m["endpoint"].rsplit(":", 1)[1]) for m in mesh}
            p2p_ports = {_libp2p_port(fog, 0), _libp2p_port(fog, 1)}
            b_address = mesh[1]["address"].split("/")[0]
            server = subprocess.Popen(  # noqa: ASYNC220 (one line read, then it serves)
                ["ip", "netns", "exec", mesh[1]["netns"], sys.executable, "-c", SERVER, b_address],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert server.stdout is not None
            http_port = int(server.stdout.readline())
            async with capture_on(pair.ns[0], pair.veth[0]) as cap:
                ping = await trio.to_thread.run_sync(
                    lambda: _in_ns(
                        mesh[0]["netns"],
                        "ping",
                        "-n",
                        "-c",
                        "3",
                        "-w",
                        "15",
                        "-p",
                        pattern,
                        b_address,
                    )
                )
                assert ping.returncode == 0, ping.stdout + ping.stderr
                fetch = await trio.to_thread.run_sync(
                    lambda: _in_ns(
                        mesh[0]["netns"],
                        sys.executable,
                        "-c",
                        "import sys, urllib.request; "
                        "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())",
                        f"http://{b_address}:{http_port}/{secret}",
                    )
                )
                assert fetch.returncode == 0, fetch.stderr
                assert fetch.stdout.strip() == f"mesh says {secret}"
            kinds: dict[str, int] = {}
            for frame in cap.frames:
                kind = classify(frame, wg_ports)
                if kind.startswith("ip protocol 6"):
                    kind = _tcp_kind(frame, p2p_ports)
                kinds[kind] = kinds.get(kind, 0) + 1
                assert secret.encode() not in frame, "the page crossed the veth in clear"
                assert bytes.fromhex(pattern) not in frame, "a ping crossed the veth in clear"
            allowed = {"arp", "libp2p tcp", "wg-1", "wg-2", "wg-3", "wg-4"}
            assert set(kinds) <= allowed, kinds
            assert kinds.get("wg-4", 0) >= 6, kinds  # 3 echoes + replies, and the HTTP
            # After the mesh came up both saw a handshake.
            await trio.to_thread.run_sync(
                _wait_mesh, fog, [0, 1], lambda m: m.get("peers_handshaken") == 1
            )
        finally:
            if server is not None:
                server.kill()
                server.wait()
                if server.stdout is not None:
                    server.stdout.close()
            await trio.to_thread.run_sync(fog.stop_all)
    assert _host_private_addresses() == []
    leftover = sorted(_uapi_sockets() - sockets_before)
    assert leftover == [], leftover


def _tcp_kind(frame: bytes, p2p_ports: set[int]) -> str:
    ip = frame[14:]
    header_bytes = (ip[0] & 0x0F) * 4
    sport, dport = struct.unpack_from("!HH", ip, header_bytes)
    return "libp2p tcp" if {sport, dport} & p2p_ports else f"tcp {sport}->{dport}"


def _ping(ns: str, address: str) -> bool:
    return _in_ns(ns, "ping", "-n", "-c", "1", "-w", "12", address).returncode == 0


def test_peers_follow_joins_and_leaves_without_a_restart_and_a_killed_node_cleans_up(
    tmp_path: Path,
) -> None:
    _need_tools()
    before = _wireguard_pids()
    fog = LocalFog(tmp_path, mesh="on")
    try:
        fog.start(0)
        fog.start(1)
        _wait_mesh(fog, [0, 1], lambda m: m.get("peers") == 1)
        wg0 = _wireguard_pids() - before
        assert len(wg0) == 2, wg0
        fog.start(2)
        _wait_mesh(fog, [0, 1, 2], lambda m: m.get("peers") == 2)
        mesh = [_mesh(fog, i) for i in range(3)]
        assert len({m["address"] for m in mesh}) == 3
        assert _ping(mesh[0]["netns"], mesh[2]["address"].split("/")[0])
        assert _ping(mesh[2]["netns"], mesh[1]["address"].split("/")[0])
        # Node 2 joined: nodes 0 and 1 took it as a peer with the same wireguard-go.
        assert wg0 <= _wireguard_pids()
        interfaces = {i: mesh[i]["interface"] for i in (0, 1)}
        fog.procs[2].send_signal(signal.SIGINT)
        fog.procs[2].wait(timeout=30)
        _wait_mesh(fog, [0, 1], lambda m: m.get("peers") == 1)
        assert wg0 <= _wireguard_pids()
        assert {i: _mesh(fog, i)["interface"] for i in (0, 1)} == interfaces

        # SIGKILL node 1: its wireguard-go lives on; the next start stops it and makes anew.
        status1 = fog.status(1)
        assert status1 is not None
        netns1 = status1["mesh"]["netns"]
        orphan = {
            int(line.split()[0])
            for line in (tmp_path / "n1" / "mesh" / "wg-pid").read_text().splitlines()
        }
        fog.procs[1].kill()
        fog.procs[1].wait()
        assert orphan <= _wireguard_pids()
        fog.start(1)
        ids = {i: _status(fog, i)["address"] for i in (0, 1)}
        # Node 2 is only gone to node 0's membership; the restarted node 1 never saw it go.
        _wait_mesh(fog, [0], lambda m: ids[1] in m.get("peer_ids", ()))
        _wait_mesh(fog, [1], lambda m: ids[0] in m.get("peer_ids", ()))
        assert not orphan & _wireguard_pids(), "the killed node's wireguard-go still runs"
        assert not Path("/run/netns", netns1).exists(), "the killed node's netns is still there"
        mesh = [_mesh(fog, i) for i in (0, 1)]
        assert _ping(mesh[0]["netns"], mesh[1]["address"].split("/")[0])
    finally:
        fog.stop_all()
    assert _wireguard_pids() <= before
    assert _host_private_addresses() == []
