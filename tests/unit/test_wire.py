"""The gossip wire codec (node/gossip/wire.py): round trips, strictness, bombs, framing."""

from __future__ import annotations

import tracemalloc
from dataclasses import replace

import pytest
import zstandard
from hypothesis import given, settings

from node.gossip.config import GossipConfig
from node.gossip.messages import (
    Ack,
    Attach,
    Detach,
    Gossip,
    IHave,
    IWant,
    Join,
    MemberState,
    MemberUpdate,
    Message,
    Nack,
    Packet,
    Ping,
    PingReq,
    Sync,
    Welcome,
    WireOp,
)
from node.gossip.wire import (
    ADDR_BYTES_MAX,
    COMPRESS_THRESHOLD_BYTES,
    DEFAULT_LIMITS,
    FLAG_ZSTD,
    MAGIC,
    NODE_ID_BYTES_MAX,
    TAGS,
    BadPacket,
    FrameReader,
    WireLimits,
    decode,
    encode,
    encoded_size,
    frame,
)
from node.ledger.digest import MESSAGE_BYTES_MAX
from node.ledger.op import OP_BODY_BYTES_MAX
from tests.helpers import op, seeded_keys
from tests.wire_strategies import packets

KEYS = seeded_keys(3, seed=21)
ID_A = bytes(range(32))
ID_B = bytes(range(1, 33))
SIG = bytes(range(65))


def real_ops(count: int) -> list[WireOp]:
    """Signed ops of the usual size (~270-byte bodies), deterministic."""
    ops = [
        op(KEYS[i % len(KEYS)], "account.create", {"name": f"account-{i:04d}"}, logical=i)
        for i in range(count)
    ]
    return [(o.body, o.sig) for o in ops]


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def text(value: str) -> bytes:
    raw = value.encode()
    return varint(len(raw)) + raw


def raw_packet(*messages: bytes, sender: bytes = b"\x01a", updates: bytes = b"\x00") -> bytes:
    """An uncompressed frame from hand-written message bytes (tag included)."""
    return bytes((MAGIC, 0)) + sender + updates + varint(len(messages)) + b"".join(messages)


def member_bytes(
    node: str, addr: str = "", state: int = 0, incarnation: int = 0, origin: str = ""
) -> bytes:
    return text(node) + text(addr) + bytes((state,)) + varint(incarnation) + text(origin)


def tag(kind: type) -> bytes:
    return bytes((TAGS[kind],))


def zstd_frame(payload: bytes, *, write_content_size: bool = True) -> bytes:
    compressor = zstandard.ZstdCompressor(level=3, write_content_size=write_content_size)
    return compressor.compress(payload)


def compressed_packet(frame_data: bytes) -> bytes:
    return bytes((MAGIC, FLAG_ZSTD)) + frame_data


# --- round trips ----------------------------------------------------------------------------

ALL_MESSAGES: list[Message] = [
    Ping(0),
    Ping(2**64 - 1),
    Ack(300),
    PingReq(7, "n42"),
    Nack(7),
    Join("/ip4/10.0.0.1/tcp/4001"),
    Join(""),
    Welcome(()),
    Welcome(
        (
            MemberUpdate("n1", "10.0.0.1:1", MemberState.ALIVE, 0),
            MemberUpdate("0x" + "ab" * 20, "", MemberState.LEFT, 2**64 - 1),
        )
    ),
    Gossip(()),
    Gossip(tuple(real_ops(3))),
    Gossip(tuple(real_ops(2)), eager=False),
    IHave(()),
    IHave((ID_A, ID_B)),
    Attach((ID_B,)),
    IWant((ID_A, ID_B)),
    Detach(),
    Sync(0, b"\x01"),
    Sync(2**40, bytes(MESSAGE_BYTES_MAX)),
]


def test_every_message_type_is_covered() -> None:
    assert {type(m) for m in ALL_MESSAGES} == set(TAGS)
    assert len(set(TAGS.values())) == len(TAGS)


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip_each_message(message: Message) -> None:
    packet = Packet("n1", (message,))
    assert decode(encode(packet)) == packet
    assert decode(encode(packet, compress=False)) == packet


