"""Config files and network profiles (read only: nothing here dials anyone)."""

from pathlib import Path

import pytest

from bootstrap.profiles import DEVNET_PORT, PROFILES, get_profile
from node.config import CONFIG_FILENAME, ConfigError, load_config, write_config


def test_no_config_means_the_local_profile_which_dials_nobody(tmp_path: Path) -> None:
    config = load_config(tmp_path)
    assert (config.profile, config.network, config.bootstrap) == ("local", "local", ())
    assert config.listen_addrs == ("/ip4/127.0.0.1/tcp/0",)
    assert config.source == "embedded defaults"


def test_the_devnet_profile_lists_the_public_hosts_on_the_upstream_port() -> None:
    devnet = get_profile("devnet")
    hosts = [addr.split("/")[2] for addr in devnet.bootstrap]
    assert hosts == ["3.214.9.18", "44.218.128.162"]
    assert all(addr.endswith(f"/tcp/{DEVNET_PORT}") for addr in devnet.bootstrap)
    assert DEVNET_PORT == 53333
    assert devnet.network == "devnet"


def test_init_writes_a_config_that_loads_back(tmp_path: Path) -> None:
    for name in PROFILES:
        data_dir = tmp_path / name
        path = write_config(data_dir, name)
        config = load_config(data_dir)
        profile = get_profile(name)
        assert config.source == str(path)
        assert (
            config.network,
            config.bootstrap,
            config.listen_addrs,
            config.gateway,
            config.agent_networks,
        ) == (
            profile.network,
            profile.bootstrap,
            profile.listen_addrs,
            profile.gateway,
            profile.agent_networks,
        )
        with pytest.raises(FileExistsError, match="already exists"):
            write_config(data_dir, name)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("profile = ", "not valid TOML"),
        ("admin = true\n", "unknown key 'admin'"),
        ('profile = "mainnet"\n', "unknown network profile 'mainnet'"),
        ("bootstrap = [1, 2]\n", "bootstrap must be a list of strings"),
        ('network = ""\n', "network must be a non-empty string"),
        ('gateway = "3004"\n', "gateway must be 'HOST:PORT'"),
        ("agent_networks = [10]\n", "agent_networks must be a list of strings"),
        ('agent_networks = ["10.0.0.1/8"]\n', "has host bits set"),
    ],
)
def test_a_bad_config_is_refused_with_the_reason(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / CONFIG_FILENAME).write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config(tmp_path)


def test_a_config_may_override_its_profile(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILENAME).write_text(
        'profile = "devnet"\nbootstrap = ["/ip4/127.0.0.1/tcp/4001"]\n'
    )
    config = load_config(tmp_path)
    assert config.network == "devnet"
    assert config.bootstrap == ("/ip4/127.0.0.1/tcp/4001",)


def test_measured_capacity_is_a_valid_node_capacity_payload(tmp_path: Path) -> None:
    from node.capacity import measure_capacity
    from node.ledger.schema import check_payload
    from node.ledger.state import KINDS

    capacity = measure_capacity(tmp_path)
    checked = check_payload("node.capacity", KINDS["node.capacity"].spec, {"capacity": capacity})
    assert checked["capacity"]["cpu_total_cores"] >= 1
    assert 0 < capacity["memory_available_bytes"] <= capacity["memory_total_bytes"]


def test_the_operators_settings_override_the_config_and_an_empty_one_keeps_it(
    tmp_path: Path,
) -> None:
    from node.node import NodeSettings

    (tmp_path / CONFIG_FILENAME).write_text(
        'profile = "devnet"\nbootstrap = ["/ip4/127.0.0.1/tcp/4001"]\n'
    )
    config = load_config(tmp_path)
    kept = NodeSettings.from_config(config, tmp_path, network="", listen_addrs=[], gateway="")
    assert (kept.network, kept.listen_addrs, kept.gateway) == (
        config.network,
        config.listen_addrs,
        config.gateway,
    )
    assert kept.bootstrap == config.bootstrap
    assert kept.source == str(tmp_path / CONFIG_FILENAME)
    overridden = NodeSettings.from_config(
        config,
        tmp_path,
        network="other",
        listen_addrs=["/ip4/127.0.0.1/tcp/0"],
        bootstrap=[],  # none at all, not the config's
        gateway="off",
    )
    assert overridden.network == "other"
    assert overridden.listen_addrs == ("/ip4/127.0.0.1/tcp/0",)
    assert overridden.bootstrap == ()
    assert overridden.gateway == "off"


@pytest.mark.parametrize("gateway", ["nonsense", "127.0.0.1:", "127.0.0.1:65536", ":x"])
def test_a_gateway_setting_that_is_not_host_port_is_refused(tmp_path: Path, gateway: str) -> None:
    from node.node import NodeSettings, StartError

    with pytest.raises(StartError, match="--gateway must be HOST:PORT"):
        NodeSettings.from_config(load_config(tmp_path), tmp_path, gateway=gateway)


@pytest.mark.parametrize("metrics", ["nonsense", "127.0.0.1:abc", "off"])
def test_a_metrics_setting_that_is_not_host_port_is_refused(tmp_path: Path, metrics: str) -> None:
    from node.node import NodeSettings, StartError

    with pytest.raises(StartError, match="--metrics must be HOST:PORT"):
        NodeSettings.from_config(load_config(tmp_path), tmp_path, metrics=metrics)
