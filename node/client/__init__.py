"""``form``: the user's client of a node's gateway (signing, the HTTP API, the command line).

``signer`` is pure; ``api`` is a synchronous ``httpx`` client with one method per route;
``cli`` is the ``form`` program built on it.
"""

from node.client.api import ApiError as ApiError
from node.client.api import ClientError as ClientError
from node.client.api import GatewayClient as GatewayClient
from node.client.api import GatewayUnreachable as GatewayUnreachable
from node.client.signer import sign_request as sign_request

__all__ = ["ApiError", "ClientError", "GatewayClient", "GatewayUnreachable", "sign_request"]
