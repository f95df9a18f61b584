"""The Ethereum keystore v3 file: a node key encrypted under a password.

Theory of operation
-------------------
A node's identity is a secp256k1 secret (``node.identity.keys.NodeKey``). On disk it lives in
the *Web3 Secret Storage* v3 JSON format that geth writes (``geth account new``), so the same
file opens in geth, ``eth_account.Account.decrypt``, ``ethers.Wallet.fromEncryptedJson``,
MetaMask's import, and here. The layout::

    {"address": "<40 hex, no 0x, lower-case>",
     "crypto": {"cipher": "aes-128-ctr", "cipherparams": {"iv": "<16 bytes hex>"},
                "ciphertext": "<32 bytes hex>",
                "kdf": "scrypt", "kdfparams": {"dklen": 32, "n": 262144, "r": 8, "p": 1,
                                               "salt": "<hex>"},
                "mac": "<32 bytes hex>"},
     "id": "<uuid4>", "version": 3}

The password (UTF-8) goes through the KDF (scrypt, or PBKDF2-HMAC-SHA256 with ``kdf: "pbkdf2"``
and ``kdfparams {c, dklen, prf: "hmac-sha256", salt}``) to a 32-byte derived key. Its first
half is the AES-128-CTR key (the IV is the full 128-bit initial counter); its second half
authenticates: ``mac = keccak256(derived[16:32] + ciphertext)``. A wrong password and a
corrupted file are indistinguishable by design; both fail the MAC check.

Passwords are encoded as raw UTF-8, as geth, eth-account and alloy do. ethers v6 first applies
Unicode NFKC normalisation, so for a password that is not already in NFKC form the two derive
different keys. ``decrypt_key`` therefore retries with the NFKC form when the MAC fails and the
form differs; ``encrypt_key`` writes geth's way. (An ASCII password is the same either way.)

The kdf parameters come from the file, and the file may be hostile: scrypt allocates
``128 * r * n`` bytes, so unbounded parameters turn "open this keystore" into "allocate 64 GiB"
or "spin for an hour". Every parameter is bounded (``SCRYPT_N_MAX`` and friends) before any
work is done.

``encrypt_key``/``decrypt_key`` are pure (randomness is an argument); ``write_keystore``,
``read_keystore`` and ``read_password`` are the thin I/O around them. No error message, log line
or ``repr`` ever contains the password or the secret.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import hmac
import json
import os
import secrets
import sys
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from Crypto.Cipher import AES

from node.identity.keys import NodeKey, keccak256, normalize_address

__all__ = [
    "KDF_NAMES",
    "PBKDF2_C_DEFAULT",
    "PBKDF2_C_MAX",
    "SCRYPT_MEMORY_BYTES_MAX",
    "SCRYPT_N_DEFAULT",
    "SCRYPT_N_MAX",
    "KeystoreError",
    "decrypt_key",
    "encrypt_key",
    "read_keystore",
    "read_password",
    "write_keystore",
]

KDF_NAMES: Final = ("scrypt", "pbkdf2")

# geth's "standard" scrypt: n=2^18, r=8, p=1 (256 MiB, ~0.5 s). ethers uses 2^17 and
# eth-account 2^18, so files from every writer we care about fall well inside the bounds below.
SCRYPT_N_DEFAULT: Final = 262_144
SCRYPT_R_DEFAULT: Final = 8
SCRYPT_P_DEFAULT: Final = 1
# geth's pbkdf2 count; eth-account defaults to 1,000,000, still under the maximum.
PBKDF2_C_DEFAULT: Final = 262_144

# Bounds on what a keystore may ask of us. n = 2^20 with r = 8 is 1 GiB, the most any writer
# we know of asks for; the memory bound (not n alone) is what stops r = 1024 tricks.
SCRYPT_N_MAX: Final = 2**20
SCRYPT_R_MAX: Final = 32
SCRYPT_P_MAX: Final = 16
SCRYPT_MEMORY_BYTES_MAX: Final = 2**30
# n * r * p counts BlockMix calls: p = 16 at the memory limit would be ~16 s of CPU.
SCRYPT_WORK_MAX: Final = 2**20 * 8 * 2
# ~10 s of HMAC-SHA256 at the maximum; eth-account's default 10^6 takes about 1 s.
PBKDF2_C_MAX: Final = 10_000_000
SALT_BYTES_MAX: Final = 1024

_DKLEN: Final = 32
_SALT_BYTES: Final = 32  # as geth and ethers write
_IV_BYTES: Final = 16
_SECRET_BYTES: Final = 32
_MAC_BYTES: Final = 32
_CIPHER: Final = "aes-128-ctr"
_PRF: Final = "hmac-sha256"
_FILE_BYTES_MAX: Final = 1 << 20
_HEX_DIGITS: Final = "0123456789abcdefABCDEF"


class KeystoreError(ValueError):
    """A keystore cannot be written or opened: wrong password, bad file or bad parameters.

    The message names the problem and never contains the password or the secret.
    """


# --------------------------------------------------------------------------------- parsing


def _field(obj: Mapping[str, Any], name: str, where: str) -> Any:
    try:
        return obj[name]
    except KeyError:
        raise KeystoreError(
            f"keystore is missing the field {where}{name}; is this an Ethereum v3 keystore?"
        ) from None


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise KeystoreError(
            f"keystore field {where} must be a JSON object, got {type(value).__name__}"
        )
    return value


def _int(params: Mapping[str, Any], name: str, lo: int, hi: int) -> int:
    value = _field(params, name, "crypto.kdfparams.")
    # bool is an int in Python; JSON true must not pass as 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise KeystoreError(
            f"keystore crypto.kdfparams.{name} must be an integer, got {type(value).__name__}"
        )
    if not lo <= value <= hi:
        raise KeystoreError(
            f"keystore crypto.kdfparams.{name}={value} is outside the accepted range "
            f"[{lo}, {hi}]; refusing to run the key derivation with it"
        )
    return value


def _hex(value: Any, where: str, *, size: int | None = None, size_max: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise KeystoreError(
            f"keystore field {where} must be a hex string, got {type(value).__name__}"
        )
    body = value[2:] if value[:2] in ("0x", "0X") else value
    # bytes.fromhex alone would skip whitespace; a keystore field is plain hex digits.
    if len(body) % 2 or body.strip(_HEX_DIGITS):
        raise KeystoreError(f"keystore field {where} is not valid hex")
    raw = bytes.fromhex(body)
    if size is not None and len(raw) != size:
        raise KeystoreError(f"keystore field {where} must be {size} bytes, got {len(raw)}")
    if size_max is not None and not 0 < len(raw) <= size_max:
        raise KeystoreError(f"keystore field {where} must be 1 to {size_max} bytes, got {len(raw)}")
    return raw


def _check_scrypt(n: int, r: int, p: int) -> None:
    if n < 2 or n & (n - 1):
        raise KeystoreError(f"scrypt n must be a power of two >= 2, got {n}")
    if not 1 <= n <= SCRYPT_N_MAX:
        raise KeystoreError(f"scrypt n={n} exceeds the maximum {SCRYPT_N_MAX}; refusing")
    if not 1 <= r <= SCRYPT_R_MAX or not 1 <= p <= SCRYPT_P_MAX:
        raise KeystoreError(
            f"scrypt r={r}, p={p} outside the accepted ranges r in [1, {SCRYPT_R_MAX}], "
            f"p in [1, {SCRYPT_P_MAX}]; refusing"
        )
    if 128 * r * n > SCRYPT_MEMORY_BYTES_MAX:
        raise KeystoreError(
            f"scrypt n={n}, r={r} needs {128 * r * n} bytes of memory, more than the "
            f"{SCRYPT_MEMORY_BYTES_MAX} allowed; refusing"
        )
    if n * r * p > SCRYPT_WORK_MAX:
        raise KeystoreError(
            f"scrypt n={n}, r={r}, p={p} asks for more work than the {SCRYPT_WORK_MAX} "
            "BlockMix rounds allowed; refusing"
        )


def _check_pbkdf2(c: int) -> None:
    if not 1 <= c <= PBKDF2_C_MAX:
        raise KeystoreError(f"pbkdf2 c={c} is outside [1, {PBKDF2_C_MAX}]; refusing")


# ------------------------------------------------------------------------------ primitives


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    # OpenSSL's own limit defaults to 32 MiB; give it exactly what these (already bounded)
    # parameters need, B (128·r·p) plus V (128·r·(n+2)), plus slack for its bookkeeping.
    maxmem = 128 * r * (n + 2 + p) + 65_536
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=_DKLEN)


def _pbkdf2(password: bytes, salt: bytes, c: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password, salt, c, dklen=_DKLEN)


def _aes_128_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    # The whole 16-byte IV is the initial big-endian counter (Go's cipher.NewCTR semantics).
    cipher = AES.new(key, AES.MODE_CTR, nonce=b"", initial_value=iv)
    return bytes(cipher.encrypt(data))


def _mac(derived: bytes, ciphertext: bytes) -> bytes:
    return keccak256(derived[16:32] + ciphertext)


# ------------------------------------------------------------------------------- encrypting


def encrypt_key(
    key: NodeKey,
    password: str,
    *,
    kdf: str = "scrypt",
    work_factor: int | None = None,
    randbytes: Callable[[int], bytes] = secrets.token_bytes,
) -> dict[str, Any]:
    """The v3 keystore JSON object (as a dict) for ``key`` under ``password``.

    Args:
        kdf: ``"scrypt"`` (default, as geth) or ``"pbkdf2"`` (PBKDF2-HMAC-SHA256).
        work_factor: scrypt ``n`` (default 2^18, r=8, p=1) or pbkdf2 ``c`` (default 262144).
            Tests pass something small such as 2^10; a real node should keep the default.
        randbytes: entropy for the salt, IV and uuid; inject a seeded one for reproducible
            output.

    Raises ``KeystoreError`` for an unknown kdf or out-of-range work factor.
    """
    if kdf not in KDF_NAMES:
        raise KeystoreError(f"unsupported kdf {kdf!r}; use one of {', '.join(KDF_NAMES)}")
    if not isinstance(password, str):
        raise KeystoreError(f"the password must be a str, got {type(password).__name__}")
    password_bytes = password.encode("utf-8")
    salt = randbytes(_SALT_BYTES)
    iv = randbytes(_IV_BYTES)
    if len(salt) != _SALT_BYTES or len(iv) != _IV_BYTES:
        raise KeystoreError("randbytes(k) must return exactly k bytes")
    kdfparams: dict[str, Any]
    if work_factor is not None and (
        not isinstance(work_factor, int) or isinstance(work_factor, bool)
    ):
        raise KeystoreError(f"work_factor must be an int, got {type(work_factor).__name__}")
    if kdf == "scrypt":
        n = SCRYPT_N_DEFAULT if work_factor is None else work_factor
        _check_scrypt(n, SCRYPT_R_DEFAULT, SCRYPT_P_DEFAULT)
        derived = _scrypt(password_bytes, salt, n, SCRYPT_R_DEFAULT, SCRYPT_P_DEFAULT)
        kdfparams = {
            "dklen": _DKLEN,
            "n": n,
            "p": SCRYPT_P_DEFAULT,
            "r": SCRYPT_R_DEFAULT,
            "salt": salt.hex(),
        }
    else:
        c = PBKDF2_C_DEFAULT if work_factor is None else work_factor
        _check_pbkdf2(c)
        derived = _pbkdf2(password_bytes, salt, c)
        kdfparams = {"c": c, "dklen": _DKLEN, "prf": _PRF, "salt": salt.hex()}
    ciphertext = _aes_128_ctr(derived[:16], iv, key.secret)
    return {
        "address": key.address[2:],
        "crypto": {
            "cipher": _CIPHER,
            "ciphertext": ciphertext.hex(),
            "cipherparams": {"iv": iv.hex()},
            "kdf": kdf,
            "kdfparams": kdfparams,
            "mac": _mac(derived, ciphertext).hex(),
        },
        "id": str(uuid.UUID(bytes=randbytes(16), version=4)),
        "version": 3,
    }


# ------------------------------------------------------------------------------- decrypting


def _derive(kdf: str, params: Mapping[str, Any]) -> Callable[[bytes], bytes]:
    """Validate the kdf parameters and return the password -> derived-key function."""
    if kdf == "scrypt":
        n = _int(params, "n", 2, SCRYPT_N_MAX)
        r = _int(params, "r", 1, SCRYPT_R_MAX)
        p = _int(params, "p", 1, SCRYPT_P_MAX)
        _check_scrypt(n, r, p)
        salt = _hex(
            _field(params, "salt", "crypto.kdfparams."),
            "crypto.kdfparams.salt",
            size_max=SALT_BYTES_MAX,
        )
        _int(params, "dklen", _DKLEN, _DKLEN)
        return lambda pw: _scrypt(pw, salt, n, r, p)
    if kdf == "pbkdf2":
        c = _int(params, "c", 1, PBKDF2_C_MAX)
        prf = _field(params, "prf", "crypto.kdfparams.")
        if prf != _PRF:
            raise KeystoreError(f"unsupported pbkdf2 prf {prf!r}; only {_PRF!r} is supported")
        salt = _hex(
            _field(params, "salt", "crypto.kdfparams."),
            "crypto.kdfparams.salt",
            size_max=SALT_BYTES_MAX,
        )
        _int(params, "dklen", _DKLEN, _DKLEN)
        return lambda pw: _pbkdf2(pw, salt, c)
    raise KeystoreError(f"unsupported kdf {kdf!r}; this reader supports {', '.join(KDF_NAMES)}")


def decrypt_key(keystore: Mapping[str, Any], password: str) -> NodeKey:
    """The key inside a v3 keystore (geth, eth-account or ethers). Raises ``KeystoreError``."""
    ks = _mapping(keystore, "(top level)")
    version = _field(ks, "version", "")
    if version != 3 or isinstance(version, bool):
        raise KeystoreError(
            f"unsupported keystore version {version!r}; only version 3 (geth/ethers/eth-account) "
            "is supported"
        )
    # ethers and some old writers (MyEtherWallet, early geth) capitalise "Crypto".
    crypto = _mapping(_field(ks, "Crypto" if "Crypto" in ks else "crypto", ""), "crypto")
    cipher = _field(crypto, "cipher", "crypto.")
    if cipher != _CIPHER:
        raise KeystoreError(f"unsupported cipher {cipher!r}; only {_CIPHER!r} is supported")
    params = _mapping(_field(crypto, "cipherparams", "crypto."), "crypto.cipherparams")
    iv = _hex(
        _field(params, "iv", "crypto.cipherparams."), "crypto.cipherparams.iv", size=_IV_BYTES
    )
    ciphertext = _hex(
        _field(crypto, "ciphertext", "crypto."), "crypto.ciphertext", size=_SECRET_BYTES
    )
    mac = _hex(_field(crypto, "mac", "crypto."), "crypto.mac", size=_MAC_BYTES)
    kdf = _field(crypto, "kdf", "crypto.")
    derive = _derive(kdf, _mapping(_field(crypto, "kdfparams", "crypto."), "crypto.kdfparams"))
    if not isinstance(password, str):
        raise KeystoreError(f"the password must be a str, got {type(password).__name__}")

    candidates = [password.encode("utf-8")]
    nfkc = unicodedata.normalize("NFKC", password).encode("utf-8")
    if nfkc != candidates[0]:
        candidates.append(nfkc)  # what ethers would have derived from (see module docstring)
    for candidate in candidates:
        derived = derive(candidate)
        if hmac.compare_digest(_mac(derived, ciphertext), mac):
            break
    else:
        raise KeystoreError("wrong password or corrupted keystore (MAC mismatch)")

    secret = _aes_128_ctr(derived[:16], iv, ciphertext)
    try:
        key = NodeKey(secret)
    except ValueError:
        raise KeystoreError(
            "the keystore decrypts (MAC ok) to an invalid secp256k1 secret; the file was "
            "written by a broken tool"
        ) from None
    if "address" in ks:
        try:
            claimed = normalize_address(str(ks["address"]))
        except ValueError as exc:
            raise KeystoreError(f"keystore field address is malformed: {exc}") from None
        if claimed != key.address:
            raise KeystoreError(
                f"keystore address {claimed} does not match the decrypted key's address "
                f"{key.address}; the file was edited or assembled from two keystores"
            )
    return key


# ------------------------------------------------------------------------------------- I/O


def write_keystore(path: Path, key: NodeKey, password: str, **kw: Any) -> None:
    """Encrypt ``key`` (``encrypt_key`` keyword arguments pass through) and write it to ``path``.

    Atomic and never clobbering: the JSON goes to a 0600 temp file in the same directory, is
    fsynced, then hard-linked to ``path`` (which fails if ``path`` exists, unlike a rename) and
    the temp name removed. Raises ``FileExistsError`` if ``path`` exists.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise FileExistsError(
            f"{path} already exists; refusing to overwrite a keystore (move it away first)"
        )
    directory = path.parent
    if not directory.is_dir():
        raise FileNotFoundError(f"directory {directory} does not exist; create it first")
    data = (
        json.dumps(encrypt_key(key, password, **kw), indent=None, sort_keys=True) + "\n"
    ).encode()
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask can only remove bits, but be explicit
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(
                f"{path} already exists; refusing to overwrite a keystore (move it away first)"
            ) from None
        except OSError:
            # Filesystems without hard links (some FUSE/SMB mounts): fall back to a rename,
            # re-checking existence; the race window is only against ourselves.
            if path.exists():
                raise FileExistsError(
                    f"{path} already exists; refusing to overwrite a keystore"
                ) from None
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    with contextlib.suppress(OSError):  # directory fsync is unsupported on some platforms
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_keystore(path: Path, password: str) -> NodeKey:
    """Read and decrypt the keystore at ``path``. Raises ``KeystoreError`` or ``OSError``."""
    path = Path(path)
    size_bytes = path.stat().st_size
    if size_bytes > _FILE_BYTES_MAX:
        raise KeystoreError(
            f"{path} is {size_bytes} bytes; a keystore is under 1 KiB, so this is not one"
        )
    raw = path.read_bytes()
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeystoreError(f"{path} is not a JSON keystore: {exc.__class__.__name__}") from None
    try:
        return decrypt_key(obj, password)
    except KeystoreError as exc:
        raise KeystoreError(f"{path}: {exc}") from None


def read_password(password_file: Path | None, *, confirm: bool) -> str:
    """The keystore password, from ``password_file`` or an interactive prompt.

    A file holds the password on its first line exactly; one trailing newline (``\\n`` or
    ``\\r\\n``) is stripped, nothing else. Without a file we prompt with ``getpass`` (twice when
    ``confirm``, i.e. when creating a keystore), which needs a terminal. With ``confirm`` an
    empty password is refused.
    """
    if password_file is not None:
        try:
            text = Path(password_file).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise KeystoreError(f"password file {password_file} is not UTF-8 text") from None
        if text.endswith("\r\n"):
            text = text[:-2]
        elif text.endswith("\n"):
            text = text[:-1]
        if confirm and not text:
            raise KeystoreError(f"password file {password_file} is empty; put a password in it")
        return text
    if not sys.stdin.isatty():
        raise KeystoreError(
            "no terminal to prompt for the keystore password; pass --password-file FILE"
        )
    first = getpass.getpass("Keystore password: ")
    if confirm:
        if not first:
            raise KeystoreError("an empty password would leave the key unprotected; choose one")
        if getpass.getpass("Repeat password: ") != first:
            raise KeystoreError("the two passwords differ; nothing was written, try again")
    return first
