"""node.mesh.wireguard without wireguard-go: keys, the UAPI text, peer diffing, and the socket
client against a fake UAPI server on a unix socket."""

from __future__ import annotations

import base64
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from random import Random

import pytest
import trio

from node.mesh import wireguard as wgm
from node.mesh.wireguard import (
    Peer,
    UapiError,
    WireGuard,
    generate_private_key,
    key_from_base64,
    key_to_base64,
    load_or_create_key,
    new_ifname,
    parse_errno,
    parse_get,
    peers_request,
    public_key_of,
    set_device_request,
    uapi_call,
)

# RFC 7748 section 6.1: Alice's X25519 key pair.
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
K1 = bytes(range(32))
K2 = bytes(range(1, 33))
K3 = bytes(range(2, 34))


# ---------------------------------------------------------------- keys


def test_public_key_matches_rfc7748_vector() -> None:
    assert public_key_of(ALICE_PRIVATE) == ALICE_PUBLIC


def test_generated_keys_are_distinct_32_bytes_with_their_public_key() -> None:
    a, b = generate_private_key(), generate_private_key()
    assert len(a) == 32
    assert len(b) == 32
    assert a != b
    assert public_key_of(a) != public_key_of(b)


def test_base64_round_trip_and_errors() -> None:
    text = key_to_base64(ALICE_PUBLIC)
    assert len(text) == 44
    assert text == base64.b64encode(ALICE_PUBLIC).decode()
    assert key_from_base64(text) == ALICE_PUBLIC
    with pytest.raises(ValueError, match="44 characters"):
        key_from_base64(text[:-1])
    with pytest.raises(ValueError, match="base64"):
        key_from_base64("!" * 44)
    with pytest.raises(ValueError, match="32 raw bytes"):
        key_to_base64(b"short")
    with pytest.raises(ValueError, match="private_key"):
        public_key_of(b"\0" * 31)


def test_load_or_create_key_makes_a_0600_file_once(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path)
    path = tmp_path / "mesh" / "wg.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key_from_base64(path.read_text().strip()) == key
    assert load_or_create_key(tmp_path) == key


def test_load_or_create_key_refuses_a_damaged_file_and_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "mesh" / "wg.key"
    path.parent.mkdir()
    path.write_text("not a key\n")
    with pytest.raises(ValueError, match="does not hold a WireGuard private key"):
        load_or_create_key(tmp_path)
    assert path.read_text() == "not a key\n"


def test_new_ifname_is_short_and_seedable() -> None:
    name = new_ifname()
    assert name.startswith("fm")
    assert len(name) == 10
    assert len(name) <= 15
    assert new_ifname(Random(7)) == new_ifname(Random(7))
    assert new_ifname(Random(7)) != new_ifname(Random(8))


# ---------------------------------------------------------------- request text


def test_set_device_request_text() -> None:
    text = set_device_request(private_key=K1, listen_port=51820)
    assert text == f"set=1\nprivate_key={K1.hex()}\nlisten_port=51820\n\n"
    assert set_device_request(listen_port=0) == "set=1\nlisten_port=0\n\n"
    with pytest.raises(ValueError, match="listen_port"):
        set_device_request(listen_port=70000)


def test_peer_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="public_key"):
        Peer(b"x")
    with pytest.raises(ValueError, match="IP literal"):
        Peer(K1, "example.org:51820")
    with pytest.raises(ValueError, match="port"):
        Peer(K1, "10.0.0.1:0")
    with pytest.raises(ValueError, match=r"\[addr\]:port"):
        Peer(K1, "::1:51820")
    with pytest.raises(ValueError, match="allowed_ips"):
        Peer(K1, None, ["10.42.0.1/16"])  # host bits set: not a network
    with pytest.raises(ValueError, match="keepalive_s"):
        Peer(K1, None, [], 0)
    assert Peer(K1, "[::1]:51820", ["fd00::/64"]).endpoint == "[::1]:51820"


def test_peers_request_adds_removes_and_skips_unchanged() -> None:
    current = {
        K1: Peer(K1, "10.88.0.1:51820", ["10.42.0.1/32"], None),
        K2: Peer(K2, "10.88.0.2:51820", ["10.42.0.2/32"], 25),
    }
    wanted = [
        Peer(K2, "10.88.0.2:51820", ["10.42.0.2/32"], 25),  # unchanged
        Peer(K3, "10.88.0.3:51821", ["10.42.0.3/32", "10.42.9.0/24"], None),  # new
    ]
    assert peers_request(current, wanted) == (
        "set=1\n"
        f"public_key={K1.hex()}\nremove=true\n"
        f"public_key={K3.hex()}\nendpoint=10.88.0.3:51821\n"
        "persistent_keepalive_interval=0\nreplace_allowed_ips=true\n"
        "allowed_ip=10.42.0.3/32\nallowed_ip=10.42.9.0/24\n\n"
    )