def test_round_trip_mixed_packet_with_updates() -> None:
    updates = tuple(
        MemberUpdate(f"n{i}", f"10.0.0.{i}:7946", MemberState(i % 4), i * 1000) for i in range(16)
    )
    packet = Packet("n0", tuple(ALL_MESSAGES), updates)
    data = encode(packet)
    assert data[1] == FLAG_ZSTD
    assert decode(data) == packet
    assert decode(bytearray(data)) == packet
    assert decode(memoryview(data)) == packet


def test_empty_packet_is_five_bytes() -> None:
    packet = Packet("n1")
    assert encode(packet) == bytes((MAGIC, 0)) + b"\x02n1\x00\x00"
    assert decode(encode(packet)) == packet


def test_a_ping_is_tiny_and_uncompressed() -> None:
    data = encode(Packet("n1", (Ping(5),)))
    assert data == bytes((MAGIC, 0)) + b"\x02n1\x00\x01" + tag(Ping) + b"\x05"


def test_op_batches_are_compressed_and_encoded_size_is_the_uncompressed_bound() -> None:
    packet = Packet("n1", (Gossip(tuple(real_ops(10))),))
    data = encode(packet)
    plain = encode(packet, compress=False)
    assert data[:2] == bytes((MAGIC, FLAG_ZSTD))
    assert plain[:2] == bytes((MAGIC, 0))
    assert len(data) < len(plain)
    assert encoded_size(packet) == len(plain)
    assert decode(data) == decode(plain) == packet


def test_incompressible_payloads_go_uncompressed() -> None:
    import random

    rng = random.Random(3)
    ids = tuple(rng.randbytes(32) for _ in range(100))
    packet = Packet("n1", (IHave(ids),))
    assert encoded_size(packet) > COMPRESS_THRESHOLD_BYTES
    data = encode(packet)
    assert data[1] == 0
    assert len(data) == encoded_size(packet)


def test_encode_accepts_lists_and_decode_returns_tuples() -> None:
    ops = real_ops(2)
    packet = Packet("n1", [Gossip(ops), IHave([ID_A])], [MemberUpdate("n2", "", 1, 3)])  # type: ignore[arg-type]
    decoded = decode(encode(packet))
    assert decoded == Packet("n1", (Gossip(tuple(ops)), IHave((ID_A,))), decoded.updates)
    assert decoded.updates == (MemberUpdate("n2", "", MemberState.SUSPECT, 3),)
    assert type(decoded.updates[0].state) is MemberState


@settings(max_examples=200)
@given(packets)
def test_round_trip_property(packet: Packet) -> None:
    data = encode(packet)
    plain = encode(packet, compress=False)
    assert decode(data) == packet
    assert decode(plain) == packet
    assert encoded_size(packet) == len(plain) >= len(data)


# --- limits ---------------------------------------------------------------------------------


def test_default_limits_come_from_the_default_config() -> None:
    cfg = GossipConfig()
    assert WireLimits.from_config(cfg) == DEFAULT_LIMITS
    assert DEFAULT_LIMITS.packet_bytes_max == cfg.packet_bytes_max
    # An anti-entropy reply may carry sync_ops_per_reply_max ops in one packet.
    assert DEFAULT_LIMITS.ops_per_packet_max == max(
        cfg.ops_per_packet_max, cfg.sync_ops_per_reply_max
    )
    small = WireLimits.from_config(replace(cfg, packet_bytes_max=1000, ids_per_packet_max=3))
    assert (small.packet_bytes_max, small.ids_per_packet_max) == (1000, 3)


@pytest.mark.parametrize(
    "kwargs", [{"packet_bytes_max": -1}, {"packet_bytes_max": 3}, {"ops_per_packet_max": 1.5}]
)
def test_bad_limits_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="WireLimits"):
        WireLimits(**kwargs)  # type: ignore[arg-type]


