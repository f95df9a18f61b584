"""Run a writer process until it has printed enough, then SIGKILL it: the crash tests' harness.

The writer prints a line per thing it has made durable; the test kills it at a seed-dependent
moment after ``wanted`` of them and then checks the data dir as a restarted node would.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def run_then_sigkill(
    writer: Path, args: list[str], marker: bytes, wanted: int, linger_s: float, deadline_s: float
) -> bytes:
    """Everything ``writer`` printed, once ``marker`` appeared ``wanted`` times, ``linger_s``
    passed and a SIGKILL ended it. A writer that stops (or hangs past ``deadline_s``, a guard,
    not a speed assertion) fails the test with its stderr."""
    proc = subprocess.Popen(
        [sys.executable, str(writer), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffer = b""
    give_up = time.monotonic() + deadline_s
    try:
        while buffer.count(marker) < wanted:
            ready, _, _ = select.select([fd], [], [], max(0.0, give_up - time.monotonic()))
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                proc.kill()
                _, err = proc.communicate()
                pytest.fail(
                    f"writer stopped after {buffer.count(marker)} of {wanted}"
                    f" (exit {proc.returncode}): {err.decode(errors='replace')[-2000:]}"
                )
            buffer += chunk
        time.sleep(linger_s)  # let the kill land at a seed-dependent point of its loop
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    return buffer + rest  # what it printed before the kill but was not yet read counts too
