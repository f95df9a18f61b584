"""node.vmm.netns and node.vmm.forward for real, without QEMU: devices only inside the VM netns,
DHCP reservations, and a forward from 127.0.0.1 on the host to a server inside the netns.

Needs root, ip (iproute2) and dnsmasq (``scripts/ensure-system-deps.sh run test``): a missing
tool fails the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from node.vmm.forward import open_forward
from node.vmm.netns import BRIDGE, GATEWAY_IP, open_vm_network, socket_in_netns

pytestmark = [pytest.mark.real]


def host_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return {line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()}


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


async def test_network_lives_in_its_netns_and_a_forward_reaches_inside(tmp_path: Path) -> None:
    missing = [t for t in ("ip", "dnsmasq") if shutil.which(t) is None]
    assert not missing, f"missing {missing}: run scripts/ensure-system-deps.sh run test"
    assert os.geteuid() == 0, "the VM netns needs root"
    links_before = await trio.to_thread.run_sync(host_links)
    netns_before = await trio.to_thread.run_sync(netns_names)

    async with open_vm_network(tmp_path / "net") as net, trio.open_nursery() as nursery:
        assert net.name not in netns_before
        assert net.name.startswith("fvm-")
        a = net.add_tap("vm-a")
        b = net.add_tap("vm-b")
        assert net.add_tap("vm-a") == a  # idempotent
        assert (a.ip, b.ip) == ("10.77.0.10", "10.77.0.11")
        assert a.mac != b.mac
        assert a.tap != b.tap
        hosts = (tmp_path / "net" / "dhcp-hosts").read_text()
        assert f"{a.mac},{a.ip}" in hosts
        assert f"{b.mac},{b.ip}" in hosts
        done = await trio.run_process(
            ["ip", "netns", "exec", net.name, "ip", "-o", "addr"], capture_stdout=True
        )
        inside = done.stdout.decode()
        assert BRIDGE in inside
        assert f"{GATEWAY_IP}/24" in inside
        assert await trio.to_thread.run_sync(host_links) - links_before == set()

        # A server inside the netns on the bridge address, reached from the host's loopback.
        raw = await socket_in_netns(net.name)
        server = trio.socket.from_stdlib_socket(raw)
        await server.bind((GATEWAY_IP, 0))
        server.listen(4)
        port = server.getsockname()[1]

        async def serve_once() -> None:
            conn, _ = await server.accept()
            with conn:
                data = await conn.recv(100)
                await conn.send(b"inside:" + data)

        nursery.start_soon(serve_once)

        async def dial() -> trio.abc.Stream:
            sock = trio.socket.from_stdlib_socket(await socket_in_netns(net.name))
            await sock.connect((GATEWAY_IP, port))
            return trio.SocketStream(sock)

        fwd = await open_forward(nursery, port, dial)
        client = await trio.open_tcp_stream("127.0.0.1", fwd.port)
        async with client:
            await client.send_all(b"hello")
            assert await client.receive_some(100) == b"inside:hello"
        # (No dial of GATEWAY_IP from the host's namespace: it would leave by the host's
        # default route; the link and address checks show it is not here.)
        done = await trio.run_process(["ip", "-o", "addr"], capture_stdout=True)
        assert f"{GATEWAY_IP}/" not in done.stdout.decode()

        net.remove_tap("vm-a")
        assert f"{a.mac}" not in (tmp_path / "net" / "dhcp-hosts").read_text()
        fwd.close()
        server.close()
        nursery.cancel_scope.cancel()

    assert net.name not in await trio.to_thread.run_sync(netns_names)
    assert await trio.to_thread.run_sync(host_links) - links_before == set()