def test_peers_request_none_when_equal_and_rewrites_a_changed_peer() -> None:
    current = {K1: Peer(K1, "10.88.0.1:51820", ["10.42.0.1/32"], None)}
    same = [Peer(K1, "10.88.0.1:51820", ["10.42.0.1/32"], None)]
    assert peers_request(current, same) is None
    moved = [Peer(K1, "10.88.0.9:51820", ["10.42.0.1/32"], 5)]
    assert peers_request(current, moved) == (
        f"set=1\npublic_key={K1.hex()}\nendpoint=10.88.0.9:51820\n"
        "persistent_keepalive_interval=5\nreplace_allowed_ips=true\nallowed_ip=10.42.0.1/32\n\n"
    )
    assert peers_request({}, []) is None


def test_peers_request_refuses_two_peers_with_one_key() -> None:
    with pytest.raises(ValueError, match="two peers"):
        peers_request({}, [Peer(K1), Peer(K1, "10.0.0.1:1")])


# ---------------------------------------------------------------- reply parsing


GET_REPLY = (
    f"private_key={ALICE_PRIVATE.hex()}\n"
    "listen_port=51820\n"
    f"public_key={K1.hex()}\n"
    "endpoint=10.88.0.2:51820\n"
    "last_handshake_time_sec=1700000000\n"
    "last_handshake_time_nsec=500000000\n"
    "tx_bytes=1234\n"
    "rx_bytes=5678\n"
    "persistent_keepalive_interval=0\n"
    "allowed_ip=10.42.0.2/32\n"
    "protocol_version=1\n"
    f"public_key={K2.hex()}\n"
    "last_handshake_time_sec=0\n"
    "last_handshake_time_nsec=0\n"
    "tx_bytes=0\n"
    "rx_bytes=0\n"
    "persistent_keepalive_interval=25\n"
    "allowed_ip=10.42.0.3/32\n"
    "allowed_ip=10.42.7.0/24\n"
    "errno=0\n\n"
)


def test_parse_get_reads_device_peers_and_counters() -> None:
    state = parse_get(GET_REPLY)
    assert state.listen_port == 51820
    assert state.public_key == ALICE_PUBLIC
    assert state.peers[K1] == Peer(K1, "10.88.0.2:51820", ["10.42.0.2/32"], None)
    assert state.peers[K2] == Peer(K2, None, ["10.42.0.3/32", "10.42.7.0/24"], 25)
    one = state.status[K1]
    assert one["last_handshake_s"] == 1700000000.5
    assert (one["rx_bytes"], one["tx_bytes"]) == (5678, 1234)
    assert state.status[K2]["last_handshake_s"] is None
    assert state.status[K2]["public_key"] == key_to_base64(K2)


def test_parse_errors() -> None:
    assert parse_errno("errno=0\n\n") == 0
    assert parse_errno("errno=-22\n\n") == -22
    with pytest.raises(UapiError, match="no errno"):
        parse_errno("listen_port=1\n\n")
    with pytest.raises(UapiError, match="refused get"):
        parse_get("errno=1\n\n")
    with pytest.raises(UapiError, match="without '='"):
        parse_get("garbage\nerrno=0\n\n")
    with pytest.raises(UapiError, match="bad key"):
        parse_get("public_key=zz\nerrno=0\n\n")


# ---------------------------------------------------------------- against a fake server


@asynccontextmanager
async def fake_uapi(
    path: Path, answer: Callable[[str], bytes], requests: list[str]
) -> AsyncIterator[None]:
    """A unix socket at ``path`` that reads one request per connection, records it and
    writes ``answer(request)``: the shape wireguard-go's UAPI listener has."""
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await listener.bind(str(path))
    listener.listen(8)

    async def handle(conn: trio.socket.SocketType) -> None:
        with conn:
            buf = b""
            while not buf.endswith(b"\n\n"):
                chunk = await conn.recv(4096)
                if not chunk:
                    return
                buf += chunk
            request = buf.decode()
            requests.append(request)
            await trio.SocketStream(conn).send_all(answer(request))

    async def serve() -> None:
        async with trio.open_nursery() as inner:
            while True:
                conn, _ = await listener.accept()
                inner.start_soon(handle, conn)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        try:
            yield
        finally:
            nursery.cancel_scope.cancel()
            listener.close()


