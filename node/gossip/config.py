"""Gossip configuration, with named presets (memberlist style): every default says why."""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["GossipConfig"]


@dataclass(frozen=True)
class GossipConfig:
    # -- membership (SWIM + Lifeguard) --
    # One probe per interval per node: failure detection in a few seconds at ~2 messages/s.
    probe_interval_s: float = 1.0
    # A direct probe's ack is awaited this long before indirect probes go out; > 2 x the
    # worst expected RTT.
    probe_timeout_s: float = 0.5
    # Relays asked to probe a silent member: 3 tolerates a couple of bad paths (SWIM paper).
    indirect_probes: int = 3
    # Suspicion lasts between suspicion_mult x max(1, log10 N) x probe_interval (the minimum,
    # reached with enough independent confirmations) and suspicion_max_mult times that minimum
    # (memberlist's formula and defaults: 24 s at N=10 before a lone suspicion becomes death).
    suspicion_mult: float = 4.0
    suspicion_max_mult: float = 6.0
    # Lifeguard local health: a node that misses acks slows its own probing up to this factor,
    # so a CPU-starved node stops accusing healthy ones.
    awareness_max: int = 8
    # A membership update is piggybacked retransmit_mult x log10(N+1) times (at least 3).
    retransmit_mult: int = 4
    updates_per_packet_max: int = 16
    # Bound on the member table; joins past it are ignored (logged by the driver).
    members_max: int = 10_000
    # Dead members are forgotten after this long (a rejoin with a higher incarnation is fine).
    dead_forget_s: float = 60.0
    # How many members a seed returns to a joining node (peer exchange).
    welcome_members_max: int = 256

    # -- dissemination (two-level rendezvous tree, node/gossip/core.py) --
    # Ops for a peer are batched and flushed at most this often: the main lever on messages
    # per op; a 25 ms flush adds 12.5 ms per hop on average.
    flush_interval_s: float = 0.025
    # A leaf re-sends its attachment to its parent this often; a parent forgets a child that
    # has been silent for three times as long.
    attach_refresh_s: float = 10.0
    # A parent sends a new child the ops it passed on in the last attach_catch_up_s: those
    # that reached it while the child's Attach was in flight (the child already detached from
    # its old parent). Longer than an Attach's one-way trip with margin; one batch, so it
    # costs bytes (about ops/s x this many copies per parent change), not messages.
    attach_catch_up_s: float = 1.0
    # Bound on children per parent (about sqrt(N) are expected; the slack absorbs views that
    # disagree for a while).
    children_max: int = 4096
    # Random members told about new ops with IHAVE (repair); 0 disables IHAVE. The set is
    # re-drawn this often so repair paths do not fossilize.
    lazy_peers: int = 3
    lazy_refresh_s: float = 30.0
    # IHAVE announcements to lazy peers are batched this long, and a missing op they announce
    # is requested (IWANT) if it has not arrived by ihave_timeout_s after the first
    # announcement. Repair time is about their sum plus a round trip: with 1 % loss, ~1 % of
    # nodes miss each push, so these two set how fast an op reaches 99 % and 100 % of a large
    # fog. 0.2 s / 0.25 s: 99 % of 300 nodes within 0.87 s for every op, at +1.5 msgs/op on
    # broadcast-25 compared with 0.5 s / 0.5 s (docs/benchmarks.md).
    ihave_interval_s: float = 0.2
    ihave_timeout_s: float = 0.25
    # Bounds per packet: a hostile or slow peer never makes us build an unbounded frame.
    ops_per_packet_max: int = 512
    ids_per_packet_max: int = 4096
    packet_bytes_max: int = 4 * 1024 * 1024
    # Ids remembered as recently seen/announced, to bound the lazy-push bookkeeping.
    recent_ids_max: int = 100_000

    # -- anti-entropy --
    # Every node reconciles its op set with one random peer this often: it repairs whatever
    # push and IHAVE missed (loss, partitions, restarts).
    sync_interval_s: float = 1.0
    # A reconciliation gives up after this many flights or this long.
    sync_flights_max: int = 24
    sync_timeout_s: float = 5.0
    # Each node tries to reach one member it believes dead this often: a healed partition is
    # noticed (the "dead" side refutes) without waiting for anyone to rejoin by hand.
    reconnect_interval_s: float = 2.0
    # Ops sent per anti-entropy reply packet (large catch-ups arrive over several rounds).
    sync_ops_per_reply_max: int = 2048

    @classmethod
    def lan(cls) -> GossipConfig:
        return cls()

    @classmethod
    def wan(cls) -> GossipConfig:
        """Internet-wide fog: slower probes, longer timeouts (memberlist's WAN preset)."""
        return replace(
            cls(),
            probe_interval_s=2.0,
            probe_timeout_s=1.5,
            suspicion_mult=6.0,
            flush_interval_s=0.05,
            ihave_timeout_s=0.6,
            sync_interval_s=2.0,
        )

    @classmethod
    def local(cls) -> GossipConfig:
        """Processes on one host (tests, `formation-sim real`): everything faster."""
        return replace(
            cls(),
            probe_interval_s=0.5,
            probe_timeout_s=0.2,
            flush_interval_s=0.01,
            ihave_timeout_s=0.1,
            sync_interval_s=0.5,
        )
