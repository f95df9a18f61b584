"""From a Formfile to the ordered build steps, each named by a content key (pure).

Theory of operation
-------------------
A build is a chain of layers over the cached base root (``node.pack.base``). ``plan`` lists the
steps in the order the builder applies them and gives each a **key**:

    key_0 = sha256("formation:plan:v<PLAN_VERSION>" ‖ base_key)
    key_i = sha256(key_{i-1} ‖ canonical spec of step i ‖ digests of the files step i copies)

so a key names everything that produced its layer: the base, every earlier step, and this one.
The builder keeps each layer under its key; a rebuild reuses every layer whose key it already
has and reruns from the first one that differs. Changing line k of a Formfile changes the keys
of the steps from line k on, never an earlier one; changing a file of the context changes the
key of the COPY that copies it and of everything after it.

The order: one USER step per user (they are set once in a Formfile and ENV user: scopes and the
ENTRYPOINT refer to them, so they come first), then the Formfile's ordered steps (RUN, COPY,
INSTALL, ENV, WORKDIR as written), then the implicit ``ENTRYPOINT`` step (the systemd unit) when
there is one, then ``finalize`` (fstab, hostname, machine-id, network). EXPOSE changes no file: the
image manifest records it.

A step's ``spec`` is a canonical JSON object holding everything the builder needs to apply it
(for RUN the working directory and the system ENV in force; for the entrypoint the user, the
directory and the environment), so applying a step depends on its spec and its parent layer only.
Rules: no I/O, no clock; the same arguments always give the same steps.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from node.pack.model import Copy, Env, Formfile, Install, Run, Workdir

__all__ = [
    "PLAN_VERSION",
    "PlanError",
    "PlannedStep",
    "StepKind",
    "copied_files",
    "plan",
]

# Bump when the builder changes what a step with a given spec writes into its layer.
PLAN_VERSION: Final = 3  # 2: finalize installs formation-ready.service; 3: entrypoint output
# on the console too (the entrypoint step's unit)
# Bump when only the finalize step's script changes (the VM's boot units): it is part of that
# step's spec, so the earlier layers (apt, COPY ...) stay cached.
FINALIZE_VERSION: Final = 1  # 1: units a VM never needs are masked (they cost ~20 s under TCG)
ENTRYPOINT_UNIT: Final = "formation-entrypoint"
_NAME_CHARS_MAX: Final = 72

StepKind = Literal["user", "run", "copy", "install", "env", "workdir", "entrypoint", "finalize"]


class PlanError(ValueError):
    """The Formfile and its context do not fit together (e.g. a COPY of a missing file)."""


@dataclass(frozen=True, slots=True)
class PlannedStep:
    """One build step: ``index`` 1-based, ``line`` the Formfile line (0 for implicit steps)."""

    index: int
    name: str
    line: int
    kind: StepKind
    key: str
    spec: str  # canonical JSON: what the builder applies


def _canonical(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _short(text: str) -> str:
    one = " ".join(text.split())
    return one if len(one) <= _NAME_CHARS_MAX else one[: _NAME_CHARS_MAX - 3] + "..."


def copied_files(source: str, context_files: Mapping[str, str]) -> list[str]:
    """The context paths a ``COPY source`` takes: the file itself, or everything under a dir."""
    src = source.strip("/")
    if src in ("", "."):
        return sorted(context_files)
    if src.startswith("./"):
        src = src[2:]
    return sorted(p for p in context_files if p == src or p.startswith(src + "/"))


def _chain(previous: str, spec: str, digests: list[str]) -> str:
    h = hashlib.sha256()
    h.update(previous.encode() + b"\n" + spec.encode() + b"\n")
    for d in digests:
        h.update(d.encode() + b"\n")
    return h.hexdigest()


def plan(
    formfile: Formfile, context_files: Mapping[str, str], base_key: str
) -> tuple[PlannedStep, ...]:
    """The build steps of ``formfile`` over the base ``base_key``, in order, with their keys.

    ``context_files`` maps each context path (relative POSIX) to its digest (an opaque string:
    the builder passes the sha256 and the mode). Raises ``PlanError`` when a COPY names nothing
    in the context.
    """
    raw: list[tuple[str, int, StepKind, dict[str, Any], list[str]]] = []
    for u in formfile.users:
        spec: dict[str, Any] = {
            "username": u.username,
            "passwd": u.passwd,
            "ssh_authorized_keys": list(u.ssh_authorized_keys),
            "lock_passwd": u.lock_passwd,
            "sudo": u.sudo,
            "shell": u.shell,
            "ssh_pwauth": u.ssh_pwauth,
            "disable_root": u.disable_root,
            "chpasswd_expire": u.chpasswd_expire,
            "groups": list(u.groups),
        }
        raw.append((f"USER {u.username}", u.line, "user", spec, []))
    workdir = "/"
    system_env: dict[str, str] = {}
    for step in formfile.steps:
        if isinstance(step, Run):
            spec = {"command": step.command, "workdir": workdir, "env": dict(system_env)}
            raw.append((_short(f"RUN {step.command}"), step.line, "run", spec, []))
        elif isinstance(step, Copy):
            paths = copied_files(step.source, context_files)
            if not paths:
                raise PlanError(
                    f"line {step.line}: COPY {step.source}: no such file or directory in the "
                    "build context (was it excluded by .formignore?)"
                )
            digests = [f"{p}\0{context_files[p]}" for p in paths]
            spec = {"source": step.source, "dest": step.dest, "workdir": workdir}
            raw.append(
                (_short(f"COPY {step.source} {step.dest}"), step.line, "copy", spec, digests)
            )
        elif isinstance(step, Install):
            spec = {"packages": list(step.packages)}
            name = _short("INSTALL " + " ".join(step.packages))
            raw.append((name, step.line, "install", spec, []))
        elif isinstance(step, Env):
            if step.scope == "system":
                system_env[step.key] = step.value
            spec = {
                "key": step.key,
                "value": step.value,
                "scope": step.scope,
                "scope_name": step.scope_name,
            }
            scope = step.scope if step.scope == "system" else f"{step.scope}:{step.scope_name}"
            raw.append((_short(f"ENV {scope} {step.key}"), step.line, "env", spec, []))
        elif isinstance(step, Workdir):
            workdir = step.path
            raw.append((f"WORKDIR {step.path}", step.line, "workdir", {"path": step.path}, []))
    if not any(isinstance(s, Workdir) for s in formfile.steps) and formfile.workdir != "/":
        workdir = formfile.workdir
    if formfile.entrypoint is not None:
        ep = formfile.entrypoint
        spec = {
            "unit": ENTRYPOINT_UNIT,
            "argv": list(ep.argv),
            "shell_form": ep.shell_form,
            "user": formfile.users[0].username if formfile.users else "root",
            "workdir": workdir,
            "env": dict(system_env),
            "description": formfile.name,
        }
        raw.append((_short("ENTRYPOINT " + " ".join(ep.argv)), ep.line, "entrypoint", spec, []))
    raw.append(
        (
            "finalize",
            0,
            "finalize",
            {"hostname": formfile.name, "version": FINALIZE_VERSION},
            [],
        )
    )

    key = hashlib.sha256(f"formation:plan:v{PLAN_VERSION}\n{base_key}".encode()).hexdigest()
    out = []
    for i, (name, line, kind, spec, digests) in enumerate(raw, start=1):
        text = _canonical({"kind": kind, **spec})
        key = _chain(key, text, digests)
        out.append(PlannedStep(i, name, line, kind, key, text))
    return tuple(out)
