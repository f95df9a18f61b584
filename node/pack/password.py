"""SHA-512-crypt (``$6$``) in pure Python, and hashing a Formfile's plain-text passwords.

Theory of operation
-------------------
A Formfile's text is replicated to every node, so ``form`` replaces a USER's plain-text
``passwd`` by a crypt hash before it leaves the user's machine; the builder writes the hash into
``/etc/shadow`` as it is. ``sha512_crypt`` is Ulrich Drepper's SHA-crypt algorithm (the format
glibc's ``crypt(3)``, ``openssl passwd -6`` and ``mkpasswd -m sha-512`` produce), written out
here so hashing needs neither the deprecated ``crypt`` module nor a subprocess. It is pure: the
salt is passed in (``hash_passwords`` takes a ``salt_of(username)`` callable, so the caller owns
the randomness and tests are reproducible).

Rounds: the default 5000 is implied and left out of the text (``$6$salt$hash``); any other
count is clamped to 1000-999999999 and written (``$6$rounds=N$salt$hash``), as glibc does. Salts
are at most 16 characters of ``[./0-9A-Za-z]``; longer ones are cut to 16, as glibc does.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Final

from node.pack.model import Formfile

__all__ = ["ROUNDS_DEFAULT", "hash_passwords", "is_crypt_hash", "sha512_crypt"]

ROUNDS_DEFAULT: Final = 5000
_ROUNDS_MIN: Final = 1000
_ROUNDS_MAX: Final = 999_999_999
_SALT_CHARS_MAX: Final = 16
_B64: Final = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SALT_RE: Final = re.compile(r"[./0-9A-Za-z]*")
# The crypt hashes the builder accepts as they are: SHA-512, SHA-256 and yescrypt.
_HASH_RE: Final = re.compile(r"\$(6|5|y)\$[^\s:]+")


def is_crypt_hash(passwd: str) -> bool:
    """Whether ``passwd`` is already a ``$6$``/``$5$``/``$y$`` crypt hash (left untouched)."""
    return _HASH_RE.fullmatch(passwd) is not None


def _b64(data: bytes) -> str:
    out: list[str] = []

    def put(b2: int, b1: int, b0: int, n: int) -> None:
        w = (b2 << 16) | (b1 << 8) | b0
        for _ in range(n):
            out.append(_B64[w & 0x3F])
            w >>= 6

    for a, b, c in _PERMUTATION:
        put(data[a], data[b], data[c], 4)
    put(0, 0, data[63], 2)
    return "".join(out)


def _permutation() -> tuple[tuple[int, int, int], ...]:
    # The specification encodes the 64 digest bytes as 21 triples (0,21,42), (22,43,1),
    # (44,2,23), (3,24,45), ...: each next triple is the previous one's (b+1, c+1, a+1) mod 63.
    triples: list[tuple[int, int, int]] = []
    a, b, c = 0, 21, 42
    for _ in range(21):
        triples.append((a, b, c))
        a, b, c = (b + 1) % 63, (c + 1) % 63, (a + 1) % 63
    return tuple(triples)


_PERMUTATION: Final = _permutation()


def sha512_crypt(password: str, salt: str, rounds: int | None = None) -> str:
    """``$6$[rounds=N$]salt$hash`` of ``password``, equal to ``openssl passwd -6 -salt``."""
    if _SALT_RE.fullmatch(salt) is None:
        raise ValueError("a SHA-512-crypt salt uses only the characters ./0-9A-Za-z")
    salt_b = salt[:_SALT_CHARS_MAX].encode("ascii")
    key = password.encode("utf-8")
    explicit = rounds is not None
    n = ROUNDS_DEFAULT if rounds is None else min(max(rounds, _ROUNDS_MIN), _ROUNDS_MAX)

    b = hashlib.sha512(key + salt_b + key).digest()
    a = hashlib.sha512(key + salt_b)
    a.update(_repeat(b, len(key)))
    length = len(key)
    while length:
        a.update(b if length & 1 else key)
        length >>= 1
    a_digest = a.digest()

    dp = hashlib.sha512(key * len(key)).digest()
    p = _repeat(dp, len(key))
    ds = hashlib.sha512(salt_b * (16 + a_digest[0])).digest()
    s = _repeat(ds, len(salt_b))

    c = a_digest
    for i in range(n):
        h = hashlib.sha512(p if i & 1 else c)
        if i % 3:
            h.update(s)
        if i % 7:
            h.update(p)
        h.update(c if i & 1 else p)
        c = h.digest()

    prefix = f"$6$rounds={n}$" if explicit else "$6$"
    return prefix + salt_b.decode("ascii") + "$" + _b64(c)


def _repeat(block: bytes, length: int) -> bytes:
    """``length`` bytes of ``block`` repeated (the spec's "P" and "S" sequences)."""
    return (block * (length // len(block) + 1))[:length]


def hash_passwords(formfile: Formfile, salt_of: Callable[[str], str]) -> Formfile:
    """The Formfile with every plain-text USER passwd replaced by its SHA-512-crypt hash.

    ``salt_of(username)`` gives each user's salt (16 random ``[./0-9A-Za-z]`` characters in
    ``form``); hashes already present (``$6$``, ``$5$``, ``$y$``) are kept as they are.
    """
    users = tuple(
        u
        if is_crypt_hash(u.passwd)
        else replace(u, passwd=sha512_crypt(u.passwd, salt_of(u.username)))
        for u in formfile.users
    )
    return replace(formfile, users=users)
