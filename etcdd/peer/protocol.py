"""The peer connections: inbound (`PeerServerProtocol`), outbound message streams
(`MessageStreamClient`) and outbound snapshot streams (`SnapshotStreamClient`).

Shell. Each protocol feeds bytes to `framing.FrameDecoder` and routes the frames through
a table of the frames it expects now, swapped as the connection advances, so a frame out
of place is one lookup miss. Bad input (STYLE.md §6 kind 1) gets ERROR with a clear
reason, a log line, and the close of that connection only.

Matches etcd 3.4 rafthttp where it has a rule: a HELLO from another cluster is refused
as "cluster ID mismatch" and one meant for another member as "member ID mismatch"
(`http.go checkClusterCompatibilityFromHeader`, `streamHandler`); a received snapshot is
complete and checked before the server sees it (`snapshotHandler`, `snap/db.go`).

A message stream, client first (`>`) and server (`<`)::

    > HELLO(stream=MSG)   < HELLO(roles swapped)   > MSG > MSG ...
A snapshot stream::

    > HELLO(stream=SNAP)  < HELLO   > SNAP_HEADER > SNAP_CHUNK ... > SNAP_END   < ACK | ERROR
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Protocol as TypingProtocol

from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IPullProducer, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from etcdd.peer.framing import (SHA256_BYTES, SNAP_CHUNK_BYTES, FrameDecoder, FrameKind,
                                Hello, PeerFrameError, StreamKind, decode_error,
                                decode_hello, decode_message, encode_error, encode_frame,
                                encode_hello, frame_header)
from etcdd.proto import raft_pb2

if TYPE_CHECKING:
    from etcdd.peer.transport import IRaftPeerHandler

_ACK_FRAME = encode_frame(FrameKind.ACK)
_REFUSED = "closing peer connection {address}: {reason}"
STOPPED_REASON = "member stopped"


def snapshot_part_path(snapshot_dir: str, index: int) -> str:
    """Where the snapshot db at raft `index` is received: `tmp-<index %016x>.snap.db.part`."""
    return os.path.join(snapshot_dir, f"tmp-{index:016x}.snap.db.part")


@dataclass(slots=True)
class PeerContext:
    """What every inbound connection shares: the local member and its bookkeeping.

    Invariant: `receiving` holds the temp path of every snapshot being received or being
    installed by the handler; no two connections write the same path.
    """
    local_id: int
    cluster_id: int
    handler: IRaftPeerHandler
    snapshot_dir: str
    max_frame_bytes: int
    receiving: set[str] = field(default_factory=set)
    inbound: set[PeerServerProtocol] = field(default_factory=set)
    stopped: bool = False           # the transport stopped: new connections are turned away


class ILinkEvents(TypingProtocol):
    """What an outbound message stream tells the peer link that owns it."""

    def stream_ready(self, protocol: MessageStreamClient) -> None:
        """The peer answered our HELLO: `protocol` carries messages from now on."""

    def stream_lost(self, protocol: MessageStreamClient) -> None:
        """The connection of `protocol` is gone (whether or not it was ever ready)."""

    def stream_refused(self, reason: str, by_peer: bool) -> None:
        """The connection is being closed over `reason`, sent by the peer or by us."""


def hello_reply_mismatch(sent: Hello, reply: Hello) -> str | None:
    """Why `reply` is not the answer to `sent`, or None if it is."""
    if reply.cluster_id != sent.cluster_id:
        return "cluster ID mismatch"
    if reply.from_id != sent.to_id or reply.to_id != sent.from_id:
        return "member ID mismatch"
    if reply.stream != sent.stream:
        return "stream kind mismatch"
    return None


class _FrameProtocol(Protocol):
    """Frames in, dispatched by the table of frames expected now.

    Invariant: once `closed`, no input is processed and nothing but the ERROR already
    queued is written.
    """

    _log = Logger()

    def __init__(self, max_frame_bytes: int) -> None:
        self._decoder = FrameDecoder(max_frame_bytes)
        self._handlers: dict[int, Callable[[bytes], None]] = {}
        self._expecting = "HELLO"
        self.closed = False

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        frames = self._decoder.feed(data)
        try:
            for kind, payload in frames:
                handler = self._handlers.get(kind)
                if handler is None:
                    raise PeerFrameError(f"unexpected {FrameKind(kind).name} frame "
                                         f"(expected {self._expecting})")
                handler(payload)
                if self.closed:
                    return
        except PeerFrameError as e:
            self._refuse(str(e))
            return
        if self._decoder.error is not None:
            self._refuse(str(self._decoder.error))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.closed:
            try:
                self._decoder.end_of_stream()
            except PeerFrameError as e:
                self._log.info("peer connection {address} lost: {reason}",
                               address=self._address(), reason=str(e))
        self.closed = True
        self._handlers = {}

    def close(self) -> None:
        """Stop reading and close the connection (what was written is still sent)."""
        if not self.closed:
            self.closed = True
            self._handlers = {}
            self._closing()
            self.transport.loseConnection()

    def _expect(self, what: str, handlers: dict[int, Callable[[bytes], None]]) -> None:
        """From now on accept only `handlers` (plus ERROR); `what` names them in errors."""
        self._expecting = what
        self._handlers = {FrameKind.ERROR: self._on_error, **handlers}

    def _refuse(self, reason: str, log_format: str = _REFUSED, **fields: Any) -> None:
        """Answer bad input: ERROR(`reason`), a log line, close this connection."""
        self._log_refusal(reason, log_format, fields)
        self.transport.write(encode_error(reason))
        self.close()

    def _on_error(self, payload: bytes) -> None:
        self._peer_refused(decode_error(payload))
        self.close()

    def _log_refusal(self, reason: str, log_format: str, fields: dict[str, Any]) -> None:
        self._log.warn(log_format, address=self._address(), reason=reason, **fields)

    def _peer_refused(self, reason: str) -> None:
        self._log.warn("peer connection {address} closed by the peer: {reason}",
                       address=self._address(), reason=reason)

    def _closing(self) -> None:
        """Hook: the connection is being closed by us."""

    def _address(self) -> str:
        peer = self.transport.getPeer() if self.transport is not None else None
        host, port = getattr(peer, "host", None), getattr(peer, "port", None)
        return str(peer) if host is None else f"{host}:{port}"


class _IncomingSnapshot:
    """A snapshot db being written to its temp file; `sha256` covers every chunk so far."""

    __slots__ = ("message", "path", "file", "sha256", "size")

    def __init__(self, message: raft_pb2.Message, path: str) -> None:
        self.message, self.path = message, path
        try:
            self.file: BinaryIO = open(path, "xb")
        except FileExistsError:         # left by a receive this process no longer runs
            os.unlink(path)
            self.file = open(path, "xb")
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.sha256.update(chunk)
        self.size += len(chunk)

    def discard(self) -> None:
        """Close and delete the temp file (already gone is fine)."""
        self.file.close()
        remove_if_exists(self.path)


def remove_if_exists(path: str) -> None:
    """Delete the file at `path`; one already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class PeerServerProtocol(_FrameProtocol):
    """The accepting side of one peer connection: a message stream or a snapshot stream.

    Invariants: MSG frames reach `handler.process` in arrival order; a snapshot reaches
    `handler.receive_snapshot` only complete and sha256-verified; a temp file of a
    stream that failed before that is deleted.
    """

    def __init__(self, context: PeerContext) -> None:
        super().__init__(context.max_frame_bytes)
        self._context = context
        self._handler = context.handler
        self._peer_id = 0
        self._incoming: _IncomingSnapshot | None = None
        self._expect("HELLO", {FrameKind.HELLO: self._on_hello})

    def connectionMade(self) -> None:
        if self._context.stopped:
            self.transport.write(encode_error(STOPPED_REASON))
            self.close()
            return
        self._context.inbound.add(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self._context.inbound.discard(self)
        self._abort_incoming()

    def _closing(self) -> None:
        self._abort_incoming()

    def _on_hello(self, payload: bytes) -> None:
        hello, context = decode_hello(payload), self._context
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
        self._peer_id = hello.from_id
        self.transport.write(encode_hello(hello.reply()))
        if hello.stream is StreamKind.MSG:
            self._expect("MSG", {FrameKind.MSG: self._on_msg})
        else:
            self._expect("SNAP_HEADER", {FrameKind.SNAP_HEADER: self._on_snap_header})

    def _on_msg(self, payload: bytes) -> None:
        self._handler.process(decode_message(payload))

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
            self._incoming = _IncomingSnapshot(message, path)
        except OSError as e:
            self._log.error("cannot create {path}: {error}", path=path, error=e)
            raise PeerFrameError(f"cannot create the snapshot file: {e.strerror}") from None
        self._context.receiving.add(path)
        self._expect("SNAP_CHUNK or SNAP_END", {FrameKind.SNAP_CHUNK: self._on_snap_chunk,
                                                FrameKind.SNAP_END: self._on_snap_end})

    def _on_snap_chunk(self, payload: bytes) -> None:
        try:
            self._incoming.write(payload)
        except OSError as e:
            self._log.error("cannot write {path}: {error}", path=self._incoming.path, error=e)
            raise PeerFrameError(f"cannot write the snapshot file: {e.strerror}") from None

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


class _OutboundProtocol(_FrameProtocol):
    """An outbound connection: sends `hello` first and checks the peer's answer."""

    def __init__(self, hello: Hello, max_frame_bytes: int) -> None:
        super().__init__(max_frame_bytes)
        self._hello = hello

    def connectionMade(self) -> None:
        self.transport.write(encode_hello(self._hello))
        self._expect("HELLO", {FrameKind.HELLO: self._on_hello_reply})

    def _on_hello_reply(self, payload: bytes) -> None:
        reply = decode_hello(payload)
        mismatch = hello_reply_mismatch(self._hello, reply)
        if mismatch is not None:
            self._refuse(mismatch, "refused peer {peer_id:x} at {address}: {reason} "
                         "(it says cluster {cluster:x}, member {member:x})",
                         peer_id=self._hello.to_id, cluster=reply.cluster_id,
                         member=reply.from_id)
            return
        self._accepted()

    def _accepted(self) -> None:
        """Hook: the peer answered our HELLO correctly."""


@implementer(IPushProducer)
class MessageStreamClient(_OutboundProtocol):
    """The outbound message stream to one peer.

    Invariants: `write_frames` hands bytes to the transport at once unless TCP asked us to
    pause; then they wait in `_queue`, whose size never exceeds `max_queued_bytes`.
    """

    def __init__(self, hello: Hello, link: ILinkEvents, max_frame_bytes: int,
                 max_queued_bytes: int) -> None:
        super().__init__(hello, max_frame_bytes)
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


@implementer(IPullProducer)
class SnapshotStreamClient(_OutboundProtocol):
    """The outbound stream of one snapshot: header, chunks read as TCP drains, sha256.

    Invariant: `on_done` is called exactly once: with None after the receiver's ACK, with
    the reason after its ERROR, a local failure or the loss of the connection.
    """

    def __init__(self, hello: Hello, header: bytes, source: BinaryIO, max_frame_bytes: int,
                 on_done: Callable[[str | None], None]) -> None:
        super().__init__(hello, max_frame_bytes)
        self._header, self._source, self._on_done = header, source, on_done
        self._sha256 = hashlib.sha256()
        self._producing = False
        self.sent_bytes = 0

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self._source.close()
        self._finish(f"connection lost before ACK: {reason.getErrorMessage()}")

    def _accepted(self) -> None:
        self._expect("nothing while sending", {})
        self.transport.write(encode_frame(FrameKind.SNAP_HEADER, self._header))
        self._producing = True
        self.transport.registerProducer(self, False)

    # IPullProducer: one chunk each time TCP's buffer empties

    def resumeProducing(self) -> None:
        if self.closed or not self._producing:
            return
        try:
            chunk = self._source.read(SNAP_CHUNK_BYTES)
        except OSError as e:
            self._refuse(f"cannot read the snapshot: {e.strerror}")
            return
        if chunk:
            self._sha256.update(chunk)
            self.sent_bytes += len(chunk)
            self.transport.writeSequence((frame_header(FrameKind.SNAP_CHUNK, len(chunk)), chunk))
            return
        self._stop_producing()
        self._source.close()
        self.transport.write(encode_frame(FrameKind.SNAP_END, self._sha256.digest()))
        self._expect("ACK", {FrameKind.ACK: self._on_ack})

    def stopProducing(self) -> None:
        self._producing = False

    def _on_ack(self, payload: bytes) -> None:
        self._finish(None)
        self.close()

    def _stop_producing(self) -> None:
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()

    def _closing(self) -> None:
        self._stop_producing()     # NB: TCP closes only once no pull producer is registered

    def _log_refusal(self, reason: str, log_format: str, fields: dict[str, Any]) -> None:
        super()._log_refusal(reason, log_format, fields)
        self._finish(reason)

    def _peer_refused(self, reason: str) -> None:
        self._finish(f"refused by the peer: {reason}")

    def _finish(self, failure_reason: str | None) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(failure_reason)
