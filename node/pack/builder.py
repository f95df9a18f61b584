"""Apply a Formfile's steps to the cached base, layer by layer, and write a bootable qcow2 image.

Long on purpose: the shell each step runs, the namespace runner that runs it and the image
writer share one set of invariants (what is mounted where, who writes); apart they would be
three modules that must change together.

Theory of operation
-------------------
``build`` is the I/O half of ``node.pack.plan``: the plan says which steps and which keys, this
module makes the layers and the image. It is synchronous and blocking (the node runs it in a
worker thread) and spawns only ``unshare``, ``mkfs.ext4`` and ``qemu-img``.

**Layers are overlayfs upper directories**, one per step, kept under ``cache_dir/layers/<key>``.
To apply step *i* the builder mounts an overlay whose lower directories are the base root and
the layers of steps 1..i-1 and whose upper directory is new and empty; what the step writes
lands in that upper directory (deletions as overlay whiteouts), which becomes the layer of
step *i* by an atomic rename once the step succeeded. A step whose key is already in the cache
is not run at all. So a rebuild after a change of the last line runs one step (plus the tiny
implicit ones after it) and then makes the image: a few seconds (docs/architecture.md,
"Builder"), where copying the ~300 MB base per build (``cp -a``; this ext4 has no reflinks) would
cost more than the whole warm build. Layers are never written after their rename, so builds in
parallel share them (overlay lower directories are read-only).

**Every mount lives in a private mount namespace** (``unshare -m --propagation private``) of
the one child process that applies a step, with a private PID namespace (``-p -f``): when it
exits, for any reason, the kernel drops its mounts and kills what the step left running, so
nothing leaks into the host's mount table and nothing needs unmounting. Inside it, the overlay
gets a fresh ``/proc``, a tmpfs ``/dev`` with only null/zero/full/random/urandom/tty and a
private devpts (no host devices), a tmpfs ``/run`` holding the step's script and the build
context (read-only bind mounts); then ``pivot_root`` into the overlay and a lazy unmount of the
old root, so no path leads back to the host's files, and the step runs with
``CAP_SYS_ADMIN``, ``CAP_MKNOD``, ``CAP_SYS_MODULE``, ``CAP_SYS_RAWIO``, ``CAP_SYS_BOOT`` and
``CAP_SYS_TIME`` dropped from its bounding set (it cannot mount, make device nodes, load
modules or touch raw I/O). Every file a step writes is written by a process inside the image,
so a symlink a RUN planted (``ln -s / /app``) can never redirect a write to the host.

**RUN has no network**: it also gets a new network namespace (``unshare -n``: only a loopback
that is down), so a Formfile's commands cannot reach this machine's services or anything else.
INSTALL is the only step with the host's network; it writes apt sources from the host's own apt
configuration (``node.pack.base.apt_sources``) and this host's ``/etc/resolv.conf`` for the
duration of the step, and removes both, apt's lists and its package cache afterwards.

**The image** is made from the merged layers in one more namespace: ``mkfs.ext4 -d`` (no loop
device, no mount of the image) into a raw file sized to the content plus headroom (not the
Formfile's ``disk_gb``, which is the VM disk: the fstab entry carries ``x-systemd.growfs`` so
the filesystem grows to the disk the VMM gives it), then ``qemu-img convert -O qcow2``. The
finalize step also installs ``formation-ready.service``, a oneshot ordered after the network
and the entrypoint that writes ``BOOT_MARKER`` on the console: the VM driver's boot_complete;
and ``formation-powerkey.service``, which powers off on the ACPI power button (logind would, but
needs dbus), so the driver's stop is a real ACPI shutdown. The
kernel and initrd are copied out next to the image for QEMU's direct kernel boot. The manifest
(``BuildResult.manifest``) records inputs, resources, ports, the entrypoint, user names, the
layers' keys and sizes, the kernel and initrd paths inside the image and the base key.

Errors: any failing step raises ``BuildError`` with its index, name, Formfile line and the last
``LOG_TAIL_LINES`` lines of its output; a failed step leaves no layer behind. Output kept in
memory is bounded (``LOG_TAIL_LINES`` lines of at most ``LOG_LINE_CHARS_MAX`` characters).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from node.pack.base import (
    BaseError,
    apt_sources,
    ensure_base,
    host_release,
    release_sources,
)
from node.pack.model import Formfile
from node.pack.plan import ENTRYPOINT_UNIT, PLAN_VERSION, PlanError, PlannedStep, plan

__all__ = [
    "BOOT_MARKER",
    "IMAGES_KEPT_MAX",
    "IMAGE_LABEL",
    "LAYER_CACHE_BYTES_MAX",
    "LOG_TAIL_LINES",
    "BuildError",
    "BuildResult",
    "StepEvent",
    "build",
    "systemd_quote",
]

LOG_TAIL_LINES: Final = 20
LOG_LINE_CHARS_MAX: Final = 2000
IMAGE_LABEL: Final = "formroot"
# The line formation-ready.service writes on the console once the guest is up (network online,
# entrypoint started): the VM driver's boot_complete (node/vmm/qemu.py) waits for it.
BOOT_MARKER: Final = "formation: boot complete"
READY_UNIT: Final = "formation-ready"
POWERKEY_UNIT: Final = "formation-powerkey"
MANIFEST_VERSION: Final = 1
# Bounds on the build context the builder hashes for the cache keys.
_CONTEXT_FILES_MAX: Final = 100_000
_STEP_TIMEOUT_S: Final = 3600.0
# Finished images kept in cache_dir/images (each is ~350 MB): enough for the last-line rebuild
# loop and an unchanged rebuild; older ones are deleted (the blob store keeps what was built).
IMAGES_KEPT_MAX: Final = 3
# The layer cache is pruned after each build, least recently used first, down to this size.
LAYER_CACHE_BYTES_MAX: Final = 20 * 1024**3
# Headroom of the image's filesystem over its content: ext4 metadata, journal and a little room
# for the first boot (logs, machine-id) before systemd-growfs grows it to the VM's disk.
_FS_HEADROOM_RATIO: Final = 1.25
_FS_HEADROOM_MB: Final = 256
_DROPPED_CAPS: Final = "-sys_admin,-mknod,-sys_module,-sys_rawio,-sys_boot,-sys_time"
_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class StepEvent:
    """Progress: ``state`` "start" then "done" for each step, ``cached`` when it was not run."""

    index: int
    total: int
    name: str
    line: int
    cached: bool
    state: Literal["start", "done"]


@dataclass(frozen=True, slots=True)
class BuildResult:
    image_path: Path
    image_digest: str
    manifest: dict[str, Any]
    steps_total: int
    cached_steps: int
    kernel_path: Path
    initrd_path: Path


class BuildError(Exception):
    """A step failed: which one, its Formfile line (0: implicit step) and its last output."""

    def __init__(
        self,
        step_index: int,
        step_name: str,
        line: int,
        log_tail: tuple[str, ...],
        message: str,
    ) -> None:
        super().__init__(message)
        self.step_index = step_index
        self.step_name = step_name
        self.line = line
        self.log_tail = log_tail
        self.message = message

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"step {self.step_index} ({self.step_name}): {where}{self.message}"


def systemd_quote(arg: str) -> str:
    """One argument of ``ExecStart=``: double-quoted, with systemd's specifiers escaped."""
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped.replace("%", "%%").replace("$", "$$") + '"'


