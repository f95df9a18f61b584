"""The gateway's route table: one module per group of routes, each exporting its ``ROWS``.

To add a group (builds, billing, dns, ...), write a module here that exports ``ROWS``, a list
of ``node.gateway.endpoint.Endpoint``, and add it to ``GROUPS``. Nothing else names the
routes: ``GatewayApp`` routes with ``ENDPOINTS``, ``/openapi.json`` describes it and a test
checks ``docs/api.md`` against it. The order of ``GROUPS`` is the table's order, which is the
order of the OpenAPI document (and of matching, though no two templates match the same path).

Handlers are ``async (app, request) -> Response``: they read the state through ``app.view``
(under the replica's lock) and write only through ``app.mutate`` (``node.gateway.app``).
"""

from __future__ import annotations

from typing import Final

from node.gateway.endpoint import Endpoint
from node.gateway.routes import (
    accounts,
    billing,
    blobs,
    builds,
    dns,
    instances,
    keys,
    market,
    node,
)

__all__ = ["ENDPOINTS", "GROUPS"]

GROUPS: Final = (node, accounts, instances, builds, blobs, market, keys, dns, billing)

ENDPOINTS: Final[tuple[Endpoint, ...]] = tuple(row for group in GROUPS for row in group.ROWS)
