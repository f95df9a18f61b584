"""Benchmark ``form pack ship`` on a built image: from the command to an answering HTTP server.

Run (as root, with QEMU): ``.venv/bin/python benchmarks/bench_ship.py [--repeats 3]``
Prints each run and the distribution; writes ``benchmarks/results/ship.json``.

One real node process (``--vmm qemu``: KVM where a probe boot works, else TCG) builds the small
Formfile of issue 11 once (layers cached by content), then each run ships that build under a new
instance name with ``form pack ship --build-id B --no-wait`` and polls the instance until its
endpoint answers HTTP. Reported per run: ``ship_to_http_s`` (the command started -> the first
200 from the guest, what a user waits), ``boot_ms`` (the host's start() -> the guest's boot
marker, from the instance record), the accelerator. Each instance is deleted before the next.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from node.devnet import LocalFog

RESULTS = Path(__file__).parent / "results" / "ship.json"
FORM = [sys.executable, "-m", "node.client.cli"]
FORMFILE = """\
NAME bench-web
VCPU 1
MEM 512
INSTALL python3
COPY ./app /app
WORKDIR /app
EXPOSE 8000
ENTRYPOINT ["python3", "-m", "http.server", "8000"]
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="ships to time")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ship-") as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "fog").mkdir()
        fog = LocalFog(tmp / "fog", extra_args=("--heartbeat-s", "0"), vmm="qemu")
        try:
            fog.start(0, ("--vm-capacity", "vcpus=2,memory_mb=2048,disk_gb=20"))
            runs = _runs(tmp, fog, args.repeats)
        finally:
            fog.stop_all()
    waits = [r["ship_to_http_s"] for r in runs]
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "command": "python benchmarks/bench_ship.py --repeats " + str(args.repeats),
        "runs": runs,
        "ship_to_http_s": {
            "min": min(waits),
            "median": round(statistics.median(waits), 2),
            "max": max(waits),
        },
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["ship_to_http_s"]), f"over {len(runs)} runs; wrote {RESULTS}")
    return 0


def _runs(tmp: Path, fog: LocalFog, repeats: int) -> list[dict[str, Any]]:
    gateway = str((fog.status(0) or {})["gateway"])
    (tmp / "pw").write_text("bench\n")
    env = {**os.environ, "XDG_DATA_HOME": str(tmp / "xdg"), "XDG_CONFIG_HOME": str(tmp / "xdgc")}

    def form(*argv: str) -> Any:
        done = subprocess.run(
            [*FORM, "--gateway", gateway, "--password-file", str(tmp / "pw"), "--json", *argv],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"form {' '.join(argv)} failed: {done.stderr}{fog.log(0)[-2000:]}")
        return json.loads(done.stdout) if done.stdout.strip() else None

    form("init")
    form("account", "create", "--name", "bench")
    context = tmp / "ctx"
    (context / "app").mkdir(parents=True)
    (context / "app" / "index.html").write_text("bench\n")
    (context / "Formfile").write_text(FORMFILE)
    build_id = form("pack", "build", str(context))["build_id"]
    runs = []
    for run in range(repeats):
        start = time.perf_counter()
        shipped = form("pack", "ship", "--build-id", build_id, "--name", f"b{run}", "--no-wait")
        instance_id = shipped["instance_id"]
        while True:
            instance = form("manage", "get", "--id", instance_id)
            if instance["status"] in ("CriticalError", "Killed"):
                raise SystemExit(f"run {run}: {instance}")
            endpoints = instance.get("endpoints") or []
            if instance["status"] == "Started" and endpoints and _answers(endpoints[0]):
                break
            time.sleep(0.2)
        wait_s = round(time.perf_counter() - start, 2)
        runs.append(
            {
                "ship_to_http_s": wait_s,
                "boot_ms": instance.get("slots", [{}])[0].get("boot_ms"),
                "accelerator": instance.get("accelerator"),
            }
        )
        print(
            f"run {run}: {wait_s} s to HTTP, boot {runs[-1]['boot_ms']} ms ({runs[-1]['accelerator']})"
        )
        form("manage", "delete", "--id", instance_id)
        while form("manage", "list")["instances"]:
            time.sleep(0.5)
    return runs


def _answers(endpoint: dict[str, Any]) -> bool:
    try:
        url = f"http://{endpoint['host']}:{endpoint['port']}/"
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status) == 200
    except OSError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