def _env_line(key: str, value: str) -> str:
    """``KEY="value"`` as systemd's Environment=/EnvironmentFile= and pam_env read it."""
    return key + '="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _hostname(name: str) -> str:
    out = "".join(c if c.isalnum() or c == "-" else "-" for c in name.lower()).strip("-")
    return out[:63] or "formation"


# -- the scripts a step runs inside the image (POSIX sh, values quoted with shlex) --


def _script_user(spec: Mapping[str, Any]) -> str:
    q = shlex.quote
    name = spec["username"]
    lines = ["set -eu"]
    for g in spec["groups"]:
        lines.append(f"getent group {q(g)} >/dev/null || groupadd {q(g)}")
    lines.append(
        f"if id -u {q(name)} >/dev/null 2>&1; then usermod -s {q(spec['shell'])} {q(name)}; "
        f"else useradd -m -U -s {q(spec['shell'])} {q(name)}; fi"
    )
    if spec["groups"]:
        lines.append(f"usermod -a -G {q(','.join(spec['groups']))} {q(name)}")
    if spec["passwd"]:
        lines.append(f"printf '%s:%s\\n' {q(name)} {q(spec['passwd'])} | chpasswd -e")
    if spec["lock_passwd"]:
        lines.append(f"usermod -L {q(name)}")
    if spec["chpasswd_expire"] and spec["passwd"]:
        # Expired: the user must choose a new password at the first login.
        lines.append(f"chage -d 0 {q(name)}")
    if spec["sudo"]:
        f = q(f"/etc/sudoers.d/90-formation-{name}")
        lines += [
            "mkdir -p /etc/sudoers.d",
            f"printf '%s ALL=(ALL) NOPASSWD:ALL\\n' {q(name)} > {f}",
            f"chmod 0440 {f}",
        ]
    if spec["ssh_authorized_keys"]:
        keys = "".join(k + "\n" for k in spec["ssh_authorized_keys"])
        lines += [
            f"home=$(getent passwd {q(name)} | cut -d: -f6); group=$(id -gn {q(name)})",
            'mkdir -p "$home/.ssh"',
            f'printf %s {q(keys)} > "$home/.ssh/authorized_keys"',
            'chmod 0700 "$home/.ssh"; chmod 0600 "$home/.ssh/authorized_keys"',
            f'chown -R {q(name)}:"$group" "$home/.ssh"',
        ]
    if spec["disable_root"]:
        lines.append("usermod -L root")
    # sshd reads the first value it finds, so only the first user's choices are written; the
    # drop-ins take effect if an INSTALL adds openssh-server (or it is there already).
    if spec.get("first", False):
        root = "no" if spec["disable_root"] else "prohibit-password"
        pwauth = "yes" if spec["ssh_pwauth"] else "no"
        lines += [
            "mkdir -p /etc/ssh/sshd_config.d",
            f"printf 'PermitRootLogin {root}\\nPasswordAuthentication {pwauth}\\n' "
            "> /etc/ssh/sshd_config.d/90-formation.conf",
        ]
    return "\n".join(lines) + "\n"


