"""The Formfile parser: text (or bytes) in, a ``Formfile`` value or every error out.

Long on purpose: one grammar, its fifteen instructions' checks and their inverse (``canonical``)
share the lexer's positions and quoting rules; split apart, the round trip would have no home.

Theory of operation
-------------------
Pure and total: ``parse`` reads no file, no clock, and raises nothing but ``FormfileError``
whatever the input. The text is checked in layers, each bounded so a hostile body costs little:

1. Size and encoding: at most ``Limits.text_bytes_max`` bytes of UTF-8 (64 KiB, the cap the
   ledger puts on a ``build.request``), at most ``lines_max`` lines, no control characters but
   tab. A UTF-8 byte-order mark is skipped.
2. Logical lines: a line ending in ``\\`` (trailing blanks allowed) continues on the next one,
   as in a Dockerfile; comment lines (``#`` first) are skipped, also inside a continuation. Every
   character of a logical line keeps its physical line and column, so an error inside the third
   line of a ``USER ... \\`` points at that line.
3. Instructions: the first word, upper case (``run`` is an error that suggests ``RUN``). Unknown
   instructions are errors (the upstream ignores them silently, so a typo built an image that
   lacked a step). Arguments are words split on blanks; ``"..."`` and ``'...'`` keep blanks
   (inside double quotes ``\\"`` and ``\\\\`` escape), as in a shell.
4. Values: each checked where it is read; resources against a ``Limits`` profile (``DEVNET``,
   ``MAINNET``); checks that need the whole file (NAME present, an ``ENV --scope=user:NAME``
   naming a declared USER) run last.

Every error becomes a ``Diagnostic(path, line, col)`` (1-based, columns in characters) and the
parser keeps going, so one run lists all of a file's errors (at most ``errors_max``, then one
"and N more"). ``str(FormfileError)`` is one ``PATH:LINE:COL: message`` per line, the form
compilers and editors understand.

``canonical`` prints a ``Formfile`` back as text with one instruction per line in a fixed order
(NAME, DESCRIPTION, MODEL, resources, GPU, USER, the steps in order, EXPOSE, ENTRYPOINT), all
resources explicit, no comments or continuations: ``parse(canonical(f)) == f``.

Decisions (see docs/formats.md): NAME is required, as upstream (it names the build), and uses
the ledger's build-name alphabet; unknown network names get the ``MAINNET`` limits (a network
the node does not know as a development one is treated as production); COPY destinations and
WORKDIR are absolute; a file's first error for bad bytes stops the parse (nothing after it can
be located reliably).
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Final, Literal

from node.pack.model import (
    Copy,
    Entrypoint,
    Env,
    Formfile,
    Gpu,
    Install,
    Model,
    Run,
    Step,
    User,
    Workdir,
)

__all__ = [
    "DEVNET",
    "GPU_MODELS",
    "INSTRUCTIONS",
    "LIMITS",
    "MAINNET",
    "Diagnostic",
    "FormfileError",
    "Limits",
    "canonical",
    "limits_for_network",
    "parse",
    "quote",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """A limits profile: what a network's nodes accept (resources) and what any parse costs."""

    name: str
    vcpus_min: int
    vcpus_max: int
    memory_mb_min: int
    memory_mb_max: int
    disk_gb_min: int
    disk_gb_max: int
    # The ledger caps a build.request's Formfile at 64 KiB; accepting more here would only
    # produce a Formfile that cannot be sent.
    text_bytes_max: int = 64 * 1024
    lines_max: int = 10_000
    errors_max: int = 100
    steps_max: int = 1_000
    users_max: int = 32
    ports_max: int = 64
    gpus_max: int = 8
    value_chars_max: int = 8_192


# The seed README's development-network limits (the upstream "treehacks" feature).
DEVNET: Final = Limits("devnet", 1, 2, 512, 4096, 1, 5)
# The upstream's general ranges (form-pack/src/formfile.rs).
MAINNET: Final = Limits("mainnet", 1, 128, 512, 256_000, 5, 65_535)
LIMITS: Final = {"devnet": DEVNET, "mainnet": MAINNET}
# Networks that are development fogs: a node's default network is "local".
_DEV_NETWORKS: Final = frozenset({"devnet", "local"})


