"""``form pack build`` and ``form pack status``: a Formfile and its files into an image on the fog.

``form pack build [DIR]`` does, in order, and stops at the first thing that fails:

1. reads ``DIR/Formfile`` (or ``-f PATH``) and validates it with the limits of the node's network
   (the node checks again), and checks that every COPY source exists under DIR;
2. replaces plain-text passwords by SHA-512-crypt hashes, in place in the user's own text so a
   failing step's line is a line of their file (the Formfile text replicates to every
   node; a plain password must never leave this machine). The salt is derived from the user's
   key, the build name and the username, so rebuilding an unchanged Formfile gives the same text,
   the same build id and a fully cached build;
3. uploads the build context (the files COPY names, minus ``.formignore``), sending only the
   chunks the node lacks (``node.client.context.upload``), with a progress bar;
4. asks for the build (``POST /v1/builds/create``) and follows it: a progress bar of its steps,
   the build's log with ``-v``; ends with the build id, or the failing step, its line and its
   last output lines (exit 1). ``--json`` prints only one final object.
"""

from __future__ import annotations

import hmac
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from node.client.api import ClientError
from node.client.cli._common import Commands, UsageError, _fields, _json_out, _Session

__all__ = ["add_build_commands", "passwd_salt"]

_CRYPT_ALPHABET: Final = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
POLL_S: Final = 0.5
WAIT_S_DEFAULT: Final = 1800.0


def passwd_salt(secret: bytes, build_name: str, username: str) -> str:
    """A 16-character crypt salt that only the key's owner can derive: stable across rebuilds
    (same text, same build id, cached steps), different per build and user."""
    mac = hmac.new(secret, f"formation:passwd-salt:v1\n{build_name}\n{username}".encode(), "sha256")
    return "".join(_CRYPT_ALPHABET[b % 64] for b in mac.digest()[:16])


def _text_with_hashes(text: str, formfile: Any, hashed: Any, reparse: Callable[[str], Any]) -> str:
    """The user's own text with each plain password replaced by its hash in place, so the lines
    a build reports (a failing step's line) are the lines of the user's file. When the edit is
    not certain to mean the same Formfile (a password quoted with escapes, say), the canonical
    text of the hashed value is sent instead (still correct; lines then count in that text)."""
    from node.pack.formfile import canonical

    out = text
    for before, after in zip(formfile.users, hashed.users, strict=True):
        if before.passwd == after.passwd:
            continue
        token = re.compile(
            r"passwd([:=])([\"']?)" + re.escape(before.passwd) + r"\2(?=\s|\\|$)", re.MULTILINE
        )
        # A template, not a function: backslashes doubled (crypt hashes have none; be safe).
        template = ("passwd:" + str(after.passwd)).replace("\\", "\\\\")
        out, count = token.subn(template, out, count=1)
        if count != 1:
            return str(canonical(hashed))
    try:
        same = reparse(out) == hashed
    except Exception:  # the parser's own error: the edit broke something
        same = False
    return out if same else str(canonical(hashed))


def _copy_problems(formfile: Any, text: str, root: Path) -> list[dict[str, Any]]:
    """Each COPY source that is missing under ``root`` or leads out of it (by a symlink)."""
    from node.pack.model import Copy

    lines = text.splitlines()
    base = root.resolve()
    problems = []
    for step in formfile.steps:
        if not isinstance(step, Copy):
            continue
        target = root / step.source
        if not target.exists():
            message = f"COPY source {step.source!r} does not exist under {root}"
        elif not target.resolve().is_relative_to(base):
            message = f"COPY source {step.source!r} leads outside {root} (a symlink?)"
        else:
            continue
        problems.append(
            {
                "path": formfile.source_path,
                "line": step.line,
                "col": _source_col(lines, step.line),
                "message": message,
            }
        )
    return problems


def _source_col(lines: list[str], line: int) -> int:
    """The column of COPY's first argument on ``line`` (1 if it is not on that line)."""
    if not 1 <= line <= len(lines):
        return 1
    text = lines[line - 1]
    i = len(text) - len(text.lstrip(" \t"))
    while i < len(text) and text[i] not in " \t":
        i += 1
    while i < len(text) and text[i] in " \t":
        i += 1
    return i + 1 if i < len(text) and text[i] != "\\" else 1


def _progress(quiet: bool) -> Any:
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=None,
        disable=quiet,
        transient=False,
    )


