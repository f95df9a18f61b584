"""node.pack.plan: step order, names, lines and the chained cache keys; pure helpers of base/builder."""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from node.pack.base import (
    AptSource,
    BaseError,
    base_key,
    default_cache_dir,
    mirror_for,
    parse_deb822_sources,
    parse_one_line_sources,
    release_sources,
)
from node.pack.builder import systemd_quote
from node.pack.model import Copy, Entrypoint, Env, Formfile, Install, Run, Step, User, Workdir
from node.pack.plan import PlanError, copied_files, plan

BASE = "b" * 64
CONTEXT = {"app/server.py": "1" * 64, "app/static/index.html": "2" * 64, "README": "3" * 64}


def formfile(**changes: object) -> Formfile:
    f = Formfile(
        name="web",
        users=(User("alice", "$6$salt$hash", sudo=True, line=2),),
        steps=(
            Install(("python3",), line=3),
            Copy("./app", "/app", line=4),
            Env("PORT", "8000", line=5),
            Workdir("/app", line=6),
            Run("echo hi > /app/hi.txt", line=7),
        ),
        entrypoint=Entrypoint(("python3", "-m", "http.server", "8000"), line=8),
        expose=(8000,),
    )
    return replace(f, **changes)  # type: ignore[arg-type]


def keys(f: Formfile, context: dict[str, str] = CONTEXT, base: str = BASE) -> list[str]:
    return [s.key for s in plan(f, context, base)]


def test_order_names_lines_and_kinds() -> None:
    steps = plan(formfile(), CONTEXT, BASE)
    assert [(s.index, s.kind, s.line) for s in steps] == [
        (1, "user", 2),
        (2, "install", 3),
        (3, "copy", 4),
        (4, "env", 5),
        (5, "workdir", 6),
        (6, "run", 7),
        (7, "entrypoint", 8),
        (8, "finalize", 0),
    ]
    assert steps[1].name == "INSTALL python3"
    assert steps[2].name == "COPY ./app /app"
    assert len({s.key for s in steps}) == len(steps)


def test_same_inputs_same_keys() -> None:
    assert keys(formfile()) == keys(formfile())
    # Lines are not part of the value, so moving a step to another line keeps its key.
    moved = formfile(steps=tuple(replace(s, line=s.line + 10) for s in formfile().steps))
    assert keys(moved) == keys(formfile())


def test_changing_the_last_line_changes_only_it_and_the_implicit_tail() -> None:
    before = keys(formfile())
    steps = formfile().steps
    changed = formfile(steps=(*steps[:-1], Run("echo bye > /app/hi.txt", line=7)))
    after = keys(changed)
    assert after[:5] == before[:5]
    assert all(a != b for a, b in zip(after[5:], before[5:], strict=True))


@pytest.mark.parametrize("k", range(5))
def test_changing_step_k_changes_keys_from_k_on(k: int) -> None:
    steps = list(formfile().steps)
    replacements: dict[type, Step] = {
        Install: Install(("python3", "curl")),
        Copy: Copy("./app", "/srv/app"),
        Env: Env("PORT", "9000"),
        Workdir: Workdir("/srv"),
        Run: Run("true"),
    }
    steps[k] = replacements[type(steps[k])]
    before, after = keys(formfile()), keys(formfile(steps=tuple(steps)))
    first = k + 1  # index 0 is the USER step
    assert after[:first] == before[:first]
    assert all(a != b for a, b in zip(after[first:], before[first:], strict=True))


def test_changing_a_copied_file_changes_that_copy_and_later_only() -> None:
    before = keys(formfile())
    after = keys(formfile(), {**CONTEXT, "app/server.py": "9" * 64})
    assert after[:2] == before[:2]
    assert all(a != b for a, b in zip(after[2:], before[2:], strict=True))


def test_a_file_no_copy_takes_changes_nothing() -> None:
    assert keys(formfile(), {**CONTEXT, "README": "9" * 64}) == keys(formfile())


def test_another_base_changes_every_key() -> None:
    before, after = keys(formfile()), keys(formfile(), base="c" * 64)
    assert all(a != b for a, b in zip(after, before, strict=True))


def test_run_spec_carries_workdir_and_system_env() -> None:
    run = plan(formfile(), CONTEXT, BASE)[5]
    spec = json.loads(run.spec)
    assert spec == {
        "kind": "run",
        "command": "echo hi > /app/hi.txt",
        "workdir": "/app",
        "env": {"PORT": "8000"},
    }


def test_entrypoint_spec_runs_as_the_first_user_in_the_workdir() -> None:
    ep = json.loads(plan(formfile(), CONTEXT, BASE)[6].spec)
    assert ep["user"] == "alice"
    assert ep["workdir"] == "/app"
    assert ep["argv"] == ["python3", "-m", "http.server", "8000"]
    assert ep["env"] == {"PORT": "8000"}
    no_users = json.loads(plan(formfile(users=()), CONTEXT, BASE)[5].spec)
    assert no_users["kind"] == "entrypoint"
    assert no_users["user"] == "root"


