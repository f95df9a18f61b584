"""What `form pack build` sends: the user's own Formfile, with each plain password hashed in place."""

from __future__ import annotations

from node.client.cli._pack_build import _text_with_hashes, passwd_salt
from node.pack.formfile import canonical, parse
from node.pack.password import hash_passwords, sha512_crypt

SECRET = b"\x01" * 32


def _send(text: str) -> tuple[str, object]:
    formfile = parse(text)
    hashed = hash_passwords(formfile, lambda user: passwd_salt(SECRET, formfile.name, user))
    return _text_with_hashes(text, formfile, hashed, parse), hashed


def test_the_password_is_hashed_in_place_and_the_lines_stay_the_users() -> None:
    text = (
        "# my web server\n"
        "NAME web\n"
        "\n"
        "USER username:app passwd:hunter2 sudo:true\n"
        "RUN echo one\n"
        "RUN false\n"
    )
    sent, hashed = _send(text)
    assert "hunter2" not in sent
    assert sent.splitlines()[0] == "# my web server"  # comments and blank lines kept
    assert parse(sent) == hashed
    assert [step.line for step in parse(sent).steps] == [5, 6]  # the user's line numbers
    salt = passwd_salt(SECRET, "web", "app")
    assert f"passwd:{sha512_crypt('hunter2', salt)}" in sent


def test_quoted_and_odd_passwords_are_replaced_too() -> None:
    for passwd in ('"two words"', "'a$b.c*d'", "pa[ss]+w"):
        text = f"NAME web\nUSER username:app passwd:{passwd}\nRUN true\n"
        sent, hashed = _send(text)
        assert passwd.strip("\"'") not in sent
        assert parse(sent) == hashed
        assert parse(sent).steps[0].line == 3


def test_the_same_tree_gives_the_same_text_and_a_hash_is_left_alone() -> None:
    text = "NAME web\nUSER username:app passwd:hunter2\n"
    assert _send(text)[0] == _send(text)[0]  # the salt comes from the key: stable
    already = f"NAME web\nUSER username:app passwd:{sha512_crypt('x', 'saltsalt')}\n"
    assert _send(already)[0] == already


def test_an_edit_that_would_change_the_meaning_falls_back_to_canonical_text() -> None:
    text = "NAME web\nUSER username:app passwd:hunter2\n"
    formfile = parse(text)
    hashed = hash_passwords(formfile, lambda user: "saltsalt")

    def disagreeing_parse(_: str) -> object:
        return None  # pretend the edited text parsed to something else

    sent = _text_with_hashes(text, formfile, hashed, disagreeing_parse)
    assert sent == canonical(hashed)
    assert "hunter2" not in sent
