"""``formation-node``: the operator's command line.

Each subcommand is a function ``cmd_<name>(args) -> int`` (the exit status); ``main`` parses
and dispatches. Errors that an operator can fix are printed as one line starting with
``error:`` and exit with status 2; nothing prints a traceback for a wrong password, a missing
file or a store that is not ours.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from bootstrap.profiles import PROFILES
from node import __version__
from node.capacity import measure_capacity
from node.config import (
    ConfigError,
    default_data_dir,
    load_config,
    load_or_create_node_key,
    write_config,
)
from node.control import ControlError, query, serve_control
from node.gossip.config import GossipConfig
from node.gossip.core import GossipCore
from node.identity.keys import NodeKey, checksum_address
from node.identity.keystore import KeystoreError, read_password, write_keystore
from node.logs import LEVELS, configure_logging
from node.metrics import NodeMetrics
from node.p2p.gossip_driver import GossipService, join_through
from node.replica import Replica
from node.store import StoreError

__all__ = ["main"]


class UsageError(Exception):
    """A problem the operator can fix; printed as ``error: ...``, exit status 2."""


# Problems an operator can fix: ``main`` prints them as one ``error:`` line, exit status 2.
_OPERATOR_ERRORS: tuple[type[Exception], ...] = (
    UsageError,
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
    fog = LocalFog(root, log_level=args.log_level, listen=listen)
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
    # libp2p costs ~1 s to import: only the command that needs it pays.
    from node.p2p.transport import open_transport, peer_id_of

    configure_logging(args.log_level, json_lines=args.log_json)
    data_dir: Path = args.data_dir
    config = load_config(data_dir)
    network = args.network or config.network
    listen = args.listen or list(config.listen_addrs)
    bootstrap = args.bootstrap if args.bootstrap is not None else list(config.bootstrap)
    gateway_where = args.gateway or config.gateway
    if gateway_where != "off":
        _gateway_address(gateway_where)  # a typo is a one-line error before anything starts
    key, created = load_or_create_node_key(data_dir, args.password_file)
    replica = await trio.to_thread.run_sync(Replica.open, data_dir, network)
    try:
        # Handlers go in before "running" is printed: a supervisor that signals as soon as it
        # reads that line must get a clean stop, not the default kill.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    transport = await stack.enter_async_context(open_transport(key, listen))
                except ValueError as exc:  # a --listen the operator can fix
                    raise UsageError(f"cannot listen on {listen}: {exc}") from None
                nursery = await stack.enter_async_context(trio.open_nursery())
                rng = random.Random(secrets.randbits(64))
                core = GossipCore(
                    key.address, transport.listen_addrs[0], GossipConfig.lan(), rng, replica
                )
                service = GossipService(core, replica, transport)
                await nursery.start(service.run)
                for addr in bootstrap:
                    nursery.start_soon(join_through, service, transport, addr, rng)

                def status() -> dict[str, object]:
                    with replica.lock:  # worker threads apply ops meanwhile
                        return _status()

                def _status() -> dict[str, object]:
                    return {
                        "address": key.address,
                        "peer_id": peer_id_of(key),
                        "network": network,
                        "data_dir": str(data_dir),
                        "listen_addrs": transport.listen_addrs,
                        "peers": len(transport.peers),
                        "members_alive": len(core.membership.alive()),
                        "members": core.describe(),
                        "ops": replica.state.op_count,
                        "op_set_digest": replica.digest.root().hex(),
                        "state_digest": replica.state_digest(),
                        "store_bytes": replica.store.size_bytes(),
                        "nodes_known": len(replica.state.nodes()),
                        "metrics": metrics_url,
                        "gateway": gateway_url,
                    }

                metrics = NodeMetrics()
                metrics_host, _, metrics_port = args.metrics.rpartition(":")
                metrics_url = metrics.serve(metrics_host or "127.0.0.1", int(metrics_port or 0))

                def snapshot() -> dict[str, object]:
                    return {
                        "ops": replica.state.op_count,
                        "members_alive": len(core.membership.alive()),
                        "peers": len(transport.peers),
                        "store_bytes": replica.store.size_bytes(),
                        "local_health": core.membership.local_health,
                        "packets_sent": core.stats.packets_sent,
                        "ops_received": core.stats.ops_received,
                        "duplicates_received": core.stats.duplicates_received,
                        "dropped_packets": service.dropped_packets,
                        "bad_packets": service.bad_packets,
                        "gateway_responses": dict(gateway.responses_by_status) if gateway else {},
                        "agent_calls": gateway.proxy.calls_total if gateway else 0,
                    }

                gateway_url, gateway = await _start_gateway(
                    nursery,
                    gateway_where,
                    key,
                    network,
                    replica,
                    service,
                    transport,
                    config.agent_networks,
                )
                nursery.start_soon(metrics.run, snapshot)

                def arrivals() -> dict[str, object]:
                    return {"arrivals": list(service.arrivals)}

                await nursery.start(
                    serve_control, data_dir, {"status": status, "arrivals": arrivals}
                )
                # The node's own record: who it is and where to reach it, replicated to all.
                await service.write(
                    key,
                    "node.announce",
                    {"listen_addrs": transport.listen_addrs[:16], "version": __version__},
                )
                if args.heartbeat_s > 0:
                    nursery.start_soon(_heartbeat, service, key, data_dir, args.heartbeat_s)
                print(f"formation-node {__version__}")
                print(
                    f"  address   {checksum_address(key.address)}{'  (new key)' if created else ''}"
                )
                print(f"  data dir  {data_dir}")
                print(f"  network   {network} ({config.source})")
                for addr in transport.listen_addrs:
                    print(f"  listen    {addr}")
                print(f"  bootstrap {', '.join(bootstrap) or '(none)'}")
                print(f"  metrics   {metrics_url}")
                print(f"  gateway   {gateway_url or '(off)'}")
                print(
                    f"  state     {replica.state.op_count} ops, digest {replica.state_digest()[:16]}"
                )
                print("running; press Ctrl-C to stop", flush=True)
                async for signum in signals:
                    print(f"\n{signal.Signals(signum).name} received; stopping", flush=True)
                    break
                with trio.move_on_after(2):
                    await service.leave()
                nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(replica.close)
    print("stopped cleanly", flush=True)
    return 0


def _gateway_address(where: str) -> tuple[str, int]:
    host, sep, port = where.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError(
            f"--gateway must be HOST:PORT (port 0 picks a free one) or 'off', got {where!r}"
        )
    return host.strip("[]") or "127.0.0.1", int(port)


async def _start_gateway(
    nursery: trio.Nursery,
    where: str,
    key: NodeKey,
    network: str,
    replica: Replica,
    service: GossipService,
    transport: Any,
    agent_networks: Sequence[str],
) -> tuple[str | None, Any]:
    """Serve the gateway in ``nursery``: (its URL, the app), or (None, None) when off."""
    if where == "off":
        return None, None
    from node.gateway.app import GatewayApp, serve_gateway
    from node.gateway.proxy import AgentProxy
    from node.p2p.transport import peer_id_of

    host, port = _gateway_address(where)

    class Node:
        def __init__(self) -> None:
            self.replica = replica

        def info(self) -> dict[str, Any]:
            with replica.lock:
                return {
                    "address": key.address,
                    "peer_id": peer_id_of(key),
                    "network": network,
                    "version": __version__,
                    "listen_addrs": transport.listen_addrs,
                    "ops": replica.state.op_count,
                    "state_digest": replica.state_digest(),
                }

        async def submit_checked(self, ops: Any) -> Any:
            return await service.submit_checked(ops)

    app = GatewayApp(Node(), proxy=AgentProxy(agent_networks))
    try:
        url: str = await nursery.start(serve_gateway, app, host, port)
    except (OSError, BaseExceptionGroup) as exc:
        # Hypercorn binds inside nested nurseries: the OSError may arrive wrapped.
        leaf: BaseException = exc
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if not isinstance(leaf, OSError):
            raise
        raise UsageError(
            f"cannot serve the gateway on {where}: {leaf.strerror or leaf}; pass --gateway "
            "HOST:PORT (port 0 picks a free one) or --gateway off"
        ) from None
    return url, app


async def _heartbeat(service: GossipService, key: NodeKey, data_dir: Path, period_s: float) -> None:
    """Report this machine's capacity as a signed node.capacity op every ``period_s``."""
    while True:
        await trio.sleep(period_s)
        capacity = await trio.to_thread.run_sync(measure_capacity, data_dir)
        await service.write(key, "node.capacity", {"capacity": capacity})


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
