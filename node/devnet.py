"""A local fog: N real node processes on loopback, for people, tests and benchmarks.

``formation-node devnet up --nodes N`` starts node 0 listening on a free loopback port and
every other node with node 0 as its bootstrap peer (host and port only, as operators write
it), each with its own data dir under ``--root``; it reports when every node knows every
other node's signed ``node.announce`` op and all state digests match, then keeps them running
until Ctrl-C (and stops them with SIGINT, so each says goodbye and flushes its store).

Only loopback addresses are used: nothing here dials anything else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from node.control import ControlError, query

__all__ = ["LocalFog"]

_CLI = [sys.executable, "-m", "node.cli"]


def process_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds used so far, resident bytes) of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return cpu_s, rss_pages * os.sysconf("SC_PAGE_SIZE")


class LocalFog:
    def __init__(
        self,
        root: Path,
        *,
        log_level: str = "warning",
        extra_args: tuple[str, ...] = (),
        listen: str = "/ip4/127.0.0.1/tcp/0",
        vmm: str = "off",
        mesh: str = "off",
        netns: Sequence[str] = (),
        listen_of: Callable[[int], str] | None = None,
    ) -> None:
        self.root = root
        # Node i runs inside netns[i] when given, listening on listen_of(i).
        self.netns = tuple(netns)
        self.listen_of = listen_of
        # Off unless asked for: a test fog of nodes that each made a VM netns would be slow.
        self.vmm = vmm
        self.mesh = mesh  # off unless asked for, too: each node's wireguard-go and netns cost
        self.log_level = log_level
        self.extra_args = extra_args
        self.listen = listen
        self.procs: dict[int, subprocess.Popen[str]] = {}
        self.retired: list[subprocess.Popen[str]] = []
        self.bootstrap = ""

    def data_dir(self, i: int) -> Path:
        return self.root / f"n{i}"

    def log(self, i: int) -> str:
        """What node ``i`` wrote to stderr (its log) so far."""
        path = self.root / f"n{i}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, i: int, args_extra: Sequence[str] = ()) -> None:
        """Start node ``i`` (again, if it ran before) and wait until it serves; ``args_extra``
        are this node's own ``formation-node run`` options (after the fog's)."""
        # nsenter, not ``ip netns exec``: that one also makes a private mount namespace, where
        # the namespaces the node creates (bind mounts in /run/netns) would be invisible to us.
        prefix = ["nsenter", f"--net=/run/netns/{self.netns[i]}", "--"] if self.netns else []
        args = [
            *prefix,
            *_CLI,
            "run",
            "--data-dir",
            str(self.data_dir(i)),
            "--listen",
            self.listen_of(i) if self.listen_of is not None else self.listen,
            "--gateway",
            "127.0.0.1:0",
        ]
        args += ["--log-level", self.log_level, "--vmm", self.vmm, "--dns", "127.0.0.1:0"]
        args += ["--mesh", self.mesh]
        args += [*self.extra_args, *args_extra]
        if self.bootstrap:
            args += ["--bootstrap", self.bootstrap]
        # Keys generated on first start must not land in the operator's real data dir.
        env = {**os.environ, "XDG_DATA_HOME": str(self.root / "xdg")}
        log = (self.root / f"n{i}.log").open("a")
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        log.close()
        if i in self.procs:
            self.retired.append(self.procs[i])
        self.procs[i] = proc
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip().startswith("listen") and not self.bootstrap:
                addr = line.split()[1]
                # Host and port only, as operators write it; a QUIC dial needs the peer id.
                self.bootstrap = addr if "/quic" in addr else addr.split("/p2p/")[0]
            if line.startswith("running"):
                return
        raise RuntimeError(f"node {i} exited before it was running; see {self.root / f'n{i}.log'}")

    def status(self, i: int) -> dict[str, Any] | None:
        try:
            return query(self.data_dir(i), "status")
        except (ControlError, OSError, ValueError):
            return None

    def converged(self, nodes_known: int) -> bool:
        statuses = [self.status(i) for i in self.procs]
        return all(s is not None and s["nodes_known"] == nodes_known for s in statuses) and (
            len({s["state_digest"] for s in statuses if s is not None}) == 1
        )

    def wait(self, predicate: Callable[[], bool], timeout_s: float = 60.0) -> float:
        """Poll ``predicate`` until it holds; returns the seconds it took."""
        started = time.monotonic()
        while not predicate():
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(
                    f"not converged after {timeout_s:.0f} s; statuses: "
                    f"{[self.status(i) for i in self.procs]}"
                )
            time.sleep(0.1)
        return time.monotonic() - started

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in [*self.procs.values(), *self.retired]:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
