"""Instance routes: ship a Built image (or record a Formfile), read the signer's, act on them.

Every instance route is signed and shows the signer only its own instances (a build's
instances and their mesh addresses included). A create naming a ``build_id`` is placed by this
node (``node.placement.service``) on nodes with room and booted there (``node.vmm``); its logs
and metrics are asked of the node that runs it (``node.p2p.vm_query``).
"""

from __future__ import annotations

import json
import urllib.parse
from typing import TYPE_CHECKING, Any

from node.gateway.endpoint import EMPTY_BODY, Endpoint, kind_schema
from node.gateway.http import HttpError, Request, Response
from node.gateway.routes.builds import formfile_refusal
from node.ledger.mesh import MeshView, mesh_view
from node.ledger.state import build_id_of, instance_id_of
from node.p2p.vm_query import LOG_BYTES_MAX
from node.placement.core import largest_free
from node.placement.duty import capacity_view, need_of

if TYPE_CHECKING:
    from node.gateway.app import GatewayApp

__all__ = ["ROWS"]


def _with_mesh(view: MeshView, instance: dict[str, Any] | None) -> dict[str, Any] | None:
    """The instance with each slot's mesh address (``formnet_ip``, upstream's name), which
    its host claims (``node.ledger.mesh``); slot 0's is the instance's own."""
    if instance is None:
        return None
    slots = [
        {**slot, "formnet_ip": view.slot_address(instance["instance_id"], slot["slot"])}
        for slot in instance.get("slots") or []
    ]
    first = slots[0]["formnet_ip"] if slots else None
    return {**instance, "slots": slots, "formnet_ip": first or instance.get("formnet_ip")}


def _owned_instance(app: GatewayApp, request: Request, instance_id: str) -> dict[str, Any]:
    actor = app.actor(request, "read")[0]
    instance = app.view(lambda: _with_mesh(mesh_view(app.state), app.state.instance(instance_id)))
    if instance is None:
        raise HttpError(404, "not_found", f"no instance {instance_id}")
    if instance["instance_owner"] != actor:
        raise HttpError(403, "forbidden", f"instance {instance_id} is not {actor}'s")
    return dict(instance)


def _ship_refusal(app: GatewayApp, request: Request) -> None:
    """For a create naming a ``build_id``: the build must be the signer's and Built, and some
    node must report room for it (else 409 ``no_capacity`` naming the largest free slot). A
    check on this node's view, before anything is written; the placer and the hosts decide."""
    try:
        body = json.loads(request.body.decode("utf-8") or "{}")
    except (UnicodeDecodeError, ValueError):
        return  # mutate() answers invalid_json
    build_id = body.get("build_id") if isinstance(body, dict) else None
    if not isinstance(build_id, str):
        return
    actor = app.actor(request, "instance")[0]
    build = app.view(lambda: app.state.build(build_id))
    if build is None:
        raise HttpError(404, "not_found", f"no build {build_id}", "build_id")
    if build["owner"] != actor:
        raise HttpError(403, "forbidden", f"build {build_id} is not {actor}'s", "build_id")
    if build.get("status") != "Built":
        raise HttpError(
            409,
            "not_built",
            f"build {build_id} is {build.get('status') or 'waiting for a builder'}; ship it "
            "once it is Built",
            "build_id",
        )
    parsed = need_of(build.get("formfile"))
    if parsed is None:
        raise HttpError(409, "not_built", f"build {build_id}'s Formfile does not parse here")
    need = parsed[0]
    nodes = app.view(lambda: app.state.nodes())
    view = capacity_view(nodes, {str(n["node_id"]) for n in nodes})
    if not any(need.fits(free) for free in view.values()):
        largest = largest_free(view)
        where = (
            f"the largest free slot is {largest[1].describe()} on node {largest[0]}"
            if largest
            else "no node offers VMs"
        )
        raise HttpError(
            409, "no_capacity", f"no node has room for {need.describe()}; {where}", "build_id"
        )


async def instance_create(app: GatewayApp, request: Request) -> Response:
    refusal = await formfile_refusal(app, request)
    if refusal is not None:
        return refusal
    _ship_refusal(app, request)
    done = await app.mutate(request)
    instance_id = instance_id_of(done.author, done.payload["name"])
    instance = app.view(lambda: app.state.instance(instance_id))
    shipped = "build_id" in done.payload
    return Response(
        201,
        {
            "op_id": done.op_id,
            "instance_id": instance_id,
            "build_id": done.payload.get("build_id")
            or build_id_of(done.author, done.payload["name"]),
            "status": instance["status"] if instance else None,
            "note": "placing it on a node with room; follow it with GET /instance/{id}/get"
            if shipped
            else "recorded and replicated; give a build_id (form pack ship) to boot it",
            "instance": instance,
        },
    )


def _slot_param(request: Request, instance: dict[str, Any]) -> tuple[int, int]:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.target).query)
    slot_text = (query.get("slot") or ["0"])[0]
    bytes_text = (query.get("bytes") or ["65536"])[0]
    if not slot_text.isdigit() or int(slot_text) >= max(1, int(instance.get("replicas") or 1)):
        raise HttpError(
            400, "bad_request", f"slot must be 0..replicas-1, got {slot_text!r}", "slot"
        )
    if not bytes_text.isdigit() or not 0 < int(bytes_text) <= LOG_BYTES_MAX:
        raise HttpError(
            400, "bad_request", f"bytes must be 1..{LOG_BYTES_MAX}, got {bytes_text!r}", "bytes"
        )
    return int(slot_text), int(bytes_text)


