"""The Formfile parser: text (or bytes) into a ``node.pack.model.Formfile``, or every error at once.

Theory of operation
-------------------
Parsing is pure (no I/O, no clock) and bounded, in three passes over the text:

1. *Decode and bound.* Bytes must be UTF-8 (a leading BOM is dropped); the text must be at most
   ``Limits.text_bytes_max`` bytes and ``Limits.lines_max`` lines; control characters other than
   tab are refused where they stand. A file that breaks a bound gets that one error and no
   further work.
2. *Logical lines.* Lines are split on ``\\n`` (a trailing ``\\r`` is dropped). Blank lines and
   lines whose first non-blank character is ``#`` are skipped. A line ending in ``\\`` continues
   on the next line (the backslash becomes a space; comment lines inside a continuation are
   skipped, as Docker does). Every character of a logical line remembers its physical line and
   column, so an error in a continued ``USER`` points at the right place.
3. *Instructions.* The first word is the instruction (upper case; aliases VCPU/CPU/CORES,
   MEM/MEMORY/MBS, DISK/STORAGE). Arguments are words split on blanks, where ``"..."`` (with
   ``\\"`` and ``\\\\`` escapes) and ``'...'`` keep blanks, as in a shell; RUN and DESCRIPTION
   take the rest of the line as it is. Every value is checked, and resources against a
   ``Limits`` profile (a node checks against its network's). Unknown instructions are errors
   (the upstream ignores them, which hides typos).

Errors are ``Diagnostic(path, line, col, message)``; the parser collects all of them (up to
``Limits.errors_max``, then one "and N more") and raises one ``FormfileError`` whose ``str`` is
one ``PATH:LINE:COL: message`` per line, like a compiler. No input makes ``parse`` raise
anything else.

``canonical`` writes the one text of a ``Formfile``: no comments, no continuations, every
resource explicit, values quoted only where needed, so ``parse(canonical(f)) == f``. The build id
is a digest of that text, so two Formfiles that mean the same build the same.

Choices where the upstream is silent or loose: NAME is required (the upstream fails without it;
the README's "auto-generated" never happened) and follows the build record's name rule; USER
needs username and passwd; ``root`` is not a USER; COPY takes exactly a source inside the
context and an absolute destination; WORKDIR may repeat (the last one is the image's);
ENTRYPOINT and MODEL at most once; ENV ``--scope=user:NAME`` must name a USER of the file;
an unknown network gets the mainnet limits (the strict profile is devnet's, but an unknown name
is more likely a new public network than a test one; ``limits_for_network`` documents it).
"""

from __future__ import annotations

import json
import posixpath
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Final

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
    "LIMITS",
    "MAINNET",
    "Diagnostic",
    "FormfileError",
    "Limits",
    "canonical",
    "limits_for_network",
    "parse",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """What a Formfile may ask for on one network, and how much text the parser will read."""

    name: str
    vcpus_min: int
    vcpus_max: int
    memory_mb_min: int
    memory_mb_max: int
    disk_gb_min: int
    disk_gb_max: int
    gpus_max: int = 8
    text_bytes_max: int = 64 * 1024  # the build record's bound on its formfile field
    lines_max: int = 4096
    errors_max: int = 100
    users_max: int = 32
    steps_max: int = 512
    ports_max: int = 64


DEVNET: Final = Limits(
    name="devnet",
    vcpus_min=1,
    vcpus_max=2,
    memory_mb_min=512,
    memory_mb_max=4096,
    disk_gb_min=1,
    disk_gb_max=5,
)
MAINNET: Final = Limits(
    name="mainnet",
    vcpus_min=1,
    vcpus_max=128,
    memory_mb_min=512,
    memory_mb_max=256000,
    disk_gb_min=5,
    disk_gb_max=65535,
)
LIMITS: Final[dict[str, Limits]] = {"devnet": DEVNET, "mainnet": MAINNET}

GPU_MODELS: Final = ("RTX5090", "H100", "H200", "B200")
_GPU_COUNT_MAX: Final = 8


def limits_for_network(network: str) -> Limits:
    """The limits a node of ``network`` checks: ``devnet`` and ``local`` get DEVNET, ``mainnet``
    and any other name MAINNET (a network this code does not know is treated as a public one)."""
    return DEVNET if network.strip().lower() in ("devnet", "local") else MAINNET


