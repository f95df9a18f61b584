"""The value a Formfile parses into: plain frozen data, shared by the parser, the planner and the builder.

Theory of operation
-------------------
``node.pack.formfile.parse`` turns text into a ``Formfile``; ``node.pack.plan`` turns a ``Formfile``
and the build context's digests into build steps with cache keys; ``node.pack.builder`` applies
them. None of them owns these types, so none imports another to learn the shape.

A ``Formfile`` keeps two views of the same lines: the resources and users (set once, order does
not matter) as fields, and ``steps``, the instructions whose order *is* the image (RUN, COPY,
INSTALL, ENV, WORKDIR, in file order). ENTRYPOINT and EXPOSE describe the image rather than
change its files in order, so they are fields too. Every step carries the line it came from, so
a build that fails can say which line did it; lines are not part of equality, so the canonical
text (comments and continuations gone) parses back to an equal value.

Passwords: ``User.passwd`` is either the user's plain text (as typed in the Formfile) or a crypt
hash (``$6$...``). ``form`` replaces plain text by a SHA-512-crypt hash before a Formfile leaves
the user's machine (the Formfile text is replicated to every node); the builder only ever sets a
hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Copy",
    "Entrypoint",
    "Env",
    "Formfile",
    "Gpu",
    "Install",
    "Model",
    "Run",
    "Step",
    "User",
    "Workdir",
]

EnvScope = Literal["system", "user", "service"]


@dataclass(frozen=True, slots=True)
class Run:
    """``RUN command``: a shell command run as root in the image (``/bin/sh -c``)."""

    command: str
    line: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Copy:
    """``COPY source dest``: ``source`` relative to the build context (normalised, no ``..``)."""

    source: str
    dest: str
    line: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Install:
    """``INSTALL pkg ...``: Debian packages, installed with apt in one layer."""

    packages: tuple[str, ...]
    line: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Env:
    """``ENV [--scope=system|user:NAME|service:NAME] KEY=value``; ``scope_name`` is empty for system."""

    key: str
    value: str
    scope: EnvScope = "system"
    scope_name: str = ""
    line: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Workdir:
    """``WORKDIR /abs/path``: later RUN and the ENTRYPOINT run here."""

    path: str
    line: int = field(default=0, compare=False)


Step = Run | Copy | Install | Env | Workdir


@dataclass(frozen=True, slots=True)
class Entrypoint:
    """``ENTRYPOINT``: the program started at boot as a systemd service; ``argv[0]`` is the command."""

    argv: tuple[str, ...]
    shell_form: bool = False
    line: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Gpu:
    model: str
    count: int = 1


@dataclass(frozen=True, slots=True)
class Model:
    """``MODEL required:ID`` or ``MODEL preferred:ID``."""

    model_id: str
    required: bool


@dataclass(frozen=True, slots=True)
class User:
    username: str
    passwd: str
    ssh_authorized_keys: tuple[str, ...] = ()
    lock_passwd: bool = False
    sudo: bool = False
    shell: str = "/bin/bash"
    ssh_pwauth: bool = True
    disable_root: bool = True
    chpasswd_expire: bool = True
    groups: tuple[str, ...] = ()
    line: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Formfile:
    name: str
    description: str = ""
    model: Model | None = None
    vcpus: int = 1
    memory_mb: int = 512
    disk_gb: int = 5
    gpus: tuple[Gpu, ...] = ()
    users: tuple[User, ...] = ()
    steps: tuple[Step, ...] = ()
    entrypoint: Entrypoint | None = None
    expose: tuple[int, ...] = ()
    workdir: str = "/"
    # Free-form notes the parser keeps for tools (never part of equality or the build id).
    source_path: str = field(default="Formfile", compare=False)
