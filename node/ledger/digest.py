"""Op-set digest: tell cheaply whether two replicas hold the same ops, and find which differ.

Long on purpose: the trie, its wire messages and the reconciliation protocol are one versioned format (docs/formats.md) and change together.

Theory of operation
-------------------
**The key.** Every op is a point ``key = (wall_ms, id)``: 64 bits of the author's HLC wall
time, then the 256-bit op id, padded with 4 zero bits to 324 bits and cut into 54 digits of 6
bits. The digest is a radix trie over those digits: a node is a key prefix (a *path* of
digits), its children are the up-to-64 values of the next digit. Time comes first because ops
cluster at the recent edge: old subtrees stop changing and compare equal at the top, and a
replica that is behind differs only in recent ones. The id digits that follow split ops that
share a millisecond (a burst, or an author with a stuck clock), so no node is ever too big to
split, and because the digits cover the whole 64-bit range any ``wall_ms`` works, including
0 and ``2**64 - 1``. Fanout is at most 64 at every level, so one node's children always fit in
one message. For today's clocks (about 2**40.7 ms) the top four digits are constant: a chain
the protocol skips (see *expansion* below) instead of paying a round trip per level.

**The fingerprint.** Each node keeps ``count`` and ``acc``, the sum mod 2**512 of
``blake2b-512(id)`` over the ids under it. A sum is order-independent and updates in O(1) on
insert, so ``add`` is O(depth) and insertion order never matters. Not XOR: XOR is linear over
GF(2), so from a few hundred ids Gaussian elimination finds a subset with any XOR an attacker likes,
and two different sets with one fingerprint are then free. Not the plain sum of the ids mod
2**256 either: ids are keccak digests, but of bodies the author writes (any payload nonce), so
ids are as cheap to grind as hashes are (signing only the ones chosen), and Wagner's
generalised birthday attack finds equal-sum subsets of 256-bit values with about 2**36 hashes
and a few hundred ops. Widening to 512 bits (by hashing each id to 64 bytes) raises that to
~2**46 work *and* 65536 crafted ops accepted into one time bucket (256 ops would need ~2**65). ``root()``
(sent every gossip round) is ``H(count, acc)`` truncated to 16 bytes; truncating ``acc``
itself would bring the attack back to 128 bits. Inside an exchange, node fingerprints are
``H_salt(count, acc)`` truncated to 8 bytes, keyed by a salt the opener draws per exchange: no
one can aim at an unknown salt, so 8 bytes only risk an accidental 2**-64 per node compared,
and a new salt next time means such a miss never persists. This cuts digest traffic by a third.
A collision of ``acc`` itself would only hide a difference between two replicas (never corrupt
state), and a third replica holding either side's ops heals it.

**Storage.** A node with at most ``BUCKET_IDS_MAX`` ops stores their keys in a list (a
bucket) instead of children and is split when it grows past that. The summary of any path,
even one inside a bucket, is defined by the set alone (count and sum of the ops whose key
starts with the path), never by how it is stored, so replicas whose tries grew differently
still interoperate. Ops are never removed: the op log only grows.

**The protocol** is three stateless wire messages; each carries the path it talks about, so a
replica answers a message from its current set with no session state, and a set that changes
mid-exchange only makes the answer slightly stale for one gossip round.

``Digest(path, salt, entries)``
    "My ops under ``path`` are exactly these nodes": entries are (relative path, count,
    fingerprint) and form a partition (no entry is a prefix of another). Fingerprints are
    keyed by the exchange's ``salt``. The opening message is the root as a single entry;
    ``Digest(path, salt, ())`` means "I have nothing under path".
``IdList(path, ids)``
    "These are *all* my ids under ``path``": sent for nodes with at most ``ids_threshold``.
``Missing(ids)``
    "You lack these ids": the end of a branch (the gossip engine sends the ops themselves).

A replica receiving a ``Digest`` compares every entry with its own summary of that path and
for each one that differs replies: ``Digest(q, salt, ())`` if it has nothing there (send me
all); its ``IdList`` if it has few ops there; its own node as a single entry if the peer has few
(prompting the peer's ``IdList``); otherwise its *expansion* of the node. Its own ops under
``path`` that no entry covers are ones the peer lacks: ``Missing``. An ``IdList`` receiver
learns what it lacks, and replies ``Missing`` with what the sender lacks. Each flight goes
strictly deeper or ends a branch, so an exchange ends after O(depth) flights.

*Expansion* replaces a node by its descendants, largest first, while the result fits in
``entries_budget`` entries (at least one split always fits, so every reply makes progress).
Single-child chains (the constant top digits of today's clocks) thus cost no extra flight, and
each ``Digest`` flight divides the differing nodes by about the budget, so two sets of N ops
differing in d reconcile in about ``3 + log_budget(N / ids_threshold)`` flights (6 for 10**5
to 10**6 ops with the defaults), with traffic proportional to d times that, not to N.

Decoding a peer's message is bounded (``MESSAGE_BYTES_MAX``, ``ENTRIES_MAX``, ``IDS_MAX``)
and strict (canonical varints, sorted entries and ids, known tags, no trailing bytes); any
violation raises ``BadMessage`` (a ``ValueError``) naming the problem. Replies are bounded by
the real difference, except that a peer claiming to hold nothing is owed every id we hold, as
a new replica is: the gossip engine rate-limits sessions and caps their flights.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, NamedTuple

__all__ = [
    "BUCKET_IDS_MAX",
    "DEFAULT_CONFIG",
    "DEPTH",
    "DIGIT_BITS",
    "ENTRIES_MAX",
    "FANOUT",
    "FINGERPRINT_BYTES",
    "IDS_MAX",
    "ID_BYTES",
    "MESSAGE_BYTES_MAX",
    "SALT_BYTES",
    "WALL_MS_MAX",
    "WIRE_FINGERPRINT_BYTES",
    "BadMessage",
    "Digest",
    "Entry",
    "IdList",
    "Message",
    "Missing",
    "OpDigest",
    "ReconcileConfig",
    "Reconciliation",
    "Step",
    "decode",
    "encode_uvarint",
    "key_path",
    "opening",
    "reconcile",
    "respond",
]

ID_BYTES: Final = 32
WALL_MS_MAX: Final = 2**64 - 1
DIGIT_BITS: Final = 6
FANOUT: Final = 1 << DIGIT_BITS
_DIGIT_MASK: Final = FANOUT - 1
# 64 bits of wall_ms + 256 bits of id, plus 4 pad bits so the key is a whole number of digits.
_PAD_BITS: Final = 4
_KEY_BITS: Final = 64 + 8 * ID_BYTES + _PAD_BITS
DEPTH: Final = _KEY_BITS // DIGIT_BITS
_SHIFTS: Final = tuple(_KEY_BITS - DIGIT_BITS * (level + 1) for level in range(DEPTH))
_ID_MASK: Final = (1 << (8 * ID_BYTES)) - 1
_ACC_MASK: Final = (1 << 512) - 1
FINGERPRINT_BYTES: Final = 16
# On the wire a node's fingerprint is keyed with a per-exchange salt the opener draws, so a
# third party cannot aim at it and 8 bytes suffice: an accidental collision (2**-64 per node
# compared) hides a difference for one exchange only, as the next one uses a new salt.
SALT_BYTES: Final = 8
WIRE_FINGERPRINT_BYTES: Final = 8
_ELEMENT_PERSON: Final = b"fmn-digest-elem1"
_FINGERPRINT_PERSON: Final = b"fmn-digest-node1"

# Storage only (not on the wire): a node keeps up to this many keys in a list before growing
# children. 32 keeps splits rare and in-bucket summaries (which rehash ids) cheap.
BUCKET_IDS_MAX: Final = 32

# Wire bounds. A Digest entry is at most 1 + 54 + 10 + 16 = 81 bytes, an id 32 bytes; both
# bounds keep any message under ~33 KiB, one read's worth for the transport.
ENTRIES_MAX: Final = 256
IDS_MAX: Final = 1024
_TAG_DIGEST: Final = 0x01
_TAG_IDLIST: Final = 0x02
_TAG_MISSING: Final = 0x03
_VARINT_BYTES_MAX: Final = 10
_COUNT_MAX: Final = 2**64 - 1
_PATH_HEAD_BYTES_MAX: Final = 1 + DEPTH
MESSAGE_BYTES_MAX: Final = max(
    1
    + _PATH_HEAD_BYTES_MAX
    + SALT_BYTES
    + 3
    + ENTRIES_MAX * (_PATH_HEAD_BYTES_MAX + _VARINT_BYTES_MAX + WIRE_FINGERPRINT_BYTES),
    1 + _PATH_HEAD_BYTES_MAX + 3 + IDS_MAX * ID_BYTES,
)

Path = tuple[int, ...]


class BadMessage(ValueError):
    """A digest message (from a peer, or built in code) is malformed; nothing was changed."""


# --- keys and fingerprints ------------------------------------------------------------------


def _check_item(op_id: object, wall_ms: object) -> None:
    if not isinstance(op_id, bytes) or len(op_id) != ID_BYTES:
        got = f"{len(op_id)} bytes" if isinstance(op_id, bytes) else type(op_id).__name__
        raise ValueError(f"an op id is {ID_BYTES} bytes (Op.id), got {got}")
    if type(wall_ms) is not int or not 0 <= wall_ms <= WALL_MS_MAX:
        raise ValueError(f"wall_ms must be an int in [0, 2**64), got {wall_ms!r} (pass Op.wall_ms)")


def _key(op_id: bytes, wall_ms: int) -> int:
    return ((wall_ms << (8 * ID_BYTES)) | int.from_bytes(op_id, "big")) << _PAD_BITS


def _id_of(key: int) -> bytes:
    return ((key >> _PAD_BITS) & _ID_MASK).to_bytes(ID_BYTES, "big")


def _element(op_id: bytes) -> int:
    return int.from_bytes(
        hashlib.blake2b(op_id, digest_size=64, person=_ELEMENT_PERSON).digest(), "big"
    )


def _fingerprint(count: int, acc: int) -> bytes:
    return hashlib.blake2b(
        count.to_bytes(8, "big") + acc.to_bytes(64, "big"),
        digest_size=FINGERPRINT_BYTES,
        person=_FINGERPRINT_PERSON,
    ).digest()


def _wire_fingerprint(salt: bytes, count: int, acc: int) -> bytes:
    return hashlib.blake2b(
        count.to_bytes(8, "big") + acc.to_bytes(64, "big"),
        digest_size=WIRE_FINGERPRINT_BYTES,
        key=salt,
        person=_FINGERPRINT_PERSON,
    ).digest()


def key_path(op_id: bytes, wall_ms: int, depth: int = DEPTH) -> Path:
    """The first ``depth`` digits of an op's key: the path of the trie node that holds it."""
    _check_item(op_id, wall_ms)
    key = _key(op_id, wall_ms)
    return tuple((key >> _SHIFTS[level]) & _DIGIT_MASK for level in range(min(depth, DEPTH)))


