"""node.identity against ethers v6, the library a browser wallet front end would use.

ethers runs in a Node.js subprocess (tests/interop/js/sign.mjs, one JSON command per line) so
what we compare with is exactly what a web client produces. Install it with
``npm ci --prefix tests/interop/js``. Without it these tests skip locally and fail under CI.
"""

from __future__ import annotations

import json
import random
import subprocess
import unicodedata
from typing import Any

import pytest

from node.identity.keys import NodeKey, checksum_address, recover_personal
from node.identity.keystore import decrypt_key, encrypt_key
from tests.helpers import JS_DIR, js_runtime

pytestmark = pytest.mark.real

SCRIPT = JS_DIR / "sign.mjs"
PASSWORD = "correct horse battery staple"
LIGHT = 1024

MESSAGES: list[str | bytes] = [
    "hello formation",
    "",
    "héllo wörld ✓ 你好 🚀",
    "line one\nline two",
    b"",
    b"\x19\x00\xff\xfe raw bytes",
    bytes(range(256)),
]


@pytest.fixture(scope="module")
def node_bin() -> str:
    return js_runtime("ethers")


def ethers(node_bin: str, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run a batch of commands through one ethers process; fail on any error answer."""
    proc = subprocess.run(
        [node_bin, str(SCRIPT)],
        input="".join(json.dumps(c) + "\n" for c in commands),
        capture_output=True,
        text=True,
        cwd=JS_DIR,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"sign.mjs exited {proc.returncode}: {proc.stderr}"
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(answers) == len(commands), proc.stdout + proc.stderr
    for command, answer in zip(commands, answers, strict=True):
        assert "error" not in answer, f"ethers failed on {command['op']}: {answer['error']}"
    return answers


def seeded_key(seed: int) -> NodeKey:
    return NodeKey.generate(random.Random(seed).randbytes)


def message_field(message: str | bytes) -> dict[str, str]:
    if isinstance(message, str):
        return {"message": message}
    return {"messageHex": "0x" + message.hex()}


def as_bytes(message: str | bytes) -> bytes:
    return message.encode("utf-8") if isinstance(message, str) else message


def private_key_hex(key: NodeKey) -> str:
    return "0x" + key.secret.hex()


# ----------------------------------------------------------------------------- addresses


def test_addresses_match(node_bin: str) -> None:
    keys = [seeded_key(seed) for seed in range(8)]
    answers = ethers(node_bin, [{"op": "address", "privateKey": private_key_hex(k)} for k in keys])
    for key, answer in zip(keys, answers, strict=True):
        assert answer["address"] == checksum_address(key.address)


# ---------------------------------------------------------------------------- signatures


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sign_message_is_byte_identical(node_bin: str, seed: int) -> None:
    key = seeded_key(seed)
    commands = [
        {"op": "sign", "privateKey": private_key_hex(key), **message_field(m)} for m in MESSAGES
    ]
    for message, answer in zip(MESSAGES, ethers(node_bin, commands), strict=True):
        assert answer["address"] == checksum_address(key.address)
        assert bytes.fromhex(answer["signature"][2:]) == key.sign_personal(as_bytes(message))


@pytest.mark.parametrize("seed", [3, 4])
def test_each_recovers_the_others_signature(node_bin: str, seed: int) -> None:
    key = seeded_key(seed)
    signed = ethers(
        node_bin,
        [{"op": "sign", "privateKey": private_key_hex(key), **message_field(m)} for m in MESSAGES],
    )
    for message, answer in zip(MESSAGES, signed, strict=True):
        theirs = bytes.fromhex(answer["signature"][2:])
        assert recover_personal(as_bytes(message), theirs) == key.address

    ours = [key.sign_personal(as_bytes(m)) for m in MESSAGES]
    # Also hand ethers our signatures with v as 0/1, which we accept too.
    ours_v01 = [sig[:64] + bytes((sig[64] - 27,)) for sig in ours]
    commands = [
        {"op": "recover", "signature": "0x" + sig.hex(), **message_field(m)}
        for sigs in (ours, ours_v01)
        for m, sig in zip(MESSAGES, sigs, strict=True)
    ]
    for answer in ethers(node_bin, commands):
        assert answer["address"] == checksum_address(key.address)


# ----------------------------------------------------------------------------- keystores


@pytest.mark.parametrize("kdf", ["scrypt", "pbkdf2"])
def test_ethers_decrypts_our_keystore(node_bin: str, kdf: str) -> None:
    keys = [seeded_key(seed) for seed in range(3)]
    commands = [
        {
            "op": "decrypt",
            "password": PASSWORD,
            "keystore": encrypt_key(
                k, PASSWORD, kdf=kdf, work_factor=LIGHT, randbytes=random.Random(i).randbytes
            ),
        }
        for i, k in enumerate(keys)
    ]
    for key, answer in zip(keys, ethers(node_bin, commands), strict=True):
        assert answer["privateKey"] == private_key_hex(key)
        assert answer["address"] == checksum_address(key.address)


def test_ethers_decrypts_our_default_scrypt_keystore(node_bin: str) -> None:
    key = seeded_key(10)
    keystore = encrypt_key(key, PASSWORD, randbytes=random.Random(10).randbytes)
    [answer] = ethers(node_bin, [{"op": "decrypt", "password": PASSWORD, "keystore": keystore}])
    assert answer["privateKey"] == private_key_hex(key)


def test_we_decrypt_ethers_keystores(node_bin: str) -> None:
    keys = [seeded_key(seed) for seed in range(20, 23)]
    answers = ethers(
        node_bin,
        [
            {
                "op": "encrypt",
                "privateKey": private_key_hex(k),
                "password": PASSWORD,
                "scryptN": LIGHT,
            }
            for k in keys
        ],
    )
    for key, answer in zip(keys, answers, strict=True):
        keystore = answer["keystore"]
        assert keystore["version"] == 3
        decrypted = decrypt_key(keystore, PASSWORD)
        assert decrypted.secret == key.secret
        assert decrypted.address == key.address


def test_we_decrypt_ethers_keystore_with_a_non_nfkc_password(node_bin: str) -> None:
    # ethers NFKC-normalises the password first; the user may type the decomposed form.
    typed = unicodedata.normalize("NFD", "mañana ﬁ")
    assert unicodedata.normalize("NFKC", typed) != typed
    key = seeded_key(30)
    [answer] = ethers(
        node_bin,
        [
            {
                "op": "encrypt",
                "privateKey": private_key_hex(key),
                "password": typed,
                "scryptN": LIGHT,
            }
        ],
    )
    assert decrypt_key(answer["keystore"], typed).address == key.address


def test_ethers_rejects_our_keystore_with_a_wrong_password(node_bin: str) -> None:
    key = seeded_key(31)
    keystore = encrypt_key(key, PASSWORD, work_factor=LIGHT, randbytes=random.Random(31).randbytes)
    proc = subprocess.run(
        [
            node_bin,
            str(SCRIPT),
            json.dumps({"op": "decrypt", "password": "nope", "keystore": keystore}),
        ],
        capture_output=True,
        text=True,
        cwd=JS_DIR,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 1
    assert "incorrect password" in json.loads(proc.stdout)["error"]
