"""Properties of the Formfile parser: total over any input, and canonical text round-trips.

Totality: whatever the text or bytes (random, or random arguments behind real instruction
words, so the value checks run), ``parse`` returns a ``Formfile`` or raises ``FormfileError``;
any other exception is a bug. Round trip: for generated valid ``Formfile`` values,
``parse(canonical(f)) == f`` and the canonical text is a fixed point.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from node.pack.formfile import DEVNET, INSTRUCTIONS, MAINNET, FormfileError, canonical, parse
from node.pack.model import Copy, Entrypoint, Env, Formfile, Gpu, Install, Model, Run, User, Workdir

# Printable text: no control characters (the parser refuses them) and no lone surrogates.
_CHARS = st.characters(blacklist_categories=("Cc", "Cs"))
_TEXT = st.text(_CHARS, max_size=30)


def _raw(text: str) -> bool:
    """A rest-of-line value (RUN, DESCRIPTION): no outer blanks, no continuation backslash."""
    return bool(text) and text == text.strip(" \t") and not text.endswith("\\")


def _check(data: str | bytes) -> None:
    error: FormfileError | None = None
    try:
        f = parse(data, path="F", limits=DEVNET)
    except FormfileError as exc:
        error = exc
    if error is not None:
        assert error.diagnostics
        assert all(line.startswith("F:") for line in str(error).splitlines())
        return
    assert isinstance(f, Formfile)
    assert parse(canonical(f), limits=DEVNET) == f


@given(st.text(max_size=400))
def test_any_text_gives_a_formfile_or_formfile_error(text: str) -> None:
    _check(text)


@given(st.binary(max_size=400))
def test_any_bytes_give_a_formfile_or_formfile_error(data: bytes) -> None:
    _check(data)


_WORDS = st.sampled_from([*INSTRUCTIONS, "run", "FROM", "#", ""])
_ARGS = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=" \t\"'\\:=,[]{}/.-_0123456789abcAZ$", max_size=40),
)


@given(st.lists(st.tuples(_WORDS, _ARGS, st.sampled_from(["\n", "\\\n", "\r\n"])), max_size=25))
def test_instruction_lines_with_random_arguments(lines: list[tuple[str, str, str]]) -> None:
    text = "".join(f"{word} {args}{end}" for word, args, end in lines)
    _check(text)
    _check(text.encode("utf-8", "surrogatepass"))


_USERNAME = st.from_regex(r"[a-z_][a-z0-9_-]{0,12}", fullmatch=True).filter(lambda u: u != "root")
_SEGMENT = st.from_regex(r"[A-Za-z0-9_.-]{1,8}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)
_ABS = st.lists(_SEGMENT, max_size=3).map(lambda parts: "/" + "/".join(parts))
_REL = st.one_of(st.just("."), st.lists(_SEGMENT, min_size=1, max_size=3).map("/".join))
_ITEM = _TEXT.map(lambda t: t.strip(" \t")).filter(lambda t: t and "," not in t)


@st.composite
def _users(draw: st.DrawFn) -> tuple[User, ...]:
    names = draw(st.lists(_USERNAME, max_size=3, unique=True))
    return tuple(
        User(
            username=name,
            passwd=draw(_TEXT.filter(bool)),
            ssh_authorized_keys=tuple(draw(st.lists(_ITEM, max_size=2))),
            lock_passwd=draw(st.booleans()),
            sudo=draw(st.booleans()),
            shell=draw(st.sampled_from(["/bin/bash", "/bin/sh", "/usr/bin/zsh"])),
            ssh_pwauth=draw(st.booleans()),
            disable_root=draw(st.booleans()),
            chpasswd_expire=draw(st.booleans()),
            groups=tuple(draw(st.lists(_USERNAME, max_size=3))),
        )
        for name in names
    )


@st.composite
def formfiles(draw: st.DrawFn) -> Formfile:
    users = draw(_users())
    scopes: list[tuple[str, str]] = [("system", "")]
    scopes += [("user", u.username) for u in users]
    scopes.append(("service", draw(st.from_regex(r"[a-z][a-z0-9@.-]{0,8}", fullmatch=True))))
    env = st.builds(
        lambda key, value, scope: Env(key, value, scope[0], scope[1]),
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True),
        _TEXT,
        st.sampled_from(scopes),
    )
    step = st.one_of(
        st.builds(Run, _TEXT.filter(_raw)),
        st.builds(Copy, _REL, _ABS),
        st.builds(
            lambda p: Install(tuple(p)),
            st.lists(st.from_regex(r"[a-z0-9][a-z0-9+.-]{0,10}", fullmatch=True), min_size=1),
        ),
        env,
        st.builds(Workdir, _ABS),
    )
    steps = tuple(draw(st.lists(step, max_size=8)))
    workdirs = [s.path for s in steps if isinstance(s, Workdir)]
    entrypoint = draw(
        st.none()
        | st.builds(
            lambda argv, shell: Entrypoint(tuple(argv), shell),
            st.lists(_TEXT, min_size=1, max_size=4).filter(lambda a: a[0] != ""),
            st.booleans(),
        )
    )
    gpus = draw(
        st.lists(st.builds(Gpu, st.sampled_from(["H100", "B200"]), st.integers(1, 2)), max_size=4)
    )
    return Formfile(
        name=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)),
        description=draw(st.just("") | _TEXT.filter(_raw)),
        model=draw(
            st.none()
            | st.builds(
                Model, st.from_regex(r"[A-Za-z0-9._/-]{1,20}", fullmatch=True), st.booleans()
            )
        ),
        vcpus=draw(st.integers(MAINNET.vcpus_min, MAINNET.vcpus_max)),
        memory_mb=draw(st.integers(MAINNET.memory_mb_min, MAINNET.memory_mb_max)),
        disk_gb=draw(st.integers(MAINNET.disk_gb_min, MAINNET.disk_gb_max)),
        gpus=tuple(gpus),
        users=users,
        steps=steps,
        entrypoint=entrypoint,
        expose=tuple(draw(st.lists(st.integers(1, 65535), max_size=5, unique=True))),
        workdir=workdirs[-1] if workdirs else "/",
    )


@given(formfiles())
def test_canonical_round_trips(f: Formfile) -> None:
    text = canonical(f)
    again = parse(text, limits=MAINNET)
    assert again == f
    assert canonical(again) == text
