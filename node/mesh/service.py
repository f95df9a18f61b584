"""The mesh service: the thin Trio driver that keeps this node's mesh addresses claimed.

Theory of operation
-------------------
Every ``poll_s`` the service reads the mesh view (``node.ledger.mesh.mesh_view``) and the
subjects this node answers for: itself (``node:<id>``) and each instance slot it hosts
(``slot:<instance>:<k>``, so an instance reaches the mesh through its host). A subject that holds
no address is claimed with a signed ``mesh.claim`` at the address the view says to claim
(``MeshView.to_claim``: its first hash-ordered candidate nobody holds); the claim applies locally
at once, so the next round sees it held, or lost to an earlier claim, and then claims again. No
coordinator and no lock: the earliest claim wins everywhere once the ops converge.

Attempts per subject are bounded (``ATTEMPTS_MAX``), so a full range is an error in the log,
not a loop; a subject that moves away (a slot rescheduled elsewhere) is forgotten.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from node.ledger.mesh import mesh_view, node_subject, slot_subject
from node.placement.service import NodeHost

__all__ = ["MeshService", "subjects_of"]

logger = logging.getLogger(__name__)

POLL_S: Final = 1.0
ATTEMPTS_MAX: Final = 64


def subjects_of(state: Any, me: str) -> list[str]:
    """The subjects ``me`` claims for: itself and the slots it hosts."""
    subjects = [node_subject(me)]
    for instance in state.instances():
        for slot in instance.get("slots") or []:
            if slot.get("node_id") == me:
                subjects.append(slot_subject(instance["instance_id"], int(slot["slot"])))
    return subjects


@dataclass
class MeshService:
    """Claims and re-claims this node's mesh addresses (module docstring)."""

    host: NodeHost
    poll_s: float = POLL_S
    claims: int = 0
    _attempts: dict[str, int] = field(default_factory=dict)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await self.step()
        task_status.started(self)
        while True:
            await trio.sleep(self.poll_s)
            await self.step()

    async def step(self) -> None:
        me = self.host.address

        def read(state: Any) -> tuple[Any, list[str]]:
            return mesh_view(state), subjects_of(state, me)

        view, subjects = self.host.read(read)
        for subject in subjects:
            attempts = self._attempts.get(subject, 0)
            if attempts >= ATTEMPTS_MAX:
                continue
            try:
                address = view.to_claim(subject)
            except ValueError as exc:  # the range is full
                logger.error("mesh: cannot claim an address for %s: %s", subject, exc)
                self._attempts[subject] = ATTEMPTS_MAX
                continue
            if address is None:
                continue
            self._attempts[subject] = attempts + 1
            self.claims += 1
            await self.host.write("mesh.claim", {"address": address, "subject": subject})
        for gone in set(self._attempts) - set(subjects):
            del self._attempts[gone]

    def address(self) -> str | None:
        """This node's own mesh address, as its view says."""
        me = self.host.address
        held: str | None = self.host.read(
            lambda state: mesh_view(state).address_of(node_subject(me))
        )
        return held
