"""SHA-512-crypt against openssl, and hashing a Formfile's passwords."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from node.pack.formfile import canonical, parse
from node.pack.password import hash_passwords, is_crypt_hash, sha512_crypt

CASES = [
    ("pw", "saltsalt", None),
    ("webpass123", "abcdefghijklmnop", None),
    ("a much longer password that is over sixty-four bytes long, to cover the P loop!", "x", None),
    ("ünïcödé", "./09AZaz", None),
    ("pw", "saltsalt", 1000),
    ("pw", "abc", 5000),
    ("pw", "saltsalt", 12345),
    ("", "empty", None),
]


def _openssl(password: str, salt: str, rounds: int | None) -> str:
    tool = shutil.which("openssl")
    assert tool is not None, "openssl is needed to check sha512_crypt"
    spec = salt if rounds is None else f"rounds={rounds}${salt}"
    out = subprocess.run(
        [tool, "passwd", "-6", "-salt", spec, "-stdin"],
        input=password.encode(),
        capture_output=True,
        check=True,
    )
    return out.stdout.decode().strip()


@pytest.mark.parametrize(("password", "salt", "rounds"), CASES)
def test_equals_openssl(password: str, salt: str, rounds: int | None) -> None:
    if password == "":
        # openssl's -stdin reads lines; an empty one is refused, so check the known vector.
        assert sha512_crypt(password, salt).startswith("$6$empty$")
        assert len(sha512_crypt(password, salt).rsplit("$", 1)[1]) == 86
        return
    assert sha512_crypt(password, salt, rounds) == _openssl(password, salt, rounds)


def test_known_vector_from_the_specification() -> None:
    # Drepper's SHA-crypt specification, test vector 1.
    assert sha512_crypt("Hello world!", "saltstring") == (
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJu"
        "esI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
    )


def test_salt_is_cut_to_16_and_rounds_clamped() -> None:
    assert sha512_crypt("x", "a" * 20) == sha512_crypt("x", "a" * 16)
    assert sha512_crypt("x", "s", 10).startswith("$6$rounds=1000$s$")


def test_bad_salt_is_refused() -> None:
    with pytest.raises(ValueError, match="salt"):
        sha512_crypt("x", "no$dollar")


def test_hash_passwords_hashes_plain_and_keeps_hashes() -> None:
    existing = sha512_crypt("old", "oldsalt")
    text = (
        "NAME n\n"
        "USER username:alice passwd:secret\n"
        f"USER username:bob passwd:{existing}\n"
        "USER username:carol passwd:$y$j9T$abc$def\n"
        "USER username:dave passwd:$5$salt$hash\n"
    )
    f = parse(text)
    hashed = hash_passwords(f, lambda name: name + "salt")
    by_name = {u.username: u.passwd for u in hashed.users}
    assert by_name["alice"] == sha512_crypt("secret", "alicesalt")
    assert by_name["bob"] == existing
    assert by_name["carol"] == "$y$j9T$abc$def"
    assert by_name["dave"] == "$5$salt$hash"
    out = canonical(hashed)
    assert sha512_crypt("secret", "alicesalt") in out
    assert "secret" not in out
    assert parse(out) == hashed
    assert all(is_crypt_hash(u.passwd) for u in hashed.users)
    assert not is_crypt_hash("secret")