def _check_path(path: object, what: str) -> None:
    if not isinstance(path, tuple):
        raise BadMessage(f"{what} must be a tuple of digits, got {type(path).__name__}")
    if len(path) > DEPTH:
        raise BadMessage(f"{what} has {len(path)} digits; keys have {DEPTH}")
    for digit in path:
        if type(digit) is not int or not 0 <= digit < FANOUT:
            raise BadMessage(f"{what} digit {digit!r} is not in [0, {FANOUT})")


def _check_salt(salt: object) -> None:
    if not isinstance(salt, bytes) or len(salt) != SALT_BYTES:
        raise BadMessage(f"a digest salt is {SALT_BYTES} bytes (draw it from the session RNG)")


def _check_ids(ids: object, what: str) -> None:
    if not isinstance(ids, tuple):
        raise BadMessage(f"{what} ids must be a tuple of bytes, got {type(ids).__name__}")
    if len(ids) > IDS_MAX:
        raise BadMessage(f"{what} carries {len(ids)} ids; the limit is {IDS_MAX} (split it)")
    previous = b""
    for op_id in ids:
        if not isinstance(op_id, bytes) or len(op_id) != ID_BYTES:
            raise BadMessage(f"{what} has an id that is not {ID_BYTES} bytes")
        if op_id <= previous:
            raise BadMessage(f"{what} ids must be strictly ascending (sorted, no duplicates)")
        previous = op_id