def test_a_receiver_with_tighter_limits_refuses_what_the_sender_allowed() -> None:
    data = encode(Packet("n1", (IHave((ID_A, ID_B)),)))
    with pytest.raises(BadPacket, match=r"IHave\.ids has 2 entries; the limit is 1"):
        decode(data, replace(DEFAULT_LIMITS, ids_per_packet_max=1))


# --- decode refuses malformed input ---------------------------------------------------------

PING = tag(Ping) + b"\x05"
OP_BYTES = varint(3) + b"{}x" + SIG

BAD: list[tuple[str, object, bytes, str]] = [
    # (case, limits or None, data, message fragment)
    ("empty", None, b"", "header alone is 2"),
    ("one byte", None, bytes((MAGIC,)), "header alone is 2"),
    ("not a packet", None, b"\x28\xb5\x2f\xfd", r"not a gossip packet \(first byte 0x28"),
    ("future version", None, b"\xf2\x00\x01a\x00\x00", "version 2; this node speaks version 1"),
    ("unknown flags", None, bytes((MAGIC, 0x02)) + b"\x01a\x00\x00", "unknown header flags 0x02"),
    ("trailing bytes", None, raw_packet(PING) + b"\x00", "1 trailing bytes"),
    ("unknown tag", None, raw_packet(b"\x7f"), "unknown message tag 0x7f"),
    ("non-minimal varint", None, raw_packet(tag(Ping) + b"\x85\x00"), "Ping.seq is a non-minimal"),
    ("varint over 64 bits", None, raw_packet(tag(Ack) + b"\xff" * 9 + b"\x02"), "64 bits"),
    ("varint too long", None, raw_packet(tag(Nack) + b"\xff" * 10 + b"\x01"), "longer than 10"),
    ("truncated varint", None, raw_packet(tag(Ping) + b"\x85"), "truncated in Ping.seq"),
    ("empty sender", None, raw_packet(PING, sender=b"\x00"), "Packet.sender is empty"),
    (
        "sender too long",
        None,
        raw_packet(PING, sender=text("x" * (NODE_ID_BYTES_MAX + 1))),
        "Packet.sender is 129 bytes; the limit is 128",
    ),
    ("sender bad utf-8", None, raw_packet(PING, sender=b"\x02\xff\xfe"), "not valid UTF-8"),
    (
        "too many updates",
        None,
        raw_packet(updates=varint(17) + b"".join(member_bytes(f"n{i}") for i in range(17))),
        "Packet.updates has 17 entries; the limit is 16",
    ),
    (
        "update addr too long",
        None,
        raw_packet(updates=b"\x01" + member_bytes("n1", "a" * (ADDR_BYTES_MAX + 1))),
        "Packet.updates addr is 257 bytes",
    ),
    (
        "invalid member state",
        None,
        raw_packet(updates=b"\x01" + member_bytes("n1", state=4)),
        "state 4 is not a MemberState",
    ),
    (
        "duplicate update",
        None,
        raw_packet(updates=b"\x02" + member_bytes("n1") + member_bytes("n1", incarnation=1)),
        "lists node 'n1' twice",
    ),
    (
        "too many messages",
        replace(DEFAULT_LIMITS, messages_per_packet_max=2),
        raw_packet(tag(Detach), tag(Detach), tag(Detach)),
        "Packet.messages has 3 entries; the limit is 2",
    ),
    ("gossip eager not a bool", None, raw_packet(tag(Gossip) + b"\x02\x00"), "Gossip.eager is 2"),
    (
        "op body over OP_BODY_BYTES_MAX",
        None,
        raw_packet(tag(Gossip) + b"\x01\x01" + varint(OP_BODY_BYTES_MAX + 1)),
        f"Gossip op body is {OP_BODY_BYTES_MAX + 1} bytes",
    ),
    (
        "empty op body",
        None,
        raw_packet(tag(Gossip) + b"\x01\x01\x00" + SIG),
        "Gossip op body is empty",
    ),
    (
        "op sig short",
        None,
        raw_packet(tag(Gossip) + b"\x01\x01" + OP_BYTES[:-1]),
        "truncated in Gossip op sig",
    ),
    (
        "duplicate op",
        None,
        raw_packet(tag(Gossip) + b"\x01\x02" + OP_BYTES + OP_BYTES),
        "carries one op twice",
    ),
    (
        "ops over the packet budget",
        replace(DEFAULT_LIMITS, ops_per_packet_max=1),
        raw_packet(tag(Gossip) + b"\x01\x01" + OP_BYTES, tag(Gossip) + b"\x00\x01" + OP_BYTES),
        "only 0 more fit the packet's limit of 1",
    ),
    (
        "ids over the packet budget",
        replace(DEFAULT_LIMITS, ids_per_packet_max=2),
        raw_packet(tag(IHave) + b"\x01" + ID_A, tag(Attach) + b"\x02" + ID_A + ID_B),
        "Attach.ids has 2 entries; only 1 more fit",
    ),
    ("duplicate ids", None, raw_packet(tag(IHave) + b"\x02" + ID_A + ID_A), "lists an id twice"),
    (
        "ids over the packet budget via IWant",
        replace(DEFAULT_LIMITS, ids_per_packet_max=2),
        raw_packet(tag(Attach) + b"\x01" + ID_A, tag(IWant) + b"\x02" + ID_A + ID_B),
        "IWant.ids has 2 entries; only 1 more fit",
    ),
    ("truncated ids", None, raw_packet(tag(Attach) + b"\x02" + ID_A), "truncated in Attach.ids"),
    (
        "huge id count, no data",
        None,
        raw_packet(tag(IHave) + varint(4096)),
        "truncated in IHave.ids",
    ),
    ("empty ping-req target", None, raw_packet(tag(PingReq) + b"\x01\x00"), "target is empty"),
    (
        "welcome over limit",
        replace(DEFAULT_LIMITS, welcome_members_max=1),
        raw_packet(tag(Welcome) + b"\x02" + member_bytes("a") + member_bytes("b")),
        "Welcome.members has 2 entries; the limit is 1",
    ),
    (
        "sync body over limit",
        None,
        raw_packet(tag(Sync) + b"\x00" + varint(MESSAGE_BYTES_MAX + 1)),
        f"Sync.body is {MESSAGE_BYTES_MAX + 1} bytes",
    ),
    ("empty sync body", None, raw_packet(tag(Sync) + b"\x00\x00"), "Sync.body is empty"),
    (
        "packet over packet_bytes_max",
        replace(DEFAULT_LIMITS, packet_bytes_max=8),
        raw_packet(PING, PING),
        "packet is 10 bytes; the limit is 8",
    ),
    (
        "zstd frame without content size",
        None,
        compressed_packet(zstd_frame(raw_packet(PING)[2:], write_content_size=False)),
        "does not declare its content size",
    ),
    ("zstd garbage", None, compressed_packet(b"\x00\x01\x02\x03\x04"), "no valid zstd frame"),
    (
        "zstd trailing bytes",
        None,
        compressed_packet(zstd_frame(raw_packet(PING)[2:]) + b"\x00"),
        "1 bytes of unused data",
    ),
    (
        "zstd truncated",
        None,
        compressed_packet(zstd_frame(raw_packet(PING)[2:] * 50)[:-3]),
        "truncated|corrupt",
    ),
    (
        "decompressed payload bad",
        None,
        compressed_packet(zstd_frame(raw_packet(b"\x7f")[2:])),
        "unknown message tag",
    ),
]


