"""The build service: the thin Trio driver that builds the builds it is this node's turn to build.

Theory of operation
-------------------
Builds arrive as replicated ``build.request`` records (``node.ledger.builds``); nobody hands
them out. Every ``poll_s`` the service reads the builds that are not finished and asks the pure
rule in ``node.pack.where`` whether it is this node's turn; the ones that are go into a bounded
queue (``queue_max``) that ``builds_concurrent_max`` workers drain (one by default: a build is
apt, mkfs.ext4 and qemu-img, all disk-bound; two at once only make both slower).

A build, in order:

1. ``Building`` at step 0 is reported at once (a sign of life: the next node in line waits).
2. The Formfile is parsed again with this node's network limits (the gateway that took the
   request did too, but a replica trusts no other node's checks).
3. The context: its manifest and every chunk come from the local blob store, or by digest over
   libp2p from the peers (``Node.fetch_blob``: verified on arrival), then ``materialize``
   writes the files into the build's work dir.
4. ``node.pack.builder.build`` runs in a worker thread; each step it starts is reported as a
   ``build.status`` op (``Building``, step k of n, its Formfile line), and a reporter says
   ``Building`` again every ``REPORT_INTERVAL_MS`` inside a long step.
5. The image, its kernel and initrd and a manifest (JSON) go into the blob store by digest;
   ``Built`` names the image and the manifest. That report is the node's announcement that it
   holds the image: any node fetches it by digest from there.

A failure is ``CriticalError`` with the failing step, its line, a message and the last output
lines: the same inputs fail the same way anywhere, so no other node retries it.

Logs: each build's output lines are kept in a bounded ring (``log_lines_max`` per build, the last
``logs_kept_max`` builds), read by ``GET /v1/builds/{id}/log`` on this node; the replicated
record carries only the tail of a failure.
"""

from __future__ import annotations

import collections
import contextlib
import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import trio

from node.pack.where import REPORT_INTERVAL_MS, candidates, is_my_turn, ranking

__all__ = [
    "BuildLog",
    "BuildService",
    "BuildServiceConfig",
    "BuildTools",
    "builder_tools_missing",
    "open_build_service",
]

LOG_TAIL_CHARS_MAX: Final = 4096  # what build.status carries (its schema's limit)
ERROR_CHARS_MAX: Final = 1024


def _wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class BuildServiceConfig:
    poll_s: float = 1.0
    queue_max: int = 64
    builds_concurrent_max: int = 1
    log_lines_max: int = 2000
    logs_kept_max: int = 32
    report_interval_ms: int = REPORT_INTERVAL_MS
    # Pauses between tries of a blob fetch before the build fails (about 30 s in all).
    fetch_retry_s: tuple[float, ...] = (2.0, 8.0, 20.0)


class BuildHost(Protocol):
    """What the service needs from its node (``node.node.Node`` is one)."""

    @property
    def address(self) -> str: ...

    @property
    def network(self) -> str: ...

    def read(self, fn: Callable[[Any], Any]) -> Any: ...

    async def write(self, kind: str, payload: dict[str, Any]) -> None: ...

    async def fetch_blob(self, digest: str) -> None: ...


@dataclass(frozen=True)
class BuildTools:
    """The parts that do the work, injected so a test can drive the service with fakes.

    ``build`` is ``node.pack.builder.build``; ``parse`` is ``node.pack.formfile.parse`` bound to
    the node's limits; ``blobs`` a ``node.pack.blobs.BlobStore``; ``parse_manifest`` and
    ``materialize`` come from ``node.pack.context`` / ``node.pack.blobs``."""

    build: Callable[..., Any]
    parse: Callable[[str], Any]
    blobs: Any
    parse_manifest: Callable[[bytes], Any]
    materialize: Callable[[Any, Any, Path], None]
    error_types: tuple[type[BaseException], ...]  # the builder's and the parser's own errors


@dataclass
class BuildLog:
    """One build's output on this node: a bounded ring of lines with their sequence numbers."""

    lines_max: int
    first_seq: int = 0
    lines: collections.deque[str] = field(default_factory=collections.deque)
    done: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def append(self, line: str) -> None:
        # Called from the builder's worker thread.
        with self._lock:
            self.lines.append(line[:2000])
            if len(self.lines) > self.lines_max:
                self.lines.popleft()
                self.first_seq += 1

    def since(self, seq: int) -> tuple[int, list[str], bool]:
        """(seq of the first line returned, the lines from ``seq`` on, whether the build ended)."""
        with self._lock:
            start = max(seq, self.first_seq)
            offset = start - self.first_seq
            return start, list(self.lines)[offset:], self.done


