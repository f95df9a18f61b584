"""Benchmark the QEMU VM driver: from start() to an answering HTTP server on the forward.

Run (as root): ``.venv/bin/python benchmarks/bench_vm_boot.py [--runs 3] [--accel auto]``
Prints a table and writes ``benchmarks/results/vm_boot.json``.

The image is issue 11's small Formfile (python3 -m http.server 8000), built with the real
builder over the node's cache (``default_cache_dir()``; seconds when the layers are cached).
One VM is created once; each run is ``start`` (timed to Started, i.e. the guest's boot
marker, and to the first HTTP 200 through ``127.0.0.1:<port>``), then an ACPI ``stop``
(timed). Also reported: the accelerator and why, the driver's open (netns, bridge, dnsmasq),
create (overlay + resize + tap + forward) and the first start's accelerator probe.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from node.pack.base import default_cache_dir
from node.pack.builder import build
from node.pack.formfile import parse
from node.pack.password import hash_passwords
from node.vmm.driver import VmSpec
from node.vmm.qemu import open_qemu_driver

RESULTS = Path(__file__).parent / "results" / "vm_boot.json"
FORMFILE = """\
NAME hello-web
USER username:web passwd:s3cret sudo:true
VCPU 1
MEM 512
INSTALL python3
COPY ./app /app
RUN echo built > /app/built.txt
WORKDIR /app
EXPOSE 8000
ENTRYPOINT ["python3", "-m", "http.server", "8000"]
"""


async def first_http(port: int, deadline_s: float = 120.0) -> float:
    """Seconds until GET / on 127.0.0.1:port answers 200."""
    t0 = time.perf_counter()
    async with httpx.AsyncClient() as client:
        while time.perf_counter() - t0 < deadline_s:
            try:
                r = await client.get(f"http://127.0.0.1:{port}/", timeout=5)
                if r.status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            await trio.sleep(0.1)
    raise RuntimeError(f"no HTTP answer on 127.0.0.1:{port} within {deadline_s} s")


async def bench(runs: int, accel: str, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine()}
    ctx = tmp / "ctx"
    (ctx / "app").mkdir(parents=True)
    (ctx / "app" / "index.html").write_text("<h1>bench</h1>\n")
    formfile = hash_passwords(parse(FORMFILE), lambda user: "benchsalt")
    t = time.perf_counter()
    built = await trio.to_thread.run_sync(
        lambda: build(formfile, ctx, work_dir=tmp / "build", cache_dir=default_cache_dir())
    )
    out["image_build_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    async with open_qemu_driver(tmp / "data", accel=accel) as driver:
        out["driver_open_s"] = round(time.perf_counter() - t, 3)
        spec = VmSpec(
            "bench-0",
            built.image_path,
            built.kernel_path,
            built.initrd_path,
            vcpus=1,
            memory_mb=512,
            disk_gb=2,
            expose=(8000,),
        )
        t = time.perf_counter()
        info = await driver.create(spec)
        out["create_s"] = round(time.perf_counter() - t, 3)
        port = int(info.endpoints[0]["port"])
        to_started: list[float] = []
        to_http: list[float] = []
        stops: list[float] = []
        for i in range(runs):
            t = time.perf_counter()
            started = await driver.start(spec.key)
            if started.status != "Started":
                raise RuntimeError(f"run {i}: {started.status}: {started.detail}")
            to_started.append(time.perf_counter() - t)
            to_http.append(to_started[-1] + await first_http(port))
            if i == 0:
                out["accelerator"] = started.accelerator
                out["accelerator_reason"] = driver.accel_reason
            t = time.perf_counter()
            stopped = await driver.stop(spec.key, timeout_s=60)
            stops.append(time.perf_counter() - t)
            if "ACPI" not in stopped.detail:
                raise RuntimeError(f"run {i}: not an ACPI stop: {stopped.detail}")
        await driver.delete(spec.key)
    out["runs"] = runs
    out["start_to_started_s"] = [round(s, 2) for s in to_started]
    out["start_to_http_s"] = [round(s, 2) for s in to_http]
    out["start_to_http_s_median"] = round(statistics.median(to_http), 2)
    out["start_to_http_s_first_run_note"] = "the first run includes the accelerator probe"
    out["acpi_stop_s"] = [round(s, 2) for s in stops]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="start/stop cycles to time")
    ap.add_argument("--accel", default="auto", choices=("auto", "tcg", "kvm"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-vm-") as tmp_s:
        out = trio.run(bench, args.runs, args.accel, Path(tmp_s))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    for k, v in out.items():
        print(f"{k:32} {v}")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
