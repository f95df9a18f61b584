"""A gossip run's trace: the event lines ``trace_hash`` covers, and the ``--trace`` file.

Theory of operation
-------------------
Every event the engine processes leaves one canonical text line (``0.25 P 3 n7 1 0 2``: time,
kind, node, what it did); ``trace_hash`` is blake2b-128 over those lines, each followed by a
newline, in order. That is all a run keeps when nobody asked for a trace, and its meaning does
not depend on whether a file was asked for.

With ``--trace FILE`` the run also streams a JSON-lines file (one JSON object per line, its
``"k"`` says which; the reference is ``docs/formats.md``, "Simulation trace"):

* ``h`` (first line): format name and version, scenario, seed, node count, core, duration;
* ``e``: one event line, exactly as hashed (so ``trace_hash`` can be checked from the file);
* ``w``: an op written: op id, writer node, virtual time in ms, how many *other* nodes were
  up (the denominator of "99 % of nodes");
* ``d``: an op delivered to a node by a peer: op id, node, virtual time in ms, whether it was
  the first arrival (stored) or a duplicate, and ``deferred`` for an op the node's clock
  refused for now (``node.ledger.admission``);
* ``l``: a node's op log began (the node started with an empty log: at the start, a join, a
  restart with its disk lost); arrivals of ops written before that are catch-up, not
  propagation;
* ``end`` (last line): the event count and ``trace_hash``; a file without it is truncated.

Times in ``w``/``d``/``l`` are the engine's virtual seconds times 1000.0, written with
``repr`` (which JSON reads back to the same float), and ``simulations.metrics`` computes its
propagation figures from exactly those millisecond values, so ``simulations.trace_metrics``
recomputes them from the file bit for bit.

Records and event lines share one buffer, written out every ``CHUNK`` entries, so a trace of
any length costs bounded memory; records are only built when a file was asked for, so a run
without one pays a branch per delivery batch.
"""

from __future__ import annotations

import hashlib
import json
from typing import IO, Any, Final

from node.ledger.admission import SubmitResult
from simulations.scenario import Scenario

__all__ = ["CHUNK", "FORMAT", "VERSION", "Tracer", "trace_header"]

FORMAT: Final = "formation-sim-trace"
VERSION: Final = 1
CHUNK: Final = 4096  # entries buffered before they are hashed and written


class Tracer:
    """The run's event lines and, when ``file`` is given, its JSON-lines records."""

    __slots__ = ("digest", "file", "lines", "on")

    def __init__(self, file: IO[str] | None, header: dict[str, Any]) -> None:
        # str: an event line; tuple: a record (only with a file), rendered when flushed.
        self.lines: list[Any] = []
        self.digest = hashlib.blake2b(digest_size=16)
        self.file = file
        self.on = file is not None
        if file is not None:
            file.write(json.dumps({"k": "h", "format": FORMAT, "version": VERSION, **header}))
            file.write("\n")

    def write(self, op_id: bytes, node: int, at: float, peers_up: int) -> None:
        self.lines.append(("w", op_id, node, at * 1000.0, peers_up))

    def deliver(self, op_id: bytes, node: int, at: float, first: bool) -> None:
        self.lines.append(("d", op_id, node, at * 1000.0, first))

    def deferred(self, op_id: bytes, node: int, at: float) -> None:
        self.lines.append(("x", op_id, node, at * 1000.0, False))

    def deliveries(self, node: int, at: float, result: SubmitResult) -> None:
        """What became of a delivered batch at ``node`` (rejected ops are not recorded)."""
        append = self.lines.append
        at_ms = at * 1000.0
        for op in result.accepted:
            append(("d", op.id, node, at_ms, True))
        for op in result.duplicates:
            append(("d", op.id, node, at_ms, False))
        for op, _why in result.deferred:
            append(("x", op.id, node, at_ms, False))

    def log_born(self, node: int, at: float) -> None:
        self.lines.append(("l", b"", node, at * 1000.0, 0))

    def flush(self) -> None:
        lines = self.lines
        if not lines:
            return
        if self.file is None:
            self.digest.update(("\n".join(lines) + "\n").encode())
        else:
            events = [x for x in lines if type(x) is str]
            if events:
                self.digest.update(("\n".join(events) + "\n").encode())
            self.file.write("\n".join(map(_render, lines)) + "\n")
        lines.clear()

    def close(self, events: int) -> None:
        """Flush, then (with a file) the ``end`` line; the caller closes the file."""
        self.flush()
        if self.file is not None:
            end = {"k": "end", "events": events, "trace_hash": self.digest.hexdigest()}
            self.file.write(json.dumps(end) + "\n")


def trace_header(scenario: Scenario, core_name: str) -> dict[str, Any]:
    """What the ``h`` line says about the run."""
    return {
        "scenario": scenario.name,
        "seed": scenario.seed,
        "nodes": scenario.nodes,
        "core": core_name,
        "duration_s": scenario.duration_s,
    }


def _render(entry: Any) -> str:
    if type(entry) is str:
        return json.dumps({"k": "e", "line": entry})
    kind, op_id, node, t_ms, extra = entry
    if kind == "l":
        return f'{{"k": "l", "node": {node}, "t_ms": {t_ms!r}}}'
    op = op_id.hex()
    if kind == "w":
        return f'{{"k": "w", "op": "{op}", "node": {node}, "t_ms": {t_ms!r}, "peers_up": {extra}}}'
    first = "true" if extra else "false"
    deferred = ', "deferred": true' if kind == "x" else ""
    return (
        f'{{"k": "d", "op": "{op}", "node": {node}, "t_ms": {t_ms!r}, "first": {first}{deferred}}}'
    )
