"""Where a node keeps its files, and its key.

A node's **data directory** holds everything it owns: ``state.db`` (the op log, see
``node.store``), ``node-key.json`` (its secp256k1 key, an Ethereum v3 keystore) and, when the
node generated that key itself, ``node-key.password`` (mode 0600). The default directory is
``$FORMATION_NODE_DATA_DIR`` or ``$XDG_DATA_HOME/formation-node`` (``~/.local/share/...``).

A key generated on first start is protected by a random password stored beside it: that is
no weaker than the file permissions that guard any server key, and it lets ``make run`` start
unattended. An operator who wants a passphrase runs ``formation-node keygen`` and passes
``--password-file`` (or answers the prompt).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Final

from node.identity.keys import NodeKey
from node.identity.keystore import read_keystore, read_password, write_keystore

__all__ = [
    "DEFAULT_NETWORK",
    "KEY_FILENAME",
    "PASSWORD_FILENAME",
    "default_data_dir",
    "load_or_create_node_key",
]

DEFAULT_NETWORK: Final = "local"
KEY_FILENAME: Final = "node-key.json"
PASSWORD_FILENAME: Final = "node-key.password"
# A self-generated key's password sits next to it, so a slow KDF would only slow every start.
_GENERATED_KEY_SCRYPT_N: Final = 2**14


def default_data_dir() -> Path:
    explicit = os.environ.get("FORMATION_NODE_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "formation-node"


def load_or_create_node_key(
    data_dir: Path, password_file: Path | None = None
) -> tuple[NodeKey, bool]:
    """The node's key from ``data_dir``, generating one on first start. Returns (key, created)."""
    key_path = data_dir / KEY_FILENAME
    stored_password = data_dir / PASSWORD_FILENAME
    if key_path.exists():
        if password_file is None and stored_password.exists():
            password_file = stored_password
        return read_keystore(key_path, read_password(password_file, confirm=False)), False
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = NodeKey.generate()
    if password_file is not None:
        write_keystore(key_path, key, read_password(password_file, confirm=True))
        return key, True
    password = secrets.token_urlsafe(32)
    fd = os.open(stored_password, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    write_keystore(key_path, key, password, work_factor=_GENERATED_KEY_SCRYPT_N)
    return key, True
