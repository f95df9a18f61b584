"""The mesh data path for real: wireguard-go in two network namespaces joined by a veth.

Needs root, ip, wireguard-go, wg and ping (``scripts/ensure-system-deps.sh run test``);
a missing one fails the test. The test makes two namespaces ``fmt-<hex>-a`` / ``-b`` and a
veth between them (private addresses only inside them: the underlay 10.88.0.0/24, the mesh
10.42.0.0/16), opens one WireGuard in each with ``open_wireguard``, sets peers, and then a
process in A pings B's mesh address and fetches a page from an HTTP server in B over the
mesh, while a raw AF_PACKET socket on A's veth end records every frame. On the veth there
must be only WireGuard UDP between the two listen ports (and ARP), and neither the page's
secret nor the ping's pattern may appear in any frame. A datagram sent over the bare veth
proves the capture sees clear text when there is some. Everything it made is removed.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import sys

import pytest
import trio

from node.mesh.wireguard import (
    UAPI_DIR,
    Peer,
    WireGuard,
    generate_private_key,
    key_to_base64,
    new_ifname,
    open_wireguard,
    public_key_of,
    wireguard_tools_missing,
)
from tests.real.mesh_net import (
    SERVER,
    UNDERLAY,
    capture_on,
    classify,
    host_links,
    two_netns,
)

pytestmark = [pytest.mark.real]

_MESH = ("10.42.0.1", "10.42.0.2")


async def test_ping_and_http_cross_the_mesh_and_only_wireguard_is_on_the_wire() -> None:
    missing = wireguard_tools_missing() + [t for t in ("wg", "ping") if shutil.which(t) is None]
    assert not missing, f"missing {missing}: run scripts/ensure-system-deps.sh run test"
    links_before = await host_links()
    keys = (generate_private_key(), generate_private_key())
    names = (new_ifname(), new_ifname())
    secret = "formation-" + secrets.token_hex(16)
    pattern = secrets.token_hex(16)  # ping -p fills each echo's payload with these 16 bytes
    control = "clear-" + secrets.token_hex(16)
    async with two_netns() as pair, contextlib.AsyncExitStack() as stack:
        a, b = pair.ns
        cap = await stack.enter_async_context(capture_on(a, pair.veth[0]))
        # The responder first: B knows A before A's first handshake initiation arrives.
        wg_b: WireGuard = await stack.enter_async_context(
            open_wireguard(
                netns=b,
                ifname=names[1],
                private_key=keys[1],
                listen_port=0,
                address_cidr=f"{_MESH[1]}/16",
            )
        )
        wg_a: WireGuard = await stack.enter_async_context(
            open_wireguard(
                netns=a,
                ifname=names[0],
                private_key=keys[0],
                listen_port=0,
                address_cidr=f"{_MESH[0]}/16",
            )
        )
        await wg_b.set_peers(
            [Peer(public_key_of(keys[0]), f"{UNDERLAY[0]}:{wg_a.listen_port}", [f"{_MESH[0]}/32"])]
        )
        await wg_a.set_peers(
            [
                Peer(
                    public_key_of(keys[1]),
                    f"{UNDERLAY[1]}:{wg_b.listen_port}",
                    [f"{_MESH[1]}/32"],
                    25,
                )
            ]
        )

        ping = await trio.run_process(
            [
                "ip",
                "netns",
                "exec",
                a,
                "ping",
                "-n",
                "-c",
                "3",
                "-w",
                "30",
                "-p",
                pattern,
                _MESH[1],
            ],
            capture_stdout=True,
            check=False,
        )
        assert ping.returncode == 0, ping.stdout.decode()
        assert " 0% packet loss" in ping.stdout.decode()

        server = await trio.lowlevel.open_process(
            ["ip", "netns", "exec", b, sys.executable, "-c", SERVER, _MESH[1]],
            stdout=subprocess.PIPE,
        )
        try:
            assert server.stdout is not None
            with trio.fail_after(10):
                port = int((await server.stdout.receive_some(100)).decode().strip())
            got = await trio.run_process(
                [
                    "ip",
                    "netns",
                    "exec",
                    a,
                    sys.executable,
                    "-c",
                    "import sys, urllib.request; "
                    "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode())",
                    f"http://{_MESH[1]}:{port}/{secret}",
                ],
                capture_stdout=True,
            )
            assert got.stdout.decode() == f"mesh says {secret}"
        finally:
            server.kill()
            await server.wait()

        # The control: the same capture does see clear text sent over the bare veth.
        probe = await trio.run_process(
            [
                "ip",
                "netns",
                "exec",
                a,
                sys.executable,
                "-c",
                "import socket, sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                ".sendto(sys.argv[1].encode(), (sys.argv[2], 9))",
                control,
                UNDERLAY[1],
            ],
            check=False,
        )
        assert probe.returncode == 0
        status_a = await wg_a.peers_status()
        wg_peers = await trio.run_process(
            ["ip", "netns", "exec", a, "wg", "show", names[0], "peers"], capture_stdout=True
        )
        await trio.sleep(0.3)  # the probe's frame reaches the capture thread

    frames = list(cap.frames)
    assert any(control.encode() in f for f in frames), "the capture saw no clear text at all"
    frames = [f for f in frames if control.encode() not in f]
    assert not [f for f in frames if secret.encode() in f], (
        "the page's secret crossed the veth in clear"
    )
    assert not [f for f in frames if bytes.fromhex(pattern) in f], (
        "the ping's payload crossed in clear"
    )
    kinds = [classify(f, {wg_a.listen_port, wg_b.listen_port}) for f in frames]
    assert {k for k in kinds if not k.startswith("wg-") and k != "arp"} == set()
    assert "wg-1" in kinds  # a handshake initiation
    assert "wg-2" in kinds  # its response
    assert kinds.count("wg-4") >= 6  # pings and the HTTP exchange, encrypted

    (peer,) = status_a
    assert peer["public_key"] == key_to_base64(public_key_of(keys[1]))
    assert peer["last_handshake_s"] is not None
    assert peer["rx_bytes"] > 0
    assert peer["tx_bytes"] > 0
    assert wg_peers.stdout.decode().split() == [key_to_base64(public_key_of(keys[1]))]

    # Everything is gone: namespaces, control sockets, and the host gained no link.
    for ns in pair.ns:
        assert not await trio.Path("/run/netns", ns).exists()
    for name in names:
        assert not await trio.Path(UAPI_DIR / f"{name}.sock").exists()
    assert await host_links() == links_before


async def test_set_peers_changes_the_mesh_without_a_restart() -> None:
    missing = wireguard_tools_missing() + [t for t in ("ping",) if shutil.which(t) is None]
    assert not missing, f"missing {missing}: run scripts/ensure-system-deps.sh run test"
    keys = (generate_private_key(), generate_private_key())
    names = (new_ifname(), new_ifname())
    async with two_netns() as pair, contextlib.AsyncExitStack() as stack:
        a, b = pair.ns
        wg_b = await stack.enter_async_context(
            open_wireguard(
                netns=b,
                ifname=names[1],
                private_key=keys[1],
                listen_port=0,
                address_cidr=f"{_MESH[1]}/16",
            )
        )
        wg_a = await stack.enter_async_context(
            open_wireguard(
                netns=a,
                ifname=names[0],
                private_key=keys[0],
                listen_port=0,
                address_cidr=f"{_MESH[0]}/16",
            )
        )
        peer_of_a = Peer(
            public_key_of(keys[0]), f"{UNDERLAY[0]}:{wg_a.listen_port}", [f"{_MESH[0]}/32"]
        )
        peer_of_b = Peer(
            public_key_of(keys[1]), f"{UNDERLAY[1]}:{wg_b.listen_port}", [f"{_MESH[1]}/32"]
        )

        async def ping_ok(deadline_s: int) -> bool:
            done = await trio.run_process(
                [
                    "ip",
                    "netns",
                    "exec",
                    a,
                    "ping",
                    "-n",
                    "-c",
                    "1",
                    "-w",
                    str(deadline_s),
                    _MESH[1],
                ],
                capture_stdout=True,
                check=False,
            )
            return done.returncode == 0

        assert not await ping_ok(2)  # no peers yet: nothing routes to B
        await wg_b.set_peers([peer_of_a])
        await wg_a.set_peers([peer_of_b])
        assert await ping_ok(30)
        pid_before = await _wireguard_pids(a)
        await wg_a.set_peers([])  # B leaves A's view
        assert await wg_a.peers_status() == []
        assert not await ping_ok(2)
        await wg_a.set_peers([peer_of_b])  # and comes back, same daemon
        assert await ping_ok(30)
        assert await _wireguard_pids(a) == pid_before


async def _wireguard_pids(ns: str) -> list[str]:
    out = await trio.run_process(["ip", "netns", "pids", ns], capture_stdout=True)
    return sorted(out.stdout.decode().split())


async def test_a_name_in_use_in_another_netns_is_refused() -> None:
    missing = wireguard_tools_missing()
    assert not missing, f"missing {missing}: run scripts/ensure-system-deps.sh run test"
    name = new_ifname()
    async with two_netns() as pair:
        a, b = pair.ns
        async with open_wireguard(
            netns=a,
            ifname=name,
            private_key=generate_private_key(),
            listen_port=0,
            address_cidr="10.42.0.1/16",
        ) as wg_a:
            with pytest.raises(ValueError, match="in use"):
                async with open_wireguard(
                    netns=b,
                    ifname=name,
                    private_key=generate_private_key(),
                    listen_port=0,
                    address_cidr="10.42.0.2/16",
                ):
                    pass
            assert (await wg_a.state()).public_key == wg_a.public_key  # the first one is untouched
        assert not await trio.Path(UAPI_DIR / f"{name}.sock").exists()


async def test_a_cancel_during_start_leaves_nothing_behind() -> None:
    missing = wireguard_tools_missing()
    assert not missing, f"missing {missing}: run scripts/ensure-system-deps.sh run test"
    async with two_netns() as pair:
        a = pair.ns[0]
        # Cancel at several points of the start: before the socket, mid-configuration, after.
        for delay_s in (0.0, 0.005, 0.02, 0.05, 0.2):
            name = new_ifname()
            with trio.move_on_after(delay_s):
                async with open_wireguard(
                    netns=a,
                    ifname=name,
                    private_key=generate_private_key(),
                    listen_port=0,
                    address_cidr="10.42.0.1/16",
                ):
                    await trio.sleep_forever()
            assert await _wireguard_pids(a) == [], (
                f"a process is left in {a} after a cancel at {delay_s} s"
            )
            assert not await trio.Path(UAPI_DIR / f"{name}.sock").exists()
            links = await trio.run_process(["ip", "-n", a, "-o", "link"], capture_stdout=True)
            assert name not in links.stdout.decode()


async def test_an_error_in_the_body_comes_out_as_itself_and_cleans_up() -> None:
    missing = wireguard_tools_missing()
    assert not missing, f"missing {missing}: run scripts/ensure-system-deps.sh run test"
    name = new_ifname()
    async with two_netns() as pair:
        a = pair.ns[0]
        with pytest.raises(KeyError, match="the caller's own error"):
            async with open_wireguard(
                netns=a,
                ifname=name,
                private_key=generate_private_key(),
                listen_port=0,
                address_cidr="10.42.0.1/16",
            ):
                raise KeyError("the caller's own error")
        assert await _wireguard_pids(a) == []
        assert not await trio.Path(UAPI_DIR / f"{name}.sock").exists()
