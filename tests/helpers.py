"""Shared test helpers: seeded keys, op builders, and polling for Trio tests."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import trio

from node.identity.keys import NodeKey
from node.ledger.op import Op, sign_op

NET = "testnet"
T0_MS = 1_760_000_000_000


def seeded_keys(count: int, seed: int = 7) -> list[NodeKey]:
    rng = random.Random(seed)
    return [NodeKey(rng.randbytes(32)) for _ in range(count)]


def op(
    key: NodeKey, kind: str, payload: dict[str, Any], wall_ms: int = T0_MS, logical: int = 0
) -> Op:
    return sign_op(key, NET, (wall_ms, logical), kind, payload)


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll until ``predicate`` holds (callers bound it with ``trio.fail_after``).

    For state owned by other tasks and threads (replicas, membership): there is no event to
    await.
    """
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(0.02)
