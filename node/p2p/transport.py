"""The libp2p transport: authenticated, framed byte packets between nodes.

Long on purpose: the only module that imports libp2p, so every workaround for py-libp2p's behaviour lives here and nowhere else.

Theory of operation
-------------------
This is the only module that imports py-libp2p (importing it costs ~1 s and ~55 MB, so nothing
else should pay for it). A ``Transport`` is one libp2p host whose identity is the node's
secp256k1 key, so a node's PeerID and its Ethereum address come from one key: the PeerID
inlines the compressed public key, and ``address_of_peer_id`` derives the address from it.

**Security.** Over TCP the host offers Noise only. py-libp2p's default host also offers TLS,
SECIO and *plaintext*, and accepts a plaintext-only dialer; passing ``sec_opt`` with Noise
alone closes that. Streams are muxed with Yamux over TCP.

**QUIC.** ``/ip4/.../udp/PORT/quic-v1`` listen addresses work too (py-libp2p's QUIC on
aioquic). QUIC has its own TLS 1.3, where the certificate carries the libp2p extension signed
by the same secp256k1 node key, and its own streams; everything above the stream (framing,
identity of a sender) is the same. Every node can dial both kinds; listen addresses decide
what it serves.

**Identity of a sender.** Inbound frames are delivered as ``(address, data)`` where the
address is derived from the Noise-authenticated remote PeerID, never from the payload. A
remote whose PeerID is not a secp256k1 key has no address and its streams are refused.

**Streams.** One gossip protocol; each packet is ``wire.frame(data)``. ``send`` keeps one
long-lived outbound stream per peer, opened lazily and reopened once on a write error; writes
to one stream are serialised by a per-peer lock so frames never interleave. Each inbound
stream is read by a ``FrameReader``: a frame over the limit or a malformed prefix resets that
stream (logged, never raised into the host). A full inbox drops the frame and counts it in
``dropped_frames`` instead of stalling the stream: gossip is loss-tolerant (anti-entropy
repairs it), whereas back-pressure through a shared inbox would let one slow consumer stall
every peer's sender.

**Dialing without a PeerID.** libp2p's swarm only dials a known PeerID. For a multiaddr
without ``/p2p/...`` we dial the raw TCP transport, negotiate Noise as initiator with no
expected peer (Noise XX learns and authenticates the responder's key), upgrade to Yamux and
hand the connection to the swarm, which then treats it like any outbound connection. A QUIC
address needs its ``/p2p/<peer id>``: py-libp2p's QUIC client checks the server's certificate
against a PeerID it must know beforehand.

**Peers.** A peer is known once we dialed it or it opened a stream to us, and kept in a
``PeerTable`` (``node/p2p/peer_table.py``) ordered by activity. It is forgotten when its
last connection closes, when the gossip driver says membership declared it dead or gone
(``forget``, which also closes our connections to it), or when a new peer arrives at a full
table and it is the least recently active (evicted, connections closed). A forgotten peer's
addresses leave the peerstore and py-libp2p's auto-connector is stopped, so nothing redials
it behind the gossip layer's back.

**Shutdown.** Every connection's socket is closed explicitly when the transport closes,
because py-libp2p leaves some to the garbage collector when the enclosing scope is cancelled
(see ``_close_network``).

**Request/response protocols.** Besides the gossip stream, a protocol can be served with
``register_handler(protocol, handler)``: each inbound stream of it becomes an ``Exchange``
(framed like gossip, frames bounded by the handler's ``frame_bytes_max``, every read and write
under a deadline of ``timeout_s``) handed to ``handler``, which answers on it; the handler as a
whole is cut off after ``handler_timeout_s``. ``open_exchange(address, protocol)`` is the
dialer's side (one fresh stream per exchange, so a slow transfer never holds up gossip), and
``request`` the one-frame-each-way case. Inbound exchanges count against
``inbound_streams_max`` like gossip streams; an error in a handler resets only its stream.

**Bounds.** ``peers_max`` known peers (and twice that many connections),
``inbound_streams_max`` concurrent inbound streams, an inbox of ``inbox_frames_max`` frames,
frames of at most ``frame_bytes_max`` bytes, and timeouts on dials and stream opens.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import coincurve
import libp2p.network.swarm as _libp2p_swarm
import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INotifee
from libp2p.crypto.secp256k1 import Secp256k1PublicKey
from libp2p.crypto.secp256k1 import create_new_key_pair as secp256k1_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.transport.quic.config import QUICTransportConfig
from libp2p.transport.quic.transport import QUICTransport
from libp2p.transport.tcp.tcp import TCP

from node.gossip.wire import DEFAULT_LIMITS, BadPacket, FrameReader, frame
from node.identity.keys import NodeKey, address_from_public_key, normalize_address
from node.logs import adopt_library_loggers
from node.p2p.peer_table import PeerTable

__all__ = [
    "DEFAULT_PROTOCOL",
    "Exchange",
    "ExchangeHandler",
    "PeerUnreachable",
    "Transport",
    "TransportError",
    "UnknownPeer",
    "address_of_peer_id",
    "open_transport",
    "peer_id_of",
    "quiet_libp2p_logs",
]

logger = logging.getLogger(__name__)
# libp2p's import just unhooked its loggers from ours (node.logs): hook them back.
adopt_library_loggers()

DEFAULT_PROTOCOL: Final = "/formation/gossip/1.0.0"

# py-libp2p 0.8.1 waits up to _HAPPY_EYEBALLS_DELAY (250 ms) after starting each address dial
# before trying the next, and the wait is not cut short when the dial *succeeds*, so every
# connect() took >= 250 ms (252 ms measured, for a 17-30 ms Noise+Yamux handshake). The wait
# runs concurrently with the dial, so 10 ms costs nothing for one address and still gives the
# first address a head start over a second one. Loopback, benchmarks/bench_transport_dial.py:
# connect() median 251.9 ms with 0.250 -> 11.0 ms with 0.010 (dial without /p2p: 6.4 ms).
_HAPPY_EYEBALLS_DELAY_S: Final = 0.010
_libp2p_swarm._HAPPY_EYEBALLS_DELAY = _HAPPY_EYEBALLS_DELAY_S

_LIBP2P_LOGGERS: Final = ("libp2p", "multiaddr", "async_service", "aioquic", "zeroconf")
_READ_CHUNK_BYTES: Final = 65536
# Peerstore TTL for addresses we dialed: long enough that send() can redial after a drop.
_ADDR_TTL_S: Final = 3600
_CLOSE_TIMEOUT_S: Final = 2.0
# A node keeps one long-lived gossip stream per peer each way, plus py-libp2p's identify.
_QUIC_STREAMS_PER_CONNECTION_MAX: Final = 16


class TransportError(Exception):
    """A transport operation failed; the message names the peer and the cause."""


class Exchange:
    """One request/response stream: whole frames each way, each read and write under a deadline."""

    def __init__(self, stream: Any, remote: str, frame_bytes_max: int, timeout_s: float) -> None:
        self.remote = remote  # the Noise-authenticated address of the other end
        self.timeout_s = timeout_s
        self._stream = stream
        self._reader = FrameReader(frame_bytes_max)
        self._frames: list[bytes] = []

    async def send(self, data: bytes) -> None:
        """Write ``frame(data)``; ``TransportError`` if the peer does not take it in time."""
        try:
            with trio.fail_after(self.timeout_s):
                await self._stream.write(frame(bytes(data)))
        except trio.TooSlowError:
            raise TransportError(
                f"{self.remote} did not take a frame within {self.timeout_s} s"
            ) from None
        except TransportError:
            raise
        except Exception as error:
            raise TransportError(f"writing to {self.remote} failed: {error!r}") from error

    async def receive(self) -> bytes:
        """The next whole frame; ``TransportError`` on a deadline, an end or a bad frame."""
        try:
            with trio.fail_after(self.timeout_s):
                while not self._frames:
                    try:
                        chunk = await self._stream.read(_READ_CHUNK_BYTES)
                    except EOFError:
                        chunk = b""
                    if not chunk:
                        raise TransportError(f"{self.remote} ended the stream mid-exchange")
                    try:
                        self._frames.extend(self._reader.feed(chunk))
                    except BadPacket as error:
                        raise TransportError(f"{self.remote} sent a bad frame: {error}") from None
        except trio.TooSlowError:
            raise TransportError(f"{self.remote} sent no frame within {self.timeout_s} s") from None
        except TransportError:
            raise
        except Exception as error:
            raise TransportError(f"reading from {self.remote} failed: {error!r}") from error
        return self._frames.pop(0)

    async def close(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT_S):
            try:
                await self._stream.close()
            except Exception:
                await _reset_quietly(self._stream)

    async def reset(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT_S):
            await _reset_quietly(self._stream)


ExchangeHandler = Callable[[Exchange], Awaitable[None]]


class UnknownPeer(TransportError):
    """``send`` to an address we never connected to and never heard from."""


class PeerUnreachable(TransportError):
    """The peer is known but no stream to it could be opened or written."""


def quiet_libp2p_logs(level: int = logging.ERROR) -> None:
    """Raise py-libp2p's (and its dependencies') loggers to ``level``.

    At the default level py-libp2p logs routine events (identify streams cut by shutdown,
    failed security negotiation) as warnings or info; the node logs what matters itself.
    """
    for name in _LIBP2P_LOGGERS:
        logging.getLogger(name).setLevel(level)


def _libp2p_public_key(key: NodeKey) -> Secp256k1PublicKey:
    return Secp256k1PublicKey(coincurve.PublicKey(key.public_key.format(compressed=True)))


def peer_id_of(key: NodeKey) -> str:
    """The libp2p PeerID (base58, ``16Uiu2HA...``) of a node key."""
    return str(ID.from_pubkey(_libp2p_public_key(key)).to_base58())


def _address_of_id(peer_id: ID) -> str:
    try:
        public_key = peer_id.extract_public_key()
    except Exception as error:  # py-libp2p raises assorted errors for malformed ids
        raise ValueError(f"peer id {peer_id} does not inline a public key ({error})") from None
    if not isinstance(public_key, Secp256k1PublicKey):
        kind = type(public_key).__name__ if public_key is not None else "a hashed key"
        raise ValueError(
            f"peer id {peer_id} carries {kind}, not a secp256k1 key: it has no Ethereum"
            " address (formation nodes use their secp256k1 node key as libp2p identity)"
        )
    return address_from_public_key(public_key.impl)


def address_of_peer_id(peer_id: str) -> str:
    """The Ethereum address (lower-case ``0x...``) of the secp256k1 key a PeerID inlines."""
    try:
        parsed = ID.from_base58(peer_id)
    except Exception:
        raise ValueError(f"{peer_id!r} is not a base58 libp2p peer id") from None
    return _address_of_id(parsed)


@dataclass(frozen=True, slots=True)
class TransportLimits:
    peers_max: int = 256
    inbound_streams_max: int = 512
    inbox_frames_max: int = 1024
    frame_bytes_max: int = DEFAULT_LIMITS.packet_bytes_max
    dial_timeout_s: float = 10.0
    stream_open_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("peers_max", "inbound_streams_max", "inbox_frames_max", "frame_bytes_max"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"TransportLimits.{name} must be a positive int, got {value!r}")
        for name in ("dial_timeout_s", "stream_open_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"TransportLimits.{name} must be a positive number, got {value!r}")


class Transport:
    """A running libp2p host; build it with ``open_transport``."""

    def __init__(self, key: NodeKey, host: Any, protocol: str, limits: TransportLimits) -> None:
        self.address = key.address
        self.peer_id = peer_id_of(key)
        self.limits = limits
        self.dropped_frames = 0
        self._host = host
        self._protocol = TProtocol(protocol)
        self._peers = PeerTable[ID](limits.peers_max)
        self._out_streams: dict[str, Any] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._inbound_streams = 0
        send, receive = trio.open_memory_channel[tuple[str, bytes]](limits.inbox_frames_max)
        self._inbox_send = send
        self.inbox: trio.MemoryReceiveChannel[tuple[str, bytes]] = receive

    # --- addresses and peers -----------------------------------------------------------

    @property
    def listen_addrs(self) -> list[str]:
        """The multiaddrs actually bound (port 0 resolved), each ending in ``/p2p/<id>``."""
        return [str(addr) for addr in self._host.get_addrs()]

    @property
    def peers(self) -> list[str]:
        """Addresses of the known peers, least recently active first."""
        return self._peers.addresses()

    async def _remember(self, address: str, peer_id: ID) -> None:
        if address == self.address:
            raise TransportError(f"refusing to talk to our own identity {address}")
        evicted = self._peers.touch(address, peer_id)
        if evicted is not None:
            logger.info(
                "%d peers (peers_max): evicting %s, the least recently active",
                self.limits.peers_max,
                evicted[0],
            )
            await self._drop(*evicted)

    async def forget(self, address: str) -> bool:
        """Forget a peer and close our connections to it; False if it was not known.

        The gossip driver calls this when membership declares a member dead or gone. Sending
        to it again raises ``UnknownPeer`` until it is dialed again or opens a stream to us.
        """
        address = normalize_address(address)
        peer_id = self._peers.forget(address)
        if peer_id is None:
            return False
        await self._drop(address, peer_id)
        return True

    async def _drop(self, address: str, peer_id: ID) -> None:
        """Release a peer no longer in the table and close our connections to it."""
        self._release(address, peer_id)
        for conn in list(self._host.get_network().get_connections(peer_id)):
            await _close_socket(conn)

    def _release(self, address: str, peer_id: ID) -> None:
        """Drop what we hold for a peer no longer in the table."""
        self._out_streams.pop(address, None)
        lock = self._locks.get(address)
        if lock is not None and not lock.locked():  # a held one is dropped by its send()
            del self._locks[address]
        # Without addresses neither new_stream() nor py-libp2p's own dialers redial it.
        self._host.get_peerstore().clear_addrs(peer_id)

    def _on_disconnected(self, peer_id: ID) -> None:
        """py-libp2p closed a connection: forget the peer once no connection to it is left."""
        if any(not conn.is_closed for conn in self._host.get_network().get_connections(peer_id)):
            return
        try:
            address = _address_of_id(peer_id)
        except ValueError:
            return
        if self._peers.get(address) == peer_id:
            self._peers.forget(address)
            self._release(address, peer_id)

    # --- dialing ---------------------------------------------------------------------------

    async def connect(self, addr: str) -> str:
        """Dial ``addr`` (with or without ``/p2p/<id>``) and return the peer's address."""
        try:
            maddr = multiaddr.Multiaddr(addr)
        except Exception as error:
            raise ValueError(f"{addr!r} is not a multiaddr ({error})") from None
        try:
            has_id = bool(maddr.value_for_protocol("p2p"))
        except Exception:
            has_id = False
        try:
            with trio.fail_after(self.limits.dial_timeout_s):
                if has_id:
                    info = info_from_p2p_addr(maddr)
                    address = _address_of_id(info.peer_id)
                    if address == self.address:
                        raise TransportError(f"refusing to dial our own identity {address}")
                    await self._host.connect(info)
                    # Remembered once connected, so that a close of an older connection
                    # to it, reported meanwhile, cannot make us forget it again.
                    await self._remember(address, info.peer_id)
                    return address
                return await self._connect_without_id(maddr)
        except trio.TooSlowError:
            raise PeerUnreachable(
                f"dial to {addr} timed out after {self.limits.dial_timeout_s} s"
            ) from None
        except (TransportError, ValueError):
            raise
        except Exception as error:
            raise PeerUnreachable(f"dial to {addr} failed: {error}") from error

    async def _connect_without_id(self, maddr: multiaddr.Multiaddr) -> str:
        swarm = self._host.get_network()
        transport = swarm.transport_manager.transport_for_dialing(maddr)
        if transport is None:
            raise ValueError(
                f"no transport can dial {maddr} (this node dials /ip4|ip6/.../tcp/... and"
                " /ip4|ip6/.../udp/.../quic-v1/p2p/...)"
            )
        if getattr(transport, "provides_native_muxing", False):
            # py-libp2p's QUIC client checks the server's certificate against a PeerID
            # it must know before the handshake; it cannot learn one the way Noise XX does.
            raise ValueError(
                f"{maddr}: a QUIC address needs the peer id, /.../quic-v1/p2p/<peer id>"
            )
        raw_conn = await transport.dial(maddr)
        try:
            # Noise XX with no expected peer: the handshake authenticates whatever key the
            # responder proves, and that key is the identity we report.
            secured = await swarm.upgrader.security_multistream.secure_outbound(raw_conn, None)
            peer_id = secured.get_remote_peer()
            address = _address_of_id(peer_id)
            if address == self.address:
                raise TransportError(f"refusing to dial our own identity {address}")
            muxed = await swarm.upgrader.upgrade_connection(secured, peer_id)
        except BaseException:
            with trio.CancelScope(shield=True):
                await raw_conn.close()
            raise
        self._host.get_peerstore().add_addrs(peer_id, [maddr], _ADDR_TTL_S)
        swarm_conn = await swarm.add_conn(muxed, direction="outbound")
        await swarm_conn.event_started.wait()
        await self._remember(address, peer_id)
        return address

    # --- sending ---------------------------------------------------------------------------

    async def send(self, address: str, data: bytes) -> None:
        """Write ``frame(data)`` on our long-lived stream to ``address``."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"send takes bytes, got {type(data).__name__}")
        if len(data) > self.limits.frame_bytes_max:
            raise ValueError(
                f"packet is {len(data)} bytes; the frame limit is {self.limits.frame_bytes_max}"
            )
        address = normalize_address(address)
        peer_id = self._peers.get(address)
        if peer_id is None:
            raise UnknownPeer(f"no peer {address}: connect() to it first")
        payload = frame(bytes(data))
        lock = self._locks.setdefault(address, trio.Lock())
        try:
            async with lock:
                last_error: BaseException | None = None
                for _attempt in range(2):  # the cached stream, then one fresh stream
                    stream = self._out_streams.get(address)
                    try:
                        if stream is None:
                            with trio.fail_after(self.limits.stream_open_timeout_s):
                                stream = await self._host.new_stream(peer_id, [self._protocol])
                            self._out_streams[address] = stream
                        await stream.write(payload)
                        self._peers.refresh(address)
                        return
                    except trio.TooSlowError as error:
                        last_error = error
                    except Exception as error:
                        last_error = error
                    stale = self._out_streams.pop(address, None)
                    if stale is not None:
                        with trio.CancelScope(shield=True), trio.move_on_after(1):
                            await _reset_quietly(stale)
        finally:
            if address not in self._peers and not lock.locked():  # forgotten meanwhile
                self._locks.pop(address, None)
        raise PeerUnreachable(
            f"cannot send to {address} ({peer_id}): {last_error!r}"
        ) from last_error

    # --- request/response protocols ------------------------------------------------------

    def register_handler(
        self,
        protocol: str,
        handler: ExchangeHandler,
        *,
        frame_bytes_max: int,
        timeout_s: float = 30.0,
        handler_timeout_s: float = 600.0,
        concurrent_max: int = 16,
    ) -> None:
        """Serve ``protocol``: each inbound stream is an ``Exchange`` given to ``handler``.

        At most ``concurrent_max`` exchanges of it run at once (one over is reset at once, the
        asker tries elsewhere), so a burst of large transfers cannot take every stream slot.
        """
        if not protocol.startswith("/") or TProtocol(protocol) == self._protocol:
            raise ValueError(f"protocol {protocol!r} must start with '/' and not be the gossip one")
        if type(frame_bytes_max) is not int or frame_bytes_max < 1:
            raise ValueError(f"frame_bytes_max must be a positive int, got {frame_bytes_max!r}")
        if type(concurrent_max) is not int or concurrent_max < 1:
            raise ValueError(f"concurrent_max must be a positive int, got {concurrent_max!r}")
        running = 0

        async def serve(stream: Any) -> None:
            nonlocal running
            # Runs in libp2p's nursery: nothing may escape, or it takes the host down.
            try:
                remote: ID = stream.muxed_conn.peer_id
                address = _address_of_id(remote)
                await self._remember(address, remote)
            except Exception as error:
                logger.warning("refusing %s stream: %s", protocol, error)
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await _reset_quietly(stream)
                return
            if (
                self._inbound_streams >= self.limits.inbound_streams_max
                or running >= concurrent_max
            ):
                logger.warning("refusing %s stream from %s: too many streams", protocol, address)
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await _reset_quietly(stream)
                return
            self._inbound_streams += 1
            running += 1
            exchange = Exchange(stream, address, frame_bytes_max, timeout_s)
            try:
                with trio.move_on_after(handler_timeout_s) as scope:
                    await handler(exchange)
                if scope.cancelled_caught:
                    logger.info("%s handler for %s ran out of time", protocol, address)
                    await exchange.reset()
                else:
                    await exchange.close()
            except Exception as error:
                logger.info("%s exchange with %s ended: %r", protocol, address, error)
                await exchange.reset()
            finally:
                self._inbound_streams -= 1
                running -= 1

        self._host.set_stream_handler(TProtocol(protocol), serve)

    @asynccontextmanager
    async def open_exchange(
        self, address: str, protocol: str, *, frame_bytes_max: int, timeout_s: float = 30.0
    ) -> AsyncIterator[Exchange]:
        """A fresh stream of ``protocol`` to a known peer, closed (or reset on error) after."""
        address = normalize_address(address)
        peer_id = self._peers.get(address)
        if peer_id is None:
            raise UnknownPeer(f"no peer {address}: connect() to it first")
        try:
            with trio.fail_after(self.limits.stream_open_timeout_s):
                stream = await self._host.new_stream(peer_id, [TProtocol(protocol)])
        except trio.TooSlowError:
            raise PeerUnreachable(
                f"{address} did not open a {protocol} stream within "
                f"{self.limits.stream_open_timeout_s} s"
            ) from None
        except Exception as error:
            raise PeerUnreachable(
                f"cannot open a {protocol} stream to {address}: {error!r}"
            ) from error
        exchange = Exchange(stream, address, frame_bytes_max, timeout_s)
        try:
            yield exchange
        except BaseException:
            await exchange.reset()
            raise
        await exchange.close()
        self._peers.refresh(address)

    async def request(
        self,
        address: str,
        protocol: str,
        data: bytes,
        *,
        frame_bytes_max: int,
        timeout_s: float = 30.0,
    ) -> bytes:
        """Send one frame on a fresh ``protocol`` stream and return the one frame answered."""
        async with self.open_exchange(
            address, protocol, frame_bytes_max=frame_bytes_max, timeout_s=timeout_s
        ) as exchange:
            await exchange.send(data)
            return await exchange.receive()

    # --- receiving -------------------------------------------------------------------------

    async def _handle_inbound(self, stream: Any) -> None:
        # Runs in libp2p's nursery: nothing may escape, or it takes the host down.
        try:
            await self._read_stream(stream)
        except Exception as error:
            logger.info("inbound stream ended: %r", error)
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await _reset_quietly(stream)

    async def _read_stream(self, stream: Any) -> None:
        remote: ID = stream.muxed_conn.peer_id
        try:
            address = _address_of_id(remote)
            await self._remember(address, remote)
        except (ValueError, TransportError) as error:
            logger.warning("refusing inbound stream from %s: %s", remote, error)
            await _reset_quietly(stream)
            return
        if self._inbound_streams >= self.limits.inbound_streams_max:
            logger.warning(
                "refusing inbound stream from %s: %d streams open (inbound_streams_max)",
                address,
                self._inbound_streams,
            )
            await _reset_quietly(stream)
            return
        self._inbound_streams += 1
        try:
            reader = FrameReader(self.limits.frame_bytes_max)
            while True:
                try:
                    chunk = await stream.read(_READ_CHUNK_BYTES)
                except EOFError:  # libp2p's StreamEOF
                    chunk = b""
                if not chunk:
                    await stream.close()
                    return
                try:
                    frames = reader.feed(chunk)
                except BadPacket as error:
                    logger.warning("closing stream from %s: %s", address, error)
                    await _reset_quietly(stream)
                    return
                if frames:
                    self._peers.refresh(address)
                for data in frames:
                    try:
                        self._inbox_send.send_nowait((address, data))
                    except trio.WouldBlock:
                        self.dropped_frames += 1
                        logger.debug("inbox full: dropped a %d-byte frame", len(data))
                    except trio.ClosedResourceError:
                        await _reset_quietly(stream)
                        return
        finally:
            self._inbound_streams -= 1


async def _close_socket(conn: Any) -> None:
    """Close a connection's secured connection (its socket) now.

    Faster than ``SwarmConn.close()``, which sleeps 0.2 s: py-libp2p's muxer task then reads
    EOF and unregisters the connection itself. QUIC connections have no secured connection
    under the muxer; they are closed whole.
    """
    closable = getattr(conn.muxed_conn, "secured_conn", None) or conn.muxed_conn
    try:
        await closable.close()
    except Exception as error:
        logger.debug("closing a connection failed: %r", error)


class _DisconnectWatcher(INotifee):
    """Tells the transport when py-libp2p has closed a connection."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def disconnected(self, network: Any, conn: Any) -> None:
        self._transport._on_disconnected(conn.muxed_conn.peer_id)

    async def opened_stream(self, network: Any, stream: Any) -> None:
        pass

    async def closed_stream(self, network: Any, stream: Any) -> None:
        pass

    async def connected(self, network: Any, conn: Any) -> None:
        pass

    async def listen(self, network: Any, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        pass


async def _reset_quietly(stream: Any) -> None:
    try:
        await stream.reset()
    except Exception as error:
        logger.debug("stream reset failed: %r", error)


async def _close_network(swarm: Any) -> None:
    """Close the socket of every connection, then the swarm (listeners, transports).

    ``swarm.close()`` alone leaks sockets when the scope around ``open_transport`` is
    cancelled. The cancellation also reaches py-libp2p 0.8.1's per-connection tasks (they live
    in ``host.run()``'s nursery), and each calls ``SwarmConn.close()`` unshielded: that sets
    ``event_closed`` first, is then cancelled inside ``Yamux.close()`` before the secured
    connection (and socket) is closed, and never unregisters the connection. ``swarm.close()``
    then skips it as already closed, and the socket waits for the garbage collector
    (ResourceWarning). Traced per socket in the five-node fog test; it was blamed on duplicate
    connections, but any connection can lose this race. So each connection's secured
    connection is closed here directly as well (closing it twice is a no-op). Connections
    close concurrently: py-libp2p sleeps 0.2 s in every ``SwarmConn.close()``.
    """
    connections = [conn for conns in list(swarm.connections.values()) for conn in conns]
    async with trio.open_nursery() as nursery:
        for conn in connections:
            nursery.start_soon(_close_connection, conn)
    await swarm.close()


async def _close_connection(conn: Any) -> None:
    try:
        await conn.close()
    except Exception as error:
        logger.debug("closing a connection failed: %r", error)
    secured = getattr(conn.muxed_conn, "secured_conn", None)
    if secured is not None:
        try:
            await secured.close()
        except Exception as error:
            logger.debug("closing a secured connection failed: %r", error)


_Config = TypeVar("_Config", bound=ConnectionConfig)


def _connection_config(cls: type[_Config], limits: TransportLimits, **extra: Any) -> _Config:
    # Two connections per peer: py-libp2p keeps both when two nodes dial each other at once.
    # The watermarks only have to be consistent with that (the auto-connector they steer is
    # stopped in open_transport); at the high one the pruner starts.
    return cls(
        max_connections=limits.peers_max * 2,
        high_watermark=limits.peers_max * 2,
        low_watermark=0,
        min_connections=0,
        dial_timeout=limits.dial_timeout_s,
        **extra,
    )


def _noise_only_host(key: NodeKey, limits: TransportLimits) -> Any:
    key_pair = secp256k1_key_pair(key.secret)
    # The Noise static key is per process: it is authenticated by a signature from the
    # identity key inside the handshake, so it need not be persisted.
    noise = NoiseTransport(key_pair, noise_privkey=x25519_key_pair().private_key)
    # Both transports are always there, so a node dials either kind of peer address; only
    # the listen addresses decide what it serves. QUIC brings its own TLS 1.3 (the libp2p
    # certificate extension, signed by the same secp256k1 key) and its own streams: Noise
    # and Yamux are for TCP only.
    quic = QUICTransport(
        key_pair.private_key,
        config=_connection_config(
            QUICTransportConfig,
            limits,
            connection_timeout=limits.dial_timeout_s,
            max_concurrent_streams=_QUIC_STREAMS_PER_CONNECTION_MAX,
        ),
    )
    return new_host(
        key_pair=key_pair,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        connection_config=_connection_config(ConnectionConfig, limits),
        transports=[TCP(), quic],
    )


@asynccontextmanager
async def open_transport(
    key: NodeKey,
    listen_addrs: list[str],
    *,
    protocol: str = DEFAULT_PROTOCOL,
    limits: TransportLimits | None = None,
    quiet_logs: bool = True,
) -> AsyncIterator[Transport]:
    """Run a Noise-only, Yamux, TCP libp2p host with ``key`` as identity; yield its Transport."""
    if not isinstance(key, NodeKey):
        raise TypeError(f"open_transport takes a NodeKey, got {type(key).__name__}")
    if not listen_addrs:
        raise ValueError("listen_addrs is empty: give at least one, e.g. /ip4/127.0.0.1/tcp/0")
    try:
        maddrs = [multiaddr.Multiaddr(addr) for addr in listen_addrs]
    except Exception as error:
        raise ValueError(f"listen_addrs holds a bad multiaddr ({error})") from None
    if not protocol.startswith("/"):
        raise ValueError(f"protocol {protocol!r} must start with '/', e.g. {DEFAULT_PROTOCOL}")
    if quiet_logs:
        quiet_libp2p_logs()
    limits = limits or TransportLimits()
    host = _noise_only_host(key, limits)
    transport = Transport(key, host, protocol, limits)
    host.set_stream_handler(TProtocol(protocol), transport._handle_inbound)
    host.get_network().register_notifee(_DisconnectWatcher(transport))
    try:
        async with host.run(listen_addrs=maddrs):
            # py-libp2p's auto-connector dials peers from the peerstore until it holds 100-300
            # connections. Gossip membership decides whom a node talks to, and a peer we
            # forgot must stay forgotten: only our own dials and the peer's own come in.
            await host.get_network().auto_connector.stop()
            try:
                yield transport
            finally:
                # Leaving host.run() only cancels the swarm's tasks and leaves connection
                # sockets to the garbage collector (ResourceWarning); close them first.
                with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT_S):
                    await _close_network(host.get_network())
    finally:
        transport._inbox_send.close()
