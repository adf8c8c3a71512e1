"""The base of every peer connection: frames in, a table of expected frames, one deadline.

Shell. `FrameProtocol` feeds bytes to `framing.FrameDecoder` and routes the frames through
a table of the frames it expects now, swapped as the connection advances, so a frame out
of place is one lookup miss. Bad input (STYLE.md §6 kind 1) gets ERROR with a clear
reason, a log line, and the close of that connection only. `OutboundProtocol` greets with
HELLO and checks the answer. `PeerLimits` holds the bounds in time and count.

Each connection has at most one deadline at a time (waiting for HELLO, for the next
snapshot frame, for the ACK); when it passes the connection is refused like bad input.
etcd 3.4 bounds its peer connections with 5 s read and write timeouts
(`rafthttp/util.go` `NewTimeoutListener`, `peer.go` `ConnReadTimeout`); ours are per phase
and looser, since a snapshot install may keep a connection quiet for a while.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from etcdd.peer.framing import (FrameDecoder, FrameKind, Hello, PeerFrameError, decode_error,
                                decode_hello, encode_error, encode_hello)

REFUSED_FORMAT = "closing peer connection {address}: {reason}"
HELLO_TIMEOUT_REASON = "hello timeout"


# 10 s is generous: HELLO is the first thing either side writes.
HELLO_TIMEOUT_SECONDS = 10.0
# one frame is at most 256 KiB, so this is a link under 9 KB/s, or a dead one
SNAPSHOT_IDLE_SECONDS = 30.0
# the receiver answers after installing the db on its disk thread: long for a big db
SNAPSHOT_ACK_TIMEOUT_SECONDS = 120.0
MAX_INBOUND_CONNECTIONS = 256
# the backend's LMDB map size (mvcc/backend.py DEFAULT_MAP_SIZE): a bigger db cannot open
MAX_SNAPSHOT_BYTES = 8 << 30
# after a refusal by ERROR; a plain connection loss is redialled within 0.2 s
REFUSED_RETRY_SECONDS = 1.0
# calls awaiting a reply, per peer on the calling side and per connection on the answering
# side; etcd 3.4 has no such bound on its /leases handler, but every buffer here has one
MAX_CALLS_IN_FLIGHT = 1024


@dataclass(frozen=True, slots=True)
class PeerLimits:
    """The bounds of the peer transport, in time and count (defaults above)."""
    hello_timeout_seconds: float = HELLO_TIMEOUT_SECONDS
    snapshot_idle_seconds: float = SNAPSHOT_IDLE_SECONDS
    snapshot_ack_timeout_seconds: float = SNAPSHOT_ACK_TIMEOUT_SECONDS
    max_inbound_connections: int = MAX_INBOUND_CONNECTIONS
    max_snapshot_bytes: int = MAX_SNAPSHOT_BYTES
    refused_retry_seconds: float = REFUSED_RETRY_SECONDS
    max_calls_in_flight: int = MAX_CALLS_IN_FLIGHT


def hello_reply_mismatch(sent: Hello, reply: Hello) -> str | None:
    """Why `reply` is not the answer to `sent`, or None if it is."""
    if reply.cluster_id != sent.cluster_id:
        return "cluster ID mismatch"
    if reply.from_id != sent.to_id or reply.to_id != sent.from_id:
        return "member ID mismatch"
    if reply.stream != sent.stream:
        return "stream kind mismatch"
    return None


class FrameProtocol(Protocol):
    """Frames in, dispatched by the table of frames expected now; one deadline at a time.

    Invariants: once `closed`, no input is processed, nothing but the ERROR already queued
    is written, and no deadline is pending. Without a reactor no deadline is ever set
    (only wire-format tests build protocols so).
    """

    _log = Logger()

    def __init__(self, max_frame_bytes: int, reactor: IReactorTime | None = None) -> None:
        self._decoder = FrameDecoder(max_frame_bytes)
        self._handlers: dict[int, Callable[[bytes], None]] = {}
        self._expecting = "HELLO"
        self._reactor = reactor
        self._deadline: IDelayedCall | None = None
        self._deadline_reason = ""
        self._idle_seconds = 0.0
        self._progress_at = 0.0
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
        self._cancel_deadline()

    def close(self) -> None:
        """Stop reading and close the connection (what was written is still sent)."""
        if not self.closed:
            self.closed = True
            self._handlers = {}
            self._cancel_deadline()
            self._closing()
            self.transport.loseConnection()

    def _expect(self, what: str, handlers: dict[int, Callable[[bytes], None]]) -> None:
        """From now on accept only `handlers` (plus ERROR); `what` names them in errors."""
        self._expecting = what
        self._handlers = {FrameKind.ERROR: self._on_error, **handlers}

    # the deadline

    def _set_deadline(self, seconds: float, reason: str) -> None:
        """Refuse with `reason` once `seconds` pass without `_made_progress()`.

        Replaces any deadline set before. A caller that never reports progress gets a
        plain timeout; one that does gets an idle timeout, at the cost of a float store
        per report rather than a timer reset.
        """
        self._cancel_deadline()
        if self._reactor is None:
            return
        self._deadline_reason, self._idle_seconds = reason, seconds
        self._progress_at = self._reactor.seconds()
        self._deadline = self._reactor.callLater(seconds, self._deadline_due)

    def _made_progress(self) -> None:
        """Push the pending deadline `seconds` past now (nothing if none is pending)."""
        if self._deadline is not None:
            self._progress_at = self._reactor.seconds()

    def _cancel_deadline(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None:
            deadline.cancel()

    def _deadline_due(self) -> None:
        now = self._reactor.seconds()
        due = self._progress_at + self._idle_seconds
        if now < due:                   # progress was made since the timer was set
            self._deadline = self._reactor.callLater(due - now, self._deadline_due)
            return
        self._deadline = None
        self._timed_out(self._deadline_reason)

    def _timed_out(self, reason: str) -> None:
        """Hook: the deadline passed; by default refused like bad input."""
        self._refuse(reason)

    # refusals

    def _refuse(self, reason: str, log_format: str = REFUSED_FORMAT, **fields: Any) -> None:
        """Answer bad input: ERROR(`reason`), a log line, close this connection.

        The ERROR is skipped if the transport is already closing (it could not be sent)."""
        self._log_refusal(reason, log_format, fields)
        if not self.transport.disconnecting:
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


class OutboundProtocol(FrameProtocol):
    """An outbound connection: sends `hello` first and checks the peer's answer, which
    must come within `limits.hello_timeout_seconds`."""

    def __init__(self, hello: Hello, max_frame_bytes: int, reactor: IReactorTime | None = None,
                 limits: PeerLimits = PeerLimits()) -> None:
        super().__init__(max_frame_bytes, reactor)
        self._hello = hello
        self._limits = limits

    def connectionMade(self) -> None:
        self.transport.write(encode_hello(self._hello))
        self._expect("HELLO", {FrameKind.HELLO: self._on_hello_reply})
        self._set_deadline(self._limits.hello_timeout_seconds, HELLO_TIMEOUT_REASON)

    def _on_hello_reply(self, payload: bytes) -> None:
        reply = decode_hello(payload)
        mismatch = hello_reply_mismatch(self._hello, reply)
        if mismatch is not None:
            self._refuse(mismatch, "refused peer {peer_id:x} at {address}: {reason} "
                         "(it says cluster {cluster:x}, member {member:x})",
                         peer_id=self._hello.to_id, cluster=reply.cluster_id,
                         member=reply.from_id)
            return
        self._cancel_deadline()
        self._accepted()

    def _accepted(self) -> None:
        """Hook: the peer answered our HELLO correctly."""
