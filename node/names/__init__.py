"""Names in the fog: a DNS zone computed from replicated state (``records``) and a Trio UDP and
TCP server that answers it on dnslib's wire format (``server``).

Not named ``dns``: that name would shadow dnspython, which ``import libp2p`` needs.
"""

from node.names.records import Answer, Zone, build_label

__all__ = ["Answer", "Zone", "build_label"]
