"""`PeerTransport`: the local member's connections to every peer, and what the server sees.

Shell. Plays the part of etcd 3.4's `rafthttp.Transport` (`transport.go`, `peer.go`,
`snapshot_sender.go`) over our own protocol (`framing.py`): one persistent outbound
message stream per peer, kept up by a `ClientService` with a short backoff so a restarted
member hears from us within about a second; a separate connection per snapshot; one call
stream per peer, opened on the first `call()` (`calls.py`, where etcd 3.4 forwards lease
requests over peer HTTP); and the inbound side, served by whatever listens with
`server_factory()`.

Like etcd's `peer.send`, a message for a peer whose stream is down, or whose unsent
bytes are over the bound, is dropped and raft is told the peer is unreachable; raft's
own retries (heartbeats, probes) resend what matters. Performance model: one
`transport.write` per peer per `send()` call, serialization only for live peers.

Bounds (`connection.PeerLimits`, each a constructor argument): HELLO answered within
10 s either way; a snapshot stream moving at least every 30 s and ACKed within 120 s of
its end; at most 256 inbound connections; a received snapshot of at most 8 GiB; at most
1024 calls awaiting a reply per peer, and per inbound call stream. A peer
that refuses our stream with ERROR is redialled after 1 s at the earliest, not at the
0.2 s kept for a plain connection loss, so a misconfigured member is not hammered.
"""
from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import BinaryIO, Callable
from urllib.parse import urlsplit

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IAddress, IProtocol, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from etcdd.peer.calls import CALLS_STOPPED_REASON, CallLink
from etcdd.peer.connection import (HELLO_TIMEOUT_SECONDS, MAX_CALLS_IN_FLIGHT,
                                   MAX_INBOUND_CONNECTIONS, MAX_SNAPSHOT_BYTES,
                                   REFUSED_RETRY_SECONDS, SNAPSHOT_ACK_TIMEOUT_SECONDS,
                                   SNAPSHOT_IDLE_SECONDS, PeerLimits)
from etcdd.peer.framing import FrameKind, Hello, PeerCallError, StreamKind, frame_header
from etcdd.peer.protocol import (REMOVED_REASON, MessageStreamClient, PeerContext,
                                 PeerServerProtocol)
from etcdd.peer.snapshot import SnapshotStreamClient, remove_if_exists
from etcdd.proto import raft_pb2

__all__ = ["EndpointFactory", "IRaftPeerHandler", "PeerCallError", "PeerTransport",
           "tcp_endpoint_factory"]

INITIAL_RETRY_SECONDS = 0.05
# etcd 3.4 rafthttp redials a lost stream every 100 ms; a dead peer costs one failed
# connect per retry, so a short cap keeps a restarted member's catch-up quick.
MAX_RETRY_SECONDS = 0.2
RETRY_FACTOR = 1.5
# etcd 3.4 embed/config.go peerDialTimeout: 1 s + one election timeout (1 s by default)
DIAL_TIMEOUT_SECONDS = 2.0

EndpointFactory = Callable[[str], IStreamClientEndpoint]
_MSG_SNAP = raft_pb2.MsgSnap
_MSG = FrameKind.MSG
_UNSEEN = object()                 # sentinel: no message for this peer seen yet in send()


class IRaftPeerHandler(Interface):
    """What the transport calls on the server; every call is on the reactor thread."""

    def process(message: raft_pb2.Message) -> None:
        """A raft message arrived from a peer (in arrival order per connection)."""

    def report_unreachable(member_id: int) -> None:
        """Messages for `member_id` were dropped: its stream is down or backed up."""

    def report_snapshot(member_id: int, failed: bool) -> None:
        """The MsgSnap sent to `member_id` was applied there (or failed to be)."""

    def snapshot_source(message: raft_pb2.Message) -> Deferred:
        """Fire with the path of a temp file, a consistent copy of the db to stream after
        this MsgSnap; the transport deletes it when done."""

    def receive_snapshot(message: raft_pb2.Message, db_path: str) -> Deferred:
        """A complete, sha256-verified snapshot db is at `db_path` (a temp file in the
        snapshot dir): make it durable, install it and step `message`; fire when done
        (the sender then hears ACK) or fail (it hears ERROR). The transport removes
        `db_path` afterwards if it still exists."""

    def handle_call(from_id: int, method: str, payload: bytes) -> Deferred | bytes:
        """Answer peer `from_id`'s call of `method` with the response bytes, now or by a
        Deferred; calls are concurrent, so answers may come in any order. A raised or
        failed error reaches the caller as `rpctypes.status_for` maps it; an unknown
        method raises `GrpcError(Status.UNIMPLEMENTED, ...)`."""