def limits_for_network(network: str) -> Limits:
    """``DEVNET`` for "devnet" and "local", ``MAINNET`` for any other network (production)."""
    return DEVNET if network in _DEV_NETWORKS else MAINNET


@dataclass(frozen=True, slots=True)
class Diagnostic:
    path: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "line": self.line, "col": self.col, "message": self.message}


class FormfileError(ValueError):
    """All the errors of one Formfile; ``str()`` is one ``PATH:LINE:COL: message`` per line."""

    def __init__(self, diagnostics: tuple[Diagnostic, ...]) -> None:
        assert diagnostics
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics))


GPU_MODELS: Final = ("RTX5090", "H100", "H200", "B200")
_GPU_COUNT_MAX: Final = 8
INSTRUCTIONS: Final = (
    "NAME",
    "DESCRIPTION",
    "MODEL",
    "VCPU",
    "CPU",
    "CORES",
    "MEM",
    "MEMORY",
    "MBS",
    "DISK",
    "STORAGE",
    "GPU",
    "USER",
    "RUN",
    "COPY",
    "INSTALL",
    "ENV",
    "WORKDIR",
    "ENTRYPOINT",
    "EXPOSE",
)
_RESOURCE: Final = {
    "VCPU": "vcpus",
    "CPU": "vcpus",
    "CORES": "vcpus",
    "MEM": "memory_mb",
    "MEMORY": "memory_mb",
    "MBS": "memory_mb",
    "DISK": "disk_gb",
    "STORAGE": "disk_gb",
}
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_USERNAME_RE: Final = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_GROUP_RE: Final = _USERNAME_RE
_SERVICE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_ENV_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_PACKAGE_RE: Final = re.compile(r"[a-z0-9][a-z0-9+.-]{0,127}(=[A-Za-z0-9.+~:-]{1,64})?")
_MODEL_ID_RE: Final = re.compile(r"[^\s:]{1,256}")
_BOOLS: Final = {
    "true": True,
    "yes": True,
    "1": True,
    "on": True,
    "false": False,
    "no": False,
    "0": False,
    "off": False,
}
_USER_FIELDS: Final = (
    "username",
    "passwd",
    "ssh_authorized_keys",
    "lock_passwd",
    "sudo",
    "shell",
    "ssh_pwauth",
    "disable_root",
    "chpasswd_expire",
    "groups",
)
_BLANKS: Final = " \t"
_RESERVED_USERS: Final = frozenset({"root"})


class _Stop(Exception):
    """Internal: too many errors; the collected ones are reported."""


class _Unclosed(Exception):
    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


@dataclass(slots=True)
class _Logical:
    """One logical line: its text and, per character, where it came from."""

    text: str
    lines: list[int]
    cols: list[int]
    end: tuple[int, int]  # where to point at for "missing" errors

    def at(self, offset: int) -> tuple[int, int]:
        if 0 <= offset < len(self.text):
            return self.lines[offset], self.cols[offset]
        return self.end


