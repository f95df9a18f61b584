import json
import logging

import pytest

from node.logs import adopt_library_loggers, configure_logging


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


def _libp2p_unhooked() -> None:
    """What libp2p's import does to its logger (libp2p.utils.logging.setup_logging)."""
    libp2p = logging.getLogger("libp2p")
    libp2p.handlers.clear()
    libp2p.propagate = False


def test_library_records_come_out_in_the_node_format_one_line_each(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("warning")
    _libp2p_unhooked()
    try:
        adopt_library_loggers()  # as node.p2p.transport does once libp2p is imported
        tcp = logging.getLogger("libp2p.transport.tcp")
        tcp.error("Failed to open TCP stream: all attempts to connect to 127.0.0.1:9 failed")
        try:
            raise TimeoutError("handshake\nstill waiting")
        except TimeoutError:
            logging.getLogger("libp2p.stream_muxer.yamux").exception("Yamux handshake failed")
    finally:
        logging.getLogger().handlers.clear()
        logging.getLogger().setLevel(logging.WARNING)
    lines = capsys.readouterr().err.splitlines()
    # The dial failure is info now (the node retries and says so itself): not shown at warning.
    assert len(lines) == 1, lines
    assert lines[0].endswith(
        "ERROR   libp2p.stream_muxer.yamux: Yamux handshake failed (TimeoutError)"
    ), lines
    assert lines[0][:4].isdigit()  # the node's timestamped format, not a bare message


def test_a_dial_failure_shows_at_info(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    _libp2p_unhooked()
    try:
        adopt_library_loggers()
        logging.getLogger("libp2p.transport.tcp").error("Failed to open TCP stream: x")
    finally:
        logging.getLogger().handlers.clear()
        logging.getLogger().setLevel(logging.WARNING)
    (line,) = capsys.readouterr().err.splitlines()
    assert "INFO    libp2p.transport.tcp: Failed to open TCP stream: x" in line