@pytest.mark.parametrize(
    ("limits", "data", "problem"), [case[1:] for case in BAD], ids=[case[0] for case in BAD]
)
def test_decode_refuses(limits: WireLimits | None, data: bytes, problem: str) -> None:
    with pytest.raises(BadPacket, match=problem):
        decode(data, limits or DEFAULT_LIMITS)


def test_hand_written_frames_are_what_encode_writes() -> None:
    # Guards the BAD table: its valid parts are real encodings.
    assert raw_packet(PING) == encode(Packet("a", (Ping(5),)))
    assert raw_packet(tag(Gossip) + b"\x01\x01" + OP_BYTES) == encode(
        Packet("a", (Gossip(((b"{}x", SIG),)),))
    )
    assert decode(raw_packet(updates=b"\x01" + member_bytes("n1", "x", 3, 9))).updates == (
        MemberUpdate("n1", "x", MemberState.LEFT, 9),
    )


def test_decode_refuses_non_bytes() -> None:
    with pytest.raises(BadPacket, match="a packet is bytes, got str"):
        decode("hello")  # type: ignore[arg-type]


@pytest.mark.parametrize("compress", [False, True])
def test_every_truncation_is_refused(compress: bool) -> None:
    packet = Packet(
        "n1",
        (Gossip(tuple(real_ops(8))), IHave((ID_A,)), PingReq(3, "n2"), Sync(1, b"abc")),
        (MemberUpdate("n3", "addr", MemberState.SUSPECT, 5),),
    )
    data = encode(packet, compress=compress)
    assert (data[1] == FLAG_ZSTD) is compress
    for cut in range(len(data)):
        with pytest.raises(BadPacket):
            decode(data[:cut])