def _tokens(text: str) -> list[tuple[str, int]]:
    """Blank-separated words with shell-like quotes; each with the offset it starts at."""
    out: list[tuple[str, int]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in _BLANKS:
            i += 1
        if i >= n:
            break
        start = i
        buf: list[str] = []
        while i < n and text[i] not in _BLANKS:
            c = text[i]
            if c in "\"'":
                opened = i
                i += 1
                while i < n and text[i] != c:
                    if c == '"' and text[i] == "\\" and i + 1 < n and text[i + 1] in '"\\':
                        buf.append(text[i + 1])
                        i += 2
                        continue
                    buf.append(text[i])
                    i += 1
                if i >= n:
                    raise _Unclosed(opened)
                i += 1
            else:
                buf.append(c)
                i += 1
        out.append(("".join(buf), start))
    return out


def quote(word: str) -> str:
    """``word`` as the tokenizer reads it back: bare when it can be, else double-quoted."""
    if word and not any(c in word for c in " \t\"'\\") and not word.startswith("["):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class _Parser:
    path: str
    limits: Limits
    diagnostics: list[Diagnostic] = field(default_factory=list)
    dropped: int = 0
    seen: dict[str, int] = field(default_factory=dict)
    name: str | None = None
    description: str = ""
    model: Model | None = None
    resources: dict[str, int] = field(default_factory=dict)
    gpus: list[Gpu] = field(default_factory=list)
    users: list[User] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    entrypoint: Entrypoint | None = None
    expose: list[int] = field(default_factory=list)
    workdir: str = "/"
    user_scopes: list[tuple[str, int, int]] = field(default_factory=list)

    def error(self, line: int, col: int, message: str) -> None:
        if len(self.diagnostics) >= self.limits.errors_max:
            self.dropped += 1
            return
        self.diagnostics.append(Diagnostic(self.path, line, col, message))

    def err(self, logical: _Logical, offset: int, message: str) -> None:
        line, col = logical.at(offset)
        self.error(line, col, message)

    # -- layers 1 and 2 -------------------------------------------------------------------------

    def logical_lines(self, text: str) -> list[_Logical]:
        physical = text.split("\n")
        if len(physical) > self.limits.lines_max:
            self.error(
                self.limits.lines_max + 1,
                1,
                f"the file has {len(physical)} lines; at most {self.limits.lines_max} are allowed",
            )
            raise _Stop
        out: list[_Logical] = []
        current: _Logical | None = None
        for number, raw in enumerate(physical, start=1):
            line = raw[:-1] if raw.endswith("\r") else raw
            bad = next((i for i, c in enumerate(line) if _control(c)), None)
            if bad is not None:
                self.error(
                    number,
                    bad + 1,
                    f"control character U+{ord(line[bad]):04X} is not allowed; "
                    "use plain text (tabs and spaces)",
                )
                line = "".join(" " if _control(c) else c for c in line)
            stripped = line.strip(_BLANKS)
            if stripped.startswith("#"):
                continue  # a comment, also inside a continuation (as in a Dockerfile)
            body = line.rstrip(_BLANKS)
            continues = body.endswith("\\")
            if continues:
                body = body[:-1]
            if current is None:
                if not continues and not stripped:
                    continue
                current = _Logical("", [], [], (number, len(line) + 1))
            current.text += body
            current.lines.extend([number] * len(body))
            current.cols.extend(range(1, len(body) + 1))
            current.end = (number, len(body) + 1)
            if not continues:
                out.append(current)
                current = None
        if current is not None:
            end_line, end_col = current.end
            self.error(
                end_line,
                end_col,
                "the last line ends with '\\' but no line follows; remove the '\\'",
            )
            out.append(current)
        return out

    # -- layer 3 --------------------------------------------------------------------------------

    def instruction(self, logical: _Logical) -> None:
        text = logical.text
        start = len(text) - len(text.lstrip(_BLANKS))
        end = start
        while end < len(text) and text[end] not in _BLANKS:
            end += 1
        word = text[start:end]
        args_start = end
        while args_start < len(text) and text[args_start] in _BLANKS:
            args_start += 1
        args = text[args_start:].rstrip(_BLANKS)
        if word not in INSTRUCTIONS:
            if word.upper() in INSTRUCTIONS:
                hint = f"instructions are upper case: write {word.upper()}"
            elif word.upper() == "FROM":
                hint = "FROM is not supported: every image starts from the node's Debian base"
            elif word.upper() in ("CMD", "ARG", "LABEL", "ADD", "VOLUME"):
                hint = "this is Dockerfile syntax, not a Formfile instruction"
            else:
                hint = "expected one of " + ", ".join(INSTRUCTIONS)
            self.err(logical, start, f"unknown instruction {word[:40]!r}; {hint}")
            return
        if not args:
            self.err(logical, end, f"{word} needs a value: {_USAGE[word]}")
            return
        if len(args) > self.limits.value_chars_max:
            self.err(
                logical,
                args_start,
                f"{word}'s value is {len(args)} characters; at most "
                f"{self.limits.value_chars_max} are allowed",
            )
            return
        sub = _Sub(logical, args_start)
        getattr(self, "_" + word.lower())(word, args, sub)

    def once(self, key: str, word: str, sub: _Sub) -> bool:
        line = sub.logical.at(sub.base)[0]
        first = self.seen.get(key)
        if first is not None:
            self.err(sub.logical, sub.base, f"{word} is already set on line {first}; keep one")
            return False
        self.seen[key] = line
        return True

    def step(self, step: Step, sub: _Sub) -> None:
        if len(self.steps) >= self.limits.steps_max:
            self.err(
                sub.logical, sub.base, f"more than {self.limits.steps_max} build steps; merge some"
            )
            return
        self.steps.append(step)

    def _name(self, word: str, args: str, sub: _Sub) -> None:
        if not self.once("NAME", word, sub):
            return
        if _NAME_RE.fullmatch(args) is None:
            self.err(
                sub.logical,
                sub.base,
                f"NAME {args[:64]!r} is not a valid name; use 1-63 letters, digits, '.', '_' or "
                "'-', starting with a letter or digit",
            )
            return
        self.name = args

    def _description(self, word: str, args: str, sub: _Sub) -> None:
        if self.once("DESCRIPTION", word, sub):
            self.description = args

    def _model(self, word: str, args: str, sub: _Sub) -> None:
        if not self.once("MODEL", word, sub):
            return
        kind, colon, model_id = args.partition(":")
        if not colon or kind not in ("required", "preferred"):
            self.err(sub.logical, sub.base, "MODEL expects required:MODEL_ID or preferred:MODEL_ID")
            return
        if _MODEL_ID_RE.fullmatch(model_id) is None:
            self.err(
                sub.logical,
                sub.base + len(kind) + 1,
                "MODEL's id must be 1-256 characters without blanks or ':'",
            )
            return
        self.model = Model(model_id, kind == "required")

    def _resource(self, word: str, args: str, sub: _Sub) -> None:
        key = _RESOURCE[word]
        if not self.once(key, word, sub):
            return
        lim = self.limits
        low, high, unit = {
            "vcpus": (lim.vcpus_min, lim.vcpus_max, "vCPUs"),
            "memory_mb": (lim.memory_mb_min, lim.memory_mb_max, "MB"),
            "disk_gb": (lim.disk_gb_min, lim.disk_gb_max, "GB"),
        }[key]
        if re.fullmatch(r"[0-9]{1,9}", args) is None:
            what = {"vcpus": "a number of vCPUs", "memory_mb": "megabytes", "disk_gb": "gigabytes"}
            self.err(
                sub.logical,
                sub.base,
                f"{word} expects a whole number of {what[key].removeprefix('a number of ')}, "
                f"{low}-{high} here, not {args[:32]!r}",
            )
            return
        value = int(args)
        if not low <= value <= high:
            self.err(
                sub.logical,
                sub.base,
                f"{word} {value} is outside the {lim.name} limits: {low}-{high} {unit}",
            )
            return
        self.resources[key] = value

    _vcpu = _cpu = _cores = _mem = _memory = _mbs = _disk = _storage = _resource

    def _gpu(self, word: str, args: str, sub: _Sub) -> None:
        gpu_model, colon, count_text = args.partition(":")
        if gpu_model not in GPU_MODELS:
            self.err(
                sub.logical,
                sub.base,
                f"GPU model {gpu_model[:32]!r} is unknown; expected one of "
                + ", ".join(GPU_MODELS)
                + " (GPU MODEL[:COUNT])",
            )
            return
        count = 1
        if colon:
            if re.fullmatch(r"[0-9]{1,3}", count_text) is None or not (
                1 <= int(count_text) <= _GPU_COUNT_MAX
            ):
                self.err(
                    sub.logical,
                    sub.base + len(gpu_model) + 1,
                    f"GPU count must be 1-{_GPU_COUNT_MAX}, not {count_text[:16]!r}",
                )
                return
            count = int(count_text)
        if sum(g.count for g in self.gpus) + count > self.limits.gpus_max:
            self.err(sub.logical, sub.base, f"more than {self.limits.gpus_max} GPUs in all")
            return
        self.gpus.append(Gpu(gpu_model, count))

    def _run(self, word: str, args: str, sub: _Sub) -> None:
        self.step(Run(args, line=sub.line), sub)

    def _copy(self, word: str, args: str, sub: _Sub) -> None:
        words = sub.tokens(self, args, word)
        if words is None:
            return
        if len(words) != 2:
            self.err(
                sub.logical,
                sub.base,
                f"COPY expects a source and a destination (COPY ./app /app), got {len(words)} word(s)",
            )
            return
        (source, s_off), (dest, d_off) = words
        ok = True
        if source.startswith("/"):
            self.err(
                sub.logical,
                sub.base + s_off,
                f"COPY source {source[:64]!r} is absolute; name a path inside the build context "
                "(the Formfile's directory), e.g. ./app",
            )
            ok = False
        else:
            normal = posixpath.normpath(source) if source else ""
            if not source or normal == ".." or normal.startswith("../"):
                self.err(
                    sub.logical,
                    sub.base + s_off,
                    f"COPY source {source[:64]!r} leaves the build context; "
                    "name a path inside the Formfile's directory",
                )
                ok = False
            else:
                source = normal
        dest_path = _absolute(dest)
        if dest_path is None:
            self.err(
                sub.logical,
                sub.base + d_off,
                f"COPY destination {dest[:64]!r} must be an absolute path without '.' or '..' "
                "parts, e.g. /app",
            )
            ok = False
        if ok and dest_path is not None:
            self.step(Copy(source, dest_path, line=sub.line), sub)

    def _install(self, word: str, args: str, sub: _Sub) -> None:
        words = sub.tokens(self, args, word)
        if words is None:
            return
        ok = True
        for package, offset in words:
            if _PACKAGE_RE.fullmatch(package) is None:
                self.err(
                    sub.logical,
                    sub.base + offset,
                    f"{package[:64]!r} is not a Debian package name (lower case letters, digits, "
                    "'+', '-', '.'; optionally =VERSION)",
                )
                ok = False
        if ok:
            self.step(Install(tuple(p for p, _ in words), line=sub.line), sub)

    def _env(self, word: str, args: str, sub: _Sub) -> None:
        words = sub.tokens(self, args, word)
        if words is None:
            return
        scope: Literal["system", "user", "service"] = "system"
        scope_name = ""
        if words and words[0][0].startswith("--"):
            flag, offset = words.pop(0)
            option, eq, value = flag.partition("=")
            if option != "--scope" or not eq:
                self.err(
                    sub.logical,
                    sub.base + offset,
                    f"ENV takes only --scope=system|user:NAME|service:NAME, not {flag[:32]!r}",
                )
                return
            kind, colon, name = value.partition(":")
            if kind == "system" and not colon:
                pass
            elif kind == "user" and colon and _USERNAME_RE.fullmatch(name):
                scope, scope_name = "user", name
                self.user_scopes.append((name, *sub.logical.at(sub.base + offset)))
            elif kind == "service" and colon and _SERVICE_RE.fullmatch(name):
                scope, scope_name = "service", name
            else:
                self.err(
                    sub.logical,
                    sub.base + offset,
                    f"ENV scope {value[:40]!r} is not system, user:USERNAME or "
                    "service:NAME (a unit name: letters, digits, '.', '_', '@', '-')",
                )
                return
        if len(words) != 1:
            where = words[1][1] if len(words) > 1 else len(args)
            self.err(
                sub.logical,
                sub.base + where,
                'ENV expects one KEY=value (quote a value with blanks: KEY="a b")',
            )
            return
        pair, offset = words[0]
        key, eq, value = pair.partition("=")
        if not eq or _ENV_KEY_RE.fullmatch(key) is None:
            self.err(
                sub.logical,
                sub.base + offset,
                f"ENV expects KEY=value with KEY a letter or '_' then letters, digits or '_', "
                f"not {pair[:40]!r}",
            )
            return
        self.step(Env(key, value, scope, scope_name, line=sub.line), sub)

    def _workdir(self, word: str, args: str, sub: _Sub) -> None:
        words = sub.tokens(self, args, word)
        if words is None:
            return
        path = _absolute(words[0][0]) if len(words) == 1 else None
        if path is None:
            self.err(
                sub.logical,
                sub.base,
                "WORKDIR expects one absolute path without '.' or '..' parts, e.g. /app",
            )
            return
        self.workdir = path
        self.step(Workdir(path, line=sub.line), sub)

    def _entrypoint(self, word: str, args: str, sub: _Sub) -> None:
        if not self.once("ENTRYPOINT", word, sub):
            return
        argv: list[str]
        shell_form = not args.startswith("[")
        if not shell_form:
            try:
                value = json.loads(args)
            except ValueError as exc:
                self.err(
                    sub.logical,
                    sub.base + getattr(exc, "pos", 0),
                    'ENTRYPOINT\'s JSON array is malformed; write ["program", "arg", ...]',
                )
                return
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                self.err(
                    sub.logical, sub.base, "ENTRYPOINT's JSON form must be an array of strings"
                )
                return
            argv = value
        else:
            words = sub.tokens(self, args, word)
            if words is None:
                return
            argv = [w for w, _ in words]
        if not argv or not argv[0]:
            self.err(sub.logical, sub.base, "ENTRYPOINT needs a program to run")
            return
        if any(_control(c) for a in argv for c in a):
            self.err(
                sub.logical, sub.base, "ENTRYPOINT arguments cannot contain control characters"
            )
            return
        self.entrypoint = Entrypoint(tuple(argv), shell_form, line=sub.line)

    def _expose(self, word: str, args: str, sub: _Sub) -> None:
        words = sub.tokens(self, args, word)
        if words is None:
            return
        for port_text, offset in words:
            if re.fullmatch(r"[0-9]{1,5}", port_text) is None or not 1 <= int(port_text) <= 65535:
                hint = " (no /tcp or /udp suffix)" if "/" in port_text else ""
                self.err(
                    sub.logical,
                    sub.base + offset,
                    f"EXPOSE expects port numbers 1-65535, not {port_text[:16]!r}{hint}",
                )
                continue
            port = int(port_text)
            if port in self.expose:
                self.err(sub.logical, sub.base + offset, f"port {port} is exposed twice")
            elif len(self.expose) >= self.limits.ports_max:
                self.err(
                    sub.logical,
                    sub.base + offset,
                    f"more than {self.limits.ports_max} exposed ports",
                )
            else:
                self.expose.append(port)

    def _user(self, word: str, args: str, sub: _Sub) -> None:
        words = sub.tokens(self, args, word)
        if words is None:
            return
        values: dict[str, tuple[str, int]] = {}
        ok = True
        for token, offset in words:
            cut = min((i for i in (token.find(":"), token.find("=")) if i >= 0), default=-1)
            key, value = (token[:cut], token[cut + 1 :]) if cut >= 0 else (token, "")
            at = sub.base + offset
            if cut < 0 or key not in _USER_FIELDS:
                self.err(
                    sub.logical,
                    at,
                    f"USER expects field:value words with a field among "
                    f"{', '.join(_USER_FIELDS)}; got {token[:40]!r}",
                )
                ok = False
            elif key in values:
                self.err(sub.logical, at, f"USER sets {key} twice")
                ok = False
            else:
                values[key] = (value, at + len(key) + 1)
        user = self.user_value(values, sub) if ok else None
        if user is None:
            return
        if any(u.username == user.username for u in self.users):
            self.err(sub.logical, sub.base, f"USER {user.username} is declared twice")
        elif len(self.users) >= self.limits.users_max:
            self.err(sub.logical, sub.base, f"more than {self.limits.users_max} users")
        else:
            self.users.append(user)

    def user_value(self, values: dict[str, tuple[str, int]], sub: _Sub) -> User | None:
        ok = True

        def bad(key: str, message: str) -> None:
            nonlocal ok
            ok = False
            self.err(sub.logical, values[key][1], message)

        for required in ("username", "passwd"):
            if required not in values:
                self.err(sub.logical, sub.base, f"USER needs {required}:VALUE")
                ok = False
        username = values.get("username", ("", 0))[0]
        if "username" in values:
            if _USERNAME_RE.fullmatch(username) is None:
                bad(
                    "username",
                    f"username {username[:40]!r} is not valid: start with a lower case letter or "
                    "'_', then lower case letters, digits, '_' or '-', at most 32 characters",
                )
            elif username in _RESERVED_USERS:
                bad("username", f"username {username!r} is reserved; choose another")
        passwd = values.get("passwd", ("", 0))[0]
        if "passwd" in values and not passwd:
            bad("passwd", "passwd needs a value (a password or a $6$ crypt hash)")
        flags: dict[str, bool] = {}
        for key in ("lock_passwd", "sudo", "ssh_pwauth", "disable_root", "chpasswd_expire"):
            if key in values:
                text = values[key][0].lower()
                if text not in _BOOLS:
                    bad(key, f"{key} expects true or false (or yes/no, on/off, 1/0)")
                else:
                    flags[key] = _BOOLS[text]
        shell = values.get("shell", ("/bin/bash", 0))[0]
        if "shell" in values and (_absolute(shell) != shell or any(c in shell for c in _BLANKS)):
            bad("shell", f"shell {shell[:40]!r} must be an absolute path, e.g. /bin/bash")
        keys: tuple[str, ...] = ()
        if "ssh_authorized_keys" in values:
            keys = tuple(k.strip(_BLANKS) for k in values["ssh_authorized_keys"][0].split(","))
            if not all(keys):
                bad(
                    "ssh_authorized_keys",
                    "ssh_authorized_keys expects comma-separated public keys, none empty",
                )
        groups: tuple[str, ...] = ()
        if "groups" in values:
            groups = tuple(values["groups"][0].split(","))
            wrong = [g for g in groups if _GROUP_RE.fullmatch(g) is None]
            if wrong:
                bad(
                    "groups",
                    f"groups expects comma-separated group names; {wrong[0][:32]!r} is not one",
                )
        if not ok:
            return None
        return User(
            username=username,
            passwd=passwd,
            ssh_authorized_keys=keys,
            shell=shell,
            groups=groups,
            line=sub.line,
            **flags,
        )

    # -- layer 4 --------------------------------------------------------------------------------

    def finish(self) -> Formfile:
        if self.name is None and "NAME" not in self.seen:
            self.error(1, 1, "NAME is required: add a line such as NAME my-agent")
        declared = {u.username for u in self.users}
        for username, line, col in self.user_scopes:
            if username not in declared:
                self.error(
                    line,
                    col,
                    f"ENV scope user:{username} names no USER of this Formfile; "
                    f"add USER username:{username} ... or fix the name",
                )
        if self.diagnostics:
            raise _Stop
        assert self.name is not None
        return Formfile(
            name=self.name,
            description=self.description,
            model=self.model,
            vcpus=self.resources.get("vcpus", 1),
            memory_mb=self.resources.get("memory_mb", 512),
            disk_gb=self.resources.get("disk_gb", 5),
            gpus=tuple(self.gpus),
            users=tuple(self.users),
            steps=tuple(self.steps),
            entrypoint=self.entrypoint,
            expose=tuple(self.expose),
            workdir=self.workdir,
            source_path=self.path,
        )


@dataclass(frozen=True, slots=True)
class _Sub:
    """The arguments of one instruction: offsets into them map back to the file."""

    logical: _Logical
    base: int

    @property
    def line(self) -> int:
        return self.logical.at(self.base)[0]

    def tokens(self, parser: _Parser, args: str, word: str) -> list[tuple[str, int]] | None:
        try:
            return _tokens(args)
        except _Unclosed as exc:
            parser.err(
                self.logical,
                self.base + exc.offset,
                f"{word}: this quote ({args[exc.offset]}) is never closed",
            )
            return None


_USAGE: Final = {
    "NAME": "NAME my-agent",
    "DESCRIPTION": "DESCRIPTION some text",
    "MODEL": "MODEL required:MODEL_ID or MODEL preferred:MODEL_ID",
    "VCPU": "VCPU 2",
    "CPU": "CPU 2",
    "CORES": "CORES 2",
    "MEM": "MEM 2048 (megabytes)",
    "MEMORY": "MEMORY 2048 (megabytes)",
    "MBS": "MBS 2048 (megabytes)",
    "DISK": "DISK 5 (gigabytes)",
    "STORAGE": "STORAGE 5 (gigabytes)",
    "GPU": "GPU H100:2",
    "USER": "USER username:NAME passwd:PASSWORD ...",
    "RUN": "RUN a shell command",
    "COPY": "COPY ./src /dest",
    "INSTALL": "INSTALL package ...",
    "ENV": "ENV [--scope=system|user:NAME|service:NAME] KEY=value",
    "WORKDIR": "WORKDIR /app",
    "ENTRYPOINT": 'ENTRYPOINT ["program", "arg"] or ENTRYPOINT program arg',
    "EXPOSE": "EXPOSE 80 443",
}


def _control(c: str) -> bool:
    o = ord(c)
    return (o < 32 and c != "\t") or 0x7F <= o < 0xA0


def _absolute(path: str) -> str | None:
    """``path`` normalised (``//`` and trailing ``/`` folded) if absolute without . or ..."""
    if not path.startswith("/"):
        return None
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        return None
    return "/" + "/".join(parts)


def _decode(data: str | bytes, parser: _Parser) -> str | None:
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            before = data[: exc.start]
            parser.error(
                before.count("\n") + 1,
                exc.start - (before.rfind("\n") + 1) + 1,
                "the text holds a lone surrogate character; save the file as UTF-8",
            )
            return None
    else:
        raw = bytes(data)
    if len(raw) > parser.limits.text_bytes_max:
        parser.error(
            1,
            1,
            f"the Formfile is {len(raw)} bytes; at most {parser.limits.text_bytes_max} are allowed",
        )
        return None
    if isinstance(data, str):
        text = data
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            head = raw[: exc.start]
            line_start = head.rfind(b"\n") + 1
            col = len(head[line_start:].decode("utf-8", "replace")) + 1
            parser.error(
                head.count(b"\n") + 1,
                col,
                f"byte 0x{raw[exc.start]:02x} is not UTF-8; save the file as UTF-8",
            )
            return None
    return text.removeprefix("\ufeff")


def parse(text: str | bytes, *, path: str = "Formfile", limits: Limits = MAINNET) -> Formfile:
    """Parse a Formfile; raises ``FormfileError`` with every error found, and nothing else."""
    parser = _Parser(path, limits)
    try:
        decoded = _decode(text, parser)
        if decoded is not None:
            for logical in parser.logical_lines(decoded):
                parser.instruction(logical)
            return parser.finish()
    except _Stop:
        pass
    diagnostics = sorted(parser.diagnostics, key=lambda d: (d.line, d.col))
    if parser.dropped:
        last = diagnostics[-1]
        diagnostics.append(
            Diagnostic(path, last.line, last.col, f"and {parser.dropped} more errors")
        )
    raise FormfileError(tuple(diagnostics))


def canonical(formfile: Formfile) -> str:
    """The Formfile as text in the fixed form; ``parse(canonical(f)) == f``."""
    f = formfile
    lines = [f"NAME {f.name}"]
    if f.description:
        lines.append(f"DESCRIPTION {f.description}")
    if f.model is not None:
        lines.append(f"MODEL {'required' if f.model.required else 'preferred'}:{f.model.model_id}")
    lines += [f"VCPU {f.vcpus}", f"MEM {f.memory_mb}", f"DISK {f.disk_gb}"]
    lines += [f"GPU {g.model}:{g.count}" for g in f.gpus]
    for u in f.users:
        words = [f"username:{u.username}", f"passwd:{quote(u.passwd)}"]
        if u.ssh_authorized_keys:
            words.append(f"ssh_authorized_keys:{quote(','.join(u.ssh_authorized_keys))}")
        default = User(username="", passwd="")
        for key in ("lock_passwd", "sudo", "ssh_pwauth", "disable_root", "chpasswd_expire"):
            if getattr(u, key) != getattr(default, key):
                words.append(f"{key}:{'true' if getattr(u, key) else 'false'}")
        if u.shell != default.shell:
            words.append(f"shell:{quote(u.shell)}")
        if u.groups:
            words.append(f"groups:{quote(','.join(u.groups))}")
        lines.append("USER " + " ".join(words))
    for step in f.steps:
        if isinstance(step, Run):
            lines.append(f"RUN {step.command}")
        elif isinstance(step, Copy):
            lines.append(f"COPY {quote(step.source)} {quote(step.dest)}")
        elif isinstance(step, Install):
            lines.append("INSTALL " + " ".join(step.packages))
        elif isinstance(step, Env):
            scope = "" if step.scope == "system" else f"--scope={step.scope}:{step.scope_name} "
            lines.append(f"ENV {scope}{quote(step.key + '=' + step.value)}")
        else:
            lines.append(f"WORKDIR {quote(step.path)}")
    if f.expose:
        lines.append("EXPOSE " + " ".join(str(p) for p in f.expose))
    if f.entrypoint is not None:
        argv = f.entrypoint.argv
        if f.entrypoint.shell_form:
            lines.append("ENTRYPOINT " + " ".join(quote(a) for a in argv))
        else:
            lines.append("ENTRYPOINT " + json.dumps(list(argv), ensure_ascii=False))
    return "\n".join(lines) + "\n"
