"""What the gossip core needs from the node's op log, and what drivers may call on the core.

The core (``node.gossip.core.GossipCore``) is driven by three drivers: the simulator
(``simulations/``), the tests, and the real Trio node (``node/p2p``). They all use exactly
this surface:

```
core = GossipCore(node_id, addr, config, rng, log)
effects = core.start(now, seeds)            # seeds: node ids to join through ([] = first node)
effects = core.on_packet(now, packet)       # a Packet arrived (decoded by node.gossip.wire)
effects = core.on_timer(now)                # now >= core.next_wakeup()
effects = core.broadcast(now, ops)          # ops this node wrote (already stored and applied)
effects = core.on_ops_accepted(now, ops, sender)  # after a Deliver: the ops that were valid
effects = core.add_seed(now, node_id, addr) # a bootstrap peer discovered later
effects = core.leave(now)                   # graceful goodbye
core.next_wakeup() -> float                 # absolute time of the next timer
core.members() / core.stats                 # read-only views
```

Effects are ``Send``, ``Deliver`` and ``Notify`` (``node.gossip.messages``). ``now`` is in
seconds on any monotonic scale, the same for all calls of one core.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from node.gossip.messages import WireOp
from node.ledger.digest import OpDigest

__all__ = ["OpLog"]


class OpLog(Protocol):
    """The node's set of stored, valid ops, as the gossip core sees it."""

    @property
    def digest(self) -> OpDigest:
        """The op-set digest of every op held (updated by the log as ops are stored)."""
        ...

    def has(self, op_id: bytes) -> bool: ...

    def get_wire(self, ids: Iterable[bytes]) -> list[WireOp]:
        """``(body, sig)`` of the held ops among ``ids`` (unknown ids are skipped)."""
        ...