# --- encode refuses what decode would refuse ------------------------------------------------

BIG_BODY = b"x" * (OP_BODY_BYTES_MAX + 1)
ENCODE_BAD: list[tuple[str, object, str]] = [
    ("not a packet", Ping(1), "encode takes a Packet, got Ping"),
    (
        "not a message",
        Packet("a", (MemberUpdate("a", "", MemberState.ALIVE, 0),)),  # type: ignore[arg-type]
        "not a gossip message",
    ),
    ("empty sender", Packet("", (Ping(1),)), "Packet.sender is empty"),
    ("long sender", Packet("é" * 65), "Packet.sender is 130 bytes of UTF-8; the limit is 128"),
    ("lone surrogate", Packet("\ud800"), "not encodable as UTF-8"),
    ("sender not str", Packet(b"n1"), "Packet.sender must be a str, got bytes"),  # type: ignore[arg-type]
    ("negative seq", Packet("a", (Ping(-1),)), r"Ping.seq must be in \[0, 2\*\*64\)"),
    ("seq too big", Packet("a", (Ack(2**64),)), r"Ack.seq must be in \[0, 2\*\*64\)"),
    ("bool seq", Packet("a", (Nack(True),)), "Nack.seq must be an int, got bool"),
    ("str session", Packet("a", (Sync("1", b"x"),)), "Sync.session must be an int, got str"),  # type: ignore[arg-type]
    (
        "sig 64 bytes",
        Packet("a", (Gossip(((b"{}", SIG[:64]),)),)),
        "sig is 64 bytes; it must be 65",
    ),
    (
        "body too big",
        Packet("a", (Gossip(((BIG_BODY, SIG),)),)),
        "body is 262145 bytes; it must be 1 to 262144",
    ),
    ("empty body", Packet("a", (Gossip(((b"", SIG),)),)), "body is 0 bytes"),
    ("op not a pair", Packet("a", (Gossip((b"body",)),)), "not a \\(body, sig\\) pair"),  # type: ignore[arg-type]
    ("duplicate op", Packet("a", (Gossip(((b"{}", SIG), (b"{}", SIG))),)), "one op twice"),
    ("eager not bool", Packet("a", (Gossip((), 1),)), "Gossip.eager must be a bool"),  # type: ignore[arg-type]
    ("id 31 bytes", Packet("a", (IHave((ID_A[:31],)),)), "op id of 31 bytes; ids are 32"),
    ("duplicate ids", Packet("a", (Attach((ID_A, ID_A)),)), "Attach.ids lists an id twice"),
    ("ids not a tuple", Packet("a", (IHave(ID_A),)), "IHave.ids must be a tuple, got bytes"),  # type: ignore[arg-type]
    ("empty target", Packet("a", (PingReq(1, ""),)), "PingReq.target is empty"),
    ("sync body not bytes", Packet("a", (Sync(1, "x"),)), "Sync.body must be bytes, got str"),  # type: ignore[arg-type]
    ("empty sync body", Packet("a", (Sync(1, b""),)), "Sync.body is 0 bytes"),
    ("bad state", Packet("a", (), (MemberUpdate("n", "", 7, 0),)), "state 7 is not a MemberState"),  # type: ignore[arg-type]
    (
        "duplicate member",
        Packet("a", (Welcome((MemberUpdate("n", "", MemberState.ALIVE, 0),) * 2),)),
        "Welcome.members lists node 'n' twice",
    ),
    (
        "too many updates",
        Packet("a", (), tuple(MemberUpdate(f"n{i}", "", MemberState.ALIVE, 0) for i in range(17))),
        "Packet.updates has 17 entries; the limit is 16",
    ),
    (
        "long addr",
        Packet("a", (Join("x" * (ADDR_BYTES_MAX + 1)),)),
        "Join.addr is 257 bytes of UTF-8",
    ),
]


