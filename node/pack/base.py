"""The cached base root filesystem every image build starts from (debootstrap, once per node).

Theory of operation
-------------------
A build never starts from nothing: ``ensure_base`` makes a Debian root filesystem with
``debootstrap --variant=minbase`` once, keeps it under ``cache_dir/base/<key>/root`` and hands the
same directory to every build, which only ever reads it (the builder stacks its layers over it
with overlayfs; see ``node.pack.builder``).

What goes in: the release this machine runs (``VERSION_CODENAME`` of ``/etc/os-release``), its
architecture (``dpkg --print-architecture``), from the Debian mirror this machine's apt sources
already name (``/etc/apt/sources.list``, ``/etc/apt/sources.list.d/*.list`` and deb822
``*.sources``; the mirror is read at run time and never written into the repository), plus
``BASE_PACKAGES``: what a VM booted by QEMU direct kernel boot needs (the cloud kernel, whose ext4
is built in, and its initramfs; systemd as init and udev) and what the builder's own steps use
(``sudo`` for a USER with ``sudo``).

The key is ``sha256(BASE_RECIPE_VERSION, release, arch, packages, mirror)``, so changing any of
them makes a new base next to the old one (``BASE_RECIPE_VERSION`` is bumped whenever the recipe
below changes what the root contains). Creation is atomic and single-flight: an ``fcntl`` lock on
``cache_dir/base/<key>.lock`` makes a second process wait for the first, which builds into a
temporary directory and renames it into place only once debootstrap succeeded and apt's lists
and package cache were removed; a crashed attempt leaves only a temporary directory that the next
attempt deletes. debootstrap runs in a private mount namespace (``unshare -m``) so the
``/proc`` and ``/sys`` it mounts in the target never appear in the host's mount table.

Measured on this machine kind (2 cores, Debian 12): see docs/architecture.md, "Builder".
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "BASE_PACKAGES",
    "BASE_RECIPE_VERSION",
    "AptSource",
    "BaseError",
    "apt_sources",
    "base_key",
    "default_cache_dir",
    "ensure_base",
    "host_arch",
    "host_release",
    "mirror_for",
    "parse_deb822_sources",
    "parse_one_line_sources",
    "release_sources",
]

# Bump when the recipe below changes what the base root contains.
BASE_RECIPE_VERSION: Final = 1
# linux-image-cloud-amd64: ext4 and virtio are usable from its initramfs, smaller than the generic
# flavour and boots faster under TCG (docs/architecture.md). initramfs-tools makes the initrd
# next to it. systemd-sysv makes systemd /sbin/init; udev populates /dev at boot.
BASE_PACKAGES: Final = (
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "systemd-sysv",
    "udev",
    "sudo",
)
_APT_DIR: Final = Path("/etc/apt")
_LOG_LINES_MAX: Final = 200
_DEBOOTSTRAP_TIMEOUT_S: Final = 1800.0


class BaseError(Exception):
    """The base root filesystem could not be made; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class AptSource:
    """One ``deb`` source of the machine's apt configuration (``deb-src`` entries are skipped)."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def default_cache_dir() -> Path:
    """``$FORMATION_CACHE_DIR``, else ``~/.cache/formation-node``: where bases and layers live."""
    env = os.environ.get("FORMATION_CACHE_DIR", "")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "formation-node"


def parse_one_line_sources(text: str) -> list[AptSource]:
    """``deb [options] URI SUITE [COMPONENT...]`` lines (``sources.list`` format)."""
    out: list[AptSource] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            # Options run up to the word that ends with "]" (they may contain spaces).
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) < 2:
            continue
        out.append(AptSource(words[0], (words[1],), tuple(words[2:])))
    return out


def parse_deb822_sources(text: str) -> list[AptSource]:
    """deb822 stanzas (``*.sources``): ``Types``, ``URIs``, ``Suites``, ``Components``, ``Enabled``."""
    out: list[AptSource] = []
    stanzas: list[dict[str, str]] = [{}]
    last = ""
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if stanzas[-1]:
                stanzas.append({})
            continue
        if raw[0] in " \t" and last:
            stanzas[-1][last] += " " + raw.strip()
            continue
        key, sep, value = raw.partition(":")
        if not sep:
            continue
        last = key.strip().lower()
        stanzas[-1][last] = value.strip()
    for s in stanzas:
        if "deb" not in s.get("types", "").split():
            continue
        if s.get("enabled", "yes").strip().lower() == "no":
            continue
        suites = tuple(s.get("suites", "").split())
        for uri in s.get("uris", "").split():
            out.append(AptSource(uri, suites, tuple(s.get("components", "").split())))
    return out


def apt_sources(apt_dir: Path = _APT_DIR) -> list[AptSource]:
    """Every enabled ``deb`` source of this machine, in apt's reading order."""
    out: list[AptSource] = []
    main = apt_dir / "sources.list"
    if main.is_file():
        out += parse_one_line_sources(main.read_text(errors="replace"))
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        # apt reads only *.list and *.sources (a ".disabled" suffix turns a file off).
        for p in sorted(parts.iterdir()):
            if p.suffix == ".list":
                out += parse_one_line_sources(p.read_text(errors="replace"))
            elif p.suffix == ".sources":
                out += parse_deb822_sources(p.read_text(errors="replace"))
    return out