async def _ask_host(
    app: GatewayApp, host: str, what: str, instance_id: str, slot: int, bytes_max: int
) -> dict[str, Any]:
    node: Any = app.node
    query = getattr(node, "vm_query", None)
    if query is None:
        raise HttpError(503, "no_vms", "this gateway's node cannot reach VM hosts")
    try:
        answer: dict[str, Any] = await query(host, what, instance_id, slot, bytes_max)
    except Exception as exc:  # the host is down or unreachable: say so, not 500
        raise HttpError(
            502, "host_unreachable", f"node {host} that runs the VM did not answer: {exc}"
        ) from None
    if "error" in answer:
        raise HttpError(404, "not_found", str(answer.get("message"))[:300])
    return answer


async def instance_logs(app: GatewayApp, request: Request) -> Response:
    """The console log of one slot's VM (its last ``bytes``), asked of the node that runs it."""
    instance = _owned_instance(app, request, request.params["id"])
    slot, bytes_max = _slot_param(request, instance)
    slots = instance.get("slots") or []
    host = slots[slot]["node_id"] if slot < len(slots) else None
    if not host:
        raise HttpError(409, "not_placed", f"instance {instance['instance_id']} runs nowhere yet")
    answer = await _ask_host(app, host, "logs", instance["instance_id"], slot, bytes_max)
    return Response(
        200, {"instance_id": instance["instance_id"], "slot": slot, "node_id": host, **answer}
    )


async def instance_metrics(app: GatewayApp, request: Request) -> Response:
    """Each slot's VM numbers (CPU seconds, memory, disk and network bytes) from its host."""
    instance = _owned_instance(app, request, request.params["id"])
    out = []
    for slot in instance.get("slots") or []:
        entry: dict[str, Any] = {"slot": slot["slot"], "node_id": slot["node_id"]}
        if slot["node_id"]:
            try:
                answer = await _ask_host(
                    app, slot["node_id"], "metrics", instance["instance_id"], slot["slot"], 1
                )
                entry.update(answer)
            except HttpError as exc:
                entry["error"] = exc.message
        out.append(entry)
    return Response(200, {"instance_id": instance["instance_id"], "slots": out})


async def instance_list(app: GatewayApp, request: Request) -> Response:
    actor = app.actor(request, "read")[0]
    instances = app.view(lambda: app.state.instances(actor))
    return Response(200, {"success": True, "count": len(instances), "instances": instances})


async def instance_get(app: GatewayApp, request: Request) -> Response:
    return Response(200, _owned_instance(app, request, request.params["id"]))


def _owned_build(app: GatewayApp, request: Request) -> list[dict[str, Any]]:
    actor = app.actor(request, "read")[0]
    build_id = request.params["id"]

    def read() -> list[dict[str, Any] | None]:
        view = mesh_view(app.state)  # once for the build, not once per instance
        return [_with_mesh(view, i) for i in app.state.instances_by_build(build_id)]

    instances = app.view(read)
    return [i for i in instances if i and i["instance_owner"] == actor]


async def instance_by_build(app: GatewayApp, request: Request) -> Response:
    instances = _owned_build(app, request)
    return Response(200, {"count": len(instances), "instances": instances})


async def instance_ips(app: GatewayApp, request: Request) -> Response:
    instances = _owned_build(app, request)
    ips = [
        s["formnet_ip"]
        for i in instances
        for s in i.get("slots") or [{"formnet_ip": i.get("formnet_ip")}]
        if s.get("formnet_ip")
    ]
    return Response(200, {"build_id": request.params["id"], "ips": ips})


async def instance_action(app: GatewayApp, request: Request) -> Response:
    done = await app.mutate(request)
    instance = app.view(lambda: app.state.instance(request.params["id"]))
    return Response(200, {"op_id": done.op_id, "instance": instance})


ROWS = [
    Endpoint(
        method="POST",
        path="/instance/create",
        handler=instance_create,
        operation_id="instanceCreate",
        summary="Record an instance request from a Formfile",
        auth="signed",
        body_schema=kind_schema("instance.create", drop=("id",)),
        status=201,
        tag="instances",
    ),
    Endpoint(
        method="GET",
        path="/instance/list",
        handler=instance_list,
        operation_id="instanceList",
        summary="The signer's instances",
        auth="signed",
        tag="instances",
    ),
    Endpoint(
        method="GET",
        path="/instance/{id}/get",
        handler=instance_get,
        operation_id="instanceGet",
        summary="One of the signer's instances",
        auth="signed",
        tag="instances",
    ),
    Endpoint(
        method="GET",
        path="/instance/{id}/get_by_build_id",
        handler=instance_by_build,
        operation_id="instanceByBuild",
        summary="The signer's instances of a build",
        auth="signed",
        tag="instances",
    ),
    Endpoint(
        method="GET",
        path="/instance/{id}/get_instance_ips",
        handler=instance_ips,
        operation_id="instanceIps",
        summary="Mesh addresses of a build's instances",
        auth="signed",
        tag="instances",
    ),
    Endpoint(
        method="GET",
        path="/instance/{id}/logs",
        handler=instance_logs,
        operation_id="instanceLogs",
        summary="The console log of one of the signer's instances (query: slot, bytes)",
        auth="signed",
        tag="instances",
    ),
    Endpoint(
        method="GET",
        path="/instance/{id}/metrics",
        handler=instance_metrics,
        operation_id="instanceMetrics",
        summary="CPU, memory, disk and network use of each of an instance's VMs",
        auth="signed",
        tag="instances",
    ),
    *(
        Endpoint(
            method="POST",
            path=f"/instance/{{id}}/{verb}",
            handler=instance_action,
            operation_id=f"instance{verb.title()}",
            summary=f"{verb.title()} one of the signer's instances",
            auth="signed",
            body_schema=EMPTY_BODY,
            tag="instances",
        )
        for verb in ("stop", "start", "reboot", "delete")
    ),
]