def tcp_endpoint_factory(reactor: object) -> EndpointFactory:
    """The one place peer URLs become endpoints: http://host:port, unix://path.

    Raises ValueError for https/unixs (peer TLS is a later issue) and other schemes.
    """
    def endpoint(url: str) -> IStreamClientEndpoint:
        parts = urlsplit(url)
        if parts.scheme == "http":
            return HostnameEndpoint(reactor, parts.hostname or "", parts.port or 80,
                                    timeout=DIAL_TIMEOUT_SECONDS)
        if parts.scheme == "unix":      # etcd: the socket is the URL's "host:port" text
            return UNIXClientEndpoint(reactor, parts.netloc + parts.path,
                                      timeout=DIAL_TIMEOUT_SECONDS)
        # TODO(peer): TLS for https/unixs peer URLs (issue on peer TLS)
        raise ValueError(f"unsupported peer URL scheme: {url}")
    return endpoint


@implementer(IStreamClientEndpoint)
class _UrlEndpoint:
    """Connects to the current URL of a peer; a failed attempt moves on to the next URL."""

    def __init__(self, urls: Sequence[str], make_endpoint: EndpointFactory) -> None:
        self._make_endpoint = make_endpoint
        self.urls: tuple[str, ...] = tuple(urls)
        self._index = 0

    @property
    def url(self) -> str:
        return self.urls[self._index % len(self.urls)]

    def set_urls(self, urls: Sequence[str]) -> None:
        self.urls, self._index = tuple(urls), 0

    def connect(self, factory: Factory) -> Deferred:
        try:
            endpoint = self._make_endpoint(self.url)
        except ValueError as e:
            return fail(e)
        d = endpoint.connect(factory)
        d.addErrback(self._failed)
        return d

    def _failed(self, failure: Failure) -> Failure:
        self._index = (self._index + 1) % len(self.urls)
        return failure


def _warnings_only(publisher: ILogObserver) -> ILogObserver:
    """An observer passing on ClientService's warnings but not its per-retry info lines."""
    def observe(event: dict) -> None:
        if event.get("log_level", LogLevel.info) >= LogLevel.warn:
            publisher(event)
    return observe


class _PeerService(ClientService):
    _log = Logger(observer=_warnings_only(globalLogPublisher))