# --- the trie -------------------------------------------------------------------------------


class _Node:
    __slots__ = ("acc", "children", "count", "keys")

    def __init__(self) -> None:
        self.count = 0
        self.acc = 0
        # Exactly one of the two is set: a bucket holds keys, an inner node holds children.
        self.children: dict[int, _Node] | None = None
        self.keys: list[int] | None = []


def _prefix_value(path: Path) -> int:
    value = 0
    for digit in path:
        value = (value << DIGIT_BITS) | digit
    return value


class OpDigest:
    """The set of op ids a replica holds, as a summarised radix trie (see module docstring)."""

    __slots__ = ("_root", "_walls")

    def __init__(self) -> None:
        self._root = _Node()
        self._walls: dict[bytes, int] = {}

    @classmethod
    def from_items(cls, items: Iterable[tuple[bytes, int]]) -> OpDigest:
        """Build from ``(op_id, wall_ms)`` pairs, e.g. ``((op.id, op.wall_ms) for op in ops)``.

        Somewhat faster than repeated ``add`` (each node sums its ids once). Duplicates are
        ignored; a bad pair raises ``ValueError`` and no digest is returned.
        """
        digest = cls()
        walls = digest._walls
        for op_id, wall_ms in items:
            _check_item(op_id, wall_ms)
            known = walls.setdefault(op_id, wall_ms)
            if known != wall_ms:
                raise ValueError(_conflict(op_id, known, wall_ms))
        keyed = [(_key(op_id, wall_ms), _element(op_id)) for op_id, wall_ms in walls.items()]
        digest._build(digest._root, keyed, 0)
        return digest

    def _build(self, node: _Node, keyed: list[tuple[int, int]], depth: int) -> None:
        node.count = len(keyed)
        node.acc = sum(element for _, element in keyed) & _ACC_MASK
        if len(keyed) <= BUCKET_IDS_MAX or depth >= DEPTH:
            node.keys = [key for key, _ in keyed]
            node.children = None
            return
        shift = _SHIFTS[depth]
        groups: dict[int, list[tuple[int, int]]] = {}
        for item in keyed:
            digit = (item[0] >> shift) & _DIGIT_MASK
            group = groups.get(digit)
            if group is None:
                groups[digit] = [item]
            else:
                group.append(item)
        node.keys = None
        node.children = {}
        for digit, group in groups.items():
            child = _Node()
            node.children[digit] = child
            self._build(child, group, depth + 1)

    def add(self, op_id: bytes, wall_ms: int) -> bool:
        """Insert an op; False if it was already present (insert is idempotent). O(depth)."""
        _check_item(op_id, wall_ms)
        known = self._walls.get(op_id)
        if known is not None:
            if known != wall_ms:
                raise ValueError(_conflict(op_id, known, wall_ms))
            return False
        self._walls[op_id] = wall_ms
        key = _key(op_id, wall_ms)
        element = _element(op_id)
        node = self._root
        depth = 0
        while True:
            node.count += 1
            node.acc = (node.acc + element) & _ACC_MASK
            children = node.children
            if children is None:
                keys = node.keys
                assert keys is not None
                keys.append(key)
                if len(keys) > BUCKET_IDS_MAX and depth < DEPTH:
                    self._build(node, [(k, _element(_id_of(k))) for k in keys], depth)
                return True
            digit = (key >> _SHIFTS[depth]) & _DIGIT_MASK
            child = children.get(digit)
            if child is None:
                child = children[digit] = _Node()
            node = child
            depth += 1

    def __contains__(self, op_id: object) -> bool:
        return op_id in self._walls

    def __len__(self) -> int:
        return len(self._walls)

    def root(self) -> bytes:
        """16 bytes that are equal for two digests iff they hold the same ids (w.h.p.)."""
        return _fingerprint(self._root.count, self._root.acc)

    def summary(self, prefix: Path = ()) -> list[tuple[int, int, bytes]]:
        """``(child_digit, count, fingerprint)`` of each non-empty child of ``prefix``."""
        _check_path(prefix, "prefix")
        return [(d, c, _fingerprint(c, a)) for d, c, a in self._children(prefix)]

    def ids_under(self, prefix: Path = ()) -> list[bytes]:
        """Every id whose key starts with ``prefix``, in key order (wall_ms, then id)."""
        _check_path(prefix, "prefix")
        return [_id_of(key) for key in self._keys_under(prefix)]

    def stat(self, prefix: Path = ()) -> tuple[int, bytes]:
        """``(count, fingerprint)`` of the node at ``prefix``."""
        _check_path(prefix, "prefix")
        count, acc = self._stat(prefix)
        return count, _fingerprint(count, acc)

    # Internal queries take paths already validated (by the caller or by message decoding).

    def _locate(self, path: Path) -> tuple[_Node, int] | None:
        """The node at ``path``, or the bucket that contains it and its depth; None if empty."""
        node = self._root
        depth = 0
        while depth < len(path):
            children = node.children
            if children is None:
                return node, depth
            child = children.get(path[depth])
            if child is None:
                return None
            node = child
            depth += 1
        return node, depth

    def _bucket_keys(self, node: _Node, depth: int, path: Path) -> list[int]:
        keys = node.keys
        assert keys is not None
        if depth == len(path):
            return list(keys)
        prefix = _prefix_value(path)
        shift = _KEY_BITS - DIGIT_BITS * len(path)
        return [key for key in keys if key >> shift == prefix]

    def _stat(self, path: Path) -> tuple[int, int]:
        located = self._locate(path)
        if located is None:
            return 0, 0
        node, depth = located
        if depth == len(path):
            return node.count, node.acc
        keys = self._bucket_keys(node, depth, path)
        return len(keys), sum(_element(_id_of(key)) for key in keys) & _ACC_MASK

    def _children(self, path: Path) -> list[tuple[int, int, int]]:
        """``(digit, count, acc)`` of each non-empty child of ``path``, by digit."""
        located = self._locate(path)
        if located is None or len(path) >= DEPTH:
            return []
        node, depth = located
        if depth == len(path) and node.children is not None:
            return [(d, c.count, c.acc) for d, c in sorted(node.children.items())]
        shift = _SHIFTS[len(path)]
        grouped: dict[int, tuple[int, int]] = {}
        for key in self._bucket_keys(node, depth, path):
            digit = (key >> shift) & _DIGIT_MASK
            count, acc = grouped.get(digit, (0, 0))
            grouped[digit] = (count + 1, (acc + _element(_id_of(key))) & _ACC_MASK)
        return [(d, c, a) for d, (c, a) in sorted(grouped.items())]

    def _child_digits(self, path: Path) -> list[int]:
        located = self._locate(path)
        if located is None or len(path) >= DEPTH:
            return []
        node, depth = located
        if depth == len(path) and node.children is not None:
            return sorted(node.children)
        shift = _SHIFTS[len(path)]
        return sorted({(k >> shift) & _DIGIT_MASK for k in self._bucket_keys(node, depth, path)})

    def _keys_under(self, path: Path) -> list[int]:
        located = self._locate(path)
        if located is None:
            return []
        node, depth = located
        if depth < len(path):
            return sorted(self._bucket_keys(node, depth, path))
        out: list[int] = []
        stack = [node]
        while stack:
            current = stack.pop()
            if current.children is None:
                assert current.keys is not None
                out.extend(current.keys)
            else:
                stack.extend(current.children.values())
        out.sort()
        return out