def _script_run(spec: Mapping[str, Any]) -> str:
    q = shlex.quote
    env = " ".join(q(f"{k}={v}") for k, v in sorted(spec["env"].items()))
    return f"set -eu\ncd {q(spec['workdir'])}\nexec env {env} /bin/sh -c {q(spec['command'])}\n"


def _script_copy(spec: Mapping[str, Any]) -> str:
    q = shlex.quote
    src = spec["source"].strip("/")
    if src.startswith("./"):
        src = src[2:]
    src_path = "/run/formation/context" + ("" if src in ("", ".") else "/" + src)
    dest = spec["dest"]
    if not dest.startswith("/"):
        dest = spec["workdir"].rstrip("/") + "/" + dest
    trailing = dest.endswith("/")
    return (
        "set -eu\n"
        f"src={q(src_path)}; dest={q(dest)}\n"
        'if [ -d "$src" ]; then\n'
        '  mkdir -p "$dest"; cp -R --preserve=mode,timestamps "$src/." "$dest/"\n'
        f'elif [ {"1" if trailing else "0"} = 1 ] || [ -d "$dest" ]; then\n'
        '  mkdir -p "$dest"; cp --preserve=mode,timestamps "$src" "$dest/"\n'
        "else\n"
        '  mkdir -p "$(dirname "$dest")"; cp --preserve=mode,timestamps "$src" "$dest"\n'
        "fi\n"
    )


def _script_install(spec: Mapping[str, Any]) -> str:
    pkgs = " ".join(shlex.quote(p) for p in spec["packages"])
    return (
        "set -eu\n"
        "S=/run/formation/stage\n"
        "cleanup() {\n"
        "  rm -f /etc/apt/sources.list.d/formation-build.sources /usr/sbin/policy-rc.d\n"
        "  rm -f /etc/resolv.conf\n"
        "  if [ -e /run/formation/resolv.saved ] || [ -L /run/formation/resolv.saved ]; then\n"
        "    cp -P /run/formation/resolv.saved /etc/resolv.conf; fi\n"
        "  apt-get clean\n"
        "  find /var/lib/apt/lists -mindepth 1 -maxdepth 1 ! -name partial -exec rm -rf {} +\n"
        "  rm -f /var/cache/apt/*.bin\n"
        "}\n"
        "if [ -e /etc/resolv.conf ] || [ -L /etc/resolv.conf ]; then\n"
        "  cp -P /etc/resolv.conf /run/formation/resolv.saved; fi\n"
        "trap cleanup EXIT\n"
        "rm -f /etc/resolv.conf; cp $S/resolv.conf /etc/resolv.conf\n"
        "cp $S/formation.sources /etc/apt/sources.list.d/formation-build.sources\n"
        # No service starts inside the build (there is no init; and it must not run on the host).
        "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d; chmod 0755 /usr/sbin/policy-rc.d\n"
        "apt-get -q update\n"
        "apt-get -q install -y --no-install-recommends -o Dpkg::Options::=--force-confdef "
        f"-o Dpkg::Options::=--force-confold {pkgs}\n"
    )


def _script_env(spec: Mapping[str, Any]) -> str:
    q = shlex.quote
    key, value, scope, who = spec["key"], spec["value"], spec["scope"], spec["scope_name"]
    if scope == "system":
        return (
            "set -eu\n"
            "touch /etc/environment\n"
            f"grep -v {q('^' + key + '=')} /etc/environment > /run/formation/env.new || true\n"
            f"printf '%s\\n' {q(_env_line(key, value))} >> /run/formation/env.new\n"
            "cat /run/formation/env.new > /etc/environment\n"
        )
    if scope == "user":
        line = f'if [ "$(id -un 2>/dev/null)" = {q(who)} ]; then export {key}={q(value)}; fi'
        return (
            "set -eu\nmkdir -p /etc/profile.d\n"
            f"printf '%s\\n' {q(line)} >> {q(f'/etc/profile.d/formation-user-{who}.sh')}\n"
        )
    dropin = f"/etc/systemd/system/{who}.service.d"
    return (
        "set -eu\n"
        f"printf '%s\\n' {q(_env_line(key, value))} >> {q(f'/etc/{who}.env')}\n"
        f"mkdir -p {q(dropin)}\n"
        f"printf '[Service]\\nEnvironmentFile=-/etc/%s.env\\n' {q(who)} "
        f"> {q(dropin + '/formation-env.conf')}\n"
    )


