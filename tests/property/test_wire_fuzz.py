"""Fuzzing the gossip wire decoder: whatever the bytes, it returns a Packet or raises BadPacket.

Inputs are random bytes, random bytes behind a valid header (so the parser gets past the
first two bytes), and valid encodings (compressed and not) with bytes flipped, inserted and
deleted. Any other exception (IndexError, UnicodeDecodeError, ZstdError, MemoryError...) is a
bug. A mutation that still decodes must be canonical: re-encoding it gives the same bytes.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from node.gossip.messages import Packet
from node.gossip.wire import FLAG_ZSTD, MAGIC, BadPacket, FrameReader, decode, encode
from tests.wire_strategies import packets


def check(data: bytes) -> Packet | None:
    try:
        packet = decode(data)
    except BadPacket:
        return None
    assert isinstance(packet, Packet)
    if data[1] == 0:
        # The uncompressed format has one encoding per packet (minimal varints, 0/1 bools,
        # strict UTF-8): anything that decodes re-encodes to exactly its input.
        assert encode(packet, compress=False) == data
    else:
        assert decode(encode(packet)) == packet
    return packet


@settings(max_examples=300)
@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    check(data)


@settings(max_examples=300)
@given(st.sampled_from([0, FLAG_ZSTD]), st.binary(max_size=512))
def test_random_payload_behind_a_valid_header(flags: int, payload: bytes) -> None:
    check(bytes((MAGIC, flags)) + payload)


mutation = st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete"]),
    st.integers(0, 2**32),
    st.integers(0, 255),
)


def mutate(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    buffer = bytearray(data)
    for kind, where, value in edits:
        if kind == "insert":
            buffer.insert(where % (len(buffer) + 1), value)
        elif not buffer:
            continue
        elif kind == "delete":
            del buffer[where % len(buffer)]
        elif kind == "flip":
            buffer[where % len(buffer)] ^= 1 << (value % 8)
        else:
            buffer[where % len(buffer)] = value
    return bytes(buffer)


@settings(max_examples=300)
@given(packets, st.booleans(), st.lists(mutation, min_size=1, max_size=4))
def test_mutated_valid_encodings(
    packet: Packet, compress: bool, edits: list[tuple[str, int, int]]
) -> None:
    data = encode(packet, compress=compress)
    check(mutate(data, edits))


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_frame_reader_on_random_chunks(chunks: list[bytes]) -> None:
    reader = FrameReader(frame_bytes_max=100)
    try:
        for chunk in chunks:
            for frame in reader.feed(chunk):
                assert len(frame) <= 100
    except BadPacket:
        return
    assert 0 <= reader.buffered_bytes <= sum(len(chunk) for chunk in chunks)
