"""node.identity.keystore against eth-account (eth-keyfile) and against hostile files.

Light kdf parameters (n = 2^10, c = 1024) keep the suite fast; one test uses eth-account's
default scrypt (n = 2^18) to show the real setting works end to end.
"""

from __future__ import annotations

import copy
import json
import os
import random
import stat
import sys
import unicodedata
import uuid
from pathlib import Path
from typing import Any, Literal

import pytest
from eth_account import Account

import node.identity.keystore as keystore_module
from node.identity.keys import NodeKey
from node.identity.keystore import (
    KeystoreError,
    decrypt_key,
    encrypt_key,
    read_keystore,
    read_password,
    write_keystore,
)

LIGHT = 1024
PASSWORD = "correct horse battery staple"
Kdf = Literal["scrypt", "pbkdf2"]
KDFS: list[Kdf] = ["scrypt", "pbkdf2"]


def seeded_key(seed: int) -> NodeKey:
    return NodeKey.generate(random.Random(seed).randbytes)


def light(
    key: NodeKey, kdf: str = "scrypt", password: str = PASSWORD, seed: int = 0
) -> dict[str, Any]:
    return encrypt_key(
        key, password, kdf=kdf, work_factor=LIGHT, randbytes=random.Random(seed).randbytes
    )


def assert_no_secret(text: str, key: NodeKey, password: str = PASSWORD) -> None:
    assert key.secret.hex() not in text
    assert password not in text


# -------------------------------------------------------------------------- eth-account interop