@pytest.mark.parametrize(
    ("packet", "problem"), [case[1:] for case in ENCODE_BAD], ids=[case[0] for case in ENCODE_BAD]
)
def test_encode_refuses(packet: Packet, problem: str) -> None:
    with pytest.raises(BadPacket, match=problem):
        encode(packet)
    with pytest.raises(BadPacket, match=problem):
        encoded_size(packet)


def test_encode_refuses_a_packet_over_packet_bytes_max() -> None:
    packet = Packet("n1", (Gossip(tuple(real_ops(4))),))
    limits = replace(DEFAULT_LIMITS, packet_bytes_max=encoded_size(packet) - 1)
    with pytest.raises(BadPacket, match="uncompressed; the limit is"):
        encode(packet, limits)
    exact = replace(limits, packet_bytes_max=encoded_size(packet))
    assert decode(encode(packet, exact), exact) == packet


def test_encode_enforces_the_packet_wide_op_budget() -> None:
    ops = real_ops(3)
    packet = Packet("n1", (Gossip(tuple(ops[:2])), Gossip((ops[2],), eager=False)))
    with pytest.raises(BadPacket, match="only 0 more fit the packet's limit of 2"):
        encode(packet, replace(DEFAULT_LIMITS, ops_per_packet_max=2))


# --- compression bombs ----------------------------------------------------------------------

BOMB_BYTES = 100_000_000


