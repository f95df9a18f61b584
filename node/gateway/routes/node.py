"""Routes about this node and the API itself: ping, health, the OpenAPI document, the nodes.

All public: a client can check a node is up and what it serves before it has a key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node import __version__
from node.gateway.endpoint import Endpoint
from node.gateway.http import Request, Response
from node.gateway.openapi import openapi

if TYPE_CHECKING:
    from node.gateway.app import GatewayApp

__all__ = ["ROWS"]


async def ping(app: GatewayApp, request: Request) -> Response:
    return Response(200, {"ping": "pong"})


async def health(app: GatewayApp, request: Request) -> Response:
    return Response(200, {"status": "healthy", "version": __version__})


async def get_openapi(app: GatewayApp, request: Request) -> Response:
    return Response(200, openapi(app.endpoints))


async def node_info(app: GatewayApp, request: Request) -> Response:
    return Response(200, app.node.info())


async def node_list(app: GatewayApp, request: Request) -> Response:
    nodes = app.view(app.state.nodes)
    return Response(200, {"count": len(nodes), "nodes": nodes})


ROWS = [
    Endpoint(
        method="GET",
        path="/ping",
        handler=ping,
        operation_id="ping",
        summary="Liveness: always pong",
    ),
    Endpoint(
        method="GET",
        path="/health",
        handler=health,
        operation_id="health",
        summary="Health and version",
    ),
    Endpoint(
        method="GET",
        path="/openapi.json",
        handler=get_openapi,
        operation_id="openapi",
        summary="This document",
    ),
    Endpoint(
        method="GET",
        path="/node/info",
        handler=node_info,
        operation_id="nodeInfo",
        summary="This node: address, peer id, network, state",
    ),
    Endpoint(
        method="GET",
        path="/node/list",
        handler=node_list,
        operation_id="nodeList",
        summary="Every node known, with capacity and heartbeat",
    ),
]