@dataclass(frozen=True, slots=True)
class Diagnostic:
    path: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "line": self.line, "col": self.col, "message": self.message}


class FormfileError(ValueError):
    """Every problem of one Formfile; ``str`` is one ``PATH:LINE:COL: message`` per line."""

    def __init__(self, diagnostics: tuple[Diagnostic, ...]) -> None:
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics))


# --- lexing ---------------------------------------------------------------------------------

_BLANK: Final = " \t"
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_USERNAME_RE: Final = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_ENV_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SERVICE_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,127}")
_PACKAGE_RE: Final = re.compile(
    r"[a-z0-9][a-z0-9+.-]{0,127}(:[a-z0-9-]{1,32})?(=[A-Za-z0-9.+:~-]{1,128})?"
)
_MODEL_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,255}")
_SSH_KEY_RE: Final = re.compile(r"(ssh-|ecdsa-|sk-)[A-Za-z0-9@.-]+ \S.*")
_TRUE: Final = ("true", "yes", "1", "on")
_FALSE: Final = ("false", "no", "0", "off")
_VALUE_MAX: Final = 8192


@dataclass(frozen=True, slots=True)
class _Word:
    text: str
    line: int
    col: int


@dataclass(slots=True)
class _Logical:
    """One instruction's text; ``pos[i]`` is where character ``i`` stood (line, col)."""

    text: str
    pos: list[tuple[int, int]]
    line: int

    def at(self, i: int) -> tuple[int, int]:
        if not self.pos:
            return (self.line, 1)
        return self.pos[min(max(i, 0), len(self.pos) - 1)]


@dataclass(slots=True)
class _Errors:
    path: str
    limit: int
    items: list[Diagnostic] = field(default_factory=list)
    dropped: int = 0
    dropped_line: int = 0

    def add(self, line: int, col: int, message: str) -> None:
        if len(self.items) < self.limit:
            self.items.append(Diagnostic(self.path, line, col, message))
        else:
            if not self.dropped:
                self.dropped_line = line
            self.dropped += 1

    def raise_if_any(self) -> None:
        if not self.items:
            return
        items = sorted(self.items, key=lambda d: (d.line, d.col))
        if self.dropped:
            items.append(
                Diagnostic(
                    self.path,
                    self.dropped_line,
                    1,
                    f"and {self.dropped} more errors (only the first {self.limit} are listed)",
                )
            )
        raise FormfileError(tuple(items))


def _decode(data: str | bytes, errors: _Errors, limits: Limits) -> str | None:
    if isinstance(data, bytes):
        if len(data) > limits.text_bytes_max:
            errors.add(1, 1, f"file is {len(data)} bytes; at most {limits.text_bytes_max} allowed")
            return None
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            before = data[: exc.start]
            line = before.count(b"\n") + 1
            col = len(before) - (before.rfind(b"\n") + 1) + 1
            errors.add(
                line, col, f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as UTF-8"
            )
            return None
    text = data[1:] if data.startswith("\ufeff") else data
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.text_bytes_max:
        errors.add(1, 1, f"file is {size} bytes; at most {limits.text_bytes_max} allowed")
        return None
    return text


def _bad_char(ch: str) -> bool:
    if ch == "\t":
        return False
    return unicodedata.category(ch) in ("Cc", "Cs") or ch in "\u2028\u2029\x85"


def _logical_lines(text: str, errors: _Errors, limits: Limits) -> list[_Logical]:
    physical = text.split("\n")
    if text.endswith("\n"):
        physical.pop()
    if len(physical) > limits.lines_max:
        errors.add(limits.lines_max + 1, 1, f"more than {limits.lines_max} lines")
        return []
    out: list[_Logical] = []
    current: _Logical | None = None
    for index, raw in enumerate(physical):
        number = index + 1
        line = raw[:-1] if raw.endswith("\r") else raw
        bad = next((i for i, ch in enumerate(line) if _bad_char(ch)), None)
        if bad is not None:
            errors.add(
                number,
                bad + 1,
                f"control character U+{ord(line[bad]):04X} not allowed; remove it",
            )
            line = "".join(" " if _bad_char(ch) else ch for ch in line)
        stripped = line.strip(_BLANK)
        if not stripped:
            if current is not None:  # a blank line ends a continuation
                out.append(current)
                current = None
            continue
        if stripped.startswith("#"):
            continue
        start = len(line) - len(line.lstrip(_BLANK))
        body = line.rstrip(_BLANK)
        continues = body.endswith("\\")
        if continues:
            body = body[:-1]
        piece = body[start:] if current is None else body
        offset = start if current is None else 0
        pos = [(number, offset + i + 1) for i in range(len(piece))]
        if current is None:
            current = _Logical(piece, pos, number)
        else:
            current.text += " " + piece
            current.pos.append((number, 1))
            current.pos.extend(pos)
        if not continues:
            out.append(current)
            current = None
    if current is not None:
        out.append(current)
    return out


