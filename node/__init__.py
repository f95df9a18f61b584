"""formation-node: a peer-to-peer fog node."""

__version__ = "0.1.0"
