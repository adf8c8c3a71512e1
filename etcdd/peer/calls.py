"""Request/response calls to a peer: the outbound call stream and the calls riding it.

Shell. etcd 3.4 forwards some client requests from a follower to the leader over the peer
port, one HTTP request each (`lease/leasehttp/http.go` `RenewHTTP` to `/leases`,
`TimeToLiveHTTP` to `/leases/internal`). etcdd sends them as CALL frames on one call
stream per peer, opened on the first call and kept, many calls in flight at once and
answered in any order, matched by call id (`framing.py`)::

    > HELLO(stream=CALL)   < HELLO   > CALL 1 > CALL 2   < REPLY 2 < REPLY 1 ...

The answering side is `protocol.PeerServerProtocol`, which hands each CALL to
`IRaftPeerHandler.handle_call`. A failed handler comes back as
`rpctypes.GrpcError(code, message)` with etcd's exact message; anything that kept the
handler's answer from arriving is a `PeerCallError`.

Bounds: at most `limits.max_calls_in_flight` calls per peer awaiting a reply (the next
fails at once), each with its own timeout; a CALL frame within `max_frame_bytes`.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol as TypingProtocol

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IProtocol, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from etcdd.api.rpctypes import GrpcError, Status
from etcdd.peer.connection import OutboundProtocol, PeerLimits
from etcdd.peer.framing import (HEADER_BYTES, STATUS_OK, FrameKind, Hello, PeerCallError,
                                decode_reply, encode_call, reply_message)

TOO_MANY_CALLS_REASON = "too many calls in flight"
CALLS_STOPPED_REASON = "transport stopped"

# what `CallLink` is given to open a connection: build the protocol, fire when connected
Connect = Callable[[Callable[[], IProtocol]], Deferred]


class ICallLinkEvents(TypingProtocol):
    """What an outbound call stream tells the `CallLink` that owns it."""

    def call_stream_ready(self, protocol: CallStreamClient) -> None:
        """The peer answered our HELLO: calls may be written on `protocol` from now on."""

    def reply_received(self, call_id: int, status: int, body: bytes) -> None:
        """A REPLY arrived: `body` is the response if `status` is 0, else the message."""

    def call_stream_lost(self, protocol: CallStreamClient, reason: str) -> None:
        """The connection of `protocol` is gone, for `reason` (ready or not)."""


class CallStreamClient(OutboundProtocol):
    """The outbound call stream to one peer: CALLs out, REPLYs in.

    Invariants: REPLY frames are accepted only after the peer answered our HELLO;
    `call_stream_lost` is told exactly once, with the first reason the connection ended
    (a refusal either way, or the loss itself).
    """

    def __init__(self, hello: Hello, link: ICallLinkEvents, max_frame_bytes: int, *,
                 reactor: IReactorTime | None = None,
                 limits: PeerLimits = PeerLimits()) -> None:
        """Without `reactor` the peer's HELLO is awaited forever (wire-format tests only)."""
        super().__init__(hello, max_frame_bytes, reactor, limits)
        self._link = link
        self._end_reason: str | None = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self._end_reason is None:
            self._end_reason = f"connection lost: {reason.getErrorMessage()}"
        self._link.call_stream_lost(self, self._end_reason)

    def write_call(self, frame: bytes) -> None:
        """Send whole CALL frames (nothing once closed: the link fails those calls)."""
        if not self.closed:
            self.transport.write(frame)

    def _accepted(self) -> None:
        self._expect("REPLY", {FrameKind.REPLY: self._on_reply})
        self._link.call_stream_ready(self)

    def _on_reply(self, payload: bytes) -> None:
        call_id, status, body = decode_reply(payload)
        self._link.reply_received(call_id, status, body)

    def _log_refusal(self, reason: str, log_format: str, fields: dict[str, Any]) -> None:
        super()._log_refusal(reason, log_format, fields)
        if self._end_reason is None:
            self._end_reason = reason

    def _peer_refused(self, reason: str) -> None:
        super()._peer_refused(reason)
        if self._end_reason is None:
            self._end_reason = f"refused by the peer: {reason}"


