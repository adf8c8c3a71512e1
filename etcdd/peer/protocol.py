"""The inbound side of the peer transport (`PeerServerProtocol`) and the outbound message
stream (`MessageStreamClient`); snapshot sending lives in `snapshot`.

Shell. Both are `connection.FrameProtocol`s: frames routed by a table of the frames
expected now, bad input answered with ERROR and the close of that connection only.

Matches etcd 3.4 rafthttp where it has a rule: a HELLO from another cluster is refused
as "cluster ID mismatch" and one meant for another member as "member ID mismatch"
(`http.go checkClusterCompatibilityFromHeader`, `streamHandler`); a received snapshot is
complete and checked before the server sees it (`snapshotHandler`, `snap/db.go`).

A message stream, client first (`>`) and server (`<`)::

    > HELLO(stream=MSG)   < HELLO(roles swapped)   > MSG > MSG ...

A call stream (the calling side is `calls.CallStreamClient`) hands each CALL to
`handler.handle_call` at once, without waiting for the calls before it, and writes its
REPLY when the handler answers: ok with the response bytes, or the failure mapped by
`rpctypes.status_for`, so etcd's exact messages reach the caller::

    > HELLO(stream=CALL)  < HELLO   > CALL 1 > CALL 2   < REPLY 2 < REPLY 1 ...

Bounds (`PeerLimits`): at most `max_inbound_connections` accepted connections at a time
(more are turned away with ERROR "too many peer connections"); HELLO within
`hello_timeout_seconds`; on a snapshot stream a frame at least every
`snapshot_idle_seconds` and at most `max_snapshot_bytes` of db; on a call stream at most
`max_calls_in_flight` calls awaiting their handler (more are answered at once with
RESOURCE_EXHAUSTED "too many calls in flight").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol as TypingProtocol

from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from etcdd.api.rpctypes import WIRE_ERRORS, GrpcError, Status, status_for
from etcdd.peer.calls import TOO_MANY_CALLS_REASON
from etcdd.peer.connection import (HELLO_TIMEOUT_REASON, FrameProtocol, OutboundProtocol,
                                   PeerLimits, hello_reply_mismatch)
from etcdd.peer.framing import (HEADER_BYTES, SHA256_BYTES, FrameKind, Hello, PeerFrameError,
                                StreamKind, decode_call, decode_hello, decode_message,
                                encode_error, encode_frame, encode_hello, encode_reply,
                                encode_reply_error)
from etcdd.peer.snapshot import (IncomingSnapshot, SnapshotStreamClient, remove_if_exists,
                                 snapshot_part_path)
from etcdd.proto import raft_pb2

if TYPE_CHECKING:
    from etcdd.peer.transport import IRaftPeerHandler

__all__ = ["ILinkEvents", "MEMBERS_CALL", "MessageStreamClient", "PeerContext", "PeerLimits",
           "PeerServerProtocol", "REMOVED_REASON", "SnapshotStreamClient", "STOPPED_REASON",
           "TOO_MANY_CONNECTIONS_REASON", "hello_reply_mismatch", "is_wire_error",
           "remove_if_exists", "snapshot_part_path"]

_ACK_FRAME = encode_frame(FrameKind.ACK)
STOPPED_REASON = "member stopped"
# etcd 3.4 rafthttp answers a removed member's streams with 410 Gone and this text
REMOVED_REASON = "the member has been permanently removed from the cluster"
MEMBERS_CALL = "members"
TOO_MANY_CONNECTIONS_REASON = "too many peer connections"
# a flood of connections is one warning per this many seconds, not one per connection
TURNED_AWAY_LOG_SECONDS = 10.0


@dataclass(slots=True)
class PeerContext:
    """What every inbound connection shares: the local member and its bookkeeping.

    Invariants: `receiving` holds the temp path of every snapshot being received or being
    installed by the handler; no two connections write the same path. `inbound` holds
    every accepted connection not yet lost, never more than
    `limits.max_inbound_connections`. Without a `reactor` nothing times out.
    """
    local_id: int
    cluster_id: int
    handler: IRaftPeerHandler
    snapshot_dir: str
    max_frame_bytes: int
    receiving: set[str] = field(default_factory=set)
    inbound: set[PeerServerProtocol] = field(default_factory=set)
    stopped: bool = False           # the transport stopped: new connections are turned away
    reactor: IReactorTime | None = None
    limits: PeerLimits = PeerLimits()
    turned_away: int = 0            # connections turned away since the last warning
    turned_away_logged_at: float | None = None
    # Membership, as the member knows it: a removed member is refused; a joining member
    # may ask for the members (the JSON `members_json()` returns) before it has an ID.
    is_removed: Callable[[int], bool] = lambda member_id: False
    members_json: Callable[[], bytes] | None = None


def is_wire_error(error: BaseException) -> bool:
    """Whether `error` has its own row in rpctypes' table (or is a GrpcError already), as
    opposed to an unexpected exception that `status_for` passes on as UNKNOWN."""
    return isinstance(error, GrpcError) or any(cls in WIRE_ERRORS
                                               for cls in type(error).__mro__)


class ILinkEvents(TypingProtocol):
    """What an outbound message stream tells the peer link that owns it."""

    def stream_ready(self, protocol: MessageStreamClient) -> None:
        """The peer answered our HELLO: `protocol` carries messages from now on."""

    def stream_lost(self, protocol: MessageStreamClient) -> None:
        """The connection of `protocol` is gone (whether or not it was ever ready)."""

    def stream_refused(self, reason: str, by_peer: bool) -> None:
        """The connection is being closed over `reason`, sent by the peer or by us."""


class PeerServerProtocol(FrameProtocol):
    """The accepting side of one peer connection: a message, snapshot or call stream.

    Invariants: MSG frames reach `handler.process` in arrival order; a snapshot reaches
    `handler.receive_snapshot` only complete, sha256-verified and within
    `max_snapshot_bytes`; a temp file of a stream that failed before that is deleted.
    Each CALL gets exactly one REPLY while the connection lasts, at most
    `limits.max_calls_in_flight` of them awaiting their handler (`_calls`).
    """

    def __init__(self, context: PeerContext) -> None:
        super().__init__(context.max_frame_bytes, context.reactor)
        self._context = context
        self._handler = context.handler
        self._peer_id = 0
        self._incoming: IncomingSnapshot | None = None
        self._calls: set[int] = set()    # ids of the CALLs whose handler has not answered
        self._expect("HELLO", {FrameKind.HELLO: self._on_hello})

    def connectionMade(self) -> None:
        context = self._context
        if context.stopped:
            self._turn_away(STOPPED_REASON)
            return
        if len(context.inbound) >= context.limits.max_inbound_connections:
            self._turn_away(TOO_MANY_CONNECTIONS_REASON)
            self._log_turned_away()
            return
        context.inbound.add(self)
        self._set_deadline(context.limits.hello_timeout_seconds, HELLO_TIMEOUT_REASON)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self._context.inbound.discard(self)
        self._abort_incoming()

    def _closing(self) -> None:
        self._abort_incoming()

    def _turn_away(self, reason: str) -> None:
        """Refuse a connection before it said anything: ERROR(`reason`), close, no log."""
        self.transport.write(encode_error(reason))
        self.close()

    def _log_turned_away(self) -> None:
        """Warn of connections turned away for capacity, once per TURNED_AWAY_LOG_SECONDS."""
        context = self._context
        context.turned_away += 1
        now = self._reactor.seconds() if self._reactor is not None else 0.0
        last = context.turned_away_logged_at
        if last is not None and now - last < TURNED_AWAY_LOG_SECONDS:
            return
        self._log.warn("refused peer connection {address}: {reason} (limit {limit}; "
                       "{count} turned away since the last report)", address=self._address(),
                       reason=TOO_MANY_CONNECTIONS_REASON, count=context.turned_away,
                       limit=context.limits.max_inbound_connections)
        context.turned_away, context.turned_away_logged_at = 0, now

    def _on_hello(self, payload: bytes) -> None:
        hello, context = decode_hello(payload), self._context
        if (hello.cluster_id == 0 and hello.from_id == 0 and hello.to_id == 0
                and hello.stream == StreamKind.CALL and context.members_json is not None):
            self._start_discovery()
            return
        if hello.cluster_id != context.cluster_id:
            # etcd 3.4 http.go: "request cluster ID mismatch", logged with both IDs
            self._refuse("cluster ID mismatch",
                         "refused peer {peer_id:x} from {address}: {reason} "
                         "(got {got:x}, want {want:x})",
                         peer_id=hello.from_id, got=hello.cluster_id, want=context.cluster_id)
            return
        if hello.to_id != context.local_id:
            self._refuse("member ID mismatch",
                         "refused peer {peer_id:x} from {address}: {reason} "
                         "(got {got:x}, want {want:x})",
                         peer_id=hello.from_id, got=hello.to_id, want=context.local_id)
            return
        if context.is_removed(hello.from_id):
            self._refuse(REMOVED_REASON, "refused peer {peer_id:x} from {address}: {reason}",
                         peer_id=hello.from_id)
            return
        self._peer_id = hello.from_id
        self.transport.write(encode_hello(hello.reply()))
        self._STREAM_STARTS[hello.stream](self)

    def _start_discovery(self) -> None:
        """A member joining with `--initial-cluster-state existing` does not know its ID
        nor the cluster's yet: it says 0 for all three and may only ask for the members
        (etcd 3.4 serves `GET /members` on the peer port for this)."""
        context = self._context
        self.transport.write(encode_hello(Hello(context.cluster_id, context.local_id, 0,
                                                StreamKind.CALL)))
        self._cancel_deadline()
        self._expect("CALL", {FrameKind.CALL: self._on_discovery_call})

    def _on_discovery_call(self, payload: bytes) -> None:
        call_id, method, _ = decode_call(payload)
        members_json = self._context.members_json
        if method != MEMBERS_CALL or members_json is None:
            self.transport.write(encode_reply_error(
                call_id, Status.PERMISSION_DENIED,
                f"only {MEMBERS_CALL!r} may be called before joining"))
            return
        self.transport.write(encode_reply(call_id, members_json()))

    def _start_messages(self) -> None:
        self._cancel_deadline()     # NB: a quiet message stream is fine (no leader yet)
        self._expect("MSG", {FrameKind.MSG: self._on_msg})

    def _start_calls(self) -> None:
        self._cancel_deadline()     # NB: calls come when clients ask, maybe never
        self._expect("CALL", {FrameKind.CALL: self._on_call})

    def _start_snapshot(self) -> None:
        seconds = self._context.limits.snapshot_idle_seconds
        self._set_deadline(seconds, f"no snapshot frame for {seconds:g} s")
        self._expect("SNAP_HEADER", {FrameKind.SNAP_HEADER: self._on_snap_header})

    _STREAM_STARTS = {StreamKind.MSG: _start_messages, StreamKind.CALL: _start_calls,
                      StreamKind.SNAP: _start_snapshot}

    def _on_msg(self, payload: bytes) -> None:
        message = decode_message(payload)
        if message.type == raft_pb2.MsgSnap:
            # NB: a snapshot arrives only on a snapshot stream, with its database.
            raise PeerFrameError("MsgSnap on a message stream")
        self._handler.process(message)

    def _on_call(self, payload: bytes) -> None:
        call_id, method, request = decode_call(payload)
        calls = self._calls
        if call_id in calls:
            raise PeerFrameError(f"CALL {call_id} is already in flight")
        if len(calls) >= self._context.limits.max_calls_in_flight:
            self.transport.write(encode_reply_error(call_id, Status.RESOURCE_EXHAUSTED,
                                                    TOO_MANY_CALLS_REASON))
            return
        calls.add(call_id)
        d = maybeDeferred(self._handler.handle_call, self._peer_id, method, request)
        d.addCallback(self._encode_response, call_id)
        d.addErrback(self._encode_failure, call_id, method)
        d.addCallback(self._send_reply, call_id)
        d.addErrback(self._reply_failed, call_id, method)

    def _encode_response(self, response: bytes, call_id: int) -> bytes:
        """The REPLY frame of a handler's answer; raises GrpcError for one too large."""
        limit = self._context.max_frame_bytes
        frame = encode_reply(call_id, response)
        if len(frame) - HEADER_BYTES > limit:
            self._log.warn("peer call reply of {size} bytes to {peer_id:x} is over the "
                           "{limit}-byte frame limit", size=len(frame) - HEADER_BYTES,
                           peer_id=self._peer_id, limit=limit)
            raise GrpcError(Status.RESOURCE_EXHAUSTED, f"peer reply of {len(response)} bytes "
                                                       f"is over the frame limit")
        return frame

    def _encode_failure(self, failure: Failure, call_id: int, method: str) -> bytes:
        """The REPLY frame of a failed call; a failure missing from rpctypes' table of wire
        errors is a bug somewhere, so it is logged with its traceback too."""
        error = failure.value
        if not is_wire_error(error):
            self._log.failure("peer call {method} from {peer_id:x} failed", failure,
                              method=method, peer_id=self._peer_id)
        code, message = status_for(error)
        return encode_reply_error(call_id, code or Status.UNKNOWN, message)

    def _send_reply(self, frame: bytes, call_id: int) -> None:
        self._calls.discard(call_id)
        if not self.closed:             # NB: else the caller hears of the loss, not this
            self.transport.write(frame)

    def _reply_failed(self, failure: Failure, call_id: int, method: str) -> None:
        self._calls.discard(call_id)
        self._log.failure("answering peer call {method} from {peer_id:x} failed", failure,
                          method=method, peer_id=self._peer_id)

    def _on_snap_header(self, payload: bytes) -> None:
        message = decode_message(payload)
        if message.type != raft_pb2.MsgSnap:
            raise PeerFrameError(f"SNAP_HEADER carries "
                                 f"{raft_pb2.MessageType.Name(message.type)}, not MsgSnap")
        index = message.snapshot.metadata.index
        path = snapshot_part_path(self._context.snapshot_dir, index)
        if path in self._context.receiving:
            raise PeerFrameError(f"a snapshot at index {index} is already being received")
        try:
            self._incoming = IncomingSnapshot(message, path)
        except OSError as e:
            self._log.error("cannot create {path}: {error}", path=path, error=e)
            raise PeerFrameError(f"cannot create the snapshot file: {e.strerror}") from None
        self._context.receiving.add(path)
        self._made_progress()
        self._expect("SNAP_CHUNK or SNAP_END", {FrameKind.SNAP_CHUNK: self._on_snap_chunk,
                                                FrameKind.SNAP_END: self._on_snap_end})

    def _on_snap_chunk(self, payload: bytes) -> None:
        incoming, limit = self._incoming, self._context.limits.max_snapshot_bytes
        if incoming.size + len(payload) > limit:
            raise PeerFrameError(f"snapshot is over the limit of {limit} bytes")
        try:
            incoming.write(payload)
        except OSError as e:
            self._log.error("cannot write {path}: {error}", path=incoming.path, error=e)
            raise PeerFrameError(f"cannot write the snapshot file: {e.strerror}") from None
        self._made_progress()

    def _on_snap_end(self, payload: bytes) -> None:
        incoming = self._incoming
        if len(payload) != SHA256_BYTES:
            raise PeerFrameError(f"SNAP_END of {len(payload)} bytes, want a "
                                 f"{SHA256_BYTES}-byte sha256")
        if incoming.sha256.digest() != payload:
            raise PeerFrameError(f"snapshot sha256 mismatch after {incoming.size} bytes")
        try:
            incoming.file.close()        # NB: no fsync here; the handler makes it durable
        except OSError as e:
            raise PeerFrameError(f"cannot write the snapshot file: {e.strerror}") from None
        self._incoming = None
        self._cancel_deadline()          # the install is ours; the sender bounds its wait
        self._expect("nothing while the snapshot is installed", {})
        self._log.info("received snapshot at index {index} from peer {peer_id:x} "
                       "({size} bytes)", index=incoming.message.snapshot.metadata.index,
                       peer_id=self._peer_id, size=incoming.size)
        d = maybeDeferred(self._handler.receive_snapshot, incoming.message, incoming.path)
        d.addCallbacks(self._installed, self._install_failed,
                       callbackArgs=(incoming.path,), errbackArgs=(incoming.path,))

    def _installed(self, _: object, path: str) -> None:
        self._context.receiving.discard(path)
        remove_if_exists(path)             # the handler moved or copied it, or failed to
        if not self.closed:
            self.transport.write(_ACK_FRAME)
            self.close()

    def _install_failed(self, failure: Failure, path: str) -> None:
        self._log.failure("installing the snapshot from peer {peer_id:x} failed", failure,
                          peer_id=self._peer_id)
        self._context.receiving.discard(path)
        remove_if_exists(path)
        if not self.closed:
            self._refuse(f"snapshot install failed: {failure.getErrorMessage()}")

    def _abort_incoming(self) -> None:
        incoming, self._incoming = self._incoming, None
        if incoming is not None:
            self._context.receiving.discard(incoming.path)
            incoming.discard()


