"""The gossip wire format: ``Packet`` <-> bytes, and length-prefixed framing for streams.

Long on purpose: the encoder and the decoder of one format sit side by side, so every limit is checked alike on both sides.

Theory of operation
-------------------
A packet is a 2-byte header and a payload. The header is a magic/version byte (``0xF1``: the
high nibble ``0xF`` marks a gossip packet, the low nibble is the format version, so a packet
from a newer peer is recognised and refused with "upgrade" instead of being misparsed) and a
flags byte (bit 0: the payload is zstd-compressed; every other bit must be zero). The payload
is the sender id, the piggybacked membership updates and the messages, each message a tag
byte followed by its fields. Integers are unsigned LEB128 varints (at most 64 bits, minimal
encoding only), strings and byte strings carry a varint length, op ids are 32 raw bytes and an
op travels as ``varint(len(body)) body sig`` with a raw 65-byte signature. The layout, byte by
byte, is in ``docs/formats.md`` section 5.

**Compression.** A payload over ``COMPRESS_THRESHOLD_BYTES`` is zstd-compressed when that
makes it smaller (op batches: canonical JSON with repeated keys and addresses). The compressed
frame must declare its content size, and a receiver refuses a declared size over
``packet_bytes_max`` before decompressing anything. It then decompresses in one shot into a
buffer of exactly the declared size, so a frame whose blocks produce more than its header
claims fails when that buffer is full: decompression never allocates more than
``packet_bytes_max`` whatever the frame says (a 3 KB frame of 100 MB of zeros is refused in
microseconds). A streaming decoder would not do: it checks the declared size only at the end
of the frame, after producing all of it.

**Strictness.** ``decode`` accepts exactly what ``encode`` produces and refuses everything else
with ``BadPacket`` (a ``ValueError``) naming the problem: truncation, trailing bytes, unknown
tags or flags, non-minimal varints, counts and sizes over ``WireLimits``, an invalid member
state, bad UTF-8, an empty id or op body, duplicates inside one list (ids of an ``IHave``,
``Attach`` or ``IWant``, ops of a ``Gossip``, members of a ``Welcome`` or of the updates).
``encode`` applies the same rules with the same limits, so a packet our encoder accepts is one our peers accept,
and a bug in the core shows up at the sender with a clear message rather than as a silent drop
at every receiver. Decoding is one forward pass with no recursion: every count is checked
against its limit before the loop that reads it, and every item consumes at least one byte, so
the work is O(len(data)).

**Sizes.** ``encoded_size`` is the size of the *uncompressed* frame (header + payload): what
``encode(..., compress=False)`` returns, and an upper bound on ``len(encode(packet))``. It
builds the payload but never compresses, so it is cheap enough to call for every packet the
simulator accounts, and it is the right number for "does this fit in ``packet_bytes_max``".

**Streams.** Over a byte stream (libp2p) each packet is ``frame(data)``: a varint length, then
the bytes. ``FrameReader`` reassembles frames from arbitrary chunks and refuses a declared
length over its limit as soon as the prefix is read, before buffering any of that frame.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import zstandard

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
from node.identity.keys import SIGNATURE_BYTES
from node.ledger.digest import MESSAGE_BYTES_MAX as DIGEST_MESSAGE_BYTES_MAX
from node.ledger.digest import encode_uvarint
from node.ledger.op import OP_BODY_BYTES_MAX

__all__ = [
    "ADDR_BYTES_MAX",
    "COMPRESS_THRESHOLD_BYTES",
    "DEFAULT_LIMITS",
    "FLAG_ZSTD",
    "HEADER_BYTES",
    "MAGIC",
    "NODE_ID_BYTES_MAX",
    "OP_ID_BYTES",
    "TAGS",
    "VERSION",
    "BadPacket",
    "FrameReader",
    "WireLimits",
    "decode",
    "encode",
    "encoded_size",
    "frame",
]

VERSION: Final = 1
MAGIC: Final = 0xF0 | VERSION
_MAGIC_MASK: Final = 0xF0
FLAG_ZSTD: Final = 0x01
HEADER_BYTES: Final = 2
# zstd's frame header and block overhead eat the gain below ~1 KiB (pings, acks, small IHAVEs).
COMPRESS_THRESHOLD_BYTES: Final = 1024
_ZSTD_LEVEL: Final = 3

# Node ids are addresses ("0x" + 40 hex) in the real node and "n17" in the simulator; transport
# addresses are multiaddrs (~100 bytes with a peer id). Both bounds leave room and stop abuse.
NODE_ID_BYTES_MAX: Final = 128
ADDR_BYTES_MAX: Final = 256
OP_ID_BYTES: Final = 32
# Header, a 1-byte sender id (length + byte), no updates, no messages.
_PACKET_BYTES_MIN: Final = HEADER_BYTES + 4
_U64_MAX: Final = 2**64 - 1
_VARINT_BYTES_MAX: Final = 10

_TAG_PING: Final = 0x01
_TAG_ACK: Final = 0x02
_TAG_PING_REQ: Final = 0x03
_TAG_NACK: Final = 0x04
_TAG_JOIN: Final = 0x05
_TAG_WELCOME: Final = 0x06
_TAG_GOSSIP: Final = 0x10
_TAG_IHAVE: Final = 0x11
_TAG_ATTACH: Final = 0x12
_TAG_DETACH: Final = 0x13
_TAG_IWANT: Final = 0x14
_TAG_SYNC: Final = 0x20
TAGS: Final[dict[type, int]] = {
    Ping: _TAG_PING,
    Ack: _TAG_ACK,
    PingReq: _TAG_PING_REQ,
    Nack: _TAG_NACK,
    Join: _TAG_JOIN,
    Welcome: _TAG_WELCOME,
    Gossip: _TAG_GOSSIP,
    IHave: _TAG_IHAVE,
    Attach: _TAG_ATTACH,
    IWant: _TAG_IWANT,
    Detach: _TAG_DETACH,
    Sync: _TAG_SYNC,
}
_STATES: Final = tuple(MemberState)
_TAG_BYTES: Final = {tag: bytes((tag,)) for tag in TAGS.values()}
_BOOL_BYTES: Final = (b"\x00", b"\x01")


class BadPacket(ValueError):
    """A packet (from a peer, or built by our own core) is malformed; nothing was changed."""


@dataclass(frozen=True, slots=True)
class WireLimits:
    """What a receiver accepts in one packet (and what ``encode`` refuses to build).

    Defaults are ``GossipConfig()``'s; build from another config with ``from_config``.
    """

    # The whole frame, compressed on the wire and uncompressed after decompression.
    packet_bytes_max: int = GossipConfig.packet_bytes_max
    # Totals over all messages of the packet: Gossip ops, and IHave + Attach + IWant ids.
    ops_per_packet_max: int = max(
        GossipConfig.ops_per_packet_max, GossipConfig.sync_ops_per_reply_max
    )
    ids_per_packet_max: int = GossipConfig.ids_per_packet_max
    updates_per_packet_max: int = GossipConfig.updates_per_packet_max
    welcome_members_max: int = GossipConfig.welcome_members_max
    # A flush carries a handful of messages per peer; 1024 bounds the object count a packet
    # of 1-byte Detaches could make us allocate.
    messages_per_packet_max: int = 1024
    # Sync.body is one node.ledger.digest message.
    sync_body_bytes_max: int = DIGEST_MESSAGE_BYTES_MAX

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"WireLimits.{name} must be a non-negative int, got {value!r}")
        if self.packet_bytes_max < _PACKET_BYTES_MIN:
            raise ValueError(
                f"WireLimits.packet_bytes_max must be at least {_PACKET_BYTES_MIN} (an empty"
                f" packet), got {self.packet_bytes_max}"
            )

    @classmethod
    def from_config(cls, cfg: GossipConfig) -> WireLimits:
        """Limits matching a gossip config.

        Anti-entropy replies carry up to ``sync_ops_per_reply_max`` ops in one packet, so the
        op bound is the larger of that and ``ops_per_packet_max``.
        """
        return cls(
            packet_bytes_max=cfg.packet_bytes_max,
            ops_per_packet_max=max(cfg.ops_per_packet_max, cfg.sync_ops_per_reply_max),
            ids_per_packet_max=cfg.ids_per_packet_max,
            updates_per_packet_max=cfg.updates_per_packet_max,
            welcome_members_max=cfg.welcome_members_max,
        )


DEFAULT_LIMITS: Final = WireLimits()


# --- compression (per thread: zstandard contexts must not be shared across threads) ---------


class _Contexts(threading.local):
    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_content_size=True)
        self.decompressors: dict[int, zstandard.ZstdDecompressor] = {}


_contexts = _Contexts()


def _decompressor(window_bytes_max: int) -> zstandard.ZstdDecompressor:
    found = _contexts.decompressors.get(window_bytes_max)
    if found is None:
        found = zstandard.ZstdDecompressor(max_window_size=window_bytes_max)
        _contexts.decompressors[window_bytes_max] = found
    return found


def _decompress(frame_data: bytes, payload_bytes_max: int) -> bytes:
    try:
        declared = zstandard.frame_content_size(frame_data)
    except zstandard.ZstdError as error:
        raise BadPacket(f"compressed payload has no valid zstd frame header ({error})") from None
    if declared < 0:
        raise BadPacket(
            "compressed payload does not declare its content size (the format requires it;"
            " compress with write_content_size)"
        )
    if declared > payload_bytes_max:
        raise BadPacket(
            f"compressed payload declares {declared} bytes; the limit is {payload_bytes_max}"
        )
    # Single-shot, into a buffer of exactly `declared` bytes (see the module docstring); the
    # window bound also caps zstd's internal buffers.
    window_bytes_max = 1 << max(10, (payload_bytes_max - 1).bit_length())
    try:
        return _decompressor(window_bytes_max).decompress(frame_data, allow_extra_data=False)
    except zstandard.ZstdError as error:
        raise BadPacket(f"compressed payload is corrupt ({error})") from None


# --- encoding -------------------------------------------------------------------------------


def _u64(value: object, what: str) -> bytes:
    if type(value) is not int:
        raise BadPacket(f"{what} must be an int, got {type(value).__name__}")
    if not 0 <= value <= _U64_MAX:
        raise BadPacket(f"{what} must be in [0, 2**64), got {value}")
    return encode_uvarint(value)


def _text(value: object, what: str, bytes_max: int, *, empty_ok: bool) -> bytes:
    if not isinstance(value, str):
        raise BadPacket(f"{what} must be a str, got {type(value).__name__}")
    try:
        raw = value.encode()
    except UnicodeEncodeError:
        raise BadPacket(f"{what} is not encodable as UTF-8 (lone surrogate?)") from None
    if len(raw) > bytes_max:
        raise BadPacket(f"{what} is {len(raw)} bytes of UTF-8; the limit is {bytes_max}")
    if not raw and not empty_ok:
        raise BadPacket(f"{what} is empty")
    return encode_uvarint(len(raw)) + raw


def _over(what: str, count: int, count_max: int, total_max: int | None) -> BadPacket:
    if total_max is None or count_max == total_max:
        return BadPacket(f"{what} has {count} entries; the limit is {count_max} (split it)")
    return BadPacket(
        f"{what} has {count} entries; only {count_max} more fit the packet's limit of"
        f" {total_max} (split it)"
    )


def _count(items: object, what: str, count_max: int, total_max: int | None = None) -> int:
    if isinstance(items, tuple | list) or (
        isinstance(items, Sequence) and not isinstance(items, str | bytes | bytearray)
    ):
        count = len(items)
    else:
        raise BadPacket(f"{what} must be a tuple, got {type(items).__name__}")
    if count > count_max:
        raise _over(what, count, count_max, total_max)
    return count


def _put_members(put: Callable[[bytes], None], members: object, what: str, count_max: int) -> None:
    put(encode_uvarint(_count(members, what, count_max)))
    assert isinstance(members, Sequence)
    seen: set[str] = set()
    for member in members:
        if not isinstance(member, MemberUpdate):
            raise BadPacket(f"{what} holds a {type(member).__name__}, not a MemberUpdate")
        put(_text(member.node, f"{what} node", NODE_ID_BYTES_MAX, empty_ok=False))
        put(_text(member.addr, f"{what} addr", ADDR_BYTES_MAX, empty_ok=True))
        state: object = member.state
        if type(state) is bool or not isinstance(state, int) or not 0 <= state < len(_STATES):
            raise BadPacket(f"{what} state {state!r} is not a MemberState")
        put(encode_uvarint(state))
        put(_u64(member.incarnation, f"{what} incarnation"))
        put(_text(member.origin, f"{what} origin", NODE_ID_BYTES_MAX, empty_ok=True))
        if member.node in seen:
            raise BadPacket(f"{what} lists node {member.node!r} twice (keep the newest claim)")
        seen.add(member.node)


def _put_ids(
    put: Callable[[bytes], None], ids: object, what: str, count_max: int, total_max: int
) -> int:
    count = _count(ids, what, count_max, total_max)
    assert isinstance(ids, Sequence)
    # Whole-list checks in C (IHAVEs of thousands of ids are common); the loop below only
    # runs to name the culprit.
    try:
        joined = b"".join(ids)
        unique = len(set(ids))
        sizes_ok = count == 0 or set(map(len, ids)) == {OP_ID_BYTES}
    except TypeError:
        sizes_ok = False
    if not sizes_ok:
        for op_id in ids:
            if not isinstance(op_id, bytes) or len(op_id) != OP_ID_BYTES:
                got = f"{len(op_id)} bytes" if isinstance(op_id, bytes) else type(op_id).__name__
                raise BadPacket(f"{what} holds an op id of {got}; ids are {OP_ID_BYTES} bytes")
    if unique != count:
        raise BadPacket(f"{what} lists an id twice")
    put(encode_uvarint(count))
    put(joined)
    return count


def _put_ops(put: Callable[[bytes], None], ops: object, count_max: int, total_max: int) -> int:
    count = _count(ops, "Gossip.ops", count_max, total_max)
    assert isinstance(ops, Sequence)
    put(encode_uvarint(count))
    bodies: set[bytes] = set()
    for op in ops:
        try:
            body, sig = op
        except (TypeError, ValueError):
            raise BadPacket("Gossip.ops holds something that is not a (body, sig) pair") from None
        if not isinstance(body, bytes) or not isinstance(sig, bytes):
            raise BadPacket("Gossip op body and sig must be bytes")
        if not 0 < len(body) <= OP_BODY_BYTES_MAX:
            raise BadPacket(
                f"Gossip op body is {len(body)} bytes; it must be 1 to {OP_BODY_BYTES_MAX}"
            )
        if len(sig) != SIGNATURE_BYTES:
            raise BadPacket(f"Gossip op sig is {len(sig)} bytes; it must be {SIGNATURE_BYTES}")
        bodies.add(body)
        put(encode_uvarint(len(body)))
        put(body)
        put(sig)
    if len(bodies) != count:
        raise BadPacket("Gossip.ops carries one op twice")
    return count


def _payload(packet: Packet, limits: WireLimits) -> bytes:
    if not isinstance(packet, Packet):
        raise BadPacket(f"encode takes a Packet, got {type(packet).__name__}")
    parts: list[bytes] = []
    put = parts.append
    put(_text(packet.sender, "Packet.sender", NODE_ID_BYTES_MAX, empty_ok=False))
    _put_members(put, packet.updates, "Packet.updates", limits.updates_per_packet_max)
    messages = packet.messages
    put(encode_uvarint(_count(messages, "Packet.messages", limits.messages_per_packet_max)))
    ops_left = limits.ops_per_packet_max
    ids_left = limits.ids_per_packet_max
    for message in messages:
        kind = type(message)
        tag = TAGS.get(kind)
        if tag is None:
            raise BadPacket(f"Packet.messages holds a {kind.__name__}, not a gossip message")
        put(_TAG_BYTES[tag])
        if kind is Gossip:
            assert isinstance(message, Gossip)
            if type(message.eager) is not bool:
                raise BadPacket(f"Gossip.eager must be a bool, got {message.eager!r}")
            put(_BOOL_BYTES[message.eager])
            ops_left -= _put_ops(put, message.ops, ops_left, limits.ops_per_packet_max)
        elif kind is IHave or kind is Attach or kind is IWant:
            assert isinstance(message, IHave | Attach | IWant)
            ids_left -= _put_ids(
                put, message.ids, f"{kind.__name__}.ids", ids_left, limits.ids_per_packet_max
            )
        elif kind is Ping or kind is Ack or kind is Nack:
            assert isinstance(message, Ping | Ack | Nack)
            put(_u64(message.seq, f"{kind.__name__}.seq"))
        elif kind is PingReq:
            assert isinstance(message, PingReq)
            put(_u64(message.seq, "PingReq.seq"))
            put(_text(message.target, "PingReq.target", NODE_ID_BYTES_MAX, empty_ok=False))
        elif kind is Sync:
            assert isinstance(message, Sync)
            put(_u64(message.session, "Sync.session"))
            body = message.body
            if not isinstance(body, bytes):
                raise BadPacket(f"Sync.body must be bytes, got {type(body).__name__}")
            if not 0 < len(body) <= limits.sync_body_bytes_max:
                raise BadPacket(
                    f"Sync.body is {len(body)} bytes; it must be 1 to {limits.sync_body_bytes_max}"
                )
            put(encode_uvarint(len(body)))
            put(body)
        elif kind is Join:
            assert isinstance(message, Join)
            put(_text(message.addr, "Join.addr", ADDR_BYTES_MAX, empty_ok=True))
        elif kind is Welcome:
            assert isinstance(message, Welcome)
            _put_members(put, message.members, "Welcome.members", limits.welcome_members_max)
        # Detach has no fields.
    payload = b"".join(parts)
    if HEADER_BYTES + len(payload) > limits.packet_bytes_max:
        raise BadPacket(
            f"packet is {HEADER_BYTES + len(payload)} bytes uncompressed; the limit is"
            f" {limits.packet_bytes_max} (send fewer ops per packet)"
        )
    return payload


def encode(packet: Packet, limits: WireLimits = DEFAULT_LIMITS, *, compress: bool = True) -> bytes:
    """The packet's bytes; raises ``BadPacket`` for a packet ``decode`` would refuse.

    A payload over ``COMPRESS_THRESHOLD_BYTES`` is zstd-compressed if that makes it smaller
    (``compress=False`` never compresses).
    """
    payload = _payload(packet, limits)
    if compress and len(payload) > COMPRESS_THRESHOLD_BYTES:
        packed = _contexts.compressor.compress(payload)
        if len(packed) < len(payload):
            return bytes((MAGIC, FLAG_ZSTD)) + packed
    return bytes((MAGIC, 0)) + payload


def encoded_size(packet: Packet, limits: WireLimits = DEFAULT_LIMITS) -> int:
    """Bytes of the uncompressed frame: ``len(encode(packet, compress=False))``.

    An upper bound on ``len(encode(packet))`` (compression is used only when it shrinks the
    payload). Validates like ``encode`` but never compresses, so it is cheap.
    """
    return HEADER_BYTES + len(_payload(packet, limits))


# --- decoding -------------------------------------------------------------------------------


class _Parser:
    __slots__ = ("data", "end", "limits", "pos")

    def __init__(self, data: bytes, limits: WireLimits) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)
        self.limits = limits

    def truncated(self, what: str) -> BadPacket:
        return BadPacket(
            f"packet truncated in {what} (payload offset {self.pos} of {self.end}): the frame"
            " was cut short, or it is not a gossip packet"
        )

    def byte(self, what: str) -> int:
        pos = self.pos
        if pos >= self.end:
            raise self.truncated(what)
        self.pos = pos + 1
        return self.data[pos]

    def take(self, size: int, what: str) -> bytes:
        pos = self.pos
        stop = pos + size
        if stop > self.end:
            raise self.truncated(what)
        self.pos = stop
        return self.data[pos:stop]

    def varint(self, what: str) -> int:
        data = self.data
        pos = self.pos
        if pos < self.end and data[pos] < 0x80:
            self.pos = pos + 1
            return data[pos]
        value = 0
        for index in range(_VARINT_BYTES_MAX):
            if pos >= self.end:
                self.pos = pos
                raise self.truncated(what)
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << (7 * index)
            if not byte & 0x80:
                if byte == 0:
                    raise BadPacket(f"{what} is a non-minimal varint (a trailing zero byte)")
                if value > _U64_MAX:
                    raise BadPacket(f"{what} does not fit in 64 bits")
                self.pos = pos
                return value
        raise BadPacket(f"{what} varint is longer than {_VARINT_BYTES_MAX} bytes")

    def count(self, what: str, count_max: int, total_max: int | None = None) -> int:
        count = self.varint(f"{what} count")
        if count > count_max:
            raise _over(what, count, count_max, total_max)
        return count

    def blob(self, what: str, bytes_max: int) -> bytes:
        size = self.varint(f"{what} length")
        if size > bytes_max:
            raise BadPacket(f"{what} is {size} bytes; the limit is {bytes_max}")
        if size == 0:
            raise BadPacket(f"{what} is empty")
        return self.take(size, what)

    def text(self, what: str, bytes_max: int, *, empty_ok: bool) -> str:
        size = self.varint(f"{what} length")
        if size > bytes_max:
            raise BadPacket(f"{what} is {size} bytes; the limit is {bytes_max}")
        if size == 0 and not empty_ok:
            raise BadPacket(f"{what} is empty")
        raw = self.take(size, what)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise BadPacket(f"{what} is not valid UTF-8") from None

    def members(self, what: str, count_max: int) -> tuple[MemberUpdate, ...]:
        count = self.count(what, count_max)
        members = []
        seen: set[str] = set()
        for _ in range(count):
            node = self.text(f"{what} node", NODE_ID_BYTES_MAX, empty_ok=False)
            addr = self.text(f"{what} addr", ADDR_BYTES_MAX, empty_ok=True)
            state = self.byte(f"{what} state")
            if state >= len(_STATES):
                raise BadPacket(
                    f"{what} state {state} is not a MemberState (0..{len(_STATES) - 1})"
                )
            incarnation = self.varint(f"{what} incarnation")
            origin = self.text(f"{what} origin", NODE_ID_BYTES_MAX, empty_ok=True)
            if node in seen:
                raise BadPacket(f"{what} lists node {node!r} twice")
            seen.add(node)
            members.append(MemberUpdate(node, addr, _STATES[state], incarnation, origin))
        return tuple(members)

    def ids(self, what: str, count_max: int) -> tuple[bytes, ...]:
        count = self.count(what, count_max, self.limits.ids_per_packet_max)
        raw = self.take(OP_ID_BYTES * count, what)
        ids = tuple(raw[i : i + OP_ID_BYTES] for i in range(0, len(raw), OP_ID_BYTES))
        if len(set(ids)) != count:
            raise BadPacket(f"{what} lists an id twice")
        return ids

    def ops(self, count_max: int) -> tuple[WireOp, ...]:
        count = self.count("Gossip.ops", count_max, self.limits.ops_per_packet_max)
        ops = []
        bodies: set[bytes] = set()
        for _ in range(count):
            body = self.blob("Gossip op body", OP_BODY_BYTES_MAX)
            sig = self.take(SIGNATURE_BYTES, "Gossip op sig")
            bodies.add(body)
            ops.append((body, sig))
        if len(bodies) != count:
            raise BadPacket("Gossip.ops carries one op twice")
        return tuple(ops)

    def packet(self) -> Packet:
        limits = self.limits
        sender = self.text("Packet.sender", NODE_ID_BYTES_MAX, empty_ok=False)
        updates = self.members("Packet.updates", limits.updates_per_packet_max)
        count = self.count("Packet.messages", limits.messages_per_packet_max)
        ops_left = limits.ops_per_packet_max
        ids_left = limits.ids_per_packet_max
        messages: list[Message] = []
        append = messages.append
        for _ in range(count):
            tag = self.byte("message tag")
            if tag == _TAG_GOSSIP:
                eager = self.byte("Gossip.eager")
                if eager > 1:
                    raise BadPacket(f"Gossip.eager is {eager}; it must be 0 or 1")
                ops = self.ops(ops_left)
                ops_left -= len(ops)
                append(Gossip(ops, eager == 1))
            elif tag == _TAG_IHAVE:
                ids = self.ids("IHave.ids", ids_left)
                ids_left -= len(ids)
                append(IHave(ids))
            elif tag == _TAG_ATTACH:
                ids = self.ids("Attach.ids", ids_left)
                ids_left -= len(ids)
                append(Attach(ids))
            elif tag == _TAG_IWANT:
                ids = self.ids("IWant.ids", ids_left)
                ids_left -= len(ids)
                append(IWant(ids))
            elif tag == _TAG_PING:
                append(Ping(self.varint("Ping.seq")))
            elif tag == _TAG_ACK:
                append(Ack(self.varint("Ack.seq")))
            elif tag == _TAG_NACK:
                append(Nack(self.varint("Nack.seq")))
            elif tag == _TAG_PING_REQ:
                seq = self.varint("PingReq.seq")
                append(PingReq(seq, self.text("PingReq.target", NODE_ID_BYTES_MAX, empty_ok=False)))
            elif tag == _TAG_SYNC:
                session = self.varint("Sync.session")
                append(Sync(session, self.blob("Sync.body", limits.sync_body_bytes_max)))
            elif tag == _TAG_DETACH:
                append(Detach())
            elif tag == _TAG_JOIN:
                append(Join(self.text("Join.addr", ADDR_BYTES_MAX, empty_ok=True)))
            elif tag == _TAG_WELCOME:
                append(Welcome(self.members("Welcome.members", limits.welcome_members_max)))
            else:
                raise BadPacket(f"unknown message tag 0x{tag:02x} (a newer peer, or garbage)")
        if self.pos != self.end:
            raise BadPacket(f"{self.end - self.pos} trailing bytes after the last message")
        return Packet(sender, tuple(messages), updates)


def decode(data: bytes | bytearray | memoryview, limits: WireLimits = DEFAULT_LIMITS) -> Packet:
    """Parse one packet from a peer, or raise ``BadPacket`` (a ``ValueError``) saying why."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BadPacket(f"a packet is bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > limits.packet_bytes_max:
        raise BadPacket(f"packet is {len(data)} bytes; the limit is {limits.packet_bytes_max}")
    if len(data) < HEADER_BYTES:
        raise BadPacket(f"packet is {len(data)} bytes; the header alone is {HEADER_BYTES}")
    magic, flags = data[0], data[1]
    if magic != MAGIC:
        if magic & _MAGIC_MASK == _MAGIC_MASK:
            raise BadPacket(
                f"packet is wire format version {magic & 0x0F}; this node speaks version"
                f" {VERSION} (upgrade the older side)"
            )
        raise BadPacket(f"not a gossip packet (first byte 0x{magic:02x}, expected 0x{MAGIC:02x})")
    if flags & ~FLAG_ZSTD:
        raise BadPacket(f"unknown header flags 0x{flags:02x} (a newer peer, or garbage)")
    payload = data[HEADER_BYTES:]
    if flags & FLAG_ZSTD:
        payload = _decompress(payload, limits.packet_bytes_max - HEADER_BYTES)
    return _Parser(payload, limits).packet()


