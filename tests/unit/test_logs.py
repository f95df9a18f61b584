import json
import logging

import pytest

from node.logs import configure_logging


def test_json_lines_carry_the_message_and_extra_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json_lines=True)
    try:
        logging.getLogger("formation.test").info("joined %s", "peer1", extra={"peers": 3})
        logging.getLogger("libp2p.swarm").warning("internal noise")
    finally:
        logging.getLogger().handlers.clear()
        logging.getLogger().setLevel(logging.WARNING)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 1
    assert lines[0]["msg"] == "joined peer1"
    assert lines[0]["peers"] == 3
    assert (lines[0]["level"], lines[0]["logger"]) == ("info", "formation.test")