def test_no_entrypoint_means_no_entrypoint_step() -> None:
    steps = plan(formfile(entrypoint=None), CONTEXT, BASE)
    assert [s.kind for s in steps][-2:] == ["run", "finalize"]


def test_copy_of_a_missing_path_is_a_plan_error_naming_the_line() -> None:
    f = formfile(steps=(Copy("./nope", "/x", line=9),))
    with pytest.raises(PlanError, match=r"line 9: COPY \./nope"):
        plan(f, CONTEXT, BASE)


def test_copied_files() -> None:
    assert copied_files("./app", CONTEXT) == ["app/server.py", "app/static/index.html"]
    assert copied_files("app/server.py", CONTEXT) == ["app/server.py"]
    assert copied_files(".", CONTEXT) == sorted(CONTEXT)
    # "app" must not take "application/...".
    assert copied_files("app", {"application/x": "0"}) == []


# -- the pure helpers of node.pack.base and node.pack.builder --

DEB822 = """\
Types: deb
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main contrib

Types: deb
Enabled: no
URIs: http://off.example/debian
Suites: bookworm
Components: main
"""


def test_parse_deb822_sources() -> None:
    assert parse_deb822_sources(DEB822) == [
        AptSource("http://mirror.example/debian", ("bookworm", "bookworm-updates"), ("main",)),
        AptSource(
            "http://mirror.example/debian-security", ("bookworm-security",), ("main", "contrib")
        ),
    ]


def test_parse_one_line_sources() -> None:
    text = (
        "deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main contrib\n"
        "deb-src http://m.example/debian bookworm main\n"
        "# deb http://commented.example/debian bookworm main\n"
        "deb http://other.example/x cloud-sdk-bookworm main\n"
    )
    assert parse_one_line_sources(text) == [
        AptSource("http://m.example/debian", ("bookworm",), ("main", "contrib")),
        AptSource("http://other.example/x", ("cloud-sdk-bookworm",), ("main",)),
    ]


def test_release_sources_and_mirror() -> None:
    sources = [
        AptSource("http://other.example/x", ("cloud-sdk-bookworm",), ("main",)),
        *parse_deb822_sources(DEB822),
    ]
    kept = release_sources(sources, "bookworm")
    assert [s.uri for s in kept] == [
        "http://mirror.example/debian",
        "http://mirror.example/debian-security",
    ]
    assert mirror_for(sources, "bookworm") == "http://mirror.example/debian"
    with pytest.raises(BaseError, match="no apt source serves 'trixie'"):
        mirror_for(sources, "trixie")


def test_base_key_depends_on_every_input() -> None:
    k = base_key("bookworm", "amd64", ["udev", "sudo"], "http://m/debian")
    assert k == base_key("bookworm", "amd64", ["sudo", "udev"], "http://m/debian")
    others = {
        base_key("trixie", "amd64", ["udev", "sudo"], "http://m/debian"),
        base_key("bookworm", "arm64", ["udev", "sudo"], "http://m/debian"),
        base_key("bookworm", "amd64", ["udev"], "http://m/debian"),
        base_key("bookworm", "amd64", ["udev", "sudo"], "http://n/debian"),
    }
    assert k not in others
    assert len(others) == 4


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FORMATION_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("FORMATION_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "formation-node"


def test_systemd_quote() -> None:
    assert systemd_quote("python3") == '"python3"'
    assert systemd_quote('say "hi" 100% $HOME\\') == '"say \\"hi\\" 100%% $$HOME\\\\"'


def _layer(layers: Path, key: str, size: int, used: float) -> None:
    (layers / key / "upper").mkdir(parents=True)
    meta = layers / key / "layer.json"
    meta.write_text(json.dumps({"bytes": size}))
    os.utime(meta, (used, used))


def test_prune_layers_drops_the_least_recently_used_first_and_keeps_the_build_s(
    tmp_path: Path,
) -> None:
    from node.pack.builder import prune_layers

    layers = tmp_path / "layers"
    _layer(layers, "old", 400, used=1_000)
    _layer(layers, "kept", 400, used=500)  # older still, but the build just used it
    _layer(layers, "mid", 400, used=2_000)
    _layer(layers, "new", 400, used=3_000)
    (layers / ".tmp-crashed").mkdir()
    removed = prune_layers(layers, keep={"kept"}, bytes_max=900)
    assert removed == ["old", "mid"]
    assert sorted(p.name for p in layers.iterdir()) == [".lock", "kept", "new"]
    assert prune_layers(layers, keep=set(), bytes_max=10**9) == []  # under the cap: nothing


def test_prune_layers_does_nothing_while_a_build_holds_the_lock(tmp_path: Path) -> None:
    from node.pack.builder import _layers_lock, prune_layers

    layers = tmp_path / "layers"
    _layer(layers, "a", 10, used=1)
    with _layers_lock(layers, fcntl.LOCK_SH) as held:
        assert held
        assert prune_layers(layers, keep=set(), bytes_max=0) == []
    assert (layers / "a").is_dir()
    assert prune_layers(layers, keep=set(), bytes_max=0) == ["a"]