def _conflict(op_id: bytes, known: int, wall_ms: int) -> str:
    return (
        f"op {op_id.hex()[:16]}… was added with wall_ms {known} and now with {wall_ms}; an id "
        "fixes its body and so its wall_ms (pass Op.wall_ms of the same op)"
    )


# --- wire messages --------------------------------------------------------------------------


_SMALL_VARINTS: Final = tuple(bytes((i,)) for i in range(0x80))


def encode_uvarint(value: int) -> bytes:
    """Unsigned LEB128, minimal length (the only form decoders accept). Also used by
    ``node.gossip.wire``: one encoder for both formats."""
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode_path(path: Path) -> bytes:
    return bytes((len(path), *path))


@dataclass(frozen=True, slots=True)
class Entry:
    """One node of a ``Digest``: its path relative to the message's, its count and fingerprint."""

    rel: Path
    count: int
    fingerprint: bytes

    def __post_init__(self) -> None:
        _check_path(self.rel, "entry path")
        if type(self.count) is not int or not 1 <= self.count <= _COUNT_MAX:
            raise BadMessage(f"entry count {self.count!r} is not in [1, 2**64); omit empty nodes")
        if (
            not isinstance(self.fingerprint, bytes)
            or len(self.fingerprint) != WIRE_FINGERPRINT_BYTES
        ):
            raise BadMessage(f"entry fingerprint must be {WIRE_FINGERPRINT_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class Digest:
    """My ops under ``path`` are exactly the nodes ``entries`` (none: I have no op there).

    ``salt`` keys the entries' fingerprints; a reply uses the salt of the message it answers.
    """

    path: Path
    salt: bytes
    entries: tuple[Entry, ...]

    def __post_init__(self) -> None:
        _check_path(self.path, "digest path")
        _check_salt(self.salt)
        if not isinstance(self.entries, tuple):
            raise BadMessage("digest entries must be a tuple of Entry")
        if len(self.entries) > ENTRIES_MAX:
            raise BadMessage(f"digest has {len(self.entries)} entries; the limit is {ENTRIES_MAX}")
        previous: Path | None = None
        for entry in self.entries:
            if not isinstance(entry, Entry):
                raise BadMessage("digest entries must be Entry values")
            if len(self.path) + len(entry.rel) > DEPTH:
                raise BadMessage(f"digest entry path is deeper than the {DEPTH} key digits")
            if previous is not None:
                if entry.rel <= previous:
                    raise BadMessage("digest entries must be sorted by path, without repeats")
                if entry.rel[: len(previous)] == previous:
                    raise BadMessage("digest entries overlap: one entry path is inside another")
            previous = entry.rel

    def encode(self) -> bytes:
        parts = [
            bytes((_TAG_DIGEST,)),
            _encode_path(self.path),
            self.salt,
            encode_uvarint(len(self.entries)),
        ]
        for entry in self.entries:
            parts += (_encode_path(entry.rel), encode_uvarint(entry.count), entry.fingerprint)
        return b"".join(parts)

    def encoded_size(self) -> int:
        return len(self.encode())


@dataclass(frozen=True, slots=True)
class IdList:
    """These are all my ids under ``path`` (ascending)."""

    path: Path
    ids: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _check_path(self.path, "id list path")
        _check_ids(self.ids, "id list")

    def encode(self) -> bytes:
        head = bytes((_TAG_IDLIST,)) + _encode_path(self.path) + encode_uvarint(len(self.ids))
        return head + b"".join(self.ids)

    def encoded_size(self) -> int:
        return (
            1 + 1 + len(self.path) + len(encode_uvarint(len(self.ids))) + ID_BYTES * len(self.ids)
        )


@dataclass(frozen=True, slots=True)
class Missing:
    """You lack these ids (ascending, at least one); I hold them."""

    ids: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _check_ids(self.ids, "missing list")
        if not self.ids:
            raise BadMessage("a missing list names at least one id")

    def encode(self) -> bytes:
        return bytes((_TAG_MISSING,)) + encode_uvarint(len(self.ids)) + b"".join(self.ids)

    def encoded_size(self) -> int:
        return 1 + len(encode_uvarint(len(self.ids))) + ID_BYTES * len(self.ids)


Message = Digest | IdList | Missing


class _Reader:
    __slots__ = ("data", "offset")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: int, what: str) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise BadMessage(f"message truncated inside {what}")
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def varint(self, what: str) -> int:
        value = 0
        for index in range(_VARINT_BYTES_MAX):
            byte = self.byte(what)
            value |= (byte & 0x7F) << (7 * index)
            if not byte & 0x80:
                if byte == 0 and index > 0:
                    raise BadMessage(f"{what} is a non-minimal varint")
                if value > _COUNT_MAX:
                    raise BadMessage(f"{what} does not fit in 64 bits")
                return value
        raise BadMessage(f"{what} varint is longer than {_VARINT_BYTES_MAX} bytes")

    def path(self, what: str) -> Path:
        length = self.byte(what)
        if length > DEPTH:
            raise BadMessage(f"{what} has {length} digits; keys have {DEPTH}")
        return tuple(self.take(length, what))

    def ids(self, count: int, what: str) -> tuple[bytes, ...]:
        if count > IDS_MAX:
            raise BadMessage(f"{what} carries {count} ids; the limit is {IDS_MAX}")
        raw = self.take(ID_BYTES * count, what)
        return tuple(raw[i : i + ID_BYTES] for i in range(0, len(raw), ID_BYTES))


