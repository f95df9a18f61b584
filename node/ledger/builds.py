"""The op kinds of builds: a user asks for an image, a node reports building it.

Theory of operation
-------------------
A build is named by what goes into it, not by who or where: ``build_id = sha256("formation:build:v1"
‖ owner ‖ context digest ‖ canonical Formfile)`` (``build_digest``). The same owner sending the
same Formfile and the same files gets the same id on any node, so a second ``form pack build`` of
an unchanged tree is the same build (already Built: nothing to do), and a replica checks the id
from the op alone (rule 2 of ``node.ledger.state``). The owner is part of the id because a build
holds its owner's users and hashed passwords; two owners never share one.

``build.request`` (signed by the owner, through the gateway as a request op) records the
Formfile's canonical text, the context manifest's digest (``node.pack.context``) and ``via``,
the node the context was uploaded to (a hint for where to build: that node already holds the
files). ``build.status`` is a node's report on a build: ``Building`` with the step it is on,
``Built`` with the image and manifest digests, or ``CriticalError`` with the failing step, its
Formfile line and the last lines of its output. Reports are kept per reporting node (a
``Record.reports`` LWW map each), so a build that two nodes ran (their views of who should
build differed for a moment) keeps both answers and merging commutes.

**Which report counts** is decided when reading (``build_view``): only reports signed by a
node that announced itself count (an account cannot claim to have built someone's image), a
``Built`` report beats the others (its image is content-addressed: any node that built it made
the same bytes' digest or a different one, and either verifies on fetch), then the latest.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any, Final

from node.ledger.op import Op, OpRejected
from node.ledger.record import Kind, Record, Tables
from node.ledger.schema import Addr, Enum, Int, Str

__all__ = ["BUILD_STATUSES", "KINDS", "TABLES", "build_digest", "build_view"]

TABLES: Final = ("builds",)
# The upstream's pack statuses, plus the name the record has before any node reports.
BUILD_STATUSES: Final = ("Building", "Built", "CriticalError")
_FORMFILE_BYTES_MAX: Final = 64 * 1024
_DIGEST = Str(length_min=64, length_max=64, pattern=r"[0-9a-f]+", hint="a sha256 hex digest")
_NAME = Str(
    required=True,
    length_min=1,
    length_max=63,
    pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    hint="use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
)


def build_digest(owner: str, formfile: str, context: str) -> str:
    """The build id: sha256 over the owner, the context manifest digest and the Formfile text."""
    h = hashlib.sha256(b"formation:build:v1\n")
    h.update(owner.lower().encode() + b"\n" + context.encode() + b"\n" + formfile.encode())
    return h.hexdigest()


def _authorize_request(op: Op, payload: dict[str, Any]) -> None:
    expected = build_digest(op.author, payload["formfile"], payload.get("context", ""))
    if "build_id" in payload and payload["build_id"] != expected:
        raise OpRejected(
            "unauthorized",
            f"build.request: build id {payload['build_id']} is not the digest of this owner, "
            f"Formfile and context ({expected})",
        )


def _anyone(op: Op, payload: dict[str, Any]) -> None:
    return None


def _request(state: Tables, op: Op, payload: dict[str, Any]) -> None:
    key = build_digest(op.author, payload["formfile"], payload.get("context", ""))
    record = state.record("builds", key, owner=op.author)
    values = {k: v for k, v in payload.items() if k != "build_id"}
    values["exists"] = True
    record.first("created", op.stamp)
    record.set_fields(values, op.stamp)


def _status(state: Tables, op: Op, payload: dict[str, Any]) -> None:
    record = state.record("builds", payload["build_id"])
    values = {k: v for k, v in payload.items() if k != "build_id"}
    record.set_report(op.author, {**values, "reported_at": op.wall_ms}, op.stamp)


def build_view(build_id: str, record: Record, owner: str, is_node: Any) -> dict[str, Any]:
    """The JSON view of one build; ``is_node(address)`` says whether a reporter is a node."""
    fields = record.live_fields()
    reports = {node: report.to_dict() for node, report in record.reports.items() if is_node(node)}

    def rank(item: tuple[str, dict[str, Any]]) -> tuple[int, int, str]:
        node, report = item
        return (report.get("status") == "Built", report.get("reported_at", 0), node)

    node, report = max(reports.items(), key=rank) if reports else (None, {})
    created = record.firsts.get("created")
    return {
        "build_id": build_id,
        "owner": owner,
        "name": fields.get("name"),
        "formfile": fields.get("formfile"),
        "context": fields.get("context", ""),
        "via": fields.get("via"),
        # None until a node reports: nothing builds until a node says so.
        "status": report.get("status"),
        "node_id": node,
        **{k: v for k, v in report.items() if k not in ("status",)},
        # Every node's last word, for the rule of whose turn it is (``node.pack.where``).
        "reports": {
            n: {"status": r.get("status"), "reported_at": r.get("reported_at", 0)}
            for n, r in sorted(reports.items())
        },
        "created_at": created[0] if created else None,
        "updated_at": record.updated_ms(),
    }


KINDS: Final[list[Kind]] = [
    Kind(
        "build.request",
        {
            "build_id": _DIGEST,
            "name": _NAME,
            "formfile": Str(length_max=_FORMFILE_BYTES_MAX, required=True),
            "context": _DIGEST,
            "via": Addr(),
        },
        _authorize_request,
        _request,
    ),
    Kind(
        "build.status",
        {
            "build_id": replace(_DIGEST, required=True),
            "status": Enum(values=BUILD_STATUSES, required=True),
            "step": Int(value_max=10_000),
            "steps": Int(value_max=10_000),
            "line": Int(value_max=1_000_000),
            "step_name": Str(length_max=128),
            "image": _DIGEST,
            "image_size_bytes": Int(),
            "manifest": _DIGEST,
            "error": Str(length_max=1024),
            "log_tail": Str(length_max=4096),
        },
        _anyone,
        _status,
    ),
]