async def test_uapi_call_sends_the_request_and_returns_the_whole_reply(tmp_path: Path) -> None:
    sock = tmp_path / "x.sock"
    requests: list[str] = []
    async with fake_uapi(sock, lambda r: GET_REPLY.encode(), requests):
        reply = await uapi_call(sock, "get=1\n\n")
    assert requests == ["get=1\n\n"]
    assert reply == GET_REPLY


async def test_uapi_call_raises_on_a_refused_set(tmp_path: Path) -> None:
    sock = tmp_path / "x.sock"
    requests: list[str] = []
    async with fake_uapi(sock, lambda r: b"errno=-22\n\n", requests):
        with pytest.raises(UapiError, match="errno=-22"):
            await uapi_call(sock, set_device_request(listen_port=1))
    assert requests == ["set=1\nlisten_port=1\n\n"]


async def test_uapi_call_raises_when_the_daemon_hangs_up_early(tmp_path: Path) -> None:
    sock = tmp_path / "x.sock"
    async with fake_uapi(sock, lambda r: b"listen_port=1\n", []):
        with pytest.raises(UapiError, match="closed before the reply ended"):
            await uapi_call(sock, "get=1\n\n")
    with pytest.raises(ValueError, match="empty line"):
        await uapi_call(sock, "get=1\n")


async def test_uapi_call_bounds_the_reply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wgm, "_UAPI_REPLY_BYTES_MAX", 1000)
    sock = tmp_path / "x.sock"
    async with fake_uapi(sock, lambda r: b"a=" + b"1" * 5000 + b"\n", []):
        with pytest.raises(UapiError, match="exceeds 1000 bytes"):
            await uapi_call(sock, "get=1\n\n")


async def test_set_peers_diffs_against_the_daemons_peers(tmp_path: Path) -> None:
    sock = tmp_path / "x.sock"
    requests: list[str] = []

    def answer(request: str) -> bytes:
        return GET_REPLY.encode() if request.startswith("get=") else b"errno=0\n\n"

    wg = WireGuard(netns=None, ifname="fmtest0000", public_key=ALICE_PUBLIC)
    wg.sock_path = sock
    async with fake_uapi(sock, answer, requests):
        # K1 stays as it is, K2 goes, K3 comes.
        keep = Peer(K1, "10.88.0.2:51820", ["10.42.0.2/32"], None)
        await wg.set_peers([keep, Peer(K3, None, ["10.42.0.4/32"], None)])
        status = await wg.peers_status()
    assert requests[0] == "get=1\n\n"
    assert requests[1] == (
        f"set=1\npublic_key={K2.hex()}\nremove=true\n"
        f"public_key={K3.hex()}\npersistent_keepalive_interval=0\n"
        "replace_allowed_ips=true\nallowed_ip=10.42.0.4/32\n\n"
    )
    assert K1.hex() not in requests[1]
    assert [s["public_key"] for s in status] == [key_to_base64(K1), key_to_base64(K2)]


async def test_set_peers_sends_nothing_when_the_set_is_unchanged(tmp_path: Path) -> None:
    sock = tmp_path / "x.sock"
    requests: list[str] = []
    wg = WireGuard(netns=None, ifname="fmtest0001", public_key=ALICE_PUBLIC)
    wg.sock_path = sock
    state = parse_get(GET_REPLY)
    async with fake_uapi(sock, lambda r: GET_REPLY.encode(), requests):
        await wg.set_peers(list(state.peers.values()))
    assert requests == ["get=1\n\n"]


async def test_open_wireguard_refuses_bad_input_before_starting_anything() -> None:
    with pytest.raises(ValueError, match="interface name"):
        async with wgm.open_wireguard(
            netns=None,
            ifname="a-name-far-too-long",
            private_key=K1,
            listen_port=0,
            address_cidr="10.42.0.1/16",
        ):
            pass
    with pytest.raises(ValueError, match="private_key"):
        async with wgm.open_wireguard(
            netns=None, ifname="fm00000000", private_key=b"x", listen_port=0, address_cidr="x"
        ):
            pass


async def test_socket_in_use_tells_a_live_daemon_from_a_stale_file(tmp_path: Path) -> None:
    live = tmp_path / "live.sock"
    async with fake_uapi(live, lambda r: b"errno=0\n\n", []):
        assert await wgm._socket_in_use(live)
    stale = tmp_path / "stale.sock"
    dead = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await dead.bind(str(stale))  # bound, never listening: what a SIGKILLed daemon leaves
    dead.close()
    assert await wgm._socket_in_use(stale) is False
    assert not await trio.Path(stale).exists()
    assert await wgm._socket_in_use(tmp_path / "absent.sock") is False