def release_sources(sources: Iterable[AptSource], release: str) -> list[AptSource]:
    """The sources that serve ``release`` and its -updates/-security suites (others dropped)."""
    out = []
    for s in sources:
        suites = tuple(x for x in s.suites if x == release or x.startswith(release + "-"))
        if suites:
            out.append(AptSource(s.uri, suites, s.components))
    return out


def mirror_for(sources: Iterable[AptSource], release: str) -> str:
    """The first source that serves ``release`` itself: the mirror debootstrap fetches from."""
    for s in sources:
        if release in s.suites and "main" in s.components:
            return s.uri
    raise BaseError(
        f"no apt source serves '{release}' with component 'main': add a Debian mirror for "
        f"{release} to /etc/apt/sources.list or /etc/apt/sources.list.d/*.sources"
    )


def host_release(os_release: Path = Path("/etc/os-release")) -> str:
    """``VERSION_CODENAME`` of this machine (e.g. ``bookworm``)."""
    try:
        text = os_release.read_text()
    except OSError as e:
        raise BaseError(f"cannot read {os_release}: {e}") from e
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "VERSION_CODENAME" and value.strip().strip("\"'"):
            return value.strip().strip("\"'")
    raise BaseError(f"{os_release} has no VERSION_CODENAME: the builder needs a Debian release")


def host_arch() -> str:
    """``dpkg --print-architecture`` (e.g. ``amd64``)."""
    try:
        out = subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError) as e:
        raise BaseError(f"dpkg --print-architecture failed ({e}): the builder needs Debian") from e
    return out.stdout.strip()


def base_key(release: str, arch: str, packages: Iterable[str], mirror: str) -> str:
    """The content key of a base root: the same inputs make the same root, on any node."""
    doc = {
        "recipe": BASE_RECIPE_VERSION,
        "release": release,
        "arch": arch,
        "packages": sorted(packages),
        "mirror": mirror,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _run_logged(argv: list[str], on_log: Callable[[str], None] | None, tail: list[str]) -> int:
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            # Bounded: only the last lines are kept for the error message.
            del tail[:-_LOG_LINES_MAX]
            if on_log is not None:
                on_log(line)
        try:
            return proc.wait(timeout=_DEBOOTSTRAP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -9


def ensure_base(cache_dir: Path, on_log: Callable[[str], None] | None = None) -> Path:
    """The cached base root directory for this machine's release (made on first use).

    Returns ``cache_dir/base/<key>/root``; ``<key>`` is ``base_key(...)`` and is also the name
    of that directory's parent, so ``path.parent.name`` is the key. Blocks while another process
    makes the same base. Raises ``BaseError`` naming the missing tool or failing step.
    """
    if shutil.which("debootstrap") is None:
        raise BaseError("debootstrap is not installed: run scripts/ensure-system-deps.sh run")
    release = host_release()
    arch = host_arch()
    mirror = mirror_for(apt_sources(), release)
    key = base_key(release, arch, BASE_PACKAGES, mirror)
    bases = cache_dir / "base"
    final = bases / key
    if (final / "root").is_dir():
        return final / "root"
    bases.mkdir(parents=True, exist_ok=True)
    with open(bases / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "root").is_dir():
            return final / "root"
        tmp = bases / f".tmp-{key}"
        if tmp.exists():
            # A crashed earlier attempt: nobody else holds the lock, so it is garbage.
            shutil.rmtree(tmp)
        tmp.mkdir()
        root = tmp / "root"
        tail: list[str] = []
        argv = [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "debootstrap",
            "--variant=minbase",
            f"--arch={arch}",
            "--include=" + ",".join(BASE_PACKAGES),
            release,
            str(root),
            mirror,
        ]
        if on_log is not None:
            on_log(f"base: debootstrap {release} {arch} (once per node; about a minute)")
        rc = _run_logged(argv, on_log, tail)
        if rc != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise BaseError(f"debootstrap exited {rc}; last lines:\n" + "\n".join(tail[-20:]))
        _clean_root(root)
        (tmp / "base.json").write_text(
            json.dumps(
                {"key": key, "release": release, "arch": arch, "packages": list(BASE_PACKAGES)},
                sort_keys=True,
            )
        )
        os.rename(tmp, final)
        return final / "root"


def _clean_root(root: Path) -> None:
    """Drop what only debootstrap needed: apt lists/caches and its build-time sources."""
    for d in ("var/lib/apt/lists", "var/cache/apt/archives"):
        p = root / d
        if p.is_dir() and not p.is_symlink():
            for child in p.iterdir():
                if child.is_file() and not child.is_symlink():
                    child.unlink()
                elif child.is_dir() and not child.is_symlink() and child.name != "partial":
                    shutil.rmtree(child)
    cache = root / "var/cache/apt"
    for p in cache.glob("*.bin"):
        p.unlink()
    # The mirror this node used is no business of the image: INSTALL writes its own sources
    # for the duration of the step (node.pack.builder).
    sources = root / "etc/apt/sources.list"
    if sources.is_file() and not sources.is_symlink():
        sources.unlink()