def decode(data: bytes) -> Message:
    """Parse one message from a peer, or raise ``BadMessage`` (a ``ValueError``) saying why."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BadMessage(f"a message is bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise BadMessage("empty message")
    if len(data) > MESSAGE_BYTES_MAX:
        raise BadMessage(f"message is {len(data)} bytes; the limit is {MESSAGE_BYTES_MAX}")
    reader = _Reader(data)
    tag = reader.byte("tag")
    message: Message
    if tag == _TAG_DIGEST:
        path = reader.path("digest path")
        salt = reader.take(SALT_BYTES, "digest salt")
        count = reader.varint("entry count")
        if count > ENTRIES_MAX:
            raise BadMessage(f"digest has {count} entries; the limit is {ENTRIES_MAX}")
        entries = []
        for _ in range(count):
            rel = reader.path("entry path")
            entries.append(
                Entry(
                    rel, reader.varint("entry count"), reader.take(WIRE_FINGERPRINT_BYTES, "entry")
                )
            )
        message = Digest(path, salt, tuple(entries))
    elif tag == _TAG_IDLIST:
        path = reader.path("id list path")
        message = IdList(path, reader.ids(reader.varint("id count"), "id list"))
    elif tag == _TAG_MISSING:
        message = Missing(reader.ids(reader.varint("id count"), "missing list"))
    else:
        raise BadMessage(f"unknown message tag 0x{tag:02x} (a newer peer, or garbage)")
    if reader.offset != len(data):
        raise BadMessage(f"{len(data) - reader.offset} trailing bytes after the message")
    return message


# --- the protocol ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReconcileConfig:
    """This replica's choices; peers with different configs still interoperate."""

    # A differing node with at most this many of my ids is settled by listing them.
    ids_threshold: int = 16
    # Largest expansion of one differing node (entries in one Digest).
    entries_budget: int = 128

    def __post_init__(self) -> None:
        if not 1 <= self.ids_threshold <= IDS_MAX:
            raise ValueError(f"ids_threshold must be in [1, {IDS_MAX}], got {self.ids_threshold}")
        if not FANOUT <= self.entries_budget <= ENTRIES_MAX:
            raise ValueError(
                f"entries_budget must be in [{FANOUT}, {ENTRIES_MAX}] (one node's children must"
                f" fit), got {self.entries_budget}"
            )