class BuildService:
    def __init__(
        self,
        host: BuildHost,
        tools: BuildTools,
        *,
        work_root: Path,
        cache_dir: Path,
        config: BuildServiceConfig | None = None,
        clock_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        self.host = host
        self.tools = tools
        self.work_root = work_root
        self.cache_dir = cache_dir
        self.config = config or BuildServiceConfig()
        self.clock_ms = clock_ms
        self.started: set[str] = set()  # builds this process took (never taken twice)
        self.logs: collections.OrderedDict[str, BuildLog] = collections.OrderedDict()
        self.builds_done = 0
        self.builds_failed = 0
        self.queue_dropped = 0
        self._send, self._receive = trio.open_memory_channel[dict[str, Any]](self.config.queue_max)

    # -- what the gateway reads --------------------------------------------------------------

    def log(self, build_id: str) -> BuildLog | None:
        return self.logs.get(build_id)

    # -- the loop ----------------------------------------------------------------------------

    def due(self) -> list[dict[str, Any]]:
        """Builds it is this node's turn to start now (not started here before)."""
        me, now_ms = self.host.address, self.clock_ms()

        def read(state: Any) -> list[dict[str, Any]]:
            open_builds = [
                b for b in state.builds() if b["status"] not in ("Built", "CriticalError")
            ]
            if not open_builds:
                return []
            ids = candidates(state.nodes())
            return [
                b
                for b in open_builds
                if b["build_id"] not in self.started
                and is_my_turn(b, ranking(b["build_id"], ids, b.get("via")), me, now_ms)
            ]

        due: list[dict[str, Any]] = self.host.read(read)
        return due

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(self.config.builds_concurrent_max):
                nursery.start_soon(self._worker)
            task_status.started(self)
            while True:
                for build in self.due():
                    try:
                        self._send.send_nowait(build)
                    except trio.WouldBlock:
                        self.queue_dropped += 1  # taken again on a later poll
                        break
                    self.started.add(build["build_id"])
                await trio.sleep(self.config.poll_s)

    async def _worker(self) -> None:
        async for build in self._receive:
            await self.build_one(build)

    # -- one build ---------------------------------------------------------------------------

    def _new_log(self, build_id: str) -> BuildLog:
        log = BuildLog(self.config.log_lines_max)
        self.logs[build_id] = log
        self.logs.move_to_end(build_id)
        while len(self.logs) > self.config.logs_kept_max:
            self.logs.popitem(last=False)
        return log

    async def _report(self, build_id: str, status: str, **fields: Any) -> None:
        payload = {"build_id": build_id, "status": status}
        payload.update({k: v for k, v in fields.items() if v is not None})
        await self.host.write("build.status", payload)

    async def build_one(self, build: dict[str, Any]) -> None:
        """Build one build to ``Built`` or ``CriticalError``; never raises for a bad build."""
        build_id = build["build_id"]
        log = self._new_log(build_id)
        work_dir = self.work_root / build_id
        progress: dict[str, Any] = {"step": 0, "steps": 0, "step_name": "fetch context", "line": 0}
        await self._report(build_id, "Building", **progress)
        try:
            try:
                formfile = self.tools.parse(build["formfile"])
            except self.tools.error_types as exc:
                await self._fail(build_id, progress, f"invalid Formfile: {exc}", ())
                return
            shutil.rmtree(work_dir, ignore_errors=True)
            context_dir = work_dir / "context"
            context_dir.mkdir(parents=True)
            if build.get("context"):
                await self._fetch_context(build["context"], context_dir, log)
            result = await self._run_builder(
                build_id, formfile, context_dir, work_dir, log, progress
            )
            if result is None:
                return
            await self._store(build, result, progress)
            self.builds_done += 1
        except (
            Exception
        ) as exc:  # a fetch that failed, a full disk: say what, do not crash the node
            await self._fail(
                build_id, progress, f"{type(exc).__name__}: {exc}", tuple(log.lines)[-20:]
            )
        finally:
            log.done = True
            shutil.rmtree(work_dir, ignore_errors=True)

    async def _fail(
        self, build_id: str, progress: dict[str, Any], error: str, tail: tuple[str, ...]
    ) -> None:
        self.builds_failed += 1
        await self._report(
            build_id,
            "CriticalError",
            **progress,
            error=error[:ERROR_CHARS_MAX],
            log_tail="\n".join(tail)[-LOG_TAIL_CHARS_MAX:],
        )

    async def _blob(self, digest: str, log: BuildLog) -> None:
        """Fetch a blob this node lacks, trying again after ``fetch_retry_s`` pauses: the node
        that holds the context may be a moment from being connected (it just announced), and
        a failure here is reported as final (``CriticalError``)."""
        for pause_s in (*self.config.fetch_retry_s, None):
            if self.tools.blobs.has(digest):
                return
            try:
                await self.host.fetch_blob(digest)
                return
            except Exception as exc:
                if pause_s is None:
                    raise
                log.append(f"fetching {digest[:12]} failed ({exc}); again in {pause_s:g} s")
                await trio.sleep(pause_s)

    async def _fetch_context(self, digest: str, dest: Path, log: BuildLog) -> None:
        await self._blob(digest, log)
        manifest = self.tools.parse_manifest(self.tools.blobs.get(digest))
        chunks = list(dict.fromkeys(c for f in manifest.files for c in f.chunks))
        missing = self.tools.blobs.missing(chunks)
        log.append(
            f"context {digest[:12]}: {len(manifest.files)} files, {len(missing)} chunks to fetch"
        )
        for chunk in missing:
            await self._blob(chunk, log)
        await trio.to_thread.run_sync(self.tools.materialize, manifest, self.tools.blobs, dest)

    async def _run_builder(
        self,
        build_id: str,
        formfile: Any,
        context_dir: Path,
        work_dir: Path,
        log: BuildLog,
        progress: dict[str, Any],
    ) -> Any:
        steps_send, steps_receive = trio.open_memory_channel[Any](256)
        token = trio.lowlevel.current_trio_token()

        def on_step(event: Any) -> None:
            # The builder's thread: hand the event to Trio; a full channel drops a step report
            # (the next one, or the periodic report, says where the build is).
            with contextlib.suppress(trio.WouldBlock, trio.RunFinishedError):
                trio.from_thread.run_sync(steps_send.send_nowait, event, trio_token=token)

        def run() -> Any:
            return self.tools.build(
                formfile,
                context_dir,
                work_dir=work_dir / "out",
                cache_dir=self.cache_dir,
                on_step=on_step,
                on_log=log.append,
            )

        outcome: dict[str, Any] = {}

        async def builder() -> None:
            try:
                outcome["result"] = await trio.to_thread.run_sync(run, abandon_on_cancel=True)  # type: ignore[call-arg]
            except self.tools.error_types as exc:
                outcome["error"] = exc
            finally:
                steps_send.close()

        async def reporter() -> None:
            last_ms = self.clock_ms()
            while True:
                with trio.move_on_after(self.config.report_interval_ms / 1000):
                    try:
                        event = await steps_receive.receive()
                    except trio.EndOfChannel:
                        return
                    if getattr(event, "state", "start") == "start":
                        progress.update(
                            step=int(event.index),
                            steps=int(event.total),
                            step_name=str(event.name)[:128],
                            line=int(event.line),
                        )
                        await self._report(build_id, "Building", **progress)
                        last_ms = self.clock_ms()
                    continue
                if self.clock_ms() - last_ms >= self.config.report_interval_ms:
                    await self._report(build_id, "Building", **progress)
                    last_ms = self.clock_ms()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reporter)
            await builder()
        if "error" in outcome:
            exc = outcome["error"]
            progress.update(
                step=int(getattr(exc, "step_index", progress["step"]) or 0),
                step_name=str(getattr(exc, "step_name", progress["step_name"]))[:128],
                line=int(getattr(exc, "line", progress["line"]) or 0),
            )
            tail = tuple(getattr(exc, "log_tail", ()) or tuple(log.lines)[-20:])
            await self._fail(build_id, progress, str(getattr(exc, "message", exc)), tail)
            return None
        return outcome["result"]

    async def _store(self, build: dict[str, Any], result: Any, progress: dict[str, Any]) -> None:
        blobs = self.tools.blobs

        def store() -> tuple[str, int, str]:
            image = blobs.put_file(result.image_path, expected=result.image_digest, move=True)
            extra: dict[str, str] = {}
            for name in ("kernel_path", "initrd_path"):
                path = getattr(result, name, None)
                if path is not None and Path(path).exists():
                    extra[name.replace("_path", "_blob")] = blobs.put_file(Path(path), move=True)
            manifest = {
                **result.manifest,
                "build_id": build["build_id"],
                "context": build.get("context", ""),
                "image": image,
                "image_size_bytes": blobs.size(image),
                **extra,
            }
            body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
            return image, blobs.size(image), blobs.put(body)

        image, size, manifest_digest = await trio.to_thread.run_sync(store)
        await self._report(
            build["build_id"],
            "Built",
            step=progress.get("steps") or progress["step"],
            steps=progress.get("steps"),
            step_name="done",
            line=0,
            image=image,
            image_size_bytes=size,
            manifest=manifest_digest,
        )


