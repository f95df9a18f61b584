"""``formation-node``: the operator's command line.

Each subcommand is a function ``cmd_<name>(args) -> int`` (the exit status); ``main`` parses
and dispatches. ``run`` builds and runs the node through ``node.node`` (the composition root)
and adds only the signal handlers and the lines it prints. Errors that an operator can fix
are printed as one line starting with ``error:`` and exit with status 2; nothing prints a
traceback for a wrong password, a missing file or a store that is not ours.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from bootstrap.profiles import PROFILES
from node import __version__
from node.config import (
    ConfigError,
    default_data_dir,
    load_config,
    load_or_create_node_key,
    write_config,
)
from node.control import ControlError, query
from node.identity.keys import NodeKey, checksum_address
from node.identity.keystore import KeystoreError, read_password, write_keystore
from node.logs import LEVELS, configure_logging
from node.node import (
    DNS_DEFAULT,
    MESH_CHOICES,
    VMM_CHOICES,
    Node,
    NodeSettings,
    StartError,
    open_home,
    run_node,
)
from node.store import StoreError

__all__ = ["main"]


class UsageError(Exception):
    """A problem the operator can fix; printed as ``error: ...``, exit status 2."""


# Problems an operator can fix: ``main`` prints them as one ``error:`` line, exit status 2.
_OPERATOR_ERRORS: tuple[type[Exception], ...] = (
    UsageError,
    StartError,
    ControlError,
    TimeoutError,
    ConfigError,
    KeystoreError,
    StoreError,
    FileExistsError,
    FileNotFoundError,
)

# `run` lets these through untouched (they come before any service starts); an OSError that
# is not an operator error reaches main() and shows its traceback.
_OPERATOR_ERRORS_OR_OS: tuple[type[Exception], ...] = (*_OPERATOR_ERRORS, OSError)


def cmd_keygen(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists():
        raise UsageError(f"{out} already exists; choose another --out or move it away")
    if not out.parent.is_dir():
        raise UsageError(f"directory {out.parent} does not exist; create it first")
    password = read_password(args.password_file, confirm=True)
    key = NodeKey.generate()
    write_keystore(out, key, password)
    # The address only: the secret never reaches the terminal.
    print(checksum_address(key.address))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    reply = query(args.data_dir, "status")
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    members = reply.pop("members", {})
    for key, value in reply.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"{key:<14} {shown}")
    if isinstance(members, dict):
        print(
            f"{'tree':<14} core {len(members.get('core', []))}, parent {members.get('parent')}, "
            f"children {len(members.get('children', []))}"
        )
    return 0


def cmd_devnet_up(args: argparse.Namespace) -> int:
    from node.devnet import LocalFog

    root: Path = args.root
    root.mkdir(parents=True, exist_ok=True)
    listen = "/ip4/127.0.0.1/udp/0/quic-v1" if args.quic else "/ip4/127.0.0.1/tcp/0"
    fog = LocalFog(root, log_level=args.log_level, listen=listen, vmm="auto", mesh="auto")
    started = time.monotonic()
    try:
        for i in range(args.nodes):
            fog.start(i)
            print(f"\rstarted {i + 1}/{args.nodes} nodes", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        took_s = fog.wait(lambda: fog.converged(args.nodes), timeout_s=args.timeout)
        print(
            f"fog of {args.nodes} nodes converged {took_s:.1f} s after the last start "
            f"({time.monotonic() - started:.1f} s in all); bootstrap {fog.bootstrap}"
        )
        for i in range(args.nodes):
            status = fog.status(i) or {}
            print(
                f"  n{i}  {status.get('address')}  gateway {status.get('gateway')}  "
                f"{status.get('listen_addrs', ['?'])[0]}  metrics {status.get('metrics')}  "
                f"data dir {fog.data_dir(i)}"
            )
        print("running; press Ctrl-C to stop them all", flush=True)
        while all(proc.poll() is None for proc in fog.procs.values()):
            time.sleep(0.5)
        print("a node exited; stopping the others", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        fog.stop_all()


def cmd_init(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir
    path = write_config(data_dir, args.network)
    key, created = load_or_create_node_key(data_dir, args.password_file)
    print(f"wrote {path}")
    print(f"node address {checksum_address(key.address)}{'' if created else ' (existing key)'}")
    print(f"start it with: formation-node run --data-dir {data_dir}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    config = load_config(args.data_dir)
    data = {"data_dir": str(args.data_dir), **config.to_json()}
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            shown = ", ".join(value) if isinstance(value, list) else value
            print(f"{key:<13} {shown if shown != '' else '(none)'}")
    return 0


async def _run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, json_lines=args.log_json)
    data_dir: Path = args.data_dir
    config = load_config(data_dir)
    settings = NodeSettings.from_config(
        config,
        data_dir,
        network=args.network,
        listen_addrs=args.listen,
        bootstrap=args.bootstrap,
        gateway=args.gateway,
        metrics=args.metrics,
        heartbeat_s=args.heartbeat_s,
        password_file=args.password_file,
        vmm=args.vmm,
        vm_capacity=args.vm_capacity,
        dns="off" if args.no_dns else args.dns,
        mesh=args.mesh,
        mesh_endpoint=args.mesh_endpoint,
        mesh_port=args.mesh_port,
    )
    async with open_home(settings) as home:
        # Handlers go in before "running" is printed: a supervisor that signals as soon as it
        # reads that line must get a clean stop, not the default kill.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                node: Node = await nursery.start(run_node, home)
                _print_running(node)
                async for signum in signals:
                    print(f"\n{signal.Signals(signum).name} received; stopping", flush=True)
                    break
                node.stop()
    print("stopped cleanly", flush=True)
    return 0


def _print_running(node: Node) -> None:
    """The lines an operator (and ``node.devnet``, which reads ``listen`` and ``running``) sees."""
    settings, state = node.settings, node.replica.state
    print(f"formation-node {__version__}")
    new_key = "  (new key)" if node.key_created else ""
    print(f"  address   {checksum_address(node.key.address)}{new_key}")
    print(f"  data dir  {settings.data_dir}")
    print(f"  network   {settings.network} ({settings.source})")
    for addr in node.transport.listen_addrs:
        print(f"  listen    {addr}")
    print(f"  bootstrap {', '.join(settings.bootstrap) or '(none)'}")
    print(f"  metrics   {node.metrics_url}")
    print(f"  gateway   {node.gateway_url or '(off)'}")
    if node.vms is not None:
        offered = node.vms.book.total.describe()
        print(f"  vms       {node.vmm_note}, offering {offered}")
    else:
        print(f"  vms       {node.vmm_note}")
    print(f"  dns       {node.dns_note}")
    if node.mesh_link is not None:
        link = node.mesh_link
        print(f"  mesh      WireGuard in netns {link.netns}, udp on {link.endpoint_host}")
    else:
        print(f"  mesh      {node.mesh_note}")
    print(f"  state     {state.op_count} ops, digest {node.replica.state_digest()[:16]}")
    print("running; press Ctrl-C to stop", flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        return trio.run(_run, args)
    except _OPERATOR_ERRORS_OR_OS:
        raise  # raised before any service started: main() prints the fixable ones as one line
    except BaseExceptionGroup as group:
        if group.subgroup(KeyboardInterrupt) is not None:
            raise KeyboardInterrupt from None
        fixable, rest = group.split(_OPERATOR_ERRORS_OR_OS)
        if fixable is not None and rest is None:
            # A service that could not start for a reason the operator can fix (a port in
            # use, a bad --gateway): one line from main(), not a traceback.
            leaf: BaseException = fixable
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            raise leaf from None
        logging.getLogger("formation.node").error(
            "a node service crashed; the node stopped", exc_info=group
        )
        print(
            "error: a node service crashed (see the log above); the node stopped", file=sys.stderr
        )
        return 1
    except Exception:
        # One service failed (transport, gossip, store, ...): the nursery has already
        # cancelled the others. Never linger half-alive: say what broke and exit non-zero.
        logging.getLogger("formation.node").exception("a node service crashed; the node stopped")
        print(
            "error: a node service crashed (see the log above); the node stopped", file=sys.stderr
        )
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="formation-node",
        description=(
            "A peer-to-peer fog node for Formation: it keeps the marketplace's replicated "
            "state (accounts, nodes, instances, agents, models) as signed operations in a "
            "local SQLite log and shares them with its peers."
        ),
        epilog="Run 'formation-node COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"formation-node {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        metavar="D",
        help="where the node keeps its key and state (default: %(default)s; "
        "env FORMATION_NODE_DATA_DIR)",
    )

    keygen = commands.add_parser(
        "keygen",
        help="create a key file (Ethereum keystore v3) and print its address",
        description=(
            "Create a new secp256k1 key and write it, password-protected, as an Ethereum "
            "keystore v3 file that geth, eth-account or ethers can also open. Prints the "
            "address, never the secret."
        ),
    )
    keygen.add_argument("--out", type=Path, required=True, metavar="FILE", help="file to write")
    keygen.add_argument(
        "--password-file",
        type=Path,
        metavar="PWFILE",
        help="read the password from this file (default: prompt twice)",
    )
    keygen.set_defaults(func=cmd_keygen)

    run = commands.add_parser(
        "run",
        parents=[data_dir],
        help="run the node until Ctrl-C or SIGTERM",
        description=(
            "Open (or create) the node's data directory, rebuild its state from the op log "
            "and serve until interrupted. With no configuration the node uses the 'local' "
            "network and dials nobody."
        ),
    )
    run.add_argument(
        "--network",
        help="network id (default: the config file's, else 'local'); ops of other networks are refused",
    )
    run.add_argument(
        "--listen",
        action="append",
        metavar="MULTIADDR",
        help="listen here (repeatable; default: the config's, e.g. /ip4/127.0.0.1/tcp/0)",
    )
    run.add_argument(
        "--bootstrap",
        action="append",
        metavar="MULTIADDR",
        help="join the fog through this peer (repeatable; /ip4/H/tcp/P without /p2p/ works); "
        "overrides the config's list",
    )
    run.add_argument(
        "--gateway",
        metavar="HOST:PORT",
        help="serve the signed-request HTTP gateway here (default: the config's, 127.0.0.1:3004; "
        "port 0 picks a free one; 'off' serves none)",
    )
    run.add_argument(
        "--metrics",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="serve Prometheus metrics here (default: %(default)s, a free port; see 'status')",
    )
    run.add_argument(
        "--heartbeat-s",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="sign a node.capacity op this often (0: never; default: %(default)s)",
    )
    run.add_argument(
        "--vmm",
        choices=VMM_CHOICES,
        default="auto",
        help="the VM driver: qemu (KVM where it boots, else TCG), simulated (nothing boots; for "
        "tests), off, or auto: qemu where qemu-system-x86_64 is installed, else off "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--vm-capacity",
        default="",
        metavar="SPEC",
        help="what this node offers to VMs, e.g. vcpus=2,memory_mb=2048,disk_gb=20[,gpus=0] "
        "(default: every core, the memory beyond 1 GiB, half the free disk)",
    )
    run.add_argument(
        "--dns",
        metavar="HOST:PORT",
        help="answer the .fog zone (builds, instances, nodes, names) here over UDP and TCP "
        f"(default {DNS_DEFAULT}, skipped with a warning when that port is taken; port 0 picks "
        "a free one)",
    )
    run.add_argument("--no-dns", action="store_true", help="serve no DNS")
    run.add_argument(
        "--mesh",
        choices=MESH_CHOICES,
        default="auto",
        help="the WireGuard mesh (every node and instance gets a 10.42.x.y address): on, off, "
        "or auto: on where wireguard-go is installed and the node runs as root (default: "
        "%(default)s). Its interface lives in a netns the node makes, named by 'status'",
    )
    run.add_argument(
        "--mesh-endpoint",
        default="",
        metavar="IP",
        help="the address other nodes send this node's WireGuard packets to (default: the "
        "first --listen IPv4 address that is not 0.0.0.0)",
    )
    run.add_argument(
        "--mesh-port",
        type=int,
        default=0,
        metavar="PORT",
        help="WireGuard's UDP port (default: any free one; published in the node's mesh.key)",
    )
    run.add_argument("--log-level", choices=LEVELS, default="warning", help="default: %(default)s")
    run.add_argument("--log-json", action="store_true", help="logs as one JSON object per line")
    run.add_argument(
        "--password-file",
        type=Path,
        metavar="PWFILE",
        help="password of the node key (default: the generated one in the data dir, or prompt)",
    )
    run.set_defaults(func=cmd_run)

    init = commands.add_parser(
        "init",
        parents=[data_dir],
        help="write a config file for a network profile, and the node key",
        description=(
            "Create the data directory with config.toml for a network profile and the node's "
            "key (the CLI counterpart of the upstream 'form kit init'). Profiles: "
            + "; ".join(f"{p.name}: {p.description}" for p in PROFILES.values())
            + "."
        ),
    )
    init.add_argument(
        "--network",
        choices=sorted(PROFILES),
        default="local",
        help="profile (default: %(default)s)",
    )
    init.add_argument(
        "--password-file",
        type=Path,
        metavar="PWFILE",
        help="protect the new key with this password (default: a generated one beside it)",
    )
    init.set_defaults(func=cmd_init)

    status_parser = commands.add_parser(
        "status",
        parents=[data_dir],
        help="ask the node running on a data dir how it is doing",
        description="Peers, members, op count and state digest of the node running on --data-dir.",
    )
    status_parser.add_argument("--json", action="store_true", help="one JSON object")
    status_parser.set_defaults(func=cmd_status)

    devnet = commands.add_parser("devnet", help="a local fog of real node processes")
    devnet_commands = devnet.add_subparsers(dest="devnet_command", metavar="COMMAND", required=True)
    up = devnet_commands.add_parser(
        "up",
        help="start N nodes on loopback, wired through node 0, and keep them running",
        description=(
            "Start N real node processes on 127.0.0.1, each with its own data dir under --root, "
            "node 0 as everyone's bootstrap peer; report when they have converged; Ctrl-C stops "
            "them all cleanly. Dials nothing but loopback."
        ),
    )
    up.add_argument("--nodes", type=int, default=5, help="how many (default: %(default)s)")
    up.add_argument(
        "--root", type=Path, default=Path("devnet"), help="data dirs go here (default: %(default)s)"
    )
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for convergence")
    up.add_argument(
        "--quic", action="store_true", help="the nodes listen on QUIC (udp, quic-v1) instead of TCP"
    )
    up.add_argument("--log-level", choices=LEVELS, default="warning")
    up.set_defaults(func=cmd_devnet_up)

    config = commands.add_parser("config", help="inspect the configuration")
    config_commands = config.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    show = config_commands.add_parser(
        "show",
        parents=[data_dir],
        help="print the effective configuration (file, else embedded defaults)",
    )
    show.add_argument("--json", action="store_true", help="one JSON object")
    show.set_defaults(func=cmd_config_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.monotonic()
    try:
        status: int = args.func(args)
    except _OPERATOR_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted after {time.monotonic() - started:.1f} s", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
