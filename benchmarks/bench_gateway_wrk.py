"""One real node process under Debian's ``wrk``: signed reads and writes per second, latency.

Run: ``.venv/bin/python benchmarks/bench_gateway_wrk.py [--connections 1 8 32]
[--duration-s 5] [--requests 30000] [--node-src DIR]``. Starts one ``formation-node run``
(``--heartbeat-s 0``), creates an account, and for each connection count runs ``wrk -t1 -cN
-dD`` with a Lua script of *pre-signed* requests (each with its own nonce, so none is a
replay; signing is the client's cost and happens before wrk starts):

* ``read``: signed ``GET /v1/account/<address>/get``;
* ``write``: signed ``POST /v1/account/update`` with a new description each: a request op,
  verified, stored durably (group commit, D11), then answered.

wrk reports requests/s and the latency distribution (its own ``done`` hook prints them as
JSON); a run counts only if every answer was 2xx and wrk did not run out of pre-signed
requests. ``server CPU`` is the node's CPU time per request (/proc). wrk and the node share
the machine's 2 cores. ``--node-src DIR`` runs the node from another checkout (for an A/B of
two versions, alternating). Writes ``benchmarks/results/bench_gateway_wrk.json``. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from node.client.api import GatewayClient
from node.client.signer import sign_request
from node.devnet import LocalFog, process_usage
from node.identity.keys import NodeKey

RESULTS = Path(__file__).parent / "results" / "bench_gateway_wrk.json"
KEY = NodeKey(random.Random(7).randbytes(32))

_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


# --debug: print the first answer that is not 2xx (wrk then parses every answer: slower).
_FIRST_ERROR = r"""
shown = false
response = function(status, headers, body)
  if status >= 300 and not shown then shown = true; io.write("FIRST_ERROR ", status, " ", body, "\n") end
end
"""


def _script(kind: str, count: int, run: str, debug: bool = False) -> str:
    """A Lua script whose ``request()`` hands out ``count`` distinct pre-signed requests."""
    now_s = int(time.time())
    lines = ["local reqs = {}"]
    path = f"/v1/account/{KEY.address}/get" if kind == "read" else "/v1/account/update"
    for i in range(count):
        nonce = f"wrk{run}{i:010d}"
        if kind == "read":
            headers = sign_request(KEY, "GET", path, b"", now_s, nonce)
            body = ""
            method = "GET"
        else:
            body = json.dumps({"description": f"wrk {run} write {i}"}, separators=(",", ":"))
            headers = sign_request(KEY, "POST", path, body.encode(), now_s, nonce)
            headers["Content-Type"] = "application/json"
            method = "POST"
        table = ", ".join(f'["{k}"]="{v}"' for k, v in headers.items())
        lua_body = f"[==[{body}]==]" if body else "nil"
        lines.append(f'reqs[{i + 1}] = {{"{method}", "{path}", {{{table}}}, {lua_body}}}')
    # Formatted in init(): only then does wrk.headers hold the Host header wrk.format adds.
    lines.append("local raw = {}")
    lines.append("init = function(args)")
    lines.append("  for i, r in ipairs(reqs) do raw[i] = wrk.format(r[1], r[2], r[3], r[4]) end")
    lines.append("end")
    lines.append("n = 0")
    lines.append("request = function() n = n + 1; return raw[(n - 1) % #raw + 1] end")
    return "\n".join(lines) + "\n" + _DONE + (_FIRST_ERROR if debug else "")


def bench_wrk(
    url: str,
    pid: int,
    kind: str,
    connections: int,
    duration_s: int,
    count: int,
    run: str,
    debug: bool = False,
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_script(kind, count, run, debug))
        script = f.name
    try:
        cpu_before = process_usage(pid)[0]
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{duration_s}s",
                "--timeout",
                "10s",
                "-s",
                script,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        cpu_s = process_usage(pid)[0] - cpu_before
    finally:
        os.unlink(script)
    for first_error in (x for x in out.splitlines() if x.startswith("FIRST_ERROR ")):
        print(first_error[:400])
    line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
    got = json.loads(line.split(" ", 1)[1])
    if debug:
        print(got)
    requests = got["requests"]
    errors = sum(got[k] for k in ("status_errors", "connect_errors", "read_errors", "timeouts"))
    return {
        "workload": kind,
        "connections": connections,
        "requests": requests,
        "requests_per_s": round(requests / (got["duration_us"] / 1e6), 1),
        "latency_ms_p50": got["p50_us"] / 1000,
        "latency_ms_p90": got["p90_us"] / 1000,
        "latency_ms_p99": got["p99_us"] / 1000,
        "latency_ms_max": got["max_us"] / 1000,
        "errors": errors,
        "ran_out_of_presigned": requests > count,
        "server_cpu_ms_per_request": round(1000 * cpu_s / max(requests, 1), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration-s", type=int, default=5)
    parser.add_argument("--requests", type=int, default=30000, help="pre-signed per run")
    parser.add_argument("--workloads", nargs="+", default=["read", "write"])
    parser.add_argument("--node-src", type=Path, help="run the node from this checkout")
    parser.add_argument("--label", default="", help="a name for this version in the JSON")
    parser.add_argument("--debug", action="store_true", help="print the first non-2xx answer")
    args = parser.parse_args()
    assert shutil.which("wrk"), "wrk is missing: apt-get install wrk"
    if args.node_src is not None:
        os.chdir(args.node_src)  # python -m node.cli puts the working directory first
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gateway-wrk-") as tmp:
        fog = LocalFog(Path(tmp), extra_args=("--heartbeat-s", "0"))
        try:
            fog.start(0)
            status = fog.status(0)
            assert status is not None and status["gateway"], "the node reports no gateway"
            url, pid = status["gateway"], fog.procs[0].pid
            with GatewayClient(url, KEY) as client:
                client.account_create(name="bench")
            for connections in args.connections:
                for kind in args.workloads:
                    run = f"{kind[0]}{connections}x{random.randrange(10**6):06d}"
                    print(f"{kind} with {connections} connections ...", flush=True)
                    rows.append(
                        bench_wrk(
                            url,
                            pid,
                            kind,
                            connections,
                            args.duration_s,
                            args.requests,
                            run,
                            args.debug,
                        )
                    )
        finally:
            fog.stop_all()
    keys = ("workload", "connections", "requests_per_s", "latency_ms_p50", "latency_ms_p99")
    keys += ("errors", "server_cpu_ms_per_request")
    print("  ".join(f"{k:>26}" for k in keys))
    for r in rows:
        print("  ".join(f"{r[k]!s:>26}" for k in keys))
    bad = [r for r in rows if r["errors"] or r["ran_out_of_presigned"]]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "gateway_wrk",
                "label": args.label,
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "runs": rows,
            },
            indent=2,
        )
        + "\n"
    )
    assert not bad, f"runs with errors or too few pre-signed requests: {bad}"


if __name__ == "__main__":
    main()