# --- stream framing -------------------------------------------------------------------------


def frame(data: bytes) -> bytes:
    """``data`` with a varint length prefix, for a byte stream (see ``FrameReader``)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"frame takes bytes, got {type(data).__name__}")
    return encode_uvarint(len(data)) + bytes(data)


class FrameReader:
    """Reassembles ``frame``d byte strings from a stream fed in arbitrary chunks.

    ``feed`` returns the frames completed by the chunk (possibly none). A length prefix over
    ``frame_bytes_max``, or a malformed one, raises ``BadPacket`` before that frame is
    buffered; the stream is then out of step for good (every later ``feed`` raises too), so
    the caller closes the connection.
    """

    __slots__ = ("_buffer", "_failed", "_frame_bytes_max", "_length", "_prefix_bytes_max")

    def __init__(self, frame_bytes_max: int = DEFAULT_LIMITS.packet_bytes_max) -> None:
        if type(frame_bytes_max) is not int or frame_bytes_max < 0:
            raise ValueError(f"frame_bytes_max must be a non-negative int, got {frame_bytes_max!r}")
        self._frame_bytes_max = frame_bytes_max
        self._prefix_bytes_max = len(encode_uvarint(frame_bytes_max))
        self._buffer = bytearray()
        self._length: int | None = None
        self._failed: str | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buffer)

    def _fail(self, problem: str) -> BadPacket:
        self._failed = problem
        self._buffer.clear()
        return BadPacket(problem)

    def _prefix(self, buffer: bytearray, pos: int) -> tuple[int, int] | None:
        """(length, prefix size) of the prefix at ``pos``, or None if it is incomplete."""
        value = 0
        for index in range(self._prefix_bytes_max):
            if pos + index >= len(buffer):
                if value > self._frame_bytes_max:
                    break
                return None
            byte = buffer[pos + index]
            value |= (byte & 0x7F) << (7 * index)
            if not byte & 0x80:
                if byte == 0 and index > 0:
                    raise self._fail("frame length is a non-minimal varint")
                if value > self._frame_bytes_max:
                    break
                return value, index + 1
        raise self._fail(
            f"frame declares more than {self._frame_bytes_max} bytes (the frame limit)"
        )

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        if self._failed is not None:
            raise BadPacket(f"stream already failed ({self._failed}); close the connection")
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        pos = 0
        while True:
            if self._length is None:
                found = self._prefix(buffer, pos)
                if found is None:
                    break
                self._length, size = found
                pos += size
            if len(buffer) - pos < self._length:
                break
            frames.append(bytes(buffer[pos : pos + self._length]))
            pos += self._length
            self._length = None
        del buffer[:pos]
        return frames