class CallLink:
    """The calls to one peer and the one connection they travel on.

    Invariants: `pending` holds every call neither answered, failed nor cancelled, never
    more than `limits.max_calls_in_flight`, each with its timeout scheduled; a call's
    frame waits in `_unsent` until the connection is ready, then is written once;
    `_protocol` is the connection being opened or open, or None. Call ids only grow.
    """

    def __init__(self, member_id: int, hello: Hello, connect: Connect, reactor: IReactorTime,
                 max_frame_bytes: int, limits: PeerLimits = PeerLimits()) -> None:
        self.member_id = member_id
        self._hello, self._connect, self._reactor = hello, connect, reactor
        self._max_frame_bytes, self._limits = max_frame_bytes, limits
        self.pending: dict[int, tuple[Deferred, IDelayedCall]] = {}
        self._unsent: dict[int, bytes] = {}
        self._protocol: CallStreamClient | None = None
        self._connecting: Deferred | None = None
        self._ready = False
        self._next_id = 1

    def call(self, method: str, request: bytes, timeout_seconds: float) -> Deferred:
        """Ask the peer's `method` with `request`; fires with the response bytes.

        Fails with `GrpcError` if the peer's handler failed, with `PeerCallError` if no
        answer came (see the module docstring). Raises ValueError for a bad method name.
        """
        if len(self.pending) >= self._limits.max_calls_in_flight:
            return fail(PeerCallError(TOO_MANY_CALLS_REASON))
        call_id = self._next_id
        frame = encode_call(call_id, method, request)
        if len(frame) - HEADER_BYTES > self._max_frame_bytes:
            return fail(PeerCallError(f"call of {len(frame) - HEADER_BYTES} bytes is over "
                                      f"the frame limit of {self._max_frame_bytes} bytes"))
        self._next_id = call_id + 1
        d = Deferred(lambda _: self._forget(call_id))
        timer = self._reactor.callLater(timeout_seconds, self._timed_out, call_id,
                                        timeout_seconds)
        self.pending[call_id] = (d, timer)
        if self._ready:
            self._protocol.write_call(frame)
        else:
            self._unsent[call_id] = frame
            self._open()
        return d

    def close(self, reason: str) -> None:
        """Fail every pending call with `PeerCallError(reason)` and close the connection;
        a later `call()` opens a new one."""
        protocol, connecting = self._protocol, self._connecting
        self._protocol, self._connecting, self._ready = None, None, False
        if connecting is not None:
            connecting.cancel()
        elif protocol is not None:
            protocol.close()
        self._fail_all(reason)

    # ICallLinkEvents

    def call_stream_ready(self, protocol: CallStreamClient) -> None:
        if protocol is not self._protocol:
            return
        self._ready = True
        if self._unsent:
            frames, self._unsent = b"".join(self._unsent.values()), {}
            protocol.write_call(frames)

    def reply_received(self, call_id: int, status: int, body: bytes) -> None:
        entry = self.pending.pop(call_id, None)
        if entry is None:               # NB: the call timed out or was cancelled meanwhile
            return
        d, timer = entry
        timer.cancel()
        if status == STATUS_OK:
            d.callback(body)
        else:
            d.errback(GrpcError(Status(status), reply_message(body)))

    def call_stream_lost(self, protocol: CallStreamClient, reason: str) -> None:
        if protocol is not self._protocol:
            return
        self._protocol, self._connecting, self._ready = None, None, False
        self._fail_all(f"peer {self.member_id:x}: {reason}")

    # internals

    def _open(self) -> None:
        """Open the call stream unless it is open or being opened."""
        if self._protocol is not None:
            return
        protocol = self._protocol = CallStreamClient(
            self._hello, self, self._max_frame_bytes, reactor=self._reactor,
            limits=self._limits)
        connecting = self._connecting = self._connect(lambda: protocol)
        connecting.addCallbacks(self._connected, self._connect_failed,
                                callbackArgs=(connecting,), errbackArgs=(protocol,))

    def _connected(self, _: object, connecting: Deferred) -> None:
        if self._connecting is connecting:
            self._connecting = None

    def _connect_failed(self, failure: Failure, protocol: CallStreamClient) -> None:
        if protocol is not self._protocol:      # closed meanwhile: the calls already failed
            return
        self._protocol, self._connecting = None, None
        self._fail_all(f"peer {self.member_id:x} unreachable: {failure.getErrorMessage()}")

    def _timed_out(self, call_id: int, seconds: float) -> None:
        entry = self.pending.pop(call_id, None)
        self._unsent.pop(call_id, None)
        if entry is not None:
            entry[0].errback(PeerCallError(f"no reply from peer {self.member_id:x} "
                                           f"within {seconds:g} s"))

    def _forget(self, call_id: int) -> None:
        """The caller cancelled the call: stop waiting for it (a late REPLY is ignored)."""
        entry = self.pending.pop(call_id, None)
        self._unsent.pop(call_id, None)
        if entry is not None:
            entry[1].cancel()

    def _fail_all(self, reason: str) -> None:
        pending, self.pending, self._unsent = self.pending, {}, {}
        for d, timer in pending.values():
            timer.cancel()
            d.errback(PeerCallError(reason))
