"""What a host does next to one VM: compare what its owner wants with what runs.

Theory of operation
-------------------
Level-triggered, like a Kubernetes controller: the host's supervisor (``node.vmm.supervisor``)
calls ``next_action`` with the slot's ``Desired`` (``node.placement.duty``; None once the host
holds the slot no more: deleted, or moved elsewhere) and the driver's ``VmInfo`` (None when no
VM exists), performs the one action it returns, reports, and asks again until the answer is
``None``. Because the inputs are the whole truth each time, a missed event or a restarted node
costs one more round, never a wrong state.

* no desired slot: a VM that exists is deleted (the room goes back to the book);
* wanted running: no VM -> ``create`` (then ``start``); Created, Stopped -> ``start``; Killed or
  CriticalError -> ``start`` only when the owner asked again after it died (``desired_at`` newer
  than the failure: a VM that crashes is not restarted in a loop behind the owner's back);
  Started with a reboot request newer than the last one done -> ``reboot``;
* wanted stopped: Started -> ``stop``.
"""

from __future__ import annotations

from typing import Final, Literal

from node.placement.duty import Desired
from node.vmm.driver import VmInfo

__all__ = ["ACTIONS", "Action", "next_action"]

Action = Literal["create", "start", "stop", "reboot", "delete"]
ACTIONS: Final = ("create", "start", "stop", "reboot", "delete")


def next_action(
    desired: Desired | None, vm: VmInfo | None, *, failed_at_ms: int = 0
) -> Action | None:
    """The one thing to do now, or None when the VM is as wanted. ``failed_at_ms``: when this
    host saw the VM die or fail (its Killed or CriticalError report)."""
    if desired is None:
        return "delete" if vm is not None else None
    if vm is None:
        return "create" if desired.running else None
    if desired.running:
        if vm.status in ("Created", "Stopped"):
            return "start"
        if vm.status in ("Killed", "CriticalError"):
            return "start" if desired.desired_at > failed_at_ms else None
        if vm.status == "Started" and desired.reboot_at > desired.rebooted_for:
            return "reboot"
        return None
    if vm.status == "Started":
        return "stop"
    return None