DEFAULT_CONFIG: Final = ReconcileConfig()


class Step(NamedTuple):
    """What handling one message produced: replies to send back, and ids we learnt we lack."""

    replies: list[Message]
    lacking: list[bytes]


def opening(
    digest: OpDigest,
    salt: bytes,
    config: ReconcileConfig = DEFAULT_CONFIG,
    *,
    expanded: bool = False,
) -> Digest:
    """The first message of an exchange, with a fresh random ``salt`` (``SALT_BYTES``).

    By default the whole set as one node (or "I have nothing"): the answer to "are we equal?".
    When the roots were already compared (``root()`` rides on the gossip heartbeat),
    ``expanded=True`` sends the root's expansion instead and saves that flight.
    """
    _check_salt(salt)
    count, acc = digest._stat(())
    if count == 0:
        return Digest((), salt, ())
    if expanded and count > config.ids_threshold:
        return Digest((), salt, _expand(digest, (), salt, config))
    return Digest((), salt, (Entry((), count, _wire_fingerprint(salt, count, acc)),))


def _missing(ids: list[bytes]) -> list[Message]:
    ids = sorted(ids)
    return [Missing(tuple(ids[i : i + IDS_MAX])) for i in range(0, len(ids), IDS_MAX)]


def _expand(
    digest: OpDigest, path: Path, salt: bytes, config: ReconcileConfig
) -> tuple[Entry, ...]:
    count, acc = digest._stat(path)
    frontier: dict[Path, tuple[int, int]] = {(): (count, acc)}
    # Largest first, so the nodes sent are of similar size and the next flight is balanced.
    # The first split always fits (fanout <= budget), so every expansion makes progress.
    heap: list[tuple[int, Path]] = [(-count, ())]
    while heap:
        _, rel = heapq.heappop(heap)
        children = digest._children(path + rel)
        if len(frontier) - 1 + len(children) > config.entries_budget:
            break
        del frontier[rel]
        for digit, child_count, child_acc in children:
            child = (*rel, digit)
            frontier[child] = (child_count, child_acc)
            if child_count > config.ids_threshold and len(path) + len(child) < DEPTH:
                heapq.heappush(heap, (-child_count, child))
    return tuple(
        Entry(rel, c, _wire_fingerprint(salt, c, a)) for rel, (c, a) in sorted(frontier.items())
    )