# What a builder runs (node.pack.base and node.pack.builder), and the privilege overlay mounts
# and namespaces need.
_BUILDER_TOOLS: Final = ("debootstrap", "unshare", "pivot_root", "mkfs.ext4", "qemu-img")


def builder_tools_missing() -> list[str]:
    """What this machine lacks to build images (empty: it can); ``scripts/ensure-system-deps.sh
    run`` installs the tools."""
    import os

    missing = [tool for tool in _BUILDER_TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (overlay mounts and namespaces)")
    return missing


def open_build_service(
    host: BuildHost, blobs: Any, data_dir: Path, config: BuildServiceConfig | None = None
) -> BuildService:
    """The service with the real parts: the parser at the network's limits, the builder, the
    node's blob store; work dirs under ``data_dir/builds``, layers in the shared cache dir."""
    from functools import partial

    from node.pack import builder
    from node.pack.base import default_cache_dir
    from node.pack.blobs import materialize
    from node.pack.context import parse_manifest
    from node.pack.formfile import FormfileError, limits_for_network, parse

    tools = BuildTools(
        build=builder.build,
        parse=partial(parse, path="Formfile", limits=limits_for_network(host.network)),
        blobs=blobs,
        parse_manifest=parse_manifest,
        materialize=materialize,
        error_types=(builder.BuildError, FormfileError),
    )
    return BuildService(
        host, tools, work_root=data_dir / "builds", cache_dir=default_cache_dir(), config=config
    )
