"""Network profiles: which network a node joins and the peers it bootstraps through.

A profile is data, not code: a network id (it goes into every op, see node/ledger/op.py, so
ops signed for one network are void in another), the default listen address and the bootstrap
peers. Bootstrap entries are libp2p multiaddrs; an entry may lack its ``/p2p/<peer id>`` part
(the public devnet hosts are published as bare addresses): the node then learns the peer id
from the secure handshake when it dials (Noise authenticates the key it is talking to), and
remembers it.

The devnet hosts are the upstream's published ones (`shared/seed`, "host 1: 3.214.9.18") on
port 53333, the port of the upstream's peer-to-peer service (form-p2p's ``QUEUE_PORT``). The
gateway listens on 127.0.0.1:3004 (the upstream form-state's port) in every profile: it is the
operator's and local clients' door, and exposing it is an explicit choice (``--gateway``).
Nothing in tests or local runs dials them: tests read this table, and ``make run`` uses the
``local`` profile, which has no bootstrap peers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_PROFILE",
    "DEVNET_PORT",
    "LOCAL_ISSUER_ADDRESS",
    "PROFILES",
    "Profile",
    "get_profile",
]

# The upstream's peer-to-peer port (form-p2p QUEUE_PORT); our libp2p listens there on devnet.
DEVNET_PORT: Final = 53333

# The well-known local issuer (bootstrap/local/issuer-keystore.json, password "local"), like
# Hardhat's dev accounts: everybody knows its key, so only the ``local`` profile may trust it.
LOCAL_ISSUER_ADDRESS: Final = "0xf434c297c7d2d71b08d95777f595ac35f2df3976"


@dataclass(frozen=True)
class Profile:
    name: str
    network: str
    description: str
    listen_addrs: tuple[str, ...]
    bootstrap: tuple[str, ...]
    # The signed-request gateway (HOST:PORT; port 0 picks a free one).
    gateway: str = "127.0.0.1:3004"
    # Where agent endpoints may be for the gateway to proxy calls to them (IP networks).
    agent_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # The fog's mesh range (node.mesh.addresses): the upstream formnet's default.
    mesh_cidr: str = "10.42.0.0/16"
    # Genesis issuers: the only addresses whose mint orders mint credits (node.ledger.billing).
    # The first one also holds the network's fee account. Empty: nobody can mint.
    issuers: tuple[str, ...] = ()


PROFILES: Final[dict[str, Profile]] = {
    "local": Profile(
        name="local",
        network="local",
        description="a node on this machine only: listens on loopback, dials nobody",
        listen_addrs=("/ip4/127.0.0.1/tcp/0",),
        bootstrap=(),
        mesh_cidr="10.42.0.0/16",
        issuers=(LOCAL_ISSUER_ADDRESS,),
    ),
    "devnet": Profile(
        name="devnet",
        network="devnet",
        description="the public Formation devnet",
        listen_addrs=(f"/ip4/0.0.0.0/tcp/{DEVNET_PORT}",),
        bootstrap=(
            f"/ip4/3.214.9.18/tcp/{DEVNET_PORT}",
            f"/ip4/44.218.128.162/tcp/{DEVNET_PORT}",
        ),
        # Agents run in instances on the mesh; loopback is the node itself, never an agent.
        agent_networks=("10.0.0.0/8",),
        mesh_cidr="10.42.0.0/16",
        # The devnet's issuers are not published yet; never the well-known local key.
        issuers=(),
    ),
}

DEFAULT_PROFILE: Final = "local"


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown network profile {name!r}; known profiles: {known}") from None
