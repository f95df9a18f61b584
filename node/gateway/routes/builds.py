"""Build routes: ask the fog to build an image from a Formfile and an uploaded context; read builds.

A build request is a signed write like any other (``build.request``, ``node.ledger.builds``):
it replicates, and the node whose turn it is builds (``node.pack.service``). The answer says the
build id (the digest of owner, context and Formfile) at once; ``GET /builds/{id}`` then shows the
report of the node building it: ``Building`` with its step, ``Built`` with the image digest, or
``CriticalError`` with the failing step, its line and its last output. Only the owner reads a
build (it holds the owner's users and password hashes).
"""

from __future__ import annotations

import json
import urllib.parse
from typing import TYPE_CHECKING, Any

import trio

from node.gateway.endpoint import Endpoint, kind_schema
from node.gateway.http import HttpError, Request, Response
from node.ledger.builds import build_digest
from node.pack.formfile import FormfileError, limits_for_network, parse

if TYPE_CHECKING:
    from node.gateway.app import GatewayApp

__all__ = ["ROWS", "formfile_refusal"]


async def formfile_refusal(app: GatewayApp, request: Request) -> Response | None:
    """A 400 listing every problem of the body's ``formfile``, checked with the limits of this
    node's network, or None when it parses (or is absent or not a string: the op's own checks
    name that). Called before anything is submitted, so a refused Formfile changes nothing.
    The parse runs in a worker thread: a 64 KiB Formfile takes tens of milliseconds, which the
    event loop should spend on other requests."""
    try:
        body = json.loads(request.body.decode("utf-8") or "{}")
    except (UnicodeDecodeError, ValueError):
        return None  # mutate() answers invalid_json
    text = body.get("formfile") if isinstance(body, dict) else None
    if not isinstance(text, str):
        return None
    limits = limits_for_network(app.replica.network)
    try:
        await trio.to_thread.run_sync(lambda: parse(text, path="Formfile", limits=limits))
    except FormfileError as exc:
        errors = [
            {"path": d.path, "line": d.line, "col": d.col, "message": d.message}
            for d in exc.diagnostics
        ]
        first = exc.diagnostics[0]
        return Response(
            400,
            {
                "error": "invalid_formfile",
                "message": str(first),
                "field": "formfile",
                "errors": errors,
            },
        )
    return None


def _owned_build(app: GatewayApp, request: Request, build_id: str) -> dict[str, Any]:
    actor = app.actor(request, "read")[0]
    build = app.view(lambda: app.state.build(build_id))
    if build is None:
        raise HttpError(404, "not_found", f"no build {build_id}")
    if build["owner"] != actor:
        raise HttpError(403, "forbidden", f"build {build_id} is not {actor}'s")
    return dict(build)


async def build_create(app: GatewayApp, request: Request) -> Response:
    refusal = await formfile_refusal(app, request)
    if refusal is not None:
        return refusal
    done = await app.mutate(request)
    build_id = build_digest(done.author, done.payload["formfile"], done.payload.get("context", ""))
    build = app.view(lambda: app.state.build(build_id))
    return Response(
        201,
        {
            "op_id": done.op_id,
            "build_id": build_id,
            "status": build["status"] if build else None,
            "build": build,
        },
    )


async def build_get(app: GatewayApp, request: Request) -> Response:
    return Response(200, _owned_build(app, request, request.params["id"]))


LOG_LINES_PER_ANSWER_MAX = 500


async def build_log(app: GatewayApp, request: Request) -> Response:
    """This node's log of a build it runs or ran lately (``node.pack.service.BuildLog``): the
    lines from ``since`` on (at most 500 per answer), ``next`` to ask for the rest."""
    build_id = request.params["id"]
    _owned_build(app, request, build_id)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.target).query)
    text = (query.get("since") or ["0"])[0]
    if not text.isdigit():
        raise HttpError(
            400, "bad_request", f"since must be a line number (0 or more), got {text!r}", "since"
        )
    service = getattr(app.node, "builds", None)
    log = service.log(build_id) if service is not None else None
    if log is None:
        raise HttpError(
            404,
            "not_found",
            f"this node holds no log of build {build_id}; the node that builds it does "
            "(its report has the last lines of a failure)",
        )
    first, lines, done = log.since(int(text))
    lines = lines[:LOG_LINES_PER_ANSWER_MAX]
    return Response(200, {"first": first, "next": first + len(lines), "lines": lines, "done": done})


