"""Benchmark the Formfile parser and SHA-512-crypt: what a gateway pays per create.

Run: ``.venv/bin/python benchmarks/bench_formfile.py [--repeats 5]``
Prints a table and writes ``benchmarks/results/formfile.json``.

Inputs: the seed README's largest example; a valid Formfile of about 64 KiB (the size cap) made
of RUN lines; an invalid one of the same size whose every line is an error (the parser stops
collecting at ``errors_max`` but still reads every line); 64 KiB of random bytes. SHA-512-crypt
is timed at the default 5000 rounds (what ``form`` pays per USER before sending).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.pack.formfile import MAINNET, FormfileError, canonical, parse
from node.pack.password import sha512_crypt

DATA = Path(__file__).parent.parent / "tests" / "data" / "formfiles" / "ok"
RESULTS = Path(__file__).parent / "results" / "formfile.json"


def best_of(repeats: int, run: Callable[[], Any]) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def parse_any(data: str | bytes) -> None:
    with contextlib.suppress(FormfileError):
        canonical(parse(data))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cap = MAINNET.text_bytes_max
    body = "RUN echo 'a line of a build step' && true\n"
    big_valid = "NAME big\n" + body * ((cap - 100) // len(body))
    bad = "VCPU 999\n"
    big_invalid = "NAME big\n" + bad * ((cap - 100) // len(bad))
    inputs: dict[str, str | bytes] = {
        "seed_example": (DATA / "my-simple-agent.Formfile").read_text(),
        "valid_64k": big_valid,
        "invalid_64k": big_invalid,
        "random_bytes_64k": random.Random(1).randbytes(cap),
    }
    rows: dict[str, Any] = {}
    print(f"{'input':<20} {'bytes':>8} {'ms':>9} {'MB/s':>8}")
    for name, data in inputs.items():
        size = len(data.encode() if isinstance(data, str) else data)
        seconds = best_of(args.repeats, functools.partial(parse_any, data))
        rows[name] = {"bytes": size, "seconds": seconds, "mb_per_s": size / seconds / 1e6}
        print(f"{name:<20} {size:>8} {seconds * 1e3:>9.3f} {size / seconds / 1e6:>8.2f}")
    crypt_s = best_of(args.repeats, lambda: sha512_crypt("a password", "saltsaltsaltsalt"))
    rows["sha512_crypt_5000_rounds"] = {"seconds": crypt_s}
    print(f"{'sha512_crypt 5000':<20} {'':>8} {crypt_s * 1e3:>9.3f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "formfile",
                "python": sys.version.split()[0],
                "machine": platform.machine(),
                "repeats": args.repeats,
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