def zero_bomb(*, size: int | None) -> bytes:
    """A zstd frame of BOMB_BYTES zeros (about 3 KB), built without holding 100 MB."""
    compressor = zstandard.ZstdCompressor(level=3, write_content_size=size is not None)
    stream = compressor.compressobj(size=-1 if size is None else size)
    chunk = bytes(1_000_000)
    parts = [stream.compress(chunk) for _ in range(BOMB_BYTES // len(chunk))]
    return b"".join(parts) + stream.flush()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return zero_bomb(size=BOMB_BYTES)


def with_declared_size(frame_data: bytes, declared: int) -> bytes:
    """Rewrite a frame header's 4-byte content size field: a frame that lies about its size."""
    header_bytes = zstandard.frame_header_size(frame_data)
    assert frame_data[4] >> 6 == 2, "expected a 4-byte content size field"
    return (
        frame_data[: header_bytes - 4] + declared.to_bytes(4, "little") + frame_data[header_bytes:]
    )


def peak_bytes_of_refusal(data: bytes, problem: str) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(BadPacket, match=problem):
            decode(data)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_bomb_declaring_its_size_is_refused_before_decompressing(bomb: bytes) -> None:
    assert len(bomb) < 10_000
    assert zstandard.frame_content_size(bomb) == BOMB_BYTES
    peak = peak_bytes_of_refusal(compressed_packet(bomb), f"declares {BOMB_BYTES} bytes")
    assert peak < 100_000


def test_bomb_without_content_size_is_refused() -> None:
    data = compressed_packet(zero_bomb(size=None))
    assert peak_bytes_of_refusal(data, "does not declare its content size") < 100_000


@pytest.mark.parametrize("declared", [1000, DEFAULT_LIMITS.packet_bytes_max - 2])
def test_bomb_lying_about_its_size_never_outgrows_the_limit(bomb: bytes, declared: int) -> None:
    data = compressed_packet(with_declared_size(bomb, declared))
    peak = peak_bytes_of_refusal(data, "corrupt")
    assert peak < DEFAULT_LIMITS.packet_bytes_max + 65_536


def test_compressed_payload_at_the_limit_is_accepted() -> None:
    limits = replace(DEFAULT_LIMITS, packet_bytes_max=4096)
    sync_body = b"z" * 3000
    packet = Packet("n1", (Sync(1, sync_body),))
    data = encode(packet, limits)
    assert data[1] == FLAG_ZSTD
    assert decode(data, limits) == packet
    with pytest.raises(BadPacket, match="declares"):
        decode(data, replace(limits, packet_bytes_max=encoded_size(packet) - 1))


# --- stream framing -------------------------------------------------------------------------

FRAMES = [
    b"",
    b"a",
    bytes(127),
    bytes(128),
    bytes(range(256)) * 3,
    encode(Packet("n1", (Gossip(tuple(real_ops(2))),))),
]
STREAM = b"".join(frame(f) for f in FRAMES)


def test_frame_prefixes_a_varint_length() -> None:
    assert frame(b"") == b"\x00"
    assert frame(bytes(128))[:2] == b"\x80\x01"
    with pytest.raises(TypeError, match="frame takes bytes"):
        frame("text")  # type: ignore[arg-type]


def test_frame_reader_split_at_every_byte_boundary() -> None:
    for cut in range(len(STREAM) + 1):
        reader = FrameReader()
        got = reader.feed(STREAM[:cut]) + reader.feed(STREAM[cut:])
        assert got == FRAMES, cut
        assert reader.buffered_bytes == 0


def test_frame_reader_byte_by_byte() -> None:
    reader = FrameReader()
    got: list[bytes] = []
    for index in range(len(STREAM)):
        got += reader.feed(STREAM[index : index + 1])
    assert got == FRAMES
    assert decode(got[-1]) == Packet("n1", (Gossip(tuple(real_ops(2))),))


def test_frame_reader_holds_a_partial_frame() -> None:
    reader = FrameReader()
    assert reader.feed(frame(b"hello")[:3]) == []
    assert reader.buffered_bytes == 2
    assert reader.feed(b"llo" + frame(b"x")) == [b"hello", b"x"]


def test_frame_reader_accepts_exactly_the_limit() -> None:
    reader = FrameReader(frame_bytes_max=300)
    assert reader.feed(frame(bytes(300))) == [bytes(300)]


@pytest.mark.parametrize(
    ("prefix", "problem"),
    [
        (varint(301), "more than 300 bytes"),
        # The partial prefix already says "over the limit": refused at its first byte.
        (b"\xff\xff", "more than 300 bytes"),
        (varint(2**40)[:3], "more than 300 bytes"),
        (b"\x80\x00", "non-minimal"),
    ],
)
def test_frame_reader_refuses_a_bad_prefix_before_buffering(prefix: bytes, problem: str) -> None:
    reader = FrameReader(frame_bytes_max=300)
    with pytest.raises(BadPacket, match=problem):
        reader.feed(prefix)
    assert reader.buffered_bytes == 0
    with pytest.raises(BadPacket, match="stream already failed"):
        reader.feed(frame(b"ok"))


def test_frame_reader_refuses_a_bad_limit() -> None:
    with pytest.raises(ValueError, match="frame_bytes_max"):
        FrameReader(frame_bytes_max=-1)
