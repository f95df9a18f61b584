"""The worked examples of docs/api.md, run verbatim against a live gateway.

If the docs drift from the gateway (or from eth-account / ethers), this fails.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from node.gateway.app import GatewayApp, serve_gateway
from node.replica import Replica
from tests.gateway.test_app import _Node
from tests.helpers import JS_DIR, NET, js_runtime

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def _block(language: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1, f"docs/api.md should have one {language} example"
    return str(blocks[0])


@pytest.fixture
async def gateway_url(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[str]:
    replica = Replica.open(tmp_path / "node", NET)
    url = await nursery.start(serve_gateway, GatewayApp(_Node(replica)), "127.0.0.1", 0)
    yield url
    replica.close()


def _pointed_at(code: str, url: str) -> str:
    assert '"http://127.0.0.1:3004"' in code
    return code.replace('"http://127.0.0.1:3004"', f'"{url}"')


async def test_the_python_example_works(gateway_url: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(_pointed_at(_block("python"), gateway_url))
    done = await trio.run_process(
        [sys.executable, str(script)], capture_stdout=True, capture_stderr=True, check=False
    )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert out.startswith("201 {'op_id': '0x"), out
    assert "'name': 'alice'" in out.splitlines()[1]


@pytest.mark.real
async def test_the_javascript_example_works(gateway_url: str) -> None:
    node = js_runtime("ethers")
    # Inside tests/interop/js so that `import "ethers"` resolves to the pinned package.
    script = JS_DIR / f"doc-example-{os.getpid()}.mjs"
    script.write_text(_pointed_at(_block("js"), gateway_url))
    try:
        done = await trio.run_process(
            [node, str(script)], capture_stdout=True, capture_stderr=True, check=False
        )
    finally:
        script.unlink()
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().startswith("201 {"), done.stdout.decode()


def test_every_route_is_in_the_docs_route_table() -> None:
    from node.gateway.routes import ENDPOINTS

    text = DOC.read_text()
    missing = [
        f"{e.method} {e.path}"
        for e in ENDPOINTS
        if f"| {e.method} | `{e.path}` | {e.auth} |" not in text
    ]
    assert missing == []
