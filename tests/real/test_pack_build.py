"""node.pack.builder for real: debootstrap base, chroot steps, ext4 + qcow2, files checked with debugfs.

Needs root, debootstrap, qemu-img, mkfs.ext4/debugfs and the Debian mirror of this machine's apt
sources (scripts/ensure-system-deps.sh run test). A missing tool fails these tests. The base and
the layers live in ``default_cache_dir()`` so a second run (and CI) reuses them; nothing is booted
and nothing is loop-mounted: the image is converted back to raw and read with ``debugfs``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from node.pack.base import default_cache_dir
from node.pack.builder import BuildError, BuildResult, StepEvent, _context_files, build
from node.pack.model import Copy, Entrypoint, Env, Formfile, Install, Run, User, Workdir
from node.pack.plan import PlannedStep, plan

pytestmark = [pytest.mark.real, pytest.mark.slow]

TOOLS = ("debootstrap", "qemu-img", "mkfs.ext4", "debugfs", "unshare", "openssl")


def require_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    assert not missing, f"missing {missing}: run scripts/ensure-system-deps.sh run test"
    assert os.geteuid() == 0, "the builder needs root (chroot, mounts in a private namespace)"


@dataclass
class Built:
    formfile: Formfile
    result: BuildResult
    events: list[StepEvent]
    raw: Path
    password_hash: str
    token: str
    context: Path


def debugfs(raw: Path, command: str) -> str:
    out = subprocess.run(
        ["debugfs", "-R", command, str(raw)], capture_output=True, text=True, check=True
    )
    return out.stdout


def to_raw(image: Path, raw: Path) -> Path:
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
    return raw


def small_formfile(password_hash: str, token: str) -> Formfile:
    return Formfile(
        name="hello-web",
        users=(
            User(
                "alice",
                password_hash,
                ssh_authorized_keys=("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITEST alice@test",),
                sudo=True,
                groups=("adm",),
                line=2,
            ),
        ),
        steps=(
            Install(("python3",), line=3),
            Copy("./app", "/app", line=4),
            Env("GREETING", "hello", line=5),
            Workdir("/app", line=6),
            # The token makes this run's last steps new, so they really execute in CI too.
            Run(f"echo {token} > /app/built.txt && cat /proc/net/dev > /app/netdev.txt", line=7),
        ),
        entrypoint=Entrypoint(("python3", "-m", "http.server", "8000"), line=9),
        expose=(8000,),
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    require_tools()
    root = tmp_path_factory.mktemp("pack")
    context = root / "context"
    (context / "app").mkdir(parents=True)
    (context / "app" / "index.html").write_text("<h1>hello from formation</h1>\n")
    password_hash = subprocess.run(
        # A fixed salt keeps the USER and INSTALL layers the same between runs (CI reuses them).
        ["openssl", "passwd", "-6", "-salt", "formationtest", "correct horse"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    token = uuid.uuid4().hex
    formfile = small_formfile(password_hash, token)
    events: list[StepEvent] = []
    result = build(
        formfile,
        context,
        work_dir=root / "work",
        cache_dir=default_cache_dir(),
        on_step=events.append,
    )
    raw = to_raw(result.image_path, root / "image.raw")
    return Built(formfile, result, events, raw, password_hash, token, context)


def test_user_with_hashed_password_sudo_and_keys(built: Built) -> None:
    passwd = debugfs(built.raw, "cat /etc/passwd")
    assert "alice:x:1000:1000::/home/alice:/bin/bash" in passwd.splitlines()
    shadow = debugfs(built.raw, "cat /etc/shadow")
    alice = next(line for line in shadow.splitlines() if line.startswith("alice:"))
    assert alice.split(":")[1] == built.password_hash
    # chpasswd_expire (default true): the password must be changed at first login.
    assert alice.split(":")[2] == "0"
    assert "adm:x:4:alice" in debugfs(built.raw, "cat /etc/group")
    sudoers = debugfs(built.raw, "cat /etc/sudoers.d/90-formation-alice")
    assert sudoers.strip() == "alice ALL=(ALL) NOPASSWD:ALL"
    keys = debugfs(built.raw, "cat /home/alice/.ssh/authorized_keys")
    assert keys == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITEST alice@test\n"
    listing = debugfs(built.raw, "ls -l /home/alice/.ssh")
    assert "100600 (1)   1000   1000" in listing


def test_copied_file_run_output_and_python3(built: Built) -> None:
    assert debugfs(built.raw, "cat /app/index.html") == "<h1>hello from formation</h1>\n"
    assert debugfs(built.raw, "cat /app/built.txt") == built.token + "\n"
    assert "Inode:" in debugfs(built.raw, "stat /usr/bin/python3.11")
    assert 'GREETING="hello"' in debugfs(built.raw, "cat /etc/environment").splitlines()


def test_run_had_no_network(built: Built) -> None:
    # /proc/net/dev as the RUN saw it: a fresh network namespace has only a loopback.
    netdev = debugfs(built.raw, "cat /app/netdev.txt")
    interfaces = [line.split(":")[0].strip() for line in netdev.splitlines()[2:]]
    assert interfaces == ["lo"]


def test_entrypoint_unit_enabled(built: Built) -> None:
    unit = debugfs(built.raw, "cat /etc/systemd/system/formation-entrypoint.service")
    assert 'ExecStart="python3" "-m" "http.server" "8000"' in unit
    assert "User=alice" in unit
    assert "WorkingDirectory=/app" in unit
    assert 'Environment="GREETING=hello"' in unit
    assert "WantedBy=multi-user.target" in unit
    link = debugfs(
        built.raw, "stat /etc/systemd/system/multi-user.target.wants/formation-entrypoint.service"
    )
    assert 'Fast link dest: "/etc/systemd/system/formation-entrypoint.service"' in link


def test_boot_pieces_and_manifest(built: Built) -> None:
    r = built.result
    m = r.manifest
    assert hashlib.sha256(r.image_path.read_bytes()).hexdigest() == r.image_digest
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(r.image_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(info.stdout)["format"] == "qcow2"
    assert m["expose"] == [8000]
    assert m["users"] == ["alice"]
    assert m["resources"] == {"vcpus": 1, "memory_mb": 512, "disk_gb": 5, "gpus": []}
    assert m["entrypoint"]["argv"] == ["python3", "-m", "http.server", "8000"]
    assert [layer["key"] for layer in m["layers"]] == [e.key for e in _plan_keys(built)]
    assert m["kernel"].startswith("/boot/vmlinuz-")
    assert m["initrd"].startswith("/boot/initrd.img-")
    # The kernel and initrd exported next to the image are the ones inside it.
    assert "Inode:" in debugfs(built.raw, f"stat {m['kernel']}")
    assert hashlib.sha256(r.kernel_path.read_bytes()).hexdigest() == m["kernel_sha256"]
    assert hashlib.sha256(r.initrd_path.read_bytes()).hexdigest() == m["initrd_sha256"]
    assert r.kernel_path.read_bytes()[0x202:0x206] == b"HdrS"  # a bzImage
    assert "LABEL=formroot / ext4" in debugfs(built.raw, "cat /etc/fstab")
    assert debugfs(built.raw, "cat /etc/machine-id") == ""
    # Events: a start and a done per step, in order.
    assert [(e.index, e.state) for e in built.events] == [
        (i, s) for i in range(1, r.steps_total + 1) for s in ("start", "done")
    ]
    assert built.events[-1].name == "finalize"


def _plan_keys(built: Built) -> list[PlannedStep]:
    base_key = built.result.manifest["base_key"]
    # _context_files: the same digests the builder used.
    return list(plan(built.formfile, _context_files(built.context), base_key))


def test_second_build_is_all_cached_and_same_image(built: Built, tmp_path: Path) -> None:
    again = build(built.formfile, built.context, work_dir=tmp_path, cache_dir=default_cache_dir())
    assert again.cached_steps == again.steps_total == built.result.steps_total
    assert again.image_digest == built.result.image_digest


def test_last_line_change_reruns_only_the_tail(built: Built, tmp_path: Path) -> None:
    steps = built.formfile.steps
    # The token: a line this cache has never seen, so the step really reruns.
    command = f"echo changed-{built.token} > /app/built.txt"
    changed = replace(built.formfile, steps=(*steps[:-1], Run(command)))
    events: list[StepEvent] = []
    again = build(
        changed,
        built.context,
        work_dir=tmp_path,
        cache_dir=default_cache_dir(),
        on_step=events.append,
    )
    rerun = [e.name for e in events if e.state == "done" and not e.cached]
    assert rerun == [
        f"RUN {command}"[:69] + "..." if len(f"RUN {command}") > 72 else f"RUN {command}",
        "ENTRYPOINT python3 -m http.server 8000",
        "finalize",
    ]
    assert again.cached_steps == again.steps_total - 3
    raw = to_raw(again.image_path, tmp_path / "image.raw")
    assert debugfs(raw, "cat /app/built.txt") == f"changed-{built.token}\n"


def test_failing_run_reports_step_line_and_tail(built: Built, tmp_path: Path) -> None:
    steps = (*built.formfile.steps, Run("echo first; echo second >&2; exit 7", line=12))
    failing = replace(built.formfile, steps=steps)
    with pytest.raises(BuildError) as info:
        build(failing, built.context, work_dir=tmp_path, cache_dir=default_cache_dir())
    err = info.value
    assert err.line == 12
    assert err.step_index == 7
    assert err.step_name.startswith("RUN echo first")
    assert err.log_tail[-2:] == ("first", "second")
    assert "status 7" in str(err)


def test_symlink_planted_by_run_cannot_redirect_copy_to_the_host(
    built: Built, tmp_path: Path
) -> None:
    # A directory that exists on the host and, after the RUN, in the image too: a COPY through
    # the planted link must land in the image's copy, never in the host's.
    probe = tmp_path / "host-dir"
    probe.mkdir()
    steps = (
        Run(f"mkdir -p {probe} && ln -s {probe} /evil", line=3),
        Copy("./app", "/evil", line=4),
        Run(f"cp {probe}/index.html /copied-through-link.html", line=5),
    )
    f = replace(built.formfile, users=(), steps=steps, entrypoint=None)
    mounts_before = Path("/proc/self/mountinfo").read_text()
    result = build(f, built.context, work_dir=tmp_path / "work", cache_dir=default_cache_dir())
    assert list(probe.iterdir()) == []
    assert Path("/proc/self/mountinfo").read_text() == mounts_before
    raw = to_raw(result.image_path, tmp_path / "image.raw")
    assert "hello from formation" in debugfs(raw, "cat /copied-through-link.html")


def test_a_process_a_run_leaves_behind_dies_with_the_step(built: Built, tmp_path: Path) -> None:
    # The step's PID namespace ends with its shell, and so does the background sleep, which
    # would otherwise hold the output pipe open and hang the build.
    # A fresh token each time: the step runs (a cached layer would test nothing); the layer is
    # a few bytes and the cache's pruning takes it in time.
    token = os.urandom(8).hex()
    steps = (Run(f"sleep 3600 > /dev/null 2>&1 & echo started {token}", line=3),)
    f = replace(built.formfile, users=(), steps=steps, entrypoint=None)
    lines: list[str] = []
    result = build(
        f, built.context, work_dir=tmp_path, cache_dir=default_cache_dir(), on_log=lines.append
    )
    assert result.steps_total == 2
    assert f"started {token}" in lines
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert "sleep 3600" not in ps.stdout