def _uncovered(digest: OpDigest, path: Path, rels: list[Path]) -> list[Path]:
    """My non-empty nodes under ``path`` that none of the (antichain) ``rels`` covers."""
    covered = set(rels)
    inside = {rel[:depth] for rel in rels for depth in range(len(rel))}
    out: list[Path] = []
    stack: list[Path] = [()] if () not in covered else []
    while stack:
        here = stack.pop()
        for digit in digest._child_digits(path + here):
            child = (*here, digit)
            if child in inside:
                stack.append(child)
            elif child not in covered:
                out.append(path + child)
    return out


def _ids_under(digest: OpDigest, path: Path) -> list[bytes]:
    return [_id_of(key) for key in digest._keys_under(path)]


def _on_digest(digest: OpDigest, message: Digest, config: ReconcileConfig) -> Step:
    path, salt = message.path, message.salt
    if not message.entries:
        return Step(_missing(_ids_under(digest, path)), [])
    if digest._stat(path)[0] == 0:
        return Step([Digest(path, salt, ())], [])
    replies: list[Message] = []
    for entry in message.entries:
        node = path + entry.rel
        count, acc = digest._stat(node)
        fingerprint = _wire_fingerprint(salt, count, acc)
        if count == entry.count and fingerprint == entry.fingerprint:
            continue
        if count == 0:
            replies.append(Digest(node, salt, ()))
        elif count <= config.ids_threshold:
            replies.append(IdList(node, tuple(sorted(_ids_under(digest, node)))))
        elif entry.count <= config.ids_threshold:
            replies.append(Digest(node, salt, (Entry((), count, fingerprint),)))
        else:
            replies.append(Digest(node, salt, _expand(digest, node, salt, config)))
    lacked_by_peer = [
        op_id
        for node in _uncovered(digest, path, [entry.rel for entry in message.entries])
        for op_id in _ids_under(digest, node)
    ]
    replies += _missing(lacked_by_peer)
    return Step(replies, [])