async def build_pull(app: GatewayApp, request: Request) -> Response:
    """Fetch a built image onto this node (``docker pull``-like): the image, its kernel, initrd
    and manifest, by digest over libp2p from the nodes that hold them, each verified on arrival.
    Answers what this node now holds; nothing is stored when a fetch fails."""
    build = _owned_build(app, request, request.params["id"])
    if build.get("status") != "Built" or not build.get("manifest"):
        raise HttpError(
            409,
            "not_built",
            f"build {build['build_id']} is {build.get('status') or 'waiting for a builder'}; "
            "pull it once it is Built",
        )
    node: Any = app.node
    blobs = getattr(node, "blobs", None)
    if blobs is None:
        raise HttpError(503, "no_blob_store", "this node keeps no blobs")
    fetched: list[str] = []

    async def have(digest: str) -> None:
        if not blobs.has(digest):
            await node.fetch_blob(digest)
            fetched.append(digest)

    try:
        await have(build["manifest"])
        manifest = json.loads(blobs.get(build["manifest"]))
        digests = {
            name: str(manifest[key])
            for name, key in (
                ("image", "image"),
                ("kernel", "kernel_blob"),
                ("initrd", "initrd_blob"),
            )
            if isinstance(manifest.get(key), str)
        }
        for digest in digests.values():
            await have(digest)
    except Exception as exc:  # no peer holds it, or every answer failed verification
        raise HttpError(
            502, "fetch_failed", f"cannot fetch build {build['build_id']}'s image: {exc}"
        ) from None
    return Response(
        200,
        {
            "build_id": build["build_id"],
            "manifest": build["manifest"],
            **digests,
            "image_size_bytes": blobs.size(digests["image"]) if "image" in digests else None,
            "fetched": fetched,
            "verified": True,
        },
    )


async def build_list(app: GatewayApp, request: Request) -> Response:
    actor = app.actor(request, "read")[0]
    builds = app.view(lambda: app.state.builds(actor))
    # The list leaves out the Formfile text (it can be 64 KiB each); ``GET /builds/{id}`` has it.
    rows = [{k: v for k, v in b.items() if k != "formfile"} for b in builds]
    return Response(200, {"count": len(rows), "builds": rows})


ROWS = [
    Endpoint(
        method="POST",
        path="/builds/create",
        handler=build_create,
        operation_id="buildCreate",
        summary="Ask the fog to build an image from a Formfile and an uploaded context",
        auth="signed",
        body_schema=kind_schema("build.request", drop=("build_id",)),
        status=201,
        tag="builds",
    ),
    Endpoint(
        method="GET",
        path="/builds/list",
        handler=build_list,
        operation_id="buildList",
        summary="The signer's builds",
        auth="signed",
        tag="builds",
    ),
    Endpoint(
        method="GET",
        path="/builds/{id}/log",
        handler=build_log,
        operation_id="buildLog",
        summary="This node's log of one of the signer's builds, from line `since` on",
        auth="signed",
        tag="builds",
    ),
    Endpoint(
        method="POST",
        path="/builds/{id}/pull",
        handler=build_pull,
        operation_id="buildPull",
        summary="Fetch one of the signer's built images onto this node, verified by digest",
        auth="signed",
        tag="builds",
    ),
    Endpoint(
        method="GET",
        path="/builds/{id}/get",
        handler=build_get,
        operation_id="buildGet",
        summary="One of the signer's builds, with the report of the node building it",
        auth="signed",
        tag="builds",
    ),
]
