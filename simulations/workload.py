"""Random but realistic signed-op workloads, derived from one seed.

Used by the benchmarks and (with the gossip issue) the simulator. Every op is valid: the mix
is what a busy marketplace writes (profile updates, instance lifecycle, node heartbeats, agent
listings), spread over a few hundred owners so records are both shared and contended.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any, overload

from node.identity.keys import NodeKey
from node.ledger.op import Op, sign_op
from node.ledger.state import instance_id_of

__all__ = ["Workload"]

_CAPACITY = {
    "cpu_total_cores": 16,
    "cpu_available_millicores": 12_000,
    "memory_total_bytes": 64 * 2**30,
    "memory_available_bytes": 40 * 2**30,
    "storage_total_bytes": 2 * 2**40,
    "storage_available_bytes": 2**40,
}
_FORMFILE = "NAME {name}\nVCPU 2\nMEM 2048\nDISK 10\nINSTALL python3\nCOPY ./app /app\nENTRYPOINT python3 /app/main.py\n"


class _Keys(Sequence[NodeKey]):
    """Keys from their secrets, each made on first use: a short run signs with a few of its
    220 keys, and making all of them cost 12 ms, a tenth of a smoke-5 seed. The secrets are
    drawn up front, so the run's randomness is what it was."""

    def __init__(self, secrets: list[bytes]) -> None:
        self._secrets = secrets
        self._keys: dict[int, NodeKey] = {}

    def __len__(self) -> int:
        return len(self._secrets)

    @overload
    def __getitem__(self, index: int) -> NodeKey: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[NodeKey]: ...
    def __getitem__(self, index: int | slice) -> NodeKey | Sequence[NodeKey]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        key = self._keys.get(index)
        if key is None:
            key = self._keys[index] = NodeKey(self._secrets[index])
        return key


class Workload:
    """A seeded generator of signed ops for ``users`` accounts and ``nodes`` nodes."""

    def __init__(
        self, rng: random.Random, network: str, *, users: int = 200, nodes: int = 20
    ) -> None:
        self.rng = rng
        self.network = network
        self.users = _Keys([rng.randbytes(32) for _ in range(users)])
        self.nodes = _Keys([rng.randbytes(32) for _ in range(nodes)])

    def op(self, wall_ms: int, logical: int = 0) -> Op:
        rng = self.rng
        roll = rng.random()
        user = rng.choice(self.users)
        name = f"app{rng.randrange(8)}"
        kind: str
        payload: dict[str, Any]
        if roll < 0.10:
            kind, payload = (
                "account.update",
                {"name": f"user {rng.randrange(10**6)}", "description": "builds agents"},
            )
        elif roll < 0.30:
            kind, payload = (
                "instance.create",
                {
                    "name": name,
                    "formfile": _FORMFILE.format(name=name),
                    "resources": {"vcpus": 2, "memory_mb": 2048},
                },
            )
        elif roll < 0.45:
            kind, payload = rng.choice(["instance.stop", "instance.start"]), {"name": name}
        elif roll < 0.65:
            node = rng.choice(self.nodes)
            return sign_op(
                node, self.network, (wall_ms, logical), "node.capacity", {"capacity": _CAPACITY}
            )
        elif roll < 0.80:
            node = rng.choice(self.nodes)
            iid = instance_id_of(user.address, name)
            status = rng.choice(["Created", "Started", "Stopped"])
            return sign_op(
                node,
                self.network,
                (wall_ms, logical),
                "instance.status",
                {"instance_id": iid, "status": status},
            )
        else:
            kind, payload = (
                "agent.register",
                {
                    "name": name,
                    "description": "Summarizes documents with citations.",
                    "tags": ["nlp", "summary"],
                    "pricing": {"cost_per_call": 2, "cost_per_1k_input_tokens_milli": 1000},
                    "access": "public",
                },
            )
        return sign_op(user, self.network, (wall_ms, logical), kind, payload)

    def ops(self, count: int, t0_ms: int, spacing_ms: int = 1) -> Iterator[Op]:
        for i in range(count):
            yield self.op(t0_ms + i * spacing_ms)