def cmd_pack_build(session: _Session) -> int:
    args = session.args
    started = start_build(session)
    if isinstance(started, int):
        return started
    client, created, upload_stats = started
    build_id = str(created["build_id"])
    if args.no_wait:
        if args.json:
            _json_out(created)
        else:
            print(build_id)
        return 0
    quiet = bool(args.json) or not sys.stderr.isatty()
    build = follow_build(session, client, build_id, quiet=quiet)
    if args.json:
        final = {k: v for k, v in build.items() if k not in ("formfile", "reports")}
        _json_out({**final, "context_upload": upload_stats})
    else:
        _print_outcome(build)
    return 0 if build.get("status") == "Built" else 1


def start_build(session: _Session) -> int | tuple[Any, dict[str, Any], dict[str, int]]:
    """Validate, hash passwords, upload the context and ask for the build: (client, the
    create answer, upload numbers), or an exit code when the Formfile or its files are wrong
    (the errors are printed)."""
    from node.client.context import upload
    from node.pack.formfile import LIMITS, FormfileError, limits_for_network, parse
    from node.pack.model import Copy
    from node.pack.password import hash_passwords

    args = session.args
    root: Path = args.dir
    path: Path = args.file if args.file is not None else root / "Formfile"
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory (the build context)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(
            f"no Formfile at {path}; pass -f PATH or run in the Formfile's directory"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    client = session.client()
    quiet = bool(args.json) or not sys.stderr.isatty()
    # One ask serves both: the network's limits, and ``via`` (the node the context goes to).
    answer = client.node_info()
    node: dict[str, Any] = answer if isinstance(answer, dict) else {}
    limits = (
        LIMITS[args.limits]
        if args.limits is not None
        else limits_for_network(str(node.get("network", "mainnet")))
    )
    try:
        formfile = parse(text, path=str(path), limits=limits)
    except FormfileError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    problems = _copy_problems(formfile, text, root)
    if problems:
        for p in problems:
            print(f"{p['path']}:{p['line']}:{p['col']}: {p['message']}", file=sys.stderr)
        return 1
    secret = session.key().secret
    hashed = hash_passwords(formfile, lambda user: passwd_salt(secret, formfile.name, user))
    sources = [step.source for step in formfile.steps if isinstance(step, Copy)]

    context = ""
    upload_stats: dict[str, int] = {}
    if sources:
        with _progress(quiet) as bar:
            task = bar.add_task("upload context", total=None)

            def on_upload(sent: int, total: int) -> None:
                bar.update(task, completed=sent, total=max(total, 1))

            uploaded = upload(client, root, sources, progress=on_upload)
        context = uploaded.manifest_digest
        upload_stats = {
            name: int(getattr(uploaded, name))
            for name in ("files", "bytes_total", "bytes_sent", "chunks_total", "chunks_sent")
        }
        if not args.json:
            print(
                f"context {context[:12]}: {uploaded.files} files, {uploaded.bytes_total} bytes, "
                f"{uploaded.bytes_sent} sent ({uploaded.chunks_sent}/{uploaded.chunks_total} chunks)",
                file=sys.stderr,
            )
    sent = _text_with_hashes(
        text, formfile, hashed, lambda t: parse(t, path=str(path), limits=limits)
    )
    payload: dict[str, Any] = {"name": formfile.name, "formfile": sent}
    if context:
        payload["context"] = context
    if node.get("address"):
        payload["via"] = node["address"]
    created = client.request("POST", "/builds/create", payload)
    if not args.json:
        print(f"build {created['build_id']}", file=sys.stderr)
    return client, created, upload_stats


def follow_build(session: _Session, client: Any, build_id: str, *, quiet: bool) -> dict[str, Any]:
    """Follow a build (progress bar, ``-v`` log) until Built or CriticalError; the build."""
    args = session.args
    deadline = time.monotonic() + args.wait_s
    log_seq = 0
    build: dict[str, Any] = {}
    with _progress(quiet) as bar:
        task = bar.add_task("waiting for a builder", total=None)
        while True:
            build = client.request("GET", f"/builds/{build_id}/get")
            status = build.get("status")
            steps = int(build.get("steps") or 0)
            step = int(build.get("step") or 0)
            if status == "Building" and steps:
                bar.update(
                    task,
                    description=f"step {step}/{steps} {build.get('step_name') or ''}"[:60],
                    completed=max(step - 1, 0),
                    total=steps,
                )
            if args.verbose:
                log_seq = _print_log(client, build_id, log_seq)
            if status in ("Built", "CriticalError"):
                if status == "Built":
                    bar.update(task, description="built", completed=steps or 1, total=steps or 1)
                break
            if time.monotonic() > deadline:
                raise ClientError(
                    f"build {build_id} is still {status or 'waiting for a builder'} after "
                    f"{args.wait_s:g} s; follow it with `form pack status --build-id {build_id}`"
                )
            time.sleep(POLL_S)
    return build


def _print_log(client: Any, build_id: str, since: int) -> int:
    try:
        answer = client.request("GET", f"/builds/{build_id}/log?since={since}")
    except ClientError:
        return since  # the log lives on the building node; elsewhere there is none to show
    for line in answer.get("lines", []):
        print(line, file=sys.stderr)
    return int(answer.get("next", since))


def _print_outcome(build: dict[str, Any]) -> None:
    status = build.get("status")
    if status == "Built":
        print(build["build_id"])
        print(
            f"built: image {str(build.get('image'))[:12]} ({build.get('image_size_bytes')} bytes) "
            f"on node {build.get('node_id')}",
            file=sys.stderr,
        )
        return
    if status == "CriticalError":
        print(
            f"error: step {build.get('step')} ({build.get('step_name')}) at Formfile line "
            f"{build.get('line')} failed: {build.get('error')}",
            file=sys.stderr,
        )
        tail = build.get("log_tail") or ""
        if tail:
            print("last output:", file=sys.stderr)
            for line in tail.splitlines():
                print(f"  {line}", file=sys.stderr)
        return
    _fields({k: v for k, v in build.items() if k not in ("formfile", "reports")})


def cmd_pack_status(session: _Session) -> int:
    args = session.args
    client = session.client()
    if args.build_id is None:
        result = client.request("GET", "/builds/list")
        if args.json:
            _json_out(result)
            return 0
        for build in result.get("builds", []):
            print(
                f"{build['build_id']}  {build.get('name') or '-':20}  {build.get('status') or 'waiting'}"
            )
        return 0
    build = client.request("GET", f"/builds/{args.build_id}/get")
    if args.json:
        _json_out(build)
        return 0
    summary = {
        k: build.get(k)
        for k in (
            "build_id",
            "name",
            "status",
            "step",
            "steps",
            "step_name",
            "line",
            "node_id",
            "image",
            "image_size_bytes",
            "manifest",
            "error",
        )
        if build.get(k) is not None
    }
    _fields(summary)
    if build.get("status") == "CriticalError" and build.get("log_tail"):
        print("last output:")
        print(json.dumps(build["log_tail"])[1:-1].replace("\\n", "\n"))
    return 0


PULL_TIMEOUT_S_MIN: Final = 600.0  # an image is hundreds of MB, fetched before the answer


def cmd_pack_pull(session: _Session) -> int:
    session.args.timeout_s = max(session.args.timeout_s, PULL_TIMEOUT_S_MIN)
    client = session.client()
    result = client.request("POST", f"/builds/{session.args.build_id}/pull")
    if session.args.json:
        _json_out(result)
    else:
        fetched = len(result.get("fetched", []))
        print(
            f"image {str(result.get('image'))[:12]} ({result.get('image_size_bytes')} bytes) is on "
            f"this node, verified; {fetched} blob(s) fetched",
        )
    return 0


def add_build_commands(pack: Commands) -> None:
    build = pack.leaf(
        "build",
        cmd_pack_build,
        "build an image from DIR/Formfile and the files it copies (upload, build, follow)",
    )
    build.add_argument(
        "dir",
        nargs="?",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="the build context: the Formfile's COPY sources are relative to it (default .)",
    )
    build.add_argument(
        "-f", "--file", type=Path, metavar="PATH", help="the Formfile (default DIR/Formfile)"
    )
    build.add_argument(
        "--limits",
        choices=("devnet", "mainnet"),
        help="validate against these limits (default: the node's network)",
    )
    build.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="stream the build's log (from the node that builds it, when it is the gateway's)",
    )
    build.add_argument(
        "--no-wait",
        action="store_true",
        help="print the build id once the build is asked for, and do not follow it",
    )
    build.add_argument(
        "--wait-s",
        type=float,
        default=WAIT_S_DEFAULT,
        metavar="SECONDS",
        help=f"give up following after this long (default {WAIT_S_DEFAULT:g})",
    )
    status = pack.leaf(
        "status",
        cmd_pack_status,
        "a build's status (Building, Built, CriticalError), or all your builds",
    )
    pull = pack.leaf(
        "pull",
        cmd_pack_pull,
        "fetch a built image onto the gateway's node, by digest from the nodes that hold it",
    )
    pull.add_argument("--build-id", required=True, metavar="BUILD_ID")
    status.add_argument(
        "--build-id", metavar="BUILD_ID", help="the build (default: list your builds)"
    )