def _split_words(logical: _Logical, start: int, errors: _Errors) -> list[_Word] | None:
    """Shell-like words from ``logical.text[start:]``; None (and an error) on an open quote."""
    text = logical.text
    words: list[_Word] = []
    i = start
    n = len(text)
    while i < n:
        while i < n and text[i] in _BLANK:
            i += 1
        if i >= n:
            break
        word_start = i
        buf: list[str] = []
        while i < n and text[i] not in _BLANK:
            ch = text[i]
            if ch in "\"'":
                quote_at = i
                i += 1
                while i < n and text[i] != ch:
                    if ch == '"' and text[i] == "\\" and i + 1 < n and text[i + 1] in '"\\':
                        i += 1
                    buf.append(text[i])
                    i += 1
                if i >= n:
                    line, col = logical.at(quote_at)
                    errors.add(line, col, f"unclosed {ch} quote; close it with {ch}")
                    return None
                i += 1
            else:
                buf.append(ch)
                i += 1
        line, col = logical.at(word_start)
        words.append(_Word("".join(buf), line, col))
    return words


# --- canonical text -------------------------------------------------------------------------

_SAFE_RE: Final = re.compile(r"[^\s\"'\\\[#]+|[^\s\"'\\\[#][^\s\"'\\]*")


def _quote(value: str) -> str:
    if value and _SAFE_RE.fullmatch(value) and not any(ch in value for ch in _BLANK):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _bool(value: bool) -> str:
    return "true" if value else "false"


_USER_DEFAULTS: Final = User(username="_", passwd="_")


def _user_line(user: User) -> str:
    parts = [f"username:{_quote(user.username)}", f"passwd:{_quote(user.passwd)}"]
    if user.ssh_authorized_keys:
        parts.append(f"ssh_authorized_keys:{_quote(','.join(user.ssh_authorized_keys))}")
    for name in ("lock_passwd", "sudo", "ssh_pwauth", "disable_root", "chpasswd_expire"):
        value = getattr(user, name)
        if value != getattr(_USER_DEFAULTS, name):
            parts.append(f"{name}:{_bool(value)}")
    if user.shell != _USER_DEFAULTS.shell:
        parts.append(f"shell:{_quote(user.shell)}")
    if user.groups:
        parts.append(f"groups:{_quote(','.join(user.groups))}")
    return "USER " + " ".join(parts)


def _raw_text(value: str) -> str:
    """RUN/DESCRIPTION text as written, unless it would read back differently."""
    if value[:1] in ("'", '"'):
        return _quote(value)
    return value


def canonical(formfile: Formfile) -> str:
    """The one text of ``formfile``: ``parse(canonical(f)) == f`` for every valid ``f``."""
    lines = [f"NAME {formfile.name}"]
    if formfile.description:
        lines.append(f"DESCRIPTION {_raw_text(formfile.description)}")
    if formfile.model is not None:
        kind = "required" if formfile.model.required else "preferred"
        lines.append(f"MODEL {kind}:{formfile.model.model_id}")
    lines.append(f"VCPU {formfile.vcpus}")
    lines.append(f"MEM {formfile.memory_mb}")
    lines.append(f"DISK {formfile.disk_gb}")
    lines.extend(f"GPU {gpu.model}:{gpu.count}" for gpu in formfile.gpus)
    lines.extend(_user_line(user) for user in formfile.users)
    for step in formfile.steps:
        if isinstance(step, Run):
            lines.append(f"RUN {_raw_text(step.command)}")
        elif isinstance(step, Copy):
            lines.append(f"COPY {_quote(step.source)} {_quote(step.dest)}")
        elif isinstance(step, Install):
            lines.append("INSTALL " + " ".join(step.packages))
        elif isinstance(step, Env):
            scope = "" if step.scope == "system" else f"--scope={step.scope}:{step.scope_name} "
            lines.append(f"ENV {scope}{step.key}={_quote(step.value)}")
        else:
            lines.append(f"WORKDIR {_quote(step.path)}")
    if formfile.expose:
        lines.append("EXPOSE " + " ".join(str(port) for port in formfile.expose))
    if formfile.entrypoint is not None:
        argv = formfile.entrypoint.argv
        if formfile.entrypoint.shell_form:
            lines.append("ENTRYPOINT " + " ".join(_quote(arg) for arg in argv))
        else:
            lines.append("ENTRYPOINT " + json.dumps(list(argv), ensure_ascii=False))
    return "\n".join(lines) + "\n"