@pytest.mark.parametrize("kdf", KDFS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eth_account_decrypts_ours(kdf: str, seed: int) -> None:
    key = seeded_key(seed)
    ks = light(key, kdf)
    assert bytes(Account.decrypt(ks, PASSWORD)) == key.secret
    # Through JSON text too, as a file would carry it.
    assert bytes(Account.decrypt(json.dumps(ks), PASSWORD)) == key.secret


@pytest.mark.parametrize("kdf", KDFS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_we_decrypt_eth_account(kdf: Kdf, seed: int) -> None:
    key = seeded_key(seed)
    ks = Account.encrypt(key.secret, PASSWORD, kdf=kdf, iterations=LIGHT)
    decrypted = decrypt_key(ks, PASSWORD)
    assert decrypted.secret == key.secret
    assert decrypted.address == key.address


def test_eth_account_default_scrypt_both_ways() -> None:
    key = seeded_key(9)
    theirs = Account.encrypt(key.secret, PASSWORD)  # scrypt n=2^18, r=8, p=1
    assert theirs["crypto"]["kdfparams"]["n"] == 2**18
    assert decrypt_key(theirs, PASSWORD).address == key.address
    ours = encrypt_key(key, PASSWORD, randbytes=random.Random(9).randbytes)
    assert ours["crypto"]["kdfparams"] == {
        "dklen": 32,
        "n": 262_144,
        "p": 1,
        "r": 8,
        "salt": ours["crypto"]["kdfparams"]["salt"],
    }
    assert bytes(Account.decrypt(ours, PASSWORD)) == key.secret


@pytest.mark.parametrize("password", ["", "p", "pässwörd ✓ 🔑", "with\nnewline", " spaced "])
def test_unusual_passwords_round_trip_with_eth_account(password: str) -> None:
    key = seeded_key(4)
    ours = light(key, password=password)
    assert bytes(Account.decrypt(ours, password)) == key.secret
    theirs = Account.encrypt(key.secret, password, kdf="scrypt", iterations=LIGHT)
    assert decrypt_key(theirs, password).address == key.address


def test_ethers_style_nfkc_password_is_accepted() -> None:
    # ethers NFKC-normalises the password before the KDF; geth and eth-account do not.
    typed = unicodedata.normalize("NFD", "mañana ﬁ")  # decomposed ñ and the "ﬁ" ligature
    nfkc = unicodedata.normalize("NFKC", typed)
    assert nfkc != typed
    key = seeded_key(5)
    as_ethers_writes = Account.encrypt(key.secret, nfkc, kdf="scrypt", iterations=LIGHT)
    assert decrypt_key(as_ethers_writes, typed).address == key.address
    assert decrypt_key(as_ethers_writes, nfkc).address == key.address


# ------------------------------------------------------------------------------- the format


@pytest.mark.parametrize("kdf", KDFS)
def test_format_is_geths(kdf: str) -> None:
    key = seeded_key(1)
    ks = light(key, kdf)
    assert set(ks) == {"address", "crypto", "id", "version"}
    assert ks["version"] == 3
    assert ks["address"] == key.address[2:]
    assert ks["address"] == ks["address"].lower()
    assert uuid.UUID(ks["id"]).version == 4
    crypto = ks["crypto"]
    assert set(crypto) == {"cipher", "ciphertext", "cipherparams", "kdf", "kdfparams", "mac"}
    assert crypto["cipher"] == "aes-128-ctr"
    assert crypto["kdf"] == kdf
    assert len(bytes.fromhex(crypto["cipherparams"]["iv"])) == 16
    assert len(bytes.fromhex(crypto["ciphertext"])) == 32
    assert len(bytes.fromhex(crypto["mac"])) == 32
    assert len(bytes.fromhex(crypto["kdfparams"]["salt"])) == 32
    if kdf == "pbkdf2":
        assert crypto["kdfparams"]["prf"] == "hmac-sha256"
        assert crypto["kdfparams"]["c"] == LIGHT
    assert_no_secret(json.dumps(ks), key)


def test_injected_randomness_is_deterministic() -> None:
    key = seeded_key(2)
    assert light(key, seed=7) == light(key, seed=7)
    assert light(key, seed=7)["crypto"]["ciphertext"] != light(key, seed=8)["crypto"]["ciphertext"]


def test_default_randomness_differs_each_time() -> None:
    key = seeded_key(2)
    first = encrypt_key(key, PASSWORD, work_factor=LIGHT)
    second = encrypt_key(key, PASSWORD, work_factor=LIGHT)
    assert first["crypto"]["kdfparams"]["salt"] != second["crypto"]["kdfparams"]["salt"]
    assert first["id"] != second["id"]


def test_accepts_capitalised_crypto_0x_hex_and_checksummed_address() -> None:
    key = seeded_key(3)
    ks = light(key)
    ks["Crypto"] = ks.pop("crypto")  # ethers and old MyEtherWallet files
    ks["Crypto"]["ciphertext"] = "0x" + ks["Crypto"]["ciphertext"]
    ks["address"] = Account.from_key(key.secret).address  # checksummed, with 0x
    assert decrypt_key(ks, PASSWORD).address == key.address


def test_address_is_optional() -> None:
    key = seeded_key(3)
    ks = light(key)
    del ks["address"]
    assert decrypt_key(ks, PASSWORD).address == key.address


# ---------------------------------------------------------------------------------- failures


@pytest.mark.parametrize("kdf", KDFS)
def test_wrong_password(kdf: str) -> None:
    key = seeded_key(1)
    ks = light(key, kdf)
    with pytest.raises(
        KeystoreError, match=r"wrong password or corrupted keystore \(MAC mismatch\)"
    ) as info:
        decrypt_key(ks, PASSWORD + "!")
    assert_no_secret(str(info.value), key)
    assert_no_secret(repr(info.value), key)
    assert info.value.__cause__ is None


@pytest.mark.parametrize(("field", "index"), [("ciphertext", 0), ("ciphertext", 31), ("mac", 5)])
def test_tampering_is_a_mac_error(field: str, index: int) -> None:
    key = seeded_key(1)
    ks = light(key)
    raw = bytearray(bytes.fromhex(ks["crypto"][field]))
    raw[index] ^= 0x01
    ks["crypto"][field] = raw.hex()
    with pytest.raises(KeystoreError, match="MAC mismatch"):
        decrypt_key(ks, PASSWORD)


def test_tampered_iv_is_caught_by_the_address() -> None:
    # The MAC does not cover the IV (a v3 format property): a changed IV decrypts to some
    # other key, and only the address check notices.
    key = seeded_key(1)
    ks = light(key)
    iv = bytearray(bytes.fromhex(ks["crypto"]["cipherparams"]["iv"]))
    iv[15] ^= 0x01
    ks["crypto"]["cipherparams"]["iv"] = iv.hex()
    with pytest.raises(KeystoreError, match="does not match the decrypted key's address") as info:
        decrypt_key(ks, PASSWORD)
    assert_no_secret(str(info.value), key)


def test_address_of_another_key_is_refused() -> None:
    key, other = seeded_key(1), seeded_key(2)
    ks = light(key)
    ks["address"] = other.address[2:]
    with pytest.raises(KeystoreError, match=f"keystore address {other.address} does not match"):
        decrypt_key(ks, PASSWORD)


def _mutated(path: str, value: Any) -> dict[str, Any]:
    ks = copy.deepcopy(light(seeded_key(1)))
    *parents, last = path.split(".")
    target = ks
    for part in parents:
        target = target[part]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return ks


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        ("version", 4, "unsupported keystore version 4"),
        ("version", "3", "unsupported keystore version '3'"),
        ("version", True, "unsupported keystore version True"),
        ("version", _DELETE, "missing the field version"),
        ("crypto", _DELETE, "missing the field crypto"),
        ("crypto", [], "crypto must be a JSON object"),
        ("crypto.cipher", "aes-256-gcm", "unsupported cipher 'aes-256-gcm'"),
        ("crypto.kdf", "argon2id", "unsupported kdf 'argon2id'"),
        ("crypto.mac", _DELETE, "missing the field crypto.mac"),
        ("crypto.mac", "zz" * 32, "crypto.mac is not valid hex"),
        ("crypto.mac", "ab" * 31, "crypto.mac must be 32 bytes, got 31"),
        ("crypto.ciphertext", "ab" * 64, "crypto.ciphertext must be 32 bytes, got 64"),
        ("crypto.ciphertext", " ab" * 32, "crypto.ciphertext is not valid hex"),
        ("crypto.cipherparams", _DELETE, "missing the field crypto.cipherparams"),
        ("crypto.cipherparams.iv", "ab" * 8, "iv must be 16 bytes, got 8"),
        ("crypto.cipherparams.iv", 7, "iv must be a hex string, got int"),
        ("crypto.kdfparams.n", _DELETE, "missing the field crypto.kdfparams.n"),
        ("crypto.kdfparams.n", 2**21, r"n=2097152 is outside the accepted range \[2, 1048576\]"),
        ("crypto.kdfparams.n", 2**40, "outside the accepted range"),
        ("crypto.kdfparams.n", 1000, "n must be a power of two"),
        ("crypto.kdfparams.n", 0, "outside the accepted range"),
        ("crypto.kdfparams.n", -1024, "outside the accepted range"),
        ("crypto.kdfparams.n", 1024.0, "n must be an integer, got float"),
        ("crypto.kdfparams.n", True, "n must be an integer, got bool"),
        ("crypto.kdfparams.r", 1024, r"r=1024 is outside the accepted range \[1, 32\]"),
        ("crypto.kdfparams.r", 0, "outside the accepted range"),
        ("crypto.kdfparams.p", 1_000_000, r"p=1000000 is outside the accepted range \[1, 16\]"),
        ("crypto.kdfparams.dklen", 64, "dklen=64 is outside the accepted range"),
        ("crypto.kdfparams.dklen", 16, "dklen=16 is outside the accepted range"),
        ("crypto.kdfparams.salt", "", "salt must be 1 to 1024 bytes, got 0"),
        ("crypto.kdfparams.salt", "ab" * 2000, "salt must be 1 to 1024 bytes, got 2000"),
        ("address", "0x1234", "address is malformed"),
    ],
)
def test_bad_or_hostile_files_are_refused_before_any_work(
    monkeypatch: pytest.MonkeyPatch, path: str, value: Any, needle: str
) -> None:
    def no_kdf(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("the kdf ran on parameters that should have been refused")

    ks = _mutated(path, value)
    if path != "address":  # the address is checked after decryption, by design
        monkeypatch.setattr(keystore_module, "_scrypt", no_kdf)
        monkeypatch.setattr(keystore_module, "_pbkdf2", no_kdf)
    with pytest.raises(KeystoreError, match=needle):
        decrypt_key(ks, PASSWORD)


@pytest.mark.parametrize(
    ("n", "r", "p", "needle"),
    [
        (2**20, 16, 1, "needs 2147483648 bytes of memory"),
        (2**19, 32, 1, "needs 2147483648 bytes"),
        (2**16, 32, 16, "asks for more work"),
        (2**20, 8, 16, "asks for more work"),
    ],
)
def test_scrypt_memory_and_work_bounds(
    monkeypatch: pytest.MonkeyPatch, n: int, r: int, p: int, needle: str
) -> None:
    def no_kdf(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("the kdf ran on parameters that should have been refused")

    ks = light(seeded_key(1))
    monkeypatch.setattr(keystore_module, "_scrypt", no_kdf)
    ks["crypto"]["kdfparams"].update(n=n, r=r, p=p)
    with pytest.raises(KeystoreError, match=needle):
        decrypt_key(ks, PASSWORD)


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (
            "crypto.kdfparams.c",
            10**9,
            r"c=1000000000 is outside the accepted range \[1, 10000000\]",
        ),
        ("crypto.kdfparams.c", 0, "outside the accepted range"),
        ("crypto.kdfparams.prf", "hmac-sha512", "unsupported pbkdf2 prf 'hmac-sha512'"),
        ("crypto.kdfparams.prf", _DELETE, "missing the field crypto.kdfparams.prf"),
    ],
)
def test_hostile_pbkdf2_params_are_refused(path: str, value: Any, needle: str) -> None:
    ks = light(seeded_key(1), "pbkdf2")
    *parents, last = path.split(".")
    target = ks
    for part in parents:
        target = target[part]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    with pytest.raises(KeystoreError, match=needle):
        decrypt_key(ks, PASSWORD)