def _unit(spec: Mapping[str, Any]) -> str:
    argv = ["/bin/sh", "-c", " ".join(spec["argv"])] if spec["shell_form"] else list(spec["argv"])
    env = "".join(
        f"Environment={systemd_quote(f'{k}={v}')}\n" for k, v in sorted(spec["env"].items())
    )
    return (
        "[Unit]\n"
        f"Description=Formation entrypoint of {spec['description']}\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n\n"
        "[Service]\n"
        "Type=simple\n"
        f"User={spec['user']}\n"
        f"WorkingDirectory={spec['workdir']}\n"
        f"{env}"
        f"ExecStart={' '.join(systemd_quote(a) for a in argv)}\n"
        # The journal and the console: the VM's console log is what `form manage logs` shows,
        # so the program's own output is there, as `docker logs` has it.
        "StandardOutput=journal+console\n"
        "StandardError=journal+console\n"
        "Restart=on-failure\n"
        "RestartSec=1\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def _script_entrypoint(spec: Mapping[str, Any]) -> str:
    q = shlex.quote
    unit = f"/etc/systemd/system/{ENTRYPOINT_UNIT}.service"
    return (
        "set -eu\n"
        f"mkdir -p {q(spec['workdir'])} /etc/systemd/system/multi-user.target.wants\n"
        f"cp /run/formation/stage/unit {unit}\nchmod 0644 {unit}\n"
        # What `systemctl enable` does, without needing a running systemd.
        f"ln -sf {unit} /etc/systemd/system/multi-user.target.wants/{ENTRYPOINT_UNIT}.service\n"
    )


def _ready_unit() -> str:
    # The Description must not contain BOOT_MARKER: systemd prints it on the console too.
    return (
        "[Unit]\n"
        "Description=Formation boot-complete line on the console\n"
        f"After=network-online.target {ENTRYPOINT_UNIT}.service\n"
        "Wants=network-online.target\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"ExecStart=/bin/sh -c \"echo '{BOOT_MARKER}' > /dev/console\"\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


# Powers the guest off on the ACPI power button (the VM driver's stop is QMP system_powerdown).
# logind would, but it needs dbus, which a minbase image lacks. Reads the button's evdev records
# with od (coreutils): 24 bytes = 8 u16 words of time, then type (1: EV_KEY), code (116: KEY_POWER).
_POWERKEY_SCRIPT: Final = r"""#!/bin/sh
dev=""
for _ in $(seq 1 120); do
  for d in /sys/class/input/event*; do
    if [ "$(cat "$d/device/name" 2>/dev/null)" = "Power Button" ]; then dev=/dev/input/${d##*/}; fi
  done
  [ -n "$dev" ] && [ -e "$dev" ] && break
  dev=""; sleep 1
done
[ -n "$dev" ] || { echo "formation-powerkey: no power button device" >&2; exit 0; }
stdbuf -oL od -An -v -tu2 -w24 "$dev" | while read -r _ _ _ _ _ _ _ _ type code _; do
  if [ "$type" = 1 ] && [ "$code" = 116 ]; then systemctl poweroff; fi
done
"""


def _powerkey_unit() -> str:
    return (
        "[Unit]\n"
        "Description=Formation power-off on the ACPI power button\n"
        "After=systemd-udevd.service\n\n"
        "[Service]\n"
        f"ExecStart=/usr/local/sbin/{POWERKEY_UNIT}\n"
        "Restart=on-failure\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def _script_finalize(spec: Mapping[str, Any]) -> str:
    host = _hostname(spec["hostname"])
    ready = f"/etc/systemd/system/{READY_UNIT}.service"
    powerkey = f"/etc/systemd/system/{POWERKEY_UNIT}.service"
    return (
        "set -eu\n"
        f"printf 'LABEL={IMAGE_LABEL} / ext4 defaults,x-systemd.growfs 0 1\\n' > /etc/fstab\n"
        f"printf '%s\\n' {host} > /etc/hostname\n"
        f"printf '127.0.0.1 localhost\\n127.0.1.1 %s\\n::1 localhost\\n' {host} > /etc/hosts\n"
        # Empty: systemd makes a unique machine-id on each VM's first boot.
        ": > /etc/machine-id; rm -f /var/lib/dbus/machine-id\n"
        "mkdir -p /etc/systemd/network\n"
        "printf '[Match]\\nName=en* eth*\\n\\n[Network]\\nDHCP=yes\\n' "
        "> /etc/systemd/network/80-formation.network\n"
        "systemctl enable systemd-networkd.service >/dev/null 2>&1\n"
        # The boot-complete marker for the VM driver (see _ready_unit), enabled by hand.
        f"printf '%s' {shlex.quote(_ready_unit())} > {ready}\n"
        "mkdir -p /etc/systemd/system/multi-user.target.wants\n"
        f"ln -sf {ready} /etc/systemd/system/multi-user.target.wants/{READY_UNIT}.service\n"
        # ACPI power button -> poweroff (see _POWERKEY_SCRIPT).
        "mkdir -p /usr/local/sbin\n"
        f"printf '%s' {shlex.quote(_POWERKEY_SCRIPT)} > /usr/local/sbin/{POWERKEY_UNIT}\n"
        f"chmod 0755 /usr/local/sbin/{POWERKEY_UNIT}\n"
        f"printf '%s' {shlex.quote(_powerkey_unit())} > {powerkey}\n"
        f"ln -sf {powerkey} /etc/systemd/system/multi-user.target.wants/{POWERKEY_UNIT}.service\n"
        # Units a VM never needs; under TCG they cost ~20 s of boot (getty-static alone waits
        # ~20 s for logind, which minbase lacks; the VGA gettys have no screen).
        f"for unit in {' '.join(_MASKED_UNITS)}; do "
        'ln -sf /dev/null "/etc/systemd/system/$unit"; done\n'
        "find /tmp /var/tmp -mindepth 1 -maxdepth 1 -exec rm -rf {} +\n"
    )


_MASKED_UNITS: Final = (
    "getty-static.service",
    "getty@tty1.service",
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "fstrim.timer",
    "systemd-timesyncd.service",
)


_SCRIPTS: Final[dict[str, Callable[[Mapping[str, Any]], str]]] = {
    "user": _script_user,
    "run": _script_run,
    "copy": _script_copy,
    "install": _script_install,
    "env": _script_env,
    "workdir": lambda spec: f"set -eu\nmkdir -p {shlex.quote(spec['path'])}\n",
    "entrypoint": _script_entrypoint,
    "finalize": _script_finalize,
}

# Runs on the host inside `unshare -m -p -f --propagation private`: mounts, then pivot_root.
_NS_STEP: Final = r"""set -eu
cd "$FB_TMP"
mount -t overlay overlay -o "lowerdir=$FB_LOWER,upperdir=$FB_UPPER,workdir=$FB_WORK" m
for d in proc dev run; do
  if [ -L "m/$d" ] || [ ! -d "m/$d" ]; then
    echo "formation: /$d in the image is not a directory; a step replaced it" >&2; exit 97
  fi
done
mount -t proc -o nosuid,nodev,noexec proc m/proc
mount -t tmpfs -o nosuid,mode=0755,size=16m dev m/dev
for n in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
  set -- $n; mknod -m 0666 "m/dev/$1" c "$2" "$3"
done
mkdir m/dev/pts m/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts m/dev/pts
ln -s pts/ptmx m/dev/ptmx; ln -s /proc/self/fd m/dev/fd
mount -t tmpfs -o nosuid,nodev,mode=0755,size=64m run m/run
mkdir -p m/run/formation/stage m/run/formation/context m/run/formation/oldroot
mount --bind "$FB_STAGE" m/run/formation/stage
mount -o remount,bind,ro m/run/formation/stage
mount --bind "$FB_CONTEXT" m/run/formation/context
mount -o remount,bind,ro m/run/formation/context
cd m
pivot_root . run/formation/oldroot
cd /
umount -l /run/formation/oldroot
exec setpriv --bounding-set="$FB_CAPS" env -i PATH="$FB_PATH" HOME=/root LANG=C.UTF-8 \
  DEBIAN_FRONTEND=noninteractive /bin/sh /run/formation/stage/step.sh
"""

# Runs on the host inside `unshare -m --propagation private`: the merged tree, read-only.
_NS_IMAGE: Final = r"""set -eu
cd "$FB_TMP"
mount -t overlay overlay -o "ro,lowerdir=$FB_LOWER" m
if [ -L m/boot ] || [ ! -d m/boot ]; then echo "formation: the image has no /boot" >&2; exit 97; fi
k=$(find m/boot -maxdepth 1 -type f -name 'vmlinuz-*' | sort -V | tail -n 1)
i=$(find m/boot -maxdepth 1 -type f -name 'initrd.img-*' | sort -V | tail -n 1)
if [ -z "$k" ] || [ -z "$i" ]; then echo "formation: no kernel or initrd in /boot" >&2; exit 97; fi
cp "$k" "$FB_OUT/vmlinuz"; cp "$i" "$FB_OUT/initrd.img"
echo "FORMATION-KERNEL=${k#m}"; echo "FORMATION-INITRD=${i#m}"
used=$(du -sxb m | cut -f1)
size_mb=$(( used * FB_RATIO_PCT / 100 / 1048576 + FB_HEADROOM_MB ))
if [ "$size_mb" -gt "$FB_SIZE_MB_MAX" ]; then
  echo "formation: the image needs ${size_mb} MB, more than DISK (${FB_SIZE_MB_MAX} MB)" >&2; exit 98
fi
echo "FORMATION-USED=$used"; echo "FORMATION-SIZE-MB=$size_mb"
rm -f "$FB_OUT/root.ext4"
E2FSPROGS_FAKE_TIME=0 mkfs.ext4 -q -F -L "$FB_LABEL" -U "$FB_UUID" -E root_owner=0:0 \
  -d m "$FB_OUT/root.ext4" "${size_mb}M"
"""


class _Runner:
    """Runs one child process, streams its lines to ``on_log`` and keeps a bounded tail."""

    def __init__(self, on_log: Callable[[str], None] | None) -> None:
        self.on_log = on_log
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self.marks: dict[str, str] = {}

    def run(
        self, argv: list[str], env: Mapping[str, str] | None = None, *, marks: bool = False
    ) -> int:
        """Exit status of ``argv``; with ``marks``, ``FORMATION-K=V`` lines go to ``self.marks``
        (only the builder's own image script prints them: a step's output is never parsed)."""
        self.tail.clear()
        with subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
            text=True,
            errors="replace",
        ) as proc:
            assert proc.stdout is not None
            # The deadline covers the whole step, also one that stops printing but keeps its
            # output open: the watchdog kills unshare, whose --kill-child takes the namespace.
            timed_out = threading.Event()

            def kill() -> None:
                timed_out.set()
                proc.kill()

            watchdog = threading.Timer(_STEP_TIMEOUT_S, kill)
            watchdog.daemon = True
            watchdog.start()
            try:
                self._lines(proc.stdout, marks)
            finally:
                watchdog.cancel()
            rc = proc.wait()
            if timed_out.is_set():
                self.tail.append(f"formation: killed after {_STEP_TIMEOUT_S:.0f} s")
            return rc

    def _lines(self, stream: Any, marks: bool) -> None:
        for raw in stream:
            line = raw.rstrip("\n")[:LOG_LINE_CHARS_MAX]
            if marks and line.startswith("FORMATION-") and "=" in line:
                k, _, v = line.partition("=")
                self.marks[k] = v
                continue
            self.tail.append(line)
            if self.on_log is not None:
                self.on_log(line)


def _context_files(context_dir: Path) -> dict[str, str]:
    """Relative path -> "sha256 mode" of every regular file (symlinks are not followed)."""
    out: dict[str, str] = {}
    root = context_dir.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            if not stat.S_ISREG(st.st_mode):
                continue
            if len(out) >= _CONTEXT_FILES_MAX:
                raise PlanError(
                    f"the build context has more than {_CONTEXT_FILES_MAX} files: "
                    "exclude some with .formignore"
                )
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            rel = p.relative_to(root).as_posix()
            out[rel] = f"{h.hexdigest()} {stat.S_IMODE(st.st_mode):o}"
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(dirpath) / name).lstat().st_size
    return total


def _sources_text() -> str:
    release = host_release()
    stanzas = []
    for s in release_sources(apt_sources(), release):
        stanzas.append(
            f"Types: deb\nURIs: {s.uri}\nSuites: {' '.join(s.suites)}\n"
            f"Components: {' '.join(s.components)}\n"
        )
    if not stanzas:
        raise BaseError(f"no apt source of this machine serves {release}: INSTALL needs one")
    return "\n".join(stanzas)


def _require_tools() -> None:
    for tool, pkg in (
        ("unshare", "util-linux"),
        ("pivot_root", "util-linux"),
        ("mkfs.ext4", "e2fsprogs"),
        ("qemu-img", "qemu-utils"),
    ):
        if shutil.which(tool) is None:
            raise BuildError(
                0,
                "setup",
                0,
                (),
                f"{tool} is not installed ({pkg}): run scripts/ensure-system-deps.sh run",
            )


def _link_lowers(tmp: Path, lowers: list[Path]) -> str:
    """Short symlinks to the lower dirs, so 500 layers fit in a page of mount options."""
    ldir = tmp / "l"
    if ldir.exists():
        shutil.rmtree(ldir)
    ldir.mkdir()
    for i, p in enumerate(lowers):
        (ldir / str(i)).symlink_to(p)
    # overlayfs: the first lowerdir is the top one.
    return ":".join(f"l/{i}" for i in reversed(range(len(lowers))))


def _apply_step(
    step: PlannedStep,
    lowers: list[Path],
    layers: Path,
    tmp: Path,
    context_dir: Path,
    runner: _Runner,
) -> Path:
    spec = json.loads(step.spec)
    if step.kind == "user":
        spec["first"] = step.index == 1
    stage = tmp / "stage"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    (stage / "step.sh").write_text(_SCRIPTS[step.kind](spec))
    if step.kind == "install":
        (stage / "formation.sources").write_text(_sources_text())
        resolv = Path("/etc/resolv.conf")
        (stage / "resolv.conf").write_text(resolv.read_text() if resolv.exists() else "")
    if step.kind == "entrypoint":
        (stage / "unit").write_text(_unit(spec))
    if step.kind == "user" and spec["passwd"] and not spec["passwd"].startswith("$"):
        raise BuildError(
            step.index,
            step.name,
            step.line,
            (),
            "the password is not a crypt hash: hash it before it leaves the client "
            "(node.pack.password.hash_passwords)",
        )
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{step.key[:16]}-", dir=layers))
    (work / "upper").mkdir()
    (work / "work").mkdir()
    ns = ["unshare", "-m", "-p", "-f", "--kill-child", "--propagation", "private"]
    if step.kind != "install":
        # Only INSTALL reaches the network (the Debian mirror); see the module docstring.
        ns.insert(1, "-n")
    env = {
        "FB_TMP": str(tmp),
        "FB_LOWER": _link_lowers(tmp, lowers),
        "FB_UPPER": str(work / "upper"),
        "FB_WORK": str(work / "work"),
        "FB_STAGE": str(stage),
        "FB_CONTEXT": str(context_dir.resolve()),
        "FB_CAPS": _DROPPED_CAPS,
        "FB_PATH": _PATH,
    }
    try:
        rc = runner.run([*ns, "/bin/sh", "-c", _NS_STEP], env)
        if rc != 0:
            raise BuildError(
                step.index, step.name, step.line, tuple(runner.tail), f"exited with status {rc}"
            )
        shutil.rmtree(work / "work")
        (work / "layer.json").write_text(
            json.dumps(
                {
                    "key": step.key,
                    "name": step.name,
                    "kind": step.kind,
                    "bytes": _tree_bytes(work / "upper"),
                },
                sort_keys=True,
            )
        )
        final = layers / step.key
        try:
            os.rename(work, final)
        except OSError:
            # Another build made the same layer meanwhile: same key, same content; keep theirs.
            if not (final / "upper").is_dir():
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return final


def build(
    formfile: Formfile,
    context_dir: Path,
    *,
    work_dir: Path,
    cache_dir: Path,
    on_step: Callable[[StepEvent], None] | None = None,
    on_log: Callable[[str], None] | None = None,
    layer_cache_bytes_max: int = LAYER_CACHE_BYTES_MAX,
) -> BuildResult:
    """Build ``formfile`` with the files of ``context_dir`` into ``work_dir/image.qcow2``.

    Layers and the base are cached under ``cache_dir``. Raises ``BuildError`` (step 0 for
    set-up: tools, base, plan) with the failing step, its line and its last output lines.
    """
    _require_tools()
    try:
        base = ensure_base(cache_dir, on_log)
    except BaseError as e:
        raise BuildError(0, "base", 0, (), str(e)) from e
    base_key = base.parent.name
    try:
        steps = plan(formfile, _context_files(context_dir), base_key)
    except PlanError as e:
        raise BuildError(0, "plan", 0, (), str(e)) from e
    layers = cache_dir / "layers"
    layers.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    with _layers_lock(layers, fcntl.LOCK_SH):  # no pruning under a running build's lower dirs
        result = _build_layers(
            formfile,
            context_dir,
            steps,
            base,
            base_key,
            layers,
            work_dir,
            cache_dir,
            on_step,
            on_log,
        )
    prune_layers(layers, keep={step.key for step in steps}, bytes_max=layer_cache_bytes_max)
    return result


@contextlib.contextmanager
def _layers_lock(layers: Path, mode: int) -> Iterator[bool]:
    """An flock on ``layers/.lock``: shared while a build uses layers, exclusive to prune.
    With ``LOCK_NB`` in ``mode``, yields False instead of waiting when it is taken."""
    with (layers / ".lock").open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), mode)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def prune_layers(layers: Path, *, keep: set[str], bytes_max: int) -> list[str]:
    """Remove the least recently used layers (by their ``layer.json`` mtime, touched at each
    use) until the cache holds at most ``bytes_max``, never one in ``keep``; and the temp dirs
    crashed builds left. Only when no build holds the lock (else: nothing, next time); the keys
    removed."""
    removed: list[str] = []
    with _layers_lock(layers, fcntl.LOCK_EX | fcntl.LOCK_NB) as locked:
        if not locked:
            return removed
        entries: list[tuple[float, int, Path]] = []
        for path in layers.iterdir():
            if path.name.startswith(".tmp-"):  # no build runs: a crashed one's leftover
                shutil.rmtree(path, ignore_errors=True)
                continue
            if path.name.startswith(".") or not path.is_dir():
                continue
            try:
                meta = path / "layer.json"
                used = meta.stat().st_mtime
                size = int(json.loads(meta.read_text())["bytes"])
            except (OSError, ValueError, KeyError, TypeError):
                used, size = 0.0, 0  # no record: unusable as a layer, removed first
            entries.append((used, size, path))
        total = sum(size for _, size, _ in entries)
        for _used, size, path in sorted(entries, key=lambda e: e[0]):
            if total <= bytes_max:
                break
            if path.name in keep:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
            total -= size
    return removed


