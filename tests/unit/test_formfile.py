"""The Formfile parser: the seed examples, the broken corpus, every instruction's rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.pack.formfile import (
    DEVNET,
    LIMITS,
    MAINNET,
    FormfileError,
    Limits,
    canonical,
    limits_for_network,
    parse,
)
from node.pack.model import Copy, Entrypoint, Env, Gpu, Install, Model, Run, User, Workdir

DATA = Path(__file__).parent.parent / "data" / "formfiles"
OK = sorted((DATA / "ok").glob("*.Formfile"))
BROKEN = sorted((DATA / "broken").glob("*.Formfile"))


def _errors(text: str | bytes, limits: Limits = MAINNET) -> list[str]:
    with pytest.raises(FormfileError) as info:
        parse(text, path="F", limits=limits)
    return str(info.value).splitlines()


def test_corpus_is_there() -> None:
    assert len(OK) >= 17  # 6 whole examples and 11 snippets of the seed README
    assert len(BROKEN) >= 10


@pytest.mark.parametrize("path", OK, ids=lambda p: p.name)
def test_seed_examples_valid_under_mainnet_and_round_trip(path: Path) -> None:
    f = parse(path.read_bytes(), path=path.name, limits=MAINNET)
    assert parse(canonical(f)) == f
    assert canonical(parse(canonical(f))) == canonical(f)


# The seed examples that ask for more than devnet allows, with the lines that say so.
DEVNET_REFUSED = {
    "containerized-agent.Formfile": ["7:6: DISK 20"],
    "git-compose-agent.Formfile": ["7:6: DISK 20"],
    "native-agent.Formfile": ["7:6: DISK 20"],
    "llm-model-deployment.Formfile": ["5:6: VCPU 4", "6:5: MEM 16384", "7:6: DISK 50"],
}


@pytest.mark.parametrize("path", OK, ids=lambda p: p.name)
def test_seed_examples_under_devnet(path: Path) -> None:
    expected = DEVNET_REFUSED.get(path.name)
    if expected is None:
        assert parse(path.read_bytes(), limits=DEVNET).name
        return
    with pytest.raises(FormfileError) as info:
        parse(path.read_bytes(), path=path.name, limits=DEVNET)
    lines = str(info.value).splitlines()
    assert len(lines) == len(expected)
    for line, want in zip(lines, expected, strict=True):
        assert line.startswith(f"{path.name}:{want} is outside the devnet limits")


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.name)
def test_broken_corpus_gives_its_errors(path: Path) -> None:
    expected = path.with_suffix(".errors").read_text().splitlines()
    assert expected, f"{path.name} needs its .errors file"
    with pytest.raises(FormfileError) as info:
        parse(path.read_bytes(), path=path.name)
    assert str(info.value).splitlines() == expected
    assert [str(d) for d in info.value.diagnostics] == expected


def test_full_example_values() -> None:
    text = (
        "# a comment\n"
        "NAME web.app-1\n"
        "DESCRIPTION  A small server  \n"
        "MODEL required:llama-3\n"
        "CORES 2\nMEMORY 2048\nSTORAGE 10\n"
        "GPU H100:2\nGPU RTX5090\n"
        "USER username:webdev passwd:'pass word' sudo:yes lock_passwd=ON groups:docker,users \\\n"
        '     ssh_authorized_keys:"ssh-rsa AAAA a@b, ssh-ed25519 BBBB c@d" shell:/bin/zsh\n'
        "INSTALL python3 nginx=1.22.1-9\n"
        "COPY ./app/ /srv//app/\n"
        "WORKDIR /srv/app\n"
        "RUN apt-get update && \\\n"
        "    echo done\n"
        'ENV --scope=user:webdev DB="x y"\n'
        "ENV --scope=service:nginx PORT=80\n"
        "ENV --scope=system PATH=/usr/local/bin:$PATH\n"
        "EXPOSE 80 443\nEXPOSE 8080\n"
        'ENTRYPOINT nginx -g "daemon off;"\n'
    )
    f = parse(text)
    assert f.name == "web.app-1"
    assert f.description == "A small server"
    assert f.model == Model("llama-3", True)
    assert (f.vcpus, f.memory_mb, f.disk_gb) == (2, 2048, 10)
    assert f.gpus == (Gpu("H100", 2), Gpu("RTX5090", 1))
    assert f.users == (
        User(
            username="webdev",
            passwd="pass word",
            ssh_authorized_keys=("ssh-rsa AAAA a@b", "ssh-ed25519 BBBB c@d"),
            lock_passwd=True,
            sudo=True,
            shell="/bin/zsh",
            groups=("docker", "users"),
        ),
    )
    assert f.users[0].line == 10
    assert f.steps == (
        Install(("python3", "nginx=1.22.1-9")),
        Copy("app", "/srv/app"),
        Workdir("/srv/app"),
        Run("apt-get update &&     echo done"),
        Env("DB", "x y", "user", "webdev"),
        Env("PORT", "80", "service", "nginx"),
        Env("PATH", "/usr/local/bin:$PATH"),
    )
    assert [s.line for s in f.steps] == [12, 13, 14, 15, 17, 18, 19]
    assert f.expose == (80, 443, 8080)
    assert f.entrypoint == Entrypoint(("nginx", "-g", "daemon off;"), shell_form=True)
    assert f.workdir == "/srv/app"
    assert parse(canonical(f)) == f


def test_defaults() -> None:
    f = parse("NAME n\n")
    assert (f.vcpus, f.memory_mb, f.disk_gb, f.workdir) == (1, 512, 5, "/")
    assert f.users == ()
    assert f.steps == ()
    assert f.entrypoint is None
    assert canonical(f) == "NAME n\nVCPU 1\nMEM 512\nDISK 5\n"


def test_json_entrypoint_and_copy_of_whole_context() -> None:
    f = parse('NAME n\nCOPY . /app\nENTRYPOINT ["python3", "-c", "print(1)"]\n')
    assert f.steps == (Copy(".", "/app"),)
    assert f.entrypoint == Entrypoint(("python3", "-c", "print(1)"))
    assert 'ENTRYPOINT ["python3", "-c", "print(1)"]' in canonical(f)


def test_all_errors_at_once_sorted_by_line() -> None:
    lines = _errors("VCPU 0\nBOGUS\nEXPOSE 99999\n")
    assert lines == [
        "F:1:1: NAME is required: add a line such as NAME my-agent",
        "F:1:6: VCPU 0 is outside the mainnet limits: 1-128 vCPUs",
        "F:2:1: unknown instruction 'BOGUS'; expected one of NAME, DESCRIPTION, MODEL, VCPU, CPU, "
        "CORES, MEM, MEMORY, MBS, DISK, STORAGE, GPU, USER, RUN, COPY, INSTALL, ENV, WORKDIR, "
        "ENTRYPOINT, EXPOSE",
        "F:3:8: EXPOSE expects port numbers 1-65535, not '99999'",
    ]


def test_error_inside_a_continuation_points_at_its_physical_line() -> None:
    lines = _errors("NAME n\nUSER username:ok \\\n  # comment inside\n  passwd:x \\\n  sudo:sure\n")
    assert lines == ["F:5:8: sudo expects true or false (or yes/no, on/off, 1/0)"]


def test_errors_are_capped() -> None:
    text = "NAME n\n" + "BAD\n" * 150
    lines = _errors(text)
    assert len(lines) == MAINNET.errors_max + 1
    assert lines[-1].endswith("and 50 more errors")


def test_size_and_line_limits() -> None:
    big = "NAME n\n" + "RUN " + "x" * MAINNET.text_bytes_max + "\n"
    assert _errors(big) == [
        f"F:1:1: the Formfile is {len(big)} bytes; at most {MAINNET.text_bytes_max} are allowed"
    ]
    small = Limits("t", 1, 1, 512, 512, 5, 5, lines_max=3)
    assert _errors("NAME n\n\n\n\n", small) == [
        "F:4:1: the file has 5 lines; at most 3 are allowed"
    ]


def test_bad_bytes_and_surrogates() -> None:
    assert _errors(b"NAME n\nRUN \xc3(\n") == [
        "F:2:5: byte 0xc3 is not UTF-8; save the file as UTF-8"
    ]
    assert _errors("NAME n\nRUN \ud800\n") == [
        "F:2:5: the text holds a lone surrogate character; save the file as UTF-8"
    ]
    assert parse(b"\xef\xbb\xbfNAME n\r\nRUN x\r\n").steps == (Run("x"),)


def test_user_requires_username_and_passwd() -> None:
    assert _errors("NAME n\nUSER sudo:true\n") == [
        "F:2:6: USER needs username:VALUE",
        "F:2:6: USER needs passwd:VALUE",
    ]
    assert _errors("NAME n\nUSER username:a passwd:\n") == [
        "F:2:24: passwd needs a value (a password or a $6$ crypt hash)"
    ]


def test_env_user_scope_after_its_user_is_fine() -> None:
    f = parse("NAME n\nENV --scope=user:bob K=v\nUSER username:bob passwd:x\n")
    assert f.steps == (Env("K", "v", "user", "bob"),)


def test_network_limits() -> None:
    assert limits_for_network("devnet") is DEVNET
    assert limits_for_network("local") is DEVNET
    assert limits_for_network("mainnet") is MAINNET
    assert limits_for_network("some-testnet") is MAINNET
    assert LIMITS == {"devnet": DEVNET, "mainnet": MAINNET}
    assert (DEVNET.vcpus_max, DEVNET.memory_mb_min, DEVNET.memory_mb_max, DEVNET.disk_gb_max) == (
        2,
        512,
        4096,
        5,
    )
    assert (MAINNET.vcpus_max, MAINNET.memory_mb_max, MAINNET.disk_gb_min, MAINNET.disk_gb_max) == (
        128,
        256_000,
        5,
        65_535,
    )


def test_unclosed_quote_in_entrypoint_and_copy() -> None:
    assert _errors('NAME n\nENTRYPOINT run "forever\n') == [
        'F:2:16: ENTRYPOINT: this quote (") is never closed'
    ]
    assert _errors("NAME n\nCOPY 'a /b\n") == ["F:2:6: COPY: this quote (') is never closed"]


def test_trailing_backslash_at_end_of_file() -> None:
    assert _errors("NAME n\nRUN echo \\") == [
        "F:2:10: the last line ends with '\\' but no line follows; remove the '\\'"
    ]


def test_bounded_counts() -> None:
    tight = Limits("t", 1, 2, 512, 4096, 1, 5, users_max=1, ports_max=2, steps_max=2, gpus_max=3)
    text = (
        "NAME n\n"
        "USER username:a passwd:x\nUSER username:b passwd:x\n"
        "EXPOSE 1 2 3\n"
        "RUN a\nRUN b\nRUN c\n"
        "GPU H100:2\nGPU H200:2\n"
    )
    assert _errors(text, tight) == [
        "F:3:6: more than 1 users",
        "F:4:12: more than 2 exposed ports",
        "F:7:5: more than 2 build steps; merge some",
        "F:9:5: more than 3 GPUs in all",
    ]


def test_a_value_longer_than_the_cap_is_refused() -> None:
    long = "x" * (MAINNET.value_chars_max + 1)
    assert _errors(f"NAME n\nRUN {long}\n") == [
        f"F:2:5: RUN's value is {len(long)} characters; at most {MAINNET.value_chars_max} are allowed"
    ]


def test_public_names() -> None:
    import node.pack.formfile as module

    public = {n for n in vars(module) if not n.startswith("_")} - {"annotations"}
    exported = set(module.__all__)
    assert exported <= public
    assert {"parse", "canonical", "Limits", "DEVNET", "MAINNET", "LIMITS"} <= exported
    assert {"limits_for_network", "FormfileError", "Diagnostic"} <= exported
