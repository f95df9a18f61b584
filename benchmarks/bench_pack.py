"""Benchmark the image builder: cold base, first build on a warm base, last-line rebuild, size.

Run (as root): ``.venv/bin/python benchmarks/bench_pack.py [--cold] [--repeats 3]``
Prints a table and writes ``benchmarks/results/pack.json``.

The Formfile is the small one of issue 11's "Done when" (a USER, INSTALL python3, COPY ./app
/app, ENV, WORKDIR, a RUN, EXPOSE 8000, an ENTRYPOINT serving HTTP). "First build on a warm
base" uses a fresh layer cache over the node's cached base (``default_cache_dir()``, made first
if missing); the rebuilds change the text of the last instruction (the RUN) each time, so each
reruns that step, the implicit entrypoint and finalize steps, and makes a new image. ``--cold``
also times debootstrap of a base into an empty cache (about a minute; needs the mirror).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from node.pack.base import default_cache_dir, ensure_base
from node.pack.builder import BuildResult, build
from node.pack.model import Copy, Entrypoint, Env, Formfile, Install, Run, User, Workdir

RESULTS = Path(__file__).parent / "results" / "pack.json"


def formfile(password_hash: str, last: str) -> Formfile:
    return Formfile(
        name="bench-web",
        users=(User("alice", password_hash, sudo=True, line=2),),
        steps=(
            Install(("python3",), line=3),
            Copy("./app", "/app", line=4),
            Env("PORT", "8000", line=5),
            Workdir("/app", line=6),
            Run(last, line=7),
        ),
        entrypoint=Entrypoint(("python3", "-m", "http.server", "8000"), line=8),
        expose=(8000,),
    )


def timed(run: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cold", action="store_true", help="also time a cold debootstrap base")
    ap.add_argument("--repeats", type=int, default=3, help="last-line rebuilds to time")
    args = ap.parse_args()
    out: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine()}
    password_hash = subprocess.run(
        ["openssl", "passwd", "-6", "bench"], capture_output=True, text=True, check=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="bench-pack-") as tmp_s:
        tmp = Path(tmp_s)
        if args.cold:
            cold_cache = tmp / "cold-cache"
            secs, root = timed(lambda: ensure_base(cold_cache))
            out["cold_base_s"] = round(secs, 2)
            du = subprocess.run(["du", "-sxb", str(root)], capture_output=True, text=True)
            out["base_bytes"] = int(du.stdout.split()[0])
            shutil.rmtree(cold_cache)
        node_cache = default_cache_dir()
        secs, base = timed(lambda: ensure_base(node_cache))
        out["ensure_warm_base_s"] = round(secs, 3)
        # A fresh layer cache over the node's base: the base dir is shared by a symlink.
        cache = tmp / "cache"
        (cache / "base").mkdir(parents=True)
        (cache / "base" / base.parent.name).symlink_to(base.parent)
        context = tmp / "context"
        (context / "app").mkdir(parents=True)
        (context / "app" / "index.html").write_text("<h1>bench</h1>\n")
        f = formfile(password_hash, "echo 0 > /app/built.txt")
        secs, first = timed(lambda: build(f, context, work_dir=tmp / "w0", cache_dir=cache))
        assert isinstance(first, BuildResult)
        out["first_build_warm_base_s"] = round(secs, 2)
        out["steps_total"] = first.steps_total
        out["image_bytes"] = first.image_path.stat().st_size
        out["filesystem_bytes"] = first.manifest["filesystem_bytes"]
        out["content_bytes"] = first.manifest["content_bytes"]
        out["layer_bytes"] = {layer["name"]: layer["bytes"] for layer in first.manifest["layers"]}
        rebuilds = []
        for i in range(1, args.repeats + 1):
            g = replace(f, steps=(*f.steps[:-1], Run(f"echo {i} > /app/built.txt", line=7)))
            secs, r = timed(
                lambda g=g, i=i: build(g, context, work_dir=tmp / f"w{i}", cache_dir=cache)
            )
            assert r.cached_steps == r.steps_total - 3, r.cached_steps
            rebuilds.append(secs)
        out["last_line_rebuild_s"] = [round(s, 2) for s in rebuilds]
        out["last_line_rebuild_s_median"] = round(statistics.median(rebuilds), 2)
        secs, same = timed(lambda: build(f, context, work_dir=tmp / "again", cache_dir=cache))
        assert same.cached_steps == same.steps_total
        assert same.image_digest == first.image_digest
        out["unchanged_rebuild_s"] = round(secs, 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    for k, v in out.items():
        if k != "layer_bytes":
            print(f"{k:32} {v}")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