@implementer(IPushProducer)
class MessageStreamClient(OutboundProtocol):
    """The outbound message stream to one peer.

    Invariants: `write_frames` hands bytes to the transport at once unless TCP asked us to
    pause; then they wait in `_queue`, whose size never exceeds `max_queued_bytes`.
    """

    def __init__(self, hello: Hello, link: ILinkEvents, max_frame_bytes: int,
                 max_queued_bytes: int, *, reactor: IReactorTime | None = None,
                 limits: PeerLimits = PeerLimits()) -> None:
        """Without `reactor` the peer's HELLO is awaited forever (wire-format tests only)."""
        super().__init__(hello, max_frame_bytes, reactor, limits)
        self._link = link
        self._max_queued_bytes = max_queued_bytes
        self._paused = False
        self._queue: list[bytes] = []
        self._queued_bytes = 0

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self._queue, self._queued_bytes = [], 0
        self._link.stream_lost(self)

    def write_frames(self, data: bytes) -> bool:
        """Send `data` (whole frames); False, sending nothing, if it would pass the bound."""
        if self.closed:
            return False
        if not self._paused:
            self.transport.write(data)
            return True
        if self._queued_bytes + len(data) > self._max_queued_bytes:
            return False
        self._queue.append(data)
        self._queued_bytes += len(data)
        return True

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting for TCP to drain (0 unless paused)."""
        return self._queued_bytes

    # IPushProducer: TCP's backpressure

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self.transport.disconnecting:
            # NB: TCP closes a connection with a registered producer only once it is gone
            # (`loseConnection` from ClientService.stopService comes past `close()`)
            self.transport.unregisterProducer()
            return
        if self._queue and not self.closed:
            data = b"".join(self._queue)
            self._queue, self._queued_bytes = [], 0
            self.transport.write(data)

    def stopProducing(self) -> None:
        self.closed = True

    def _accepted(self) -> None:
        self._expect("nothing", {})
        self._link.stream_ready(self)

    def _closing(self) -> None:
        self.transport.unregisterProducer()

    def _log_refusal(self, reason: str, log_format: str, fields: dict[str, Any]) -> None:
        self._link.stream_refused(reason, by_peer=False)

    def _peer_refused(self, reason: str) -> None:
        self._link.stream_refused(reason, by_peer=True)