def _build_layers(
    formfile: Formfile,
    context_dir: Path,
    steps: tuple[PlannedStep, ...],
    base: Path,
    base_key: str,
    layers: Path,
    work_dir: Path,
    cache_dir: Path,
    on_step: Callable[[StepEvent], None] | None,
    on_log: Callable[[str], None] | None,
) -> BuildResult:
    runner = _Runner(on_log)
    lowers: list[Path] = [base]
    layer_docs: list[dict[str, Any]] = []
    cached_steps = 0
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=work_dir))
    try:
        (tmp / "m").mkdir()
        for step in steps:
            layer = layers / step.key
            cached = (layer / "upper").is_dir()
            event = StepEvent(step.index, len(steps), step.name, step.line, cached, "start")
            if on_step is not None:
                on_step(event)
            if cached:
                cached_steps += 1
                with contextlib.suppress(OSError):
                    os.utime(layer / "layer.json")  # used now: last to be pruned
            else:
                layer = _apply_step(step, lowers, layers, tmp, context_dir, runner)
            lowers.append(layer / "upper")
            try:
                size = json.loads((layer / "layer.json").read_text())["bytes"]
            except (OSError, ValueError, KeyError):
                size = None
            layer_docs.append(
                {
                    "index": step.index,
                    "name": step.name,
                    "line": step.line,
                    "kind": step.kind,
                    "key": step.key,
                    "bytes": size,
                    "cached": cached,
                }
            )
            if on_step is not None:
                on_step(StepEvent(step.index, len(steps), step.name, step.line, cached, "done"))
        images = cache_dir / "images"
        images.mkdir(parents=True, exist_ok=True)
        cached_image, facts = _make_image(formfile, steps, lowers, images, tmp, runner)
        image = work_dir / "image.qcow2"
        kernel = work_dir / "vmlinuz"
        initrd = work_dir / "initrd.img"
        _export(cached_image / "image.qcow2", image)
        _export(cached_image / "vmlinuz", kernel)
        _export(cached_image / "initrd.img", initrd)
        manifest = _manifest(formfile, steps, layer_docs, base_key, facts)
        (work_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
        return BuildResult(
            image, facts["image_digest"], manifest, len(steps), cached_steps, kernel, initrd
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make_image(
    formfile: Formfile,
    steps: tuple[PlannedStep, ...],
    lowers: list[Path],
    images: Path,
    tmp: Path,
    runner: _Runner,
) -> tuple[Path, dict[str, Any]]:
    """The image of the last layer, from the cache or made now: its dir and its facts."""
    total = len(steps)
    fail_index = total + 1
    final_key = steps[-1].key
    disk_bytes = formfile.disk_gb * 1024 * 1048576
    final = images / final_key
    if (final / "image.json").is_file():
        facts: dict[str, Any] = json.loads((final / "image.json").read_text())
        if facts["filesystem_bytes"] > disk_bytes:
            raise BuildError(
                fail_index,
                "image",
                0,
                (),
                f"the image needs {facts['filesystem_bytes'] // 1048576} MB, more than DISK "
                f"({formfile.disk_gb} GB)",
            )
        os.utime(final)  # most recently used: pruned last
        return final, facts
    out = Path(tempfile.mkdtemp(prefix=f".tmp-{final_key[:16]}-", dir=images))
    try:
        env = {
            "FB_TMP": str(tmp),
            "FB_LOWER": _link_lowers(tmp, lowers),
            "FB_OUT": str(out),
            "FB_RATIO_PCT": str(int(_FS_HEADROOM_RATIO * 100)),
            "FB_HEADROOM_MB": str(_FS_HEADROOM_MB),
            "FB_SIZE_MB_MAX": str(formfile.disk_gb * 1024),
            "FB_LABEL": IMAGE_LABEL,
            # Derived from the content key: the same layers make a filesystem with the same UUID.
            "FB_UUID": str(uuid.UUID(final_key[:32])),
        }
        runner.marks.clear()
        argv = ["unshare", "-m", "--propagation", "private", "/bin/sh", "-c", _NS_IMAGE]
        rc = runner.run(argv, env, marks=True)
        if rc != 0:
            raise BuildError(fail_index, "image", 0, tuple(runner.tail), f"mkfs exited {rc}")
        raw = out / "root.ext4"
        image = out / "image.qcow2"
        rc = runner.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(image)])
        if rc != 0:
            raise BuildError(fail_index, "image", 0, tuple(runner.tail), f"qemu-img exited {rc}")
        raw.unlink()
        facts = {
            "kernel": runner.marks.get("FORMATION-KERNEL", ""),
            "initrd": runner.marks.get("FORMATION-INITRD", ""),
            "content_bytes": int(runner.marks.get("FORMATION-USED", "0")),
            "filesystem_bytes": int(runner.marks.get("FORMATION-SIZE-MB", "0")) * 1048576,
            "image_bytes": image.stat().st_size,
            "image_digest": _sha256_file(image),
            "kernel_sha256": _sha256_file(out / "vmlinuz"),
            "initrd_sha256": _sha256_file(out / "initrd.img"),
        }
        (out / "image.json").write_text(json.dumps(facts, sort_keys=True))
        try:
            os.rename(out, final)
        except OSError:
            # A parallel build of the same layers won; its image is as good as ours.
            if not (final / "image.json").is_file():
                raise
            facts = json.loads((final / "image.json").read_text())
    finally:
        if out.exists():
            shutil.rmtree(out, ignore_errors=True)
    _prune_images(images, keep=final)
    return final, facts