# --- parsing --------------------------------------------------------------------------------

_ALIASES: Final = {
    "CPU": "VCPU",
    "CORES": "VCPU",
    "MEMORY": "MEM",
    "MBS": "MEM",
    "STORAGE": "DISK",
}
_INSTRUCTIONS: Final = (
    "NAME",
    "DESCRIPTION",
    "USER",
    "VCPU",
    "MEM",
    "DISK",
    "GPU",
    "MODEL",
    "COPY",
    "RUN",
    "INSTALL",
    "ENV",
    "WORKDIR",
    "ENTRYPOINT",
    "EXPOSE",
)
_ONCE: Final = ("NAME", "DESCRIPTION", "VCPU", "MEM", "DISK", "MODEL", "ENTRYPOINT")
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


def _abs_path_problem(path: str) -> str | None:
    if not path.startswith("/"):
        return "must be an absolute path (starting with /)"
    if any(ch in path for ch in _BLANK) or "\x00" in path:
        return "must not contain blanks"
    parts = path.split("/")
    if any(part in (".", "..") for part in parts):
        return "must not contain . or .. components"
    if len(path) > 4096:
        return "is longer than 4096 characters"
    return None


class _Parser:
    def __init__(self, path: str, limits: Limits, errors: _Errors) -> None:
        self.path = path
        self.limits = limits
        self.errors = errors
        self.seen: dict[str, int] = {}
        self.name: str | None = None
        self.description = ""
        self.model: Model | None = None
        self.vcpus = 1
        self.memory_mb = 512
        self.disk_gb = 5
        self.gpus: list[Gpu] = []
        self.users: list[User] = []
        self.steps: list[Step] = []
        self.entrypoint: Entrypoint | None = None
        self.expose: list[int] = []
        self.expose_lines: dict[int, int] = {}
        self.user_envs: list[tuple[str, _Word]] = []

    def err(self, at: _Word | tuple[int, int], message: str) -> None:
        line, col = (at.line, at.col) if isinstance(at, _Word) else at
        self.errors.add(line, col, message)

    # one instruction ----------------------------------------------------------------------

    def instruction(self, logical: _Logical) -> None:
        text = logical.text
        end = 0
        while end < len(text) and text[end] not in _BLANK:
            end += 1
        word = text[:end]
        head = _Word(word, *logical.at(0))
        rest_start = end
        while rest_start < len(text) and text[rest_start] in _BLANK:
            rest_start += 1
        rest = text[rest_start:].rstrip(_BLANK)
        rest_at = logical.at(rest_start) if rest else logical.at(len(text))
        name = _ALIASES.get(word, word)
        if name not in _INSTRUCTIONS:
            upper = _ALIASES.get(word.upper(), word.upper())
            if upper in _INSTRUCTIONS:
                self.err(head, f"instructions are upper case: write {word.upper()}, not {word}")
            else:
                self.err(
                    head,
                    f"unknown instruction {word!r}; expected one of "
                    + ", ".join(_INSTRUCTIONS)
                    + " (or the aliases CPU, CORES, MEMORY, MBS, STORAGE)",
                )
            return
        if not rest:
            self.err(rest_at, f"{word} needs {self._wants(name)}")
            return
        if name in _ONCE:
            if name in self.seen:
                self.err(head, f"{word} given twice (first on line {self.seen[name]}); keep one")
                return
            self.seen[name] = head.line
        if name in ("RUN", "DESCRIPTION", "NAME"):
            self._raw(name, word, head, rest, _Word(rest, *rest_at), logical, rest_start)
            return
        if name == "ENTRYPOINT" and rest.startswith("["):
            self._entrypoint_json(head, rest, _Word(rest, *rest_at))
            return
        words = _split_words(logical, rest_start, self.errors)
        if words is None:
            return
        getattr(self, f"_do_{name.lower()}")(head, words)

    @staticmethod
    def _wants(name: str) -> str:
        return {
            "NAME": "a name (1-63 letters, digits, '.', '_' or '-')",
            "DESCRIPTION": "some text",
            "USER": "username:NAME passwd:PASSWORD [options]",
            "VCPU": "a number of vCPUs",
            "MEM": "a memory size in MB",
            "DISK": "a disk size in GB",
            "GPU": "MODEL[:COUNT]",
            "MODEL": "required:MODEL_ID or preferred:MODEL_ID",
            "COPY": "SOURCE DEST",
            "RUN": "a command",
            "INSTALL": "one or more Debian package names",
            "ENV": "KEY=value",
            "WORKDIR": "an absolute path",
            "ENTRYPOINT": 'a command: ["cmd", "arg"] or cmd arg',
            "EXPOSE": "one or more ports (1-65535)",
        }[name]

    def _raw(
        self,
        name: str,
        word: str,
        head: _Word,
        rest: str,
        at: _Word,
        logical: _Logical,
        rest_start: int,
    ) -> None:
        value = rest
        if rest[:1] in ("'", '"'):
            words = _split_words(logical, rest_start, self.errors)
            if words is None:
                return
            if len(words) != 1:
                self.err(
                    words[1] if len(words) > 1 else at,
                    f"{word}: text after the closing quote; quote the whole value or none of it",
                )
                return
            value = words[0].text
        if len(value) > _VALUE_MAX:
            self.err(at, f"{word} is {len(value)} characters; at most {_VALUE_MAX}")
            return
        if name == "NAME":
            if not _NAME_RE.fullmatch(value):
                self.err(
                    at,
                    f"NAME {value!r} is not a valid name; use 1-63 letters, digits, '.', '_' or '-', "
                    "starting with a letter or digit",
                )
                return
            self.name = value
            return
        if not value.strip(_BLANK):
            self.err(at, f"{word} needs {self._wants(name)}")
            return
        if value.endswith("\\"):
            self.err(at, f"{word} ends with a backslash that continues nothing; remove it")
            return
        if name == "DESCRIPTION":
            self.description = value
        else:
            self.add_step(head, Run(value, line=head.line))

    def add_step(self, head: _Word, step: Step) -> None:
        if len(self.steps) >= self.limits.steps_max:
            self.err(head, f"more than {self.limits.steps_max} build steps; merge some RUN lines")
            return
        self.steps.append(step)

    def _one(self, head: _Word, words: list[_Word], what: str) -> _Word | None:
        if len(words) != 1:
            self.err(words[1], f"{head.text} takes one value ({what}); remove {words[1].text!r}")
            return None
        return words[0]

    def _number(
        self, head: _Word, words: list[_Word], unit: str, low: int, high: int
    ) -> int | None:
        word = self._one(head, words, f"a number of {unit}")
        if word is None:
            return None
        if not word.text.isascii() or not word.text.isdigit() or len(word.text) > 9:
            self.err(word, f"{head.text} expects a whole number of {unit}, got {word.text!r}")
            return None
        value = int(word.text)
        if not low <= value <= high:
            self.err(
                word,
                f"{head.text} {value} is outside {low}-{high} {unit} "
                f"(the {self.limits.name} limits)",
            )
            return None
        return value

    def _do_vcpu(self, head: _Word, words: list[_Word]) -> None:
        value = self._number(head, words, "vCPUs", self.limits.vcpus_min, self.limits.vcpus_max)
        if value is not None:
            self.vcpus = value

    def _do_mem(self, head: _Word, words: list[_Word]) -> None:
        lim = self.limits
        value = self._number(head, words, "MB", lim.memory_mb_min, lim.memory_mb_max)
        if value is not None:
            self.memory_mb = value

    def _do_disk(self, head: _Word, words: list[_Word]) -> None:
        value = self._number(head, words, "GB", self.limits.disk_gb_min, self.limits.disk_gb_max)
        if value is not None:
            self.disk_gb = value

    def _do_gpu(self, head: _Word, words: list[_Word]) -> None:
        word = self._one(head, words, "MODEL[:COUNT]")
        if word is None:
            return
        model, _, count_text = word.text.partition(":")
        if model not in GPU_MODELS:
            self.err(word, f"GPU model {model!r} unknown; expected one of {', '.join(GPU_MODELS)}")
            return
        count = 1
        if count_text or word.text.endswith(":"):
            if not (count_text.isascii() and count_text.isdigit()) or not (
                1 <= int(count_text[:3] or "0") <= _GPU_COUNT_MAX and len(count_text) <= 3
            ):
                self.err(word, f"GPU count must be 1-{_GPU_COUNT_MAX}, got {count_text!r}")
                return
            count = int(count_text)
        if sum(g.count for g in self.gpus) + count > self.limits.gpus_max:
            self.err(word, f"more than {self.limits.gpus_max} GPUs in all")
            return
        self.gpus.append(Gpu(model, count))

    def _do_model(self, head: _Word, words: list[_Word]) -> None:
        word = self._one(head, words, "required:ID or preferred:ID")
        if word is None:
            return
        kind, sep, model_id = word.text.partition(":")
        if not sep or kind not in ("required", "preferred"):
            self.err(
                word, f"MODEL expects required:MODEL_ID or preferred:MODEL_ID, got {word.text!r}"
            )
            return
        if not _MODEL_ID_RE.fullmatch(model_id):
            self.err(
                word,
                f"MODEL id {model_id!r} is not valid; use letters, digits and _ . : / @ + -",
            )
            return
        self.model = Model(model_id, kind == "required")

    def _do_copy(self, head: _Word, words: list[_Word]) -> None:
        if len(words) != 2:
            at = words[2] if len(words) > 2 else words[0]
            self.err(at, f"COPY takes SOURCE DEST (two values), got {len(words)}")
            return
        src, dest = words
        source = src.text
        ok = True
        if not source or source.startswith("/"):
            self.err(
                src, f"COPY source {source!r} must be relative to the build context, not absolute"
            )
            ok = False
        else:
            norm = posixpath.normpath(source)
            if norm == ".." or norm.startswith("../"):
                self.err(src, f"COPY source {source!r} leaves the build context; remove the '..'")
                ok = False
            elif "\x00" in norm or "\\" in norm:
                self.err(src, f"COPY source {source!r} contains a backslash; use / between names")
                ok = False
            else:
                source = norm
        problem = _abs_path_problem(dest.text)
        if problem:
            self.err(dest, f"COPY destination {dest.text!r} {problem}")
            ok = False
        if ok:
            self.add_step(head, Copy(source, dest.text, line=head.line))

    def _do_install(self, head: _Word, words: list[_Word]) -> None:
        bad = [w for w in words if not _PACKAGE_RE.fullmatch(w.text)]
        for word in bad:
            self.err(
                word,
                f"{word.text!r} is not a Debian package name (lowercase letters, digits, + . -, "
                "optionally :ARCH and =VERSION)",
            )
        if not bad:
            self.add_step(head, Install(tuple(w.text for w in words), line=head.line))

    def _do_env(self, head: _Word, words: list[_Word]) -> None:
        scope = "system"
        scope_name = ""
        if words[0].text.startswith("--"):
            option = words.pop(0)
            key_, sep, value = option.text.partition("=")
            if key_ != "--scope" or not sep:
                self.err(option, f"ENV option {option.text!r} unknown; expected --scope=SCOPE")
                return
            kind, _, name = value.partition(":")
            if value == "system":
                pass
            elif kind == "user" and _USERNAME_RE.fullmatch(name):
                scope, scope_name = "user", name
                self.user_envs.append((name, option))
            elif kind == "service" and _SERVICE_RE.fullmatch(name):
                scope, scope_name = "service", name
            else:
                self.err(
                    option,
                    f"ENV scope {value!r} invalid; expected system, user:USERNAME or service:NAME",
                )
                return
            if not words:
                self.err((option.line, option.col + len(option.text) + 1), "ENV needs KEY=value")
                return
        if len(words) != 1:
            self.err(words[1], "ENV takes one KEY=value; quote a value with blanks in it")
            return
        word = words[0]
        key, sep, value = word.text.partition("=")
        if not sep or not _ENV_KEY_RE.fullmatch(key):
            self.err(
                word,
                f"ENV expects KEY=value with KEY of letters, digits and _ (not first a digit), "
                f"got {word.text!r}",
            )
            return
        if len(value) > _VALUE_MAX:
            self.err(word, f"ENV value is {len(value)} characters; at most {_VALUE_MAX}")
            return
        self.add_step(head, Env(key, value, scope, scope_name, line=head.line))  # type: ignore[arg-type]

    def _do_workdir(self, head: _Word, words: list[_Word]) -> None:
        word = self._one(head, words, "an absolute path")
        if word is None:
            return
        problem = _abs_path_problem(word.text)
        if problem:
            self.err(word, f"WORKDIR {word.text!r} {problem}")
            return
        self.add_step(head, Workdir(word.text, line=head.line))

    def _entrypoint_json(self, head: _Word, rest: str, at: _Word) -> None:
        try:
            value = json.loads(rest)
        except (ValueError, RecursionError) as exc:
            self.err(at, f'ENTRYPOINT is not a JSON array of strings ({exc}); write ["cmd", "arg"]')
            return
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(item, str) for item in value)
        ):
            self.err(
                at, 'ENTRYPOINT JSON must be a non-empty array of strings, like ["cmd", "arg"]'
            )
            return
        self._set_entrypoint(head, at, tuple(value), shell_form=False)

    def _do_entrypoint(self, head: _Word, words: list[_Word]) -> None:
        self._set_entrypoint(head, words[0], tuple(w.text for w in words), shell_form=True)

    def _set_entrypoint(
        self, head: _Word, at: _Word, argv: tuple[str, ...], *, shell_form: bool
    ) -> None:
        if not argv[0] or any(ch in argv[0] for ch in _BLANK):
            self.err(at, "ENTRYPOINT's command (its first word) must be non-empty, without blanks")
            return
        if any("\x00" in a or "\n" in a or "\r" in a for a in argv):
            self.err(at, "ENTRYPOINT arguments cannot hold NUL or line breaks")
            return
        if sum(len(a) for a in argv) > _VALUE_MAX:
            self.err(at, f"ENTRYPOINT is longer than {_VALUE_MAX} characters")
            return
        self.entrypoint = Entrypoint(argv, shell_form=shell_form, line=head.line)

    def _do_expose(self, head: _Word, words: list[_Word]) -> None:
        for word in words:
            text = word.text
            if not (text.isascii() and text.isdigit() and len(text) <= 5) or not (
                1 <= int(text) <= 65535
            ):
                self.err(word, f"EXPOSE port {text!r} invalid; expected a number 1-65535")
                continue
            port = int(text)
            if port in self.expose_lines:
                self.err(word, f"port {port} already exposed on line {self.expose_lines[port]}")
                continue
            if len(self.expose) >= self.limits.ports_max:
                self.err(word, f"more than {self.limits.ports_max} exposed ports")
                return
            self.expose_lines[port] = word.line
            self.expose.append(port)

    def _do_user(self, head: _Word, words: list[_Word]) -> None:
        values: dict[str, tuple[str, _Word]] = {}
        ok = True
        for word in words:
            cut = min((i for i in (word.text.find(":"), word.text.find("=")) if i >= 0), default=-1)
            name = word.text[:cut] if cut >= 0 else word.text
            if cut < 0 or name not in _USER_FIELDS:
                self.err(
                    word,
                    f"USER option {name!r} unknown; expected field:value with field one of "
                    + ", ".join(_USER_FIELDS),
                )
                ok = False
                continue
            if name in values:
                self.err(word, f"USER option {name} given twice")
                ok = False
                continue
            values[name] = (word.text[cut + 1 :], word)
        for required in ("username", "passwd"):
            if required not in values:
                self.err(head, f"USER needs {required}:VALUE")
                ok = False
        username = values.get("username", ("", head))
        if "username" in values:
            if not _USERNAME_RE.fullmatch(username[0]):
                self.err(
                    username[1],
                    f"username {username[0]!r} invalid: start with a lowercase letter or _, then "
                    "lowercase letters, digits, _ or -, at most 32 characters",
                )
                ok = False
            elif username[0] == "root":
                self.err(username[1], "USER cannot be root; root stays locked (use sudo:true)")
                ok = False
            elif any(u.username == username[0] for u in self.users):
                self.err(username[1], f"USER {username[0]} defined twice")
                ok = False
        passwd = values.get("passwd", ("", head))
        if "passwd" in values and not passwd[0]:
            self.err(passwd[1], "passwd is empty; give a password or a $6$ crypt hash")
            ok = False
        if len(passwd[0]) > 1024:
            self.err(passwd[1], "passwd longer than 1024 characters")
            ok = False
        flags: dict[str, bool] = {}
        for name in ("lock_passwd", "sudo", "ssh_pwauth", "disable_root", "chpasswd_expire"):
            if name in values:
                text, word = values[name]
                if text.lower() in _TRUE:
                    flags[name] = True
                elif text.lower() in _FALSE:
                    flags[name] = False
                else:
                    self.err(
                        word, f"{name} expects true or false (or yes/no, 1/0, on/off), got {text!r}"
                    )
                    ok = False
        shell = values.get("shell", ("/bin/bash", head))
        if "shell" in values:
            problem = _abs_path_problem(shell[0])
            if problem:
                self.err(shell[1], f"shell {shell[0]!r} {problem}")
                ok = False
        keys: tuple[str, ...] = ()
        if "ssh_authorized_keys" in values:
            text, word = values["ssh_authorized_keys"]
            keys = tuple(k.strip(_BLANK) for k in text.split(","))
            for key in keys:
                if not _SSH_KEY_RE.fullmatch(key):
                    self.err(
                        word,
                        f"ssh key {key[:40]!r} is not an OpenSSH public key (TYPE BASE64 [comment]); "
                        "separate keys with commas",
                    )
                    ok = False
        groups: tuple[str, ...] = ()
        if "groups" in values:
            text, word = values["groups"]
            groups = tuple(text.split(","))
            for group in groups:
                if not _USERNAME_RE.fullmatch(group):
                    self.err(word, f"group {group!r} invalid (lowercase letters, digits, _ or -)")
                    ok = False
        if len(self.users) >= self.limits.users_max:
            self.err(head, f"more than {self.limits.users_max} USER lines")
            ok = False
        if ok:
            self.users.append(
                User(
                    username=username[0],
                    passwd=passwd[0],
                    ssh_authorized_keys=keys,
                    shell=shell[0],
                    groups=groups,
                    line=head.line,
                    **flags,
                )
            )

    def finish(self, last_line: int) -> Formfile | None:
        if "NAME" not in self.seen:
            self.err((1, 1), "no NAME; add a line like: NAME my-agent")
        declared = {u.username for u in self.users}
        for name, word in self.user_envs:
            if name not in declared:
                self.err(word, f"ENV scope user:{name} names no USER of this Formfile")
        if self.errors.items or self.name is None:
            return None
        workdirs = [s.path for s in self.steps if isinstance(s, Workdir)]
        return Formfile(
            name=self.name,
            description=self.description,
            model=self.model,
            vcpus=self.vcpus,
            memory_mb=self.memory_mb,
            disk_gb=self.disk_gb,
            gpus=tuple(self.gpus),
            users=tuple(self.users),
            steps=tuple(self.steps),
            entrypoint=self.entrypoint,
            expose=tuple(self.expose),
            workdir=workdirs[-1] if workdirs else "/",
            source_path=self.path,
        )


def parse(text: str | bytes, *, path: str = "Formfile", limits: Limits = MAINNET) -> Formfile:
    """Parse and check a Formfile; raise ``FormfileError`` with every problem found."""
    errors = _Errors(path, max(limits.errors_max, 1))
    try:
        decoded = _decode(text, errors, limits)
        formfile: Formfile | None = None
        if decoded is not None:
            logical = _logical_lines(decoded, errors, limits)
            parser = _Parser(path, limits, errors)
            for item in logical:
                parser.instruction(item)
            formfile = parser.finish(logical[-1].line if logical else 1)
    except FormfileError:
        raise
    except Exception as exc:  # pragma: no cover - a parser bug must still read as a Formfile error
        errors.add(1, 1, f"internal parser error ({type(exc).__name__}); please report this file")
        formfile = None
    errors.raise_if_any()
    if formfile is None:  # pragma: no cover - finish() returns None only with errors
        raise FormfileError((Diagnostic(path, 1, 1, "no NAME; add a line like: NAME my-agent"),))
    return formfile
