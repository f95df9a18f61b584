"""The build service over a real replicated State, with the builder and blob store faked.

The real builder and blob store have their own tests (tests/real/test_pack_build.py,
tests/unit/test_blobs.py); here the driver's part is checked: whose turn, the reports it signs
(Building per step, Built with digests, CriticalError with step, line and tail), fetching what
the context lacks, and that a build is taken once.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from node.ledger.builds import build_digest
from node.ledger.state import State
from node.pack.service import BuildService, BuildServiceConfig, BuildTools
from tests.helpers import NET, T0_MS, op, seeded_keys, wait_until

ALICE, NODE_A, NODE_B = seeded_keys(3, seed=41)
FORMFILE = "NAME web\nRUN echo hi\n"


class FakeBlobs:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def put(self, data: bytes, expected: str | None = None) -> str:
        digest = hashlib.sha256(data).hexdigest()
        assert expected in (None, digest)
        self.data[digest] = data
        return digest

    def put_file(self, path: Path, expected: str | None = None, move: bool = False) -> str:
        digest = self.put(path.read_bytes(), expected)
        if move:
            path.unlink()
        return digest

    def has(self, digest: str) -> bool:
        return digest in self.data

    def missing(self, digests: list[str]) -> list[str]:
        return [d for d in digests if d not in self.data]

    def get(self, digest: str) -> bytes:
        return self.data[digest]

    def size(self, digest: str) -> int:
        return len(self.data[digest])


@dataclass
class FakeManifest:
    files: list[Any]


@dataclass
class FakeFile:
    path: str
    chunks: list[str]


class BuildFailed(Exception):
    def __init__(self, message: str, step_index: int, step_name: str, line: int) -> None:
        super().__init__(message)
        self.message, self.step_index, self.step_name, self.line = (
            message,
            step_index,
            step_name,
            line,
        )
        self.log_tail = ("step output 1", "boom")


@dataclass
class StepEvent:
    index: int
    total: int
    name: str
    line: int
    cached: bool = False
    state: str = "start"


@dataclass
class Result:
    image_path: Path
    image_digest: str
    manifest: dict[str, Any]
    kernel_path: Path | None = None
    initrd_path: Path | None = None


@dataclass
class Host:
    state: State
    key: Any
    blobs: FakeBlobs
    peer_blobs: dict[str, bytes] = field(default_factory=dict)
    fetched: list[str] = field(default_factory=list)
    clock: itertools.count[int] = field(default_factory=lambda: itertools.count(T0_MS, 1000))

    @property
    def address(self) -> str:
        return str(self.key.address)

    @property
    def network(self) -> str:
        return NET

    def read(self, fn: Any) -> Any:
        return fn(self.state)

    async def write(self, kind: str, payload: dict[str, Any]) -> None:
        made = op(self.key, kind, payload, next(self.clock))
        self.state.ingest(made.body, made.sig)

    async def fetch_blob(self, digest: str) -> None:
        self.fetched.append(digest)
        self.blobs.put(self.peer_blobs[digest], digest)


def _state() -> State:
    state = State(NET)
    for node in (NODE_A, NODE_B):
        made = op(node, "node.announce", {"version": "t", "roles": ["builder"]})
        state.ingest(made.body, made.sig)
    return state


def _request(state: State, via: str, context: str = "") -> str:
    payload = {"name": "web", "formfile": FORMFILE, "via": via}
    if context:
        payload["context"] = context
    made = op(ALICE, "build.request", payload)
    state.ingest(made.body, made.sig)
    return build_digest(ALICE.address, FORMFILE, context)


def _tools(blobs: FakeBlobs, build: Any) -> BuildTools:
    def materialize(manifest: Any, store: Any, dest: Path) -> None:
        for f in manifest.files:
            (dest / f.path).write_bytes(b"".join(store.get(c) for c in f.chunks))

    def parse_manifest(data: bytes) -> FakeManifest:
        return FakeManifest([FakeFile(p, c) for p, c in eval(data.decode())])  # test data only

    return BuildTools(
        build=build,
        parse=lambda text: text,
        blobs=blobs,
        parse_manifest=parse_manifest,
        materialize=materialize,
        error_types=(BuildFailed,),
    )


def _service(host: Host, tools: BuildTools, tmp_path: Path) -> BuildService:
    return BuildService(
        host,
        tools,
        work_root=tmp_path / "work",
        cache_dir=tmp_path / "cache",
        config=BuildServiceConfig(poll_s=0.01),
        clock_ms=lambda: T0_MS + 1_000,  # soon after the request: no takeover yet
    )


async def test_the_via_node_builds_fetches_missing_chunks_and_reports_built(tmp_path: Path) -> None:
    state = _state()
    chunk = b"print('hello')\n"
    chunk_digest = hashlib.sha256(chunk).hexdigest()
    manifest = repr([("app.py", [chunk_digest])]).encode()
    manifest_digest = hashlib.sha256(manifest).hexdigest()
    blobs = FakeBlobs()
    blobs.put(manifest)  # the manifest is here; its chunk is on a peer
    host = Host(state, NODE_A, blobs, peer_blobs={chunk_digest: chunk})
    build_id = _request(state, via=NODE_A.address, context=manifest_digest)
    seen: list[str] = []

    def build(
        formfile: str,
        context_dir: Path,
        *,
        work_dir: Path,
        cache_dir: Path,
        on_step: Any,
        on_log: Any,
    ) -> Result:
        seen.append((context_dir / "app.py").read_text())
        for i, name in enumerate(["RUN echo hi", "finalize"], start=1):
            on_step(StepEvent(i, 2, name, 2 if i == 1 else 0))
            on_log(f"doing {name}")
        work_dir.mkdir(parents=True)
        image = work_dir / "image.qcow2"
        image.write_bytes(b"QFI\xfb image bytes")
        return Result(image, hashlib.sha256(image.read_bytes()).hexdigest(), {"ports": [8000]})

    service = _service(host, _tools(blobs, build), tmp_path)
    other = _service(Host(state, NODE_B, FakeBlobs()), _tools(FakeBlobs(), build), tmp_path / "b")
    assert [b["build_id"] for b in service.due()] == [build_id]
    assert other.due() == []  # via comes first: B waits for silence
    await service.build_one(service.due()[0])

    view = state.build(build_id)
    assert view is not None
    assert view["status"] == "Built"
    assert view["node_id"] == NODE_A.address
    assert seen == ["print('hello')\n"]
    assert host.fetched == [chunk_digest]
    assert blobs.get(view["image"]) == b"QFI\xfb image bytes"
    assert view["image_size_bytes"] == len(b"QFI\xfb image bytes")
    manifest_out = eval(blobs.get(view["manifest"]).decode().replace("true", "True"))
    assert manifest_out["image"] == view["image"]
    assert manifest_out["build_id"] == build_id
    assert manifest_out["ports"] == [8000]
    assert service.due() == []  # finished: nobody's turn
    _, lines, done = service.log(build_id).since(0)  # type: ignore[union-attr]
    assert done
    assert "doing finalize" in lines
    assert not (tmp_path / "work" / build_id).exists()  # the work dir is cleaned


async def test_a_failing_step_is_a_critical_error_with_its_line_and_tail(tmp_path: Path) -> None:
    state = _state()
    blobs = FakeBlobs()
    host = Host(state, NODE_A, blobs)
    build_id = _request(state, via=NODE_A.address)

    def build(formfile: str, context_dir: Path, **_: Any) -> Result:
        raise BuildFailed("RUN exited with status 1", 3, "RUN false", 7)

    service = _service(host, _tools(blobs, build), tmp_path)
    await service.build_one(service.due()[0])
    view = state.build(build_id)
    assert view is not None
    assert (view["status"], view["step"], view["line"], view["step_name"]) == (
        "CriticalError",
        3,
        7,
        "RUN false",
    )
    assert view["error"] == "RUN exited with status 1"
    assert view["log_tail"] == "step output 1\nboom"
    assert service.builds_failed == 1
    # Nobody retries a failure: the same inputs fail the same way anywhere.
    other = _service(Host(state, NODE_B, FakeBlobs()), _tools(FakeBlobs(), build), tmp_path / "b")
    assert other.due() == []


async def test_the_run_loop_takes_each_build_once(tmp_path: Path) -> None:
    state = _state()
    blobs = FakeBlobs()
    host = Host(state, NODE_A, blobs)
    calls: list[str] = []

    def build(formfile: str, context_dir: Path, *, work_dir: Path, **_: Any) -> Result:
        calls.append(formfile)
        work_dir.mkdir(parents=True)
        image = work_dir / "i.qcow2"
        image.write_bytes(b"img")
        return Result(image, hashlib.sha256(b"img").hexdigest(), {})

    service = _service(host, _tools(blobs, build), tmp_path)
    build_id = _request(state, via=NODE_A.address)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        with trio.fail_after(10):
            await wait_until(lambda: (state.build(build_id) or {}).get("status") == "Built")
        await trio.sleep(0.05)  # more polls: the build is not taken again
        nursery.cancel_scope.cancel()
    assert calls == [FORMFILE]
    assert service.builds_done == 1


async def test_a_fetch_that_fails_is_tried_again_then_the_build_fails_with_why(
    tmp_path: Path,
) -> None:
    chunk = b"data"
    chunk_digest = hashlib.sha256(chunk).hexdigest()
    manifest = repr([("f", [chunk_digest])]).encode()

    class FlakyHost(Host):
        failures_left: int = 0

        async def fetch_blob(self, digest: str) -> None:
            if self.failures_left > 0:
                self.failures_left -= 1
                raise ConnectionError("no peer holds it yet")
            await super().fetch_blob(digest)

    def build(formfile: str, context_dir: Path, *, work_dir: Path, **_: Any) -> Result:
        work_dir.mkdir(parents=True)
        image = work_dir / "i.qcow2"
        image.write_bytes((context_dir / "f").read_bytes())
        return Result(image, hashlib.sha256(chunk).hexdigest(), {})

    for failures, expected in ((2, "Built"), (3, "CriticalError")):
        state = _state()
        blobs = FakeBlobs()
        blobs.put(manifest)
        host = FlakyHost(state, NODE_A, blobs, peer_blobs={chunk_digest: chunk})
        host.failures_left = failures
        build_id = _request(state, via=NODE_A.address, context=hashlib.sha256(manifest).hexdigest())
        service = BuildService(
            host,
            _tools(blobs, build),
            work_root=tmp_path / f"w{failures}",
            cache_dir=tmp_path / "cache",
            config=BuildServiceConfig(poll_s=0.01, fetch_retry_s=(0.0, 0.0)),
            clock_ms=lambda: T0_MS + 1_000,
        )
        await service.build_one(service.due()[0])
        view = state.build(build_id)
        assert view is not None
        assert view["status"] == expected
        if expected == "CriticalError":
            assert "no peer holds it yet" in view["error"]
            assert "again in 0 s" in view["log_tail"]