def test_not_a_mapping_is_refused() -> None:
    with pytest.raises(KeystoreError, match="must be a JSON object, got list"):
        decrypt_key([], PASSWORD)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"kdf": "argon2"}, "unsupported kdf 'argon2'"),
        ({"work_factor": 1000}, "power of two"),
        ({"work_factor": 2**21}, "exceeds the maximum"),
        ({"kdf": "pbkdf2", "work_factor": 0}, "outside"),
        ({"kdf": "pbkdf2", "work_factor": 10**8}, "outside"),
        ({"work_factor": 1024.0}, "work_factor must be an int"),
    ],
)
def test_encrypt_refuses_bad_parameters(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(KeystoreError, match=needle):
        encrypt_key(seeded_key(1), PASSWORD, **kwargs)


# --------------------------------------------------------------------------------- the files


def test_write_then_read(tmp_path: Path) -> None:
    key = seeded_key(6)
    path = tmp_path / "node.json"
    write_keystore(path, key, PASSWORD, work_factor=LIGHT)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_keystore(path, PASSWORD).address == key.address
    assert bytes(Account.decrypt(path.read_text(), PASSWORD)) == key.secret
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.json"]  # no temp file left
    assert_no_secret(path.read_text(), key)


def test_write_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_keystore(tmp_path / "k.json", seeded_key(6), PASSWORD, work_factor=LIGHT)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.json").stat().st_mode) == 0o600


def test_write_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    path.write_text("precious")
    with pytest.raises(FileExistsError, match="already exists; refusing to overwrite"):
        write_keystore(path, seeded_key(6), PASSWORD, work_factor=LIGHT)
    assert path.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.json"]


def test_write_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    path.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(FileExistsError):
        write_keystore(path, seeded_key(6), PASSWORD, work_factor=LIGHT)
    assert not (tmp_path / "elsewhere.json").exists()


def test_write_into_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        write_keystore(tmp_path / "nope" / "k.json", seeded_key(6), PASSWORD, work_factor=LIGHT)


def test_write_with_bad_parameters_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError):
        write_keystore(tmp_path / "k.json", seeded_key(6), PASSWORD, kdf="argon2")
    assert list(tmp_path.iterdir()) == []