def respond(digest: OpDigest, message: Message, config: ReconcileConfig = DEFAULT_CONFIG) -> Step:
    """Handle one (decoded) message from a peer against our current set. Never mutates it."""
    if isinstance(message, Digest):
        return _on_digest(digest, message, config)
    if isinstance(message, IdList):
        listed = set(message.ids)
        lacking = [op_id for op_id in message.ids if op_id not in digest]
        lacked_by_peer = [
            op_id for op_id in _ids_under(digest, message.path) if op_id not in listed
        ]
        return Step(_missing(lacked_by_peer), lacking)
    return Step([], [op_id for op_id in message.ids if op_id not in digest])


class Reconciliation(NamedTuple):
    ids_a_lacks: frozenset[bytes]
    ids_b_lacks: frozenset[bytes]
    # One-way flights: each is every message one side sends at once; a round trip is two.
    rounds: int
    bytes_exchanged: int


def reconcile(
    a: OpDigest,
    b: OpDigest,
    salt: bytes = bytes(SALT_BYTES),
    config: ReconcileConfig = DEFAULT_CONFIG,
    config_b: ReconcileConfig | None = None,
    *,
    open_expanded: bool = False,
) -> Reconciliation:
    """Run the exchange between ``a`` (who opens) and ``b`` message by message, through the
    real encoder and decoder, and report what each side learnt it lacks and what it cost.

    For tests and benchmarks; the gossip engine sends the same messages with a random salt.
    ``config_b`` (default: ``config``) lets the two sides choose differently.
    """
    sides = (a, b)
    configs = (config, config if config_b is None else config_b)
    lacks: tuple[set[bytes], set[bytes]] = (set(), set())
    batch: list[Message] = [opening(a, salt, config, expanded=open_expanded)]
    receiver = 1
    rounds = 0
    bytes_exchanged = 0
    # Each flight goes one digit deeper or ends a branch; the slack covers the id steps.
    rounds_max = 2 * DEPTH + 8
    while batch:
        rounds += 1
        if rounds > rounds_max:
            raise RuntimeError(f"reconciliation did not end within {rounds_max} flights (a bug)")
        replies: list[Message] = []
        for message in batch:
            data = message.encode()
            bytes_exchanged += len(data)
            step = respond(sides[receiver], decode(data), configs[receiver])
            lacks[receiver].update(step.lacking)
            replies += step.replies
        batch = replies
        receiver ^= 1
    return Reconciliation(frozenset(lacks[0]), frozenset(lacks[1]), rounds, bytes_exchanged)