def _prune_images(images: Path, keep: Path) -> None:
    done = [p for p in images.iterdir() if not p.name.startswith(".") and p != keep]
    done.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in done[IMAGES_KEPT_MAX - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def _export(src: Path, dest: Path) -> None:
    """Copy a cached file out (never a hard link: the caller may move or change its copy)."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def _manifest(
    formfile: Formfile,
    steps: tuple[PlannedStep, ...],
    layer_docs: list[dict[str, Any]],
    base_key: str,
    facts: Mapping[str, Any],
) -> dict[str, Any]:
    total = len(steps)
    ep = json.loads(steps[-2].spec) if total >= 2 and steps[-2].kind == "entrypoint" else None
    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "plan_version": PLAN_VERSION,
        "name": formfile.name,
        "base_key": base_key,
        "resources": {
            "vcpus": formfile.vcpus,
            "memory_mb": formfile.memory_mb,
            "disk_gb": formfile.disk_gb,
            "gpus": [{"model": g.model, "count": g.count} for g in formfile.gpus],
        },
        "expose": list(formfile.expose),
        "entrypoint": None
        if ep is None
        else {
            "unit": f"{ENTRYPOINT_UNIT}.service",
            "argv": ep["argv"],
            "shell_form": ep["shell_form"],
            "user": ep["user"],
            "workdir": ep["workdir"],
        },
        "users": [u.username for u in formfile.users],
        "layers": layer_docs,
        "kernel": facts["kernel"],
        "initrd": facts["initrd"],
        "root": {
            "fstype": "ext4",
            "label": IMAGE_LABEL,
            "cmdline": f"root=LABEL={IMAGE_LABEL} rw console=ttyS0",
        },
        "image_key": steps[-1].key,
        **{
            k: facts[k]
            for k in (
                "content_bytes",
                "filesystem_bytes",
                "image_bytes",
                "image_digest",
                "kernel_sha256",
                "initrd_sha256",
            )
        },
    }
    return manifest