def test_read_keystore_errors_name_the_file(tmp_path: Path) -> None:
    key = seeded_key(6)
    good = tmp_path / "k.json"
    write_keystore(good, key, PASSWORD, work_factor=LIGHT)
    with pytest.raises(KeystoreError, match=r"k\.json: wrong password"):
        read_keystore(good, "nope")
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    with pytest.raises(KeystoreError, match=r"junk\.json is not a JSON keystore"):
        read_keystore(junk, PASSWORD)
    huge = tmp_path / "huge.json"
    huge.write_bytes(b" " * (2 << 20))
    with pytest.raises(KeystoreError, match="this is not one"):
        read_keystore(huge, PASSWORD)


def test_read_keystore_of_an_eth_account_file(tmp_path: Path) -> None:
    key = seeded_key(8)
    path = tmp_path / "UTC--2026-01-01T00-00-00.000000000Z--x.json"
    path.write_text(
        json.dumps(Account.encrypt(key.secret, PASSWORD, kdf="pbkdf2", iterations=LIGHT))
    )
    assert read_keystore(path, PASSWORD).address == key.address


# -------------------------------------------------------------------------------- passwords


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("secret\n", "secret"),
        ("secret", "secret"),
        ("secret\r\n", "secret"),
        ("secret\n\n", "secret\n"),  # only one newline is stripped
        (" secret \n", " secret "),  # spaces are part of the password
        ("pässwörd ✓\n", "pässwörd ✓"),
        ("\n", ""),
    ],
)
def test_read_password_from_file(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "pw"
    path.write_bytes(content.encode("utf-8"))
    assert read_password(path, confirm=False) == expected


def test_read_password_file_empty_is_refused_when_creating(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("\n")
    with pytest.raises(KeystoreError, match="is empty"):
        read_password(path, confirm=True)


def test_read_password_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(b"\xff\xfe\n")
    with pytest.raises(KeystoreError, match="not UTF-8"):
        read_password(path, confirm=False)


def test_read_password_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_password(tmp_path / "absent", confirm=False)


class _FakeStdin:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def _prompts(monkeypatch: pytest.MonkeyPatch, answers: list[str]) -> list[str]:
    asked: list[str] = []
    remaining = list(answers)

    def fake_getpass(prompt: str = "") -> str:
        asked.append(prompt)
        return remaining.pop(0)

    monkeypatch.setattr(sys, "stdin", _FakeStdin(tty=True))
    monkeypatch.setattr("getpass.getpass", fake_getpass)
    return asked


def test_prompt_without_a_tty_says_use_a_password_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", _FakeStdin(tty=False))
    with pytest.raises(KeystoreError, match="pass --password-file"):
        read_password(None, confirm=False)


def test_prompt_once_when_opening(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _prompts(monkeypatch, ["hunter2"])
    assert read_password(None, confirm=False) == "hunter2"
    assert len(asked) == 1


def test_prompt_twice_when_creating(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _prompts(monkeypatch, ["hunter2", "hunter2"])
    assert read_password(None, confirm=True) == "hunter2"
    assert len(asked) == 2


def test_prompt_mismatch(monkeypatch: pytest.MonkeyPatch) -> None:
    _prompts(monkeypatch, ["hunter2", "hunter3"])
    with pytest.raises(KeystoreError, match="the two passwords differ") as info:
        read_password(None, confirm=True)
    assert "hunter" not in str(info.value)


def test_prompt_empty_when_creating(monkeypatch: pytest.MonkeyPatch) -> None:
    _prompts(monkeypatch, [""])
    with pytest.raises(KeystoreError, match="empty password"):
        read_password(None, confirm=True)
