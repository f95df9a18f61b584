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

import ipaddress
import json
import os
import secrets
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from bootstrap.profiles import DEFAULT_PROFILE, get_profile
from node.identity.keys import NodeKey
from node.identity.keystore import read_keystore, read_password, write_keystore

__all__ = [
    "CONFIG_FILENAME",
    "DEFAULT_NETWORK",
    "KEY_FILENAME",
    "PASSWORD_FILENAME",
    "ConfigError",
    "NodeConfig",
    "default_data_dir",
    "load_config",
    "load_or_create_node_key",
    "write_config",
]

DEFAULT_NETWORK: Final = "local"
CONFIG_FILENAME: Final = "config.toml"
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


class ConfigError(ValueError):
    """The config file is unreadable or says something this version does not understand."""


@dataclass(frozen=True)
class NodeConfig:
    """The effective configuration of a node (file, else profile defaults)."""

    profile: str
    network: str
    listen_addrs: tuple[str, ...]
    bootstrap: tuple[str, ...]
    source: str  # the file it came from, or "embedded defaults"
    gateway: str = "127.0.0.1:3004"
    agent_networks: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["listen_addrs"] = list(self.listen_addrs)
        data["bootstrap"] = list(self.bootstrap)
        data["agent_networks"] = list(self.agent_networks)
        return data


_KEYS: Final = {"profile", "network", "listen_addrs", "bootstrap", "gateway", "agent_networks"}


def load_config(data_dir: Path) -> NodeConfig:
    """The config in ``data_dir``, or the ``local`` profile's defaults when there is none."""
    path = data_dir / CONFIG_FILENAME
    if not path.exists():
        profile = get_profile(DEFAULT_PROFILE)
        return NodeConfig(
            profile.name,
            profile.network,
            profile.listen_addrs,
            profile.bootstrap,
            "embedded defaults",
            profile.gateway,
            profile.agent_networks,
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path} is not valid TOML ({exc}); fix it or run 'formation-node init' again"
        ) from None
    unknown = sorted(data.keys() - _KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(_KEYS))}"
        )
    try:
        profile = get_profile(str(data.get("profile", DEFAULT_PROFILE)))
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None

    def strings(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = data.get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: {key} must be a list of strings")
        return tuple(value)

    network = data.get("network", profile.network)
    if not isinstance(network, str) or not network:
        raise ConfigError(f"{path}: network must be a non-empty string")
    agent_networks = strings("agent_networks", profile.agent_networks)
    for network_text in agent_networks:
        try:
            ipaddress.ip_network(network_text)
        except ValueError as exc:
            raise ConfigError(
                f"{path}: agent_networks: {exc} (write networks such as '10.0.0.0/8')"
            ) from None
    gateway = data.get("gateway", profile.gateway)
    if not isinstance(gateway, str) or ":" not in gateway:
        raise ConfigError(f"{path}: gateway must be 'HOST:PORT' (port 0 picks a free one)")
    return NodeConfig(
        profile.name,
        network,
        strings("listen_addrs", profile.listen_addrs),
        strings("bootstrap", profile.bootstrap),
        str(path),
        gateway,
        agent_networks,
    )


def write_config(data_dir: Path, profile_name: str) -> Path:
    """Write ``data_dir/config.toml`` for a profile. Refuses to overwrite an existing one."""
    profile = get_profile(profile_name)
    path = data_dir / CONFIG_FILENAME
    if path.exists():
        raise FileExistsError(f"{path} already exists; edit it, or move it away to start over")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    lines = [
        "# formation-node configuration, written by 'formation-node init'.",
        f"# Profile {profile.name}: {profile.description}.",
        f"profile = {json.dumps(profile.name)}",
        f"network = {json.dumps(profile.network)}",
        f"listen_addrs = {json.dumps(list(profile.listen_addrs))}",
        f"bootstrap = {json.dumps(list(profile.bootstrap))}",
        f"gateway = {json.dumps(profile.gateway)}",
        f"agent_networks = {json.dumps(list(profile.agent_networks))}",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