class _ProtocolFactory(Factory):
    """A quiet factory building its protocols with `build()` (no per-connection logs)."""

    noisy = False

    def __init__(self, build: Callable[[], IProtocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: IAddress) -> IProtocol:
        return self._build()


class _PeerLink:
    """Everything about one peer: its URLs, its message stream, its snapshot in flight.

    Invariants: `stream` is the outbound message stream whose HELLO the peer answered, or
    None; `active_since` is set exactly while `stream` is; at most one snapshot is in
    flight (`snapshot`); `calls` is the only call stream to the peer.
    """

    _log = Logger()

    def __init__(self, owner: PeerTransport, member_id: int, urls: Sequence[str]) -> None:
        self.owner, self.member_id = owner, member_id
        self.endpoint = _UrlEndpoint(urls, owner._make_endpoint)
        self.stream: MessageStreamClient | None = None
        self.connection: MessageStreamClient | None = None     # answered or not
        self.active_since: float | None = None
        self.snapshot: _OutboundSnapshot | None = None
        self._last_refusal: str | None = None
        self._refused = False           # the last stream ended in ERROR: redial slowly
        self.service = _PeerService(self.endpoint, _ProtocolFactory(self._build_stream),
                                    retryPolicy=self._retry_delay, clock=owner._reactor)
        self.calls = CallLink(member_id, owner._hello(member_id, StreamKind.CALL),
                              self._connect, owner._reactor, owner._max_frame_bytes,
                              owner._limits)

    def _connect(self, build: Callable[[], IProtocol]) -> Deferred:
        """Open a connection of its own to the peer (snapshots, calls)."""
        return self.endpoint.connect(_ProtocolFactory(build))

    def _build_stream(self) -> MessageStreamClient:
        owner = self.owner
        self.connection = MessageStreamClient(owner._hello(self.member_id, StreamKind.MSG), self,
                                              owner._max_frame_bytes, owner._max_queued_bytes,
                                              reactor=owner._reactor, limits=owner._limits)
        return self.connection

    def _retry_delay(self, failed_attempts: int) -> float:
        """Seconds until the next dial: the backoff, or at least `refused_retry_seconds`
        after a refusal (TCP connected fine, so the backoff alone would restart at ~0.1 s)."""
        delay = self.owner._retry_policy(failed_attempts)
        if self._refused:
            self._refused = False
            delay = max(delay, self.owner._limits.refused_retry_seconds)
        return delay

    def close(self, calls_reason: str) -> Deferred:
        """Stop the service and fail the calls in flight with `calls_reason`; fires once
        the message stream, if any, is closed."""
        if self.connection is not None:
            self.connection.close()
        if self.snapshot is not None:
            self.snapshot.abort()
        self.calls.close(calls_reason)
        return self.service.stopService() if self.service.running else succeed(None)

    # ILinkEvents

    def stream_ready(self, protocol: MessageStreamClient) -> None:
        self.stream, self.active_since = protocol, self.owner._reactor.seconds()
        self._last_refusal = None
        self._log.info("peer {id:x} became active", id=self.member_id)

    def stream_lost(self, protocol: MessageStreamClient) -> None:
        if self.connection is protocol:
            self.connection = None
        if self.stream is protocol:
            self.stream, self.active_since = None, None
            self._log.info("peer {id:x} became inactive", id=self.member_id)

    def stream_refused(self, reason: str, by_peer: bool) -> None:
        """Log a refusal once per distinct reason, not on every reconnection, and make
        the next redial wait."""
        self._refused = True
        if by_peer and reason == REMOVED_REASON:
            self.owner._on_removed()
        if reason != self._last_refusal:
            self._last_refusal = reason
            self._log.warn("peer {id:x} at {url}: {reason} ({side})", id=self.member_id,
                           url=self.endpoint.url, reason=reason,
                           side="refused by the peer" if by_peer else "refused by us")


class _OutboundSnapshot:
    """One MsgSnap on its way: source file from the handler, then its own connection.

    Invariant: `finish` runs once; it deletes the source file and, unless the transport
    was stopped, reports the outcome with `handler.report_snapshot`.
    """

    _log = Logger()

    def __init__(self, owner: PeerTransport, link: _PeerLink, message: raft_pb2.Message) -> None:
        self.owner, self.link, self.message = owner, link, message
        self.path: str | None = None
        self.protocol: SnapshotStreamClient | None = None
        self._connecting: Deferred | None = None
        self.done = False

    def start(self) -> None:
        d = maybeDeferred(self.owner._handler.snapshot_source, self.message)
        d.addCallback(self._source_ready)
        d.addErrback(self._source_failed)

    def abort(self) -> None:
        """Give up (peer removed, transport stopped): cancel or cut the connection."""
        if self.done:
            return
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.abortConnection()
        elif self._connecting is not None:
            self._connecting.cancel()
        else:
            self.finish("aborted while waiting for the snapshot source")

    def _source_ready(self, path: str) -> None:
        self.path = path
        if self.done:                   # aborted meanwhile
            remove_if_exists(path)
            return
        source = open(path, "rb")
        hello = self.owner._hello(self.link.member_id, StreamKind.SNAP)
        self.protocol = SnapshotStreamClient(hello, self.message.SerializeToString(), source,
                                             self.owner._max_frame_bytes, self.finish,
                                             reactor=self.owner._reactor,
                                             limits=self.owner._limits)
        protocol = self.protocol
        self._connecting = self.link._connect(lambda: protocol)
        self._connecting.addCallbacks(self._connected, self._connect_failed,
                                      errbackArgs=(source,))

    def _connected(self, _: object) -> None:
        self._connecting = None

    def _connect_failed(self, failure: Failure, source: BinaryIO) -> None:
        self._connecting = None
        source.close()
        self.finish(f"cannot connect: {failure.getErrorMessage()}")

    def _source_failed(self, failure: Failure) -> None:
        self._log.failure("no snapshot to send to peer {id:x}", failure, id=self.link.member_id)
        self.finish(f"no snapshot source: {failure.getErrorMessage()}")

    def finish(self, failure_reason: str | None) -> None:
        if self.done:
            return
        self.done = True
        if self.link.snapshot is self:
            self.link.snapshot = None
        if self.path is not None:
            remove_if_exists(self.path)
        index = self.message.snapshot.metadata.index
        if failure_reason is None:
            self._log.info("sent snapshot at index {index} to peer {id:x} ({size} bytes)",
                           index=index, id=self.link.member_id, size=self.protocol.sent_bytes)
        else:
            self._log.warn("snapshot at index {index} to peer {id:x} failed: {reason}",
                           index=index, id=self.link.member_id, reason=failure_reason)
        if not self.owner._stopped:
            self.owner._handler.report_snapshot(self.link.member_id, failure_reason is not None)


class PeerTransport:
    """The member-to-member transport of one member.

    Invariants: every added peer has exactly one `_PeerLink` (and one `ClientService`,
    running between `start()` and `stop()`); `send()` never blocks and never buffers
    more than `max_queued_bytes_per_peer` per peer beyond what TCP holds.
    """

    _log = Logger()

    def __init__(self, reactor: IReactorTime, local_id: int, cluster_id: int,
                 handler: IRaftPeerHandler, snapshot_dir: str,
                 max_frame_bytes: int = 16 << 20, max_queued_bytes_per_peer: int = 64 << 20,
                 *, endpoint_factory: EndpointFactory | None = None,
                 rand: random.Random | None = None,
                 hello_timeout_seconds: float = HELLO_TIMEOUT_SECONDS,
                 snapshot_idle_seconds: float = SNAPSHOT_IDLE_SECONDS,
                 snapshot_ack_timeout_seconds: float = SNAPSHOT_ACK_TIMEOUT_SECONDS,
                 max_inbound_connections: int = MAX_INBOUND_CONNECTIONS,
                 max_snapshot_bytes: int = MAX_SNAPSHOT_BYTES,
                 refused_retry_seconds: float = REFUSED_RETRY_SECONDS,
                 max_calls_in_flight: int = MAX_CALLS_IN_FLIGHT) -> None:
        """`endpoint_factory` turns a peer URL into a client endpoint (default: TCP on
        `reactor`); tests pass an in-memory one. `rand` jitters the reconnect backoff.
        The rest are the bounds of `connection.PeerLimits` (see there)."""
        self._reactor = reactor
        self._limits = PeerLimits(
            hello_timeout_seconds=hello_timeout_seconds,
            snapshot_idle_seconds=snapshot_idle_seconds,
            snapshot_ack_timeout_seconds=snapshot_ack_timeout_seconds,
            max_inbound_connections=max_inbound_connections,
            max_snapshot_bytes=max_snapshot_bytes, refused_retry_seconds=refused_retry_seconds,
            max_calls_in_flight=max_calls_in_flight)
        self._local_id, self._cluster_id = local_id, cluster_id
        self._handler = handler
        self._max_frame_bytes = max_frame_bytes
        self._max_queued_bytes = max_queued_bytes_per_peer
        self._make_endpoint = endpoint_factory or tcp_endpoint_factory(reactor)
        rand = rand or random.Random()
        self._retry_policy = backoffPolicy(
            initialDelay=INITIAL_RETRY_SECONDS, maxDelay=MAX_RETRY_SECONDS, factor=RETRY_FACTOR,
            jitter=lambda: rand.random() * INITIAL_RETRY_SECONDS)
        self._context = PeerContext(local_id, cluster_id, handler, snapshot_dir,
                                    max_frame_bytes, reactor=reactor, limits=self._limits)
        self._links: dict[int, _PeerLink] = {}
        self._on_removed: Callable[[], None] = lambda: None
        self._running = False
        self._stopped = False           # stop() was called: the handler hears nothing more

    def set_membership(self, is_removed: Callable[[int], bool],
                       members_json: Callable[[], bytes],
                       on_removed: Callable[[], None]) -> None:
        """Refuse streams from removed members; answer a joining member's `members`
        call with `members_json()`; call `on_removed` when a peer refuses us as removed."""
        self._context.is_removed = is_removed
        self._context.members_json = members_json
        self._on_removed = on_removed

    def server_factory(self) -> Factory:
        """The factory to listen on the peer URLs with."""
        return _ProtocolFactory(lambda: PeerServerProtocol(self._context))

    def add_peer(self, member_id: int, urls: Sequence[str]) -> None:
        """Keep a message stream open to `member_id` at `urls` (first first, then the
        others after a failed attempt); connects now if started, else at `start()`."""
        if member_id in self._links:
            self.update_peer(member_id, urls)
            return
        if not urls:
            raise ValueError(f"peer {member_id:x} has no URLs")
        link = self._links[member_id] = _PeerLink(self, member_id, urls)
        if self._running:
            link.service.startService()

    def update_peer(self, member_id: int, urls: Sequence[str]) -> None:
        """Use `urls` for `member_id` from now on; a stream to a URL no longer listed is
        closed (and reconnects to the new ones)."""
        link = self._links.get(member_id)
        if link is None:
            self.add_peer(member_id, urls)
            return
        if tuple(urls) == link.endpoint.urls or not urls:
            return
        connected_url = link.endpoint.url
        link.endpoint.set_urls(urls)
        if link.connection is not None and connected_url not in urls:
            link.connection.close()

    def remove_peer(self, member_id: int) -> None:
        """Stop talking to `member_id`: close its streams, abort its snapshot in flight,
        fail its calls in flight."""
        link = self._links.pop(member_id, None)
        if link is None:
            return
        link.close(f"peer {member_id:x} removed").addErrback(self._log_stop_failure)

    def send(self, messages: Iterable[raft_pb2.Message]) -> None:
        """Send each message to its `to`: one write per peer; drops (with one
        `report_unreachable` per peer) what cannot go now. MsgSnap goes by snapshot stream.
        After `stop()` everything is dropped unreported."""
        if self._stopped:
            return
        batches: dict[int, list[bytes] | None] = {}
        streams: dict[int, MessageStreamClient] = {}
        snapshots = []
        links, max_frame_bytes = self._links, self._max_frame_bytes
        for message in messages:
            if message.type == _MSG_SNAP:
                snapshots.append(message)
                continue
            to = message.to
            parts = batches.get(to, _UNSEEN)
            if parts is _UNSEEN:
                link = links.get(to)
                stream = None if link is None else link.stream
                parts = batches[to] = None if stream is None else []
                if stream is not None:
                    streams[to] = stream
            if parts is None:
                continue
            payload = message.SerializeToString()
            if len(payload) > max_frame_bytes:
                self._log.error("dropped a {size}-byte message to peer {id:x}: over the "
                                "{limit}-byte frame limit", size=len(payload), id=to,
                                limit=max_frame_bytes)
                batches[to] = None
                continue
            parts.append(frame_header(_MSG, len(payload)))
            parts.append(payload)
        for to, parts in batches.items():
            if parts is None or not streams[to].write_frames(b"".join(parts)):
                self._handler.report_unreachable(to)
        for message in snapshots:
            self._send_snapshot(message)

    def call(self, member_id: int, method: str, payload: bytes,
             timeout_seconds: float) -> Deferred:
        """Call `method` on peer `member_id` with `payload`; fires with the response bytes.

        The call goes on the peer's call stream (opened now if it is not open), alongside
        any others in flight. Fails with `rpctypes.GrpcError(code, message)` if the peer's
        handler failed, or with `PeerCallError` if the peer is unknown or unreachable, the
        connection is lost with the call in flight, the transport is stopped, no reply came
        within `timeout_seconds`, or `max_calls_in_flight` calls to the peer await replies.
        Cancelling the Deferred forgets the call (its reply is ignored). Raises ValueError
        for a method name that is empty, not ascii or over 255 bytes.
        """
        if self._stopped:
            return fail(PeerCallError(CALLS_STOPPED_REASON))
        link = self._links.get(member_id)
        if link is None:
            return fail(PeerCallError(f"unknown peer {member_id:x}"))
        return link.calls.call(method, payload, timeout_seconds)

    def is_active(self, member_id: int) -> bool:
        """Whether the outbound message stream to `member_id` is up (HELLO answered)."""
        link = self._links.get(member_id)
        return link is not None and link.stream is not None

    def active_since(self, member_id: int) -> float | None:
        """`reactor.seconds()` when the stream to `member_id` came up; None while down."""
        link = self._links.get(member_id)
        return None if link is None else link.active_since

    def start(self) -> None:
        """Start connecting to every peer added so far (and to later ones at once)."""
        if self._running:
            return
        self._running, self._stopped = True, False
        self._context.stopped = False
        for link in self._links.values():
            link.service.startService()

    def stop(self) -> Deferred:
        """Close every connection; fires once the outbound message streams are closed.
        The handler hears nothing more (a snapshot in flight is dropped unreported);
        every call in flight fails with `PeerCallError("transport stopped")`."""
        self._running, self._stopped = False, True
        self._context.stopped = True
        stopping = [link.close(CALLS_STOPPED_REASON).addErrback(self._log_stop_failure)
                    for link in self._links.values()]
        for protocol in list(self._context.inbound):
            protocol.close()
        return DeferredList(stopping).addCallback(lambda _: None)

    def _send_snapshot(self, message: raft_pb2.Message) -> None:
        link = self._links.get(message.to)
        if link is None:
            self._handler.report_snapshot(message.to, True)
            return
        if link.snapshot is not None:
            # NB: raft keeps the peer in snapshot state until the one in flight reports
            return
        link.snapshot = _OutboundSnapshot(self, link, message)
        link.snapshot.start()

    def _hello(self, member_id: int, stream: StreamKind) -> Hello:
        return Hello(self._cluster_id, self._local_id, member_id, stream)

    def _log_stop_failure(self, failure: Failure) -> None:
        self._log.failure("stopping a peer connection failed", failure)
