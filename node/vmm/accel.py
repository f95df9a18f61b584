"""Which accelerator QEMU gets: KVM only when a probe boot shows it works, else TCG.

Theory of operation
-------------------
``/dev/kvm`` existing is not enough. On the machines this project runs on it is a PVM device
(the ``kvm_pvm`` module) that creates VMs but cannot run stock kernels: a Debian kernel hangs
after the firmware, silently (../shared/reference/vm-and-network.md, section 0). So ``choose``
decides in three steps, and logs the choice and its reason:

1. ``requested`` "tcg" or "kvm" is obeyed as given (no probe; "kvm" on a host where it hangs
   is the operator's choice).
2. "auto" without a usable ``/dev/kvm`` (missing, or not openable read-write) is TCG with that
   reason, at no cost.
3. Otherwise a *probe boot*: the image's own kernel under ``-accel kvm``, no disk, no initrd,
   ``console=ttyS0 panic=-1`` and ``-no-reboot``, for at most ``PROBE_TIMEOUT_S``. Under working
   KVM the kernel prints ``Linux version`` within a fraction of a second (then panics for lack of
   a root and QEMU exits); if it does not within the timeout, or QEMU fails, it is TCG with
   the reason (the last output line). The probe costs at most a few seconds once per process:
   the result is cached per process (per kernel path), so every later VM starts at once.

The probe's QEMU process is spawned by ``node.vmm.qemu`` (the only module that spawns QEMU):
``choose`` gets a ``run_probe(argv, timeout_s) -> (output, returncode | None)`` callable. The
argv and the judgement are plain functions so they are tested without QEMU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "PROBE_TIMEOUT_S",
    "Accel",
    "choose",
    "judge_probe",
    "kvm_device_problem",
    "probe_argv",
]

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S: Final = 4.0
_KVM: Final = Path("/dev/kvm")
_KERNEL_BANNER: Final = b"Linux version"

RunProbe = Callable[[list[str], float], Awaitable[tuple[bytes, int | None]]]


@dataclass(frozen=True, slots=True)
class Accel:
    name: str  # "kvm" | "tcg"
    reason: str


_cache: dict[str, Accel] = {}


def kvm_device_problem(device: Path = _KVM) -> str | None:
    """Why ``device`` cannot be used for KVM, or None when it exists and opens read-write."""
    if not device.exists():
        return f"{device} does not exist (no hardware virtualization exposed to this host)"
    if not os.access(device, os.R_OK | os.W_OK):
        return f"{device} is not readable and writable by this user"
    if Path("/sys/module/kvm_pvm").exists():
        # Not decisive (a PVM guest kernel would boot): the probe decides, this only explains.
        log.info("%s is provided by kvm_pvm: only PVM guest kernels boot on it", device)
    return None


def probe_argv(kernel: Path) -> list[str]:
    return [
        "qemu-system-x86_64",
        "-accel",
        "kvm",
        "-machine",
        "q35",
        "-m",
        "128",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
        str(kernel),
        "-append",
        "console=ttyS0 panic=-1 earlyprintk=ttyS0",
    ]


def judge_probe(output: bytes, returncode: int | None, timeout_s: float) -> Accel:
    """The accelerator a probe boot's output and exit status (None: killed at the timeout) show."""
    if _KERNEL_BANNER in output:
        return Accel("kvm", "a probe boot of the image's kernel under KVM printed its banner")
    lines = [ln for ln in output.decode(errors="replace").splitlines() if ln.strip()]
    last = lines[-1].strip()[:200] if lines else "no output"
    if returncode is None:
        why = f"a probe boot under KVM showed no kernel output within {timeout_s:g} s"
    else:
        why = f"a probe boot under KVM exited with status {returncode} before the kernel ran"
    return Accel("tcg", f"{why} (last line: {last})")


async def choose(
    requested: str, kernel: Path, run_probe: RunProbe, *, timeout_s: float = PROBE_TIMEOUT_S
) -> Accel:
    """The accelerator for VMs booting ``kernel``; see the module docstring. Cached per process."""
    if requested in ("kvm", "tcg"):
        return Accel(requested, f"accel={requested} was asked for")
    if requested != "auto":
        raise ValueError(f"accel must be 'auto', 'kvm' or 'tcg', not {requested!r}")
    cache_key = str(kernel)
    if cache_key in _cache:
        return _cache[cache_key]
    problem = kvm_device_problem()
    if problem is not None:
        accel = Accel("tcg", problem)
    else:
        try:
            output, rc = await run_probe(probe_argv(kernel), timeout_s)
        except OSError as e:
            accel = Accel("tcg", f"the KVM probe boot could not run: {e}")
        else:
            accel = judge_probe(output, rc, timeout_s)
    log.info("VM accelerator: %s (%s)", accel.name, accel.reason)
    _cache[cache_key] = accel
    return accel
