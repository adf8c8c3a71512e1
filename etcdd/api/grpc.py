"""gRPC over HTTP/2 for the client port: one `GrpcProtocol` per connection, on `h2`.

Shell. What crosses the wire matches a grpc-go 1.33 server (the one inside etcd 3.4):
`:status 200` + `content-type: application/grpc` response headers, `grpc-status` /
`grpc-message` trailers, trailers-only answers for calls that fail before a response,
grpc-go's texts for unknown methods, unparsable requests, oversize messages and expired
deadlines, and RST_STREAM(NO_ERROR) after answering a client that is still sending
(`http2_server.go WriteStatus`).

The services see only `router.Router` and `IServerStream`; everything h2-specific stays
in this module, grouped in the protocol as "h2 events" (in) and "calls: engine side"
(`_drain`, `_send_data`: headers/DATA/trailers out under flow control), apart from the
gRPC logic ("calls: gRPC side"), so a leaner HTTP/2 engine replaces those two groups only.

Performance model (DESIGN.md "The client transport"): every frame of every stream queued
during one reactor turn leaves in one `transport.write` (a `callLater(0)` flush); the
small messages a stream queued in that turn share one DATA frame; no per-message logging.
Bounds: `max_streams` open streams per connection (excess refused with REFUSED_STREAM),
`max_message_bytes` per inbound message (refused from the prefix), `max_queued_bytes` of
unsent responses per stream before `is_writable()` turns False, and nothing handed to h2
beyond the peer's flow-control window or while the transport asks us to pause.
"""
from __future__ import annotations

from typing import Any, Callable

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (ConnectionTerminated, DataReceived, RemoteSettingsChanged,
                       RequestReceived, StreamEnded, StreamReset, WindowUpdated)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from etcdd.api.framing import (OK_TRAILERS, Deframer, TruncatedMessageError, encode,
                               parse_timeout, status_trailers)
from etcdd.api.router import (CallContext, IServerStream, IStreamHandler, Router,
                              StreamMethod, UnaryMethod)
from etcdd.api.rpctypes import WIRE_ERRORS, GrpcError, Status, status_for

# etcd 3.4 embed/config.go DefaultMaxRequestBytes + v3rpc/grpc.go grpcOverheadBytes: the
# server's MaxRecvMsgSize.
DEFAULT_MAX_MESSAGE_BYTES = 1536 * 1024 + 512 * 1024
DEFAULT_MAX_STREAMS = 10_000              # open streams per connection we serve at once
DEFAULT_MAX_QUEUED_BYTES = 4 * 1024 * 1024   # unsent response bytes per stream (backpressure)
# Unsent response bytes per connection past which new calls are refused: a client that
# asks and never reads cannot make us hold more than this plus the calls in flight.
DEFAULT_MAX_CONNECTION_QUEUED_BYTES = 64 * 1024 * 1024
QUEUE_FULL_MESSAGE = "etcdd: too many unread responses on this connection"
# etcd 3.4 v3rpc/grpc.go sets MaxConcurrentStreams(math.MaxUint32); we advertise the same
# and enforce DEFAULT_MAX_STREAMS ourselves, because h2 answers a stream over its own
# limit with a connection error, not a refused stream.
ADVERTISED_MAX_CONCURRENT_STREAMS = 2**32 - 1
STREAM_WINDOW_BYTES = 1024 * 1024         # we consume DATA at once: windows only pace the peer
CONNECTION_WINDOW_BYTES = 16 * 1024 * 1024
H2_DEFAULT_WINDOW_BYTES = 65535

H2_SERVER_CONFIG = H2Configuration(
    client_side=False, header_encoding=None, validate_outbound_headers=False,
    normalize_outbound_headers=False, validate_inbound_headers=True,
    # NB: validation already refuses what normalization would fix (upper-case names);
    # gRPC carries no cookies to split.
    normalize_inbound_headers=False)

_RESPONSE_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
# grpc-go toRPCErr(context.DeadlineExceeded)
DEADLINE_EXCEEDED_MESSAGE = "context deadline exceeded"
_DEADLINE_TRAILERS = status_trailers(Status.DEADLINE_EXCEEDED, DEADLINE_EXCEEDED_MESSAGE)


def _is_mapped(error: BaseException) -> bool:
    """Whether `error` has a deliberate wire form (else it is a bug worth a traceback)."""
    return isinstance(error, GrpcError) or any(c in WIRE_ERRORS for c in type(error).__mro__)


def _split_headers(headers: list[tuple[bytes, bytes]]) -> tuple[str, dict[str, str]]:
    """(:path, metadata): every non-pseudo header, names lower-case (h2 checked that)."""
    path = ""
    metadata: dict[str, str] = {}
    for name, value in headers:
        if name[0] == 58:                        # b":"
            if name == b":path":
                path = value.decode("latin-1")
        else:
            metadata[name.decode("latin-1")] = value.decode("latin-1")
    return path, metadata


def _format_peer(address: Any) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@implementer(IServerStream)
class _Call:
    """One gRPC call on one HTTP/2 stream; also the `IServerStream` of a streaming call.

    Invariants: `finished` once the status is decided (`trailers` set, or the stream
    reset); `closed` once the stream is gone from the protocol (trailers written or
    reset), after which nothing is sent; `handler` is None once it must hear nothing more.
    """

    __slots__ = ("_protocol", "stream_id", "method", "context", "deframer", "handler", "out",
                 "out_bytes", "trailers", "headers_sent", "finished", "closed", "invoked",
                 "timer", "writable_callbacks", "pending")

    def __init__(self, protocol: GrpcProtocol, stream_id: int, method: UnaryMethod | StreamMethod,
                 context: CallContext, deframer: Deframer) -> None:
        self._protocol = protocol
        self.stream_id = stream_id
        self.method = method
        self.context = context
        self.deframer = deframer
        self.handler: IStreamHandler | None = None
        self.out: list[bytes | memoryview] = []     # framed messages not yet handed to h2
        self.out_bytes = 0
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.headers_sent = False
        self.finished = False
        self.closed = False
        self.invoked = False                        # unary: the handler has its request
        self.timer: IDelayedCall | None = None
        self.writable_callbacks: list[Callable[[], None]] = []
        self.pending: Deferred | None = None       # unary: the handler's unfired answer

    # IServerStream

    def send(self, message: Any) -> None:
        """Queue one response (a protobuf message, or bytes already serialized)."""
        if self.finished:
            return
        payload = message if type(message) is bytes else message.SerializeToString()
        framed = encode(payload)
        self.out.append(framed)
        self.out_bytes += len(framed)
        self._protocol._queued_bytes += len(framed)
        self._protocol._wake(self)

    def finish(self, error: BaseException | None = None) -> None:
        if self.finished:
            return
        self.handler = None            # it ended the call itself: no cancelled() later
        if error is None:
            self._protocol._end(self, OK_TRAILERS)
        else:
            self._protocol._end(self, status_trailers(*self._protocol._status_of(self, error)))

    def is_writable(self) -> bool:
        return self.out_bytes < self._protocol._max_queued_bytes

    def on_writable(self, callback: Callable[[], None]) -> None:
        self.writable_callbacks.append(callback)
        if self.is_writable() and not self.closed:
            self._protocol._wake(self, force=True)


@implementer(IPushProducer)
class GrpcProtocol(Protocol):
    """The server side of one HTTP/2 connection carrying gRPC calls.

    Invariants: every open stream we serve is in `_calls`; a call with unsent output is
    in `_dirty` (drained at the next flush) or `_blocked` (waiting for window or for the
    transport to resume); at most one flush is scheduled; after `close_gracefully()` no
    stream above the GOAWAY's last stream id is served.
    """

    _log = Logger()

    def __init__(self, router: Router, reactor: IReactorTime, *,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 max_streams: int = DEFAULT_MAX_STREAMS,
                 max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
                 max_connection_queued_bytes: int = DEFAULT_MAX_CONNECTION_QUEUED_BYTES,
                 ) -> None:
        self._router, self._reactor = router, reactor
        self._max_connection_queued_bytes = max_connection_queued_bytes
        self._queued_bytes = 0          # sum of every live call's out_bytes
        self._max_message_bytes = max_message_bytes
        self._max_streams = max_streams
        self._max_queued_bytes = max_queued_bytes
        self._h2 = H2Connection(config=H2_SERVER_CONFIG)
        self._h2.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: ADVERTISED_MAX_CONCURRENT_STREAMS,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW_BYTES,
            SettingCodes.MAX_HEADER_LIST_SIZE: 64 * 1024,
        })
        self._calls: dict[int, _Call] = {}
        self._dirty: dict[int, _Call] = {}
        self._blocked: dict[int, _Call] = {}
        self._extra_frames: list[bytes] = []        # frames h2 must not know about (GOAWAY)
        self._flush_call: IDelayedCall | None = None
        self._flushing = False
        self._paused = False
        self._dead = False                          # h2 refused the peer or the peer left
        self._lost = False
        self._lose_after_flush = False
        self._last_stream_id = 2**31 - 1            # lowered by our GOAWAY
        self._close_timer: IDelayedCall | None = None
        self._lost_waiters: list[Deferred[None]] = []
        self._peer = ""
        self._on_event = {
            RequestReceived: self._request_received, DataReceived: self._data_received,
            StreamEnded: self._stream_ended, StreamReset: self._stream_reset,
            WindowUpdated: self._window_updated, RemoteSettingsChanged: self._settings_changed,
            ConnectionTerminated: self._connection_terminated,
        }

    # Twisted hooks

    def connectionMade(self) -> None:
        self._peer = _format_peer(self.transport.getPeer())
        self.transport.registerProducer(self, True)
        # grpc-go needs our SETTINGS first; the flush writes it with whatever follows.
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(CONNECTION_WINDOW_BYTES - H2_DEFAULT_WINDOW_BYTES)
        self._schedule_flush()

    def dataReceived(self, data: bytes) -> None:
        if self._dead:
            return
        try:
            events = self._h2.receive_data(data)
        except ProtocolError as e:               # h2 already queued the GOAWAY
            self._log.info("closing {peer}: {error}", peer=self._peer, error=e)
            self._die()
            return
        on_event = self._on_event
        for event in events:
            handler = on_event.get(event.__class__)
            if handler is not None:
                handler(event)
        self._schedule_flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = self._dead = True
        for delayed in (self._flush_call, self._close_timer):
            if delayed is not None and delayed.active():
                delayed.cancel()
        self._flush_call = self._close_timer = None
        self._abandon_calls()
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # IPushProducer: the transport's buffer is full / drained again.

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._unblock_all()

    def stopProducing(self) -> None:
        self._paused = True                      # connectionLost follows

    # Shutdown

    def close_gracefully(self, timeout_seconds: float = 2.0) -> Deferred[None]:
        """Send GOAWAY, let calls in flight finish, then close; abort after the timeout.

        Returns a Deferred that fires once the connection is gone. Streams the client
        opens after our GOAWAY are refused (REFUSED_STREAM), so it retries elsewhere.
        """
        done: Deferred[None] = Deferred()
        if self._lost:
            done.callback(None)
            return done
        self._lost_waiters.append(done)
        if self._close_timer is None and not self._dead:
            # NB: h2 forbids sending anything after its own close_connection(), so the
            # GOAWAY is built here and written after h2's frames.
            self._last_stream_id = self._h2.highest_inbound_stream_id
            self._extra_frames.append(GoAwayFrame(
                0, error_code=ErrorCodes.NO_ERROR, last_stream_id=self._last_stream_id,
            ).serialize())
            self._close_timer = self._reactor.callLater(timeout_seconds, self._close_timed_out)
            if not self._calls:
                self._lose_after_flush = True
            self._schedule_flush()
        return done

    def _close_timed_out(self) -> None:
        self._close_timer = None
        self._log.info("closing {peer}: {count} calls still open after GOAWAY",
                       peer=self._peer, count=len(self._calls))
        self.transport.abortConnection()

    def _die(self) -> None:
        """Write what h2 queued (its GOAWAY last) and drop the connection."""
        self._dead = True
        self._abandon_calls()
        self._dirty.clear()
        self._extra_frames.clear()
        if self._flush_call is not None:
            self._flush_call.cancel()
        self._lose_after_flush = True
        self._flush()

    # h2 events

    def _request_received(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        if stream_id > self._last_stream_id or len(self._calls) >= self._max_streams:
            if self._is_open(stream_id):
                self._h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        if self._queued_bytes > self._max_connection_queued_bytes:
            self._reject(stream_id, Status.RESOURCE_EXHAUSTED, QUEUE_FULL_MESSAGE)
            return
        path, metadata = _split_headers(event.headers)
        content_type = metadata.get("content-type", "")
        if content_type != "application/grpc" and not content_type.startswith(
                ("application/grpc+", "application/grpc;")):
            # grpc-go http2_server.go: 415 with INTERNAL for non-gRPC requests
            self._reject(stream_id, Status.INTERNAL,
                         f'transport: received the unexpected content-type "{content_type}"',
                         b"415")
            return
        method = self._router.lookup(path)
        if method is None:
            self._reject(stream_id, *self._unimplemented(path))
            return
        deadline = None
        timeout = metadata.get("grpc-timeout")
        if timeout is not None:
            try:
                timeout_seconds = parse_timeout(timeout)
            except GrpcError as e:
                self._reject(stream_id, e.code, e.message)
                return
            deadline = self._reactor.seconds() + timeout_seconds
        call = _Call(self, stream_id, method, CallContext(path, metadata, self._peer, deadline),
                     Deframer(self._max_message_bytes, metadata.get("grpc-encoding", "")))
        self._calls[stream_id] = call
        if deadline is not None:
            call.timer = self._reactor.callLater(timeout_seconds, self._deadline_expired, call)
        if type(method) is StreamMethod:
            self._start_stream(call)

    def _data_received(self, event: DataReceived) -> None:
        stream_id = event.stream_id
        # Consumed at once (the deframer bounds what we keep), so give the window back now:
        # otherwise a large put stalls once the client has used its window.
        self._h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
        call = self._calls.get(stream_id)
        if call is None or call.finished:
            return
        try:
            payloads = call.deframer.feed(event.data)
        except GrpcError as e:
            self._fail(call, e.code, e.message)
            return
        if payloads:
            if call.handler is not None:
                self._deliver(call, payloads)
            elif not call.invoked and type(call.method) is UnaryMethod:
                self._invoke_unary(call, payloads[0])

    def _stream_ended(self, event: StreamEnded) -> None:
        call = self._calls.get(event.stream_id)
        if call is None or call.finished:
            return
        try:
            call.deframer.end_of_stream()
            if type(call.method) is UnaryMethod and not call.invoked:
                raise TruncatedMessageError()
        except GrpcError as e:
            self._fail(call, e.code, e.message)
            return
        handler = call.handler
        if handler is not None:
            try:
                handler.end_of_input()
            except Exception:
                self._fail_with(call, Failure())

    def _stream_reset(self, event: StreamReset) -> None:
        call = self._calls.get(event.stream_id)
        if call is not None:
            self._forget(call)
            self._cancel_handler(call)

    def _window_updated(self, event: WindowUpdated) -> None:
        if event.stream_id == 0:
            self._unblock_all()
        else:
            call = self._blocked.pop(event.stream_id, None)
            if call is not None:
                self._dirty[call.stream_id] = call

    def _settings_changed(self, event: RemoteSettingsChanged) -> None:
        # grpc-go changes INITIAL_WINDOW_SIZE mid-connection (BDP estimation): every
        # stream's window moves with it.
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._unblock_all()

    def _connection_terminated(self, event: ConnectionTerminated) -> None:
        # NB: after a peer's GOAWAY h2 refuses to send anything more, so calls in flight
        # cannot be answered; clients send GOAWAY only when they are going away anyway.
        self._dead = True
        self._abandon_calls()
        self._dirty.clear()
        self._lose_after_flush = True

    # calls: gRPC side

    def _unimplemented(self, path: str) -> tuple[Status, str]:
        """grpc-go server.go handleStream's answer for a path no method serves."""
        name = path[1:] if path.startswith("/") else path
        service, slash, method = name.rpartition("/")
        if not slash:
            return Status.RESOURCE_EXHAUSTED, f'malformed method name: "{path}"'
        if any(known[1:].rpartition("/")[0] == service for known in self._router.paths()):
            return Status.UNIMPLEMENTED, f"unknown method {method} for service {service}"
        return Status.UNIMPLEMENTED, f"unknown service {service}"

    def _invoke_unary(self, call: _Call, payload: bytes) -> None:
        call.invoked = True
        method = call.method
        try:
            request = method.request_type.FromString(payload)
        except Exception as e:
            # grpc-go server.go processUnaryRPC
            self._fail(call, Status.INTERNAL, f"grpc: error unmarshalling request: {e}")
            return
        try:
            result = method.handler(request, call.context)
        except Exception:
            self._fail_with(call, Failure())
            return
        if isinstance(result, Deferred):
            if not result.called:
                call.pending = result
            result.addCallbacks(self._respond, self._unary_failed,
                                callbackArgs=(call,), errbackArgs=(call,))
        else:
            self._respond(result, call)

    def _respond(self, response: Any, call: _Call) -> None:
        if call.finished:                        # expired or reset: the late result is dropped
            return
        try:
            payload = response if type(response) is bytes else response.SerializeToString()
        except Exception:
            self._fail_with(call, Failure())
            return
        framed = encode(payload)
        call.out.append(framed)
        call.out_bytes += len(framed)
        self._queued_bytes += len(framed)
        self._end(call, OK_TRAILERS)

    def _unary_failed(self, failure: Failure, call: _Call) -> None:
        if not call.finished:
            self._fail_with(call, failure)

    def _start_stream(self, call: _Call) -> None:
        try:
            handler = call.method.handler(call.context, call)
        except Exception:
            self._fail_with(call, Failure())
            return
        if not call.finished:
            call.handler = handler

    def _deliver(self, call: _Call, payloads: list[bytes]) -> None:
        parse = call.method.request_type.FromString
        for payload in payloads:
            handler = call.handler
            if handler is None:
                return
            try:
                request = parse(payload)
            except Exception as e:
                # grpc-go rpc_util.go recv
                self._fail(call, Status.INTERNAL,
                           f"grpc: failed to unmarshal the received message {e}")
                return
            try:
                handler.message_received(request)
            except Exception:
                self._fail_with(call, Failure())
                return

    def _deadline_expired(self, call: _Call) -> None:
        call.timer = None
        if not call.finished:
            self._end(call, _DEADLINE_TRAILERS)
            self._cancel_handler(call)

    def _status_of(self, call: _Call, error: BaseException,
                   failure: Failure | None = None) -> tuple[Status, str]:
        code, message = status_for(error)
        if code == Status.UNKNOWN and not _is_mapped(error):
            self._log.failure("unexpected error in {path} from {peer}",
                              failure=failure or Failure(error, type(error),
                                                         error.__traceback__),
                              path=call.context.path, peer=self._peer)
        return code, message

    def _fail_with(self, call: _Call, failure: Failure) -> None:
        """End `call` with the status of a handler's exception (UNKNOWN ones are logged)."""
        self._fail(call, *self._status_of(call, failure.value, failure))

    def _fail(self, call: _Call, code: int, message: str) -> None:
        """End `call` with an error status and tell its stream handler, if any."""
        if not call.finished:
            self._end(call, status_trailers(code, message))
        self._cancel_handler(call)

    def _cancel_handler(self, call: _Call) -> None:
        """Tell whoever serves `call` that nobody waits for it any more: a stream
        handler hears `cancelled()`, a unary call's pending Deferred is cancelled (its
        canceller, if any, releases what the call holds, e.g. a lock waiter's key)."""
        pending, call.pending = call.pending, None
        if pending is not None and not pending.called:
            pending.cancel()
        handler, call.handler = call.handler, None
        if handler is not None:
            try:
                handler.cancelled()
            except Exception:
                self._log.failure("stream handler for {path} failed to cancel",
                                  path=call.context.path)

    # calls: engine side

    def _wake(self, call: _Call, force: bool = False) -> None:
        """`call` has output; a call waiting for window stays put unless `force`."""
        stream_id = call.stream_id
        if force:
            self._blocked.pop(stream_id, None)
        elif stream_id in self._blocked:
            return
        self._dirty[stream_id] = call
        self._schedule_flush()

    def _end(self, call: _Call, trailers: list[tuple[bytes, bytes]]) -> None:
        call.finished = True
        call.trailers = trailers
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        self._wake(call)

    def _forget(self, call: _Call) -> None:
        """The stream is over on the wire: drop every reference to `call`."""
        call.finished = call.closed = True
        self._queued_bytes -= call.out_bytes
        call.out, call.out_bytes = [], 0
        stream_id = call.stream_id
        self._calls.pop(stream_id, None)
        self._blocked.pop(stream_id, None)
        self._dirty.pop(stream_id, None)
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        if self._close_timer is not None and not self._calls:
            self._lose_after_flush = True
            self._schedule_flush()

    def _abandon_calls(self) -> None:
        calls = list(self._calls.values())
        for call in calls:
            self._forget(call)
        for call in calls:
            self._cancel_handler(call)

    def _unblock_all(self) -> None:
        if self._blocked and not self._paused:
            self._dirty.update(self._blocked)
            self._blocked.clear()
            self._schedule_flush()

    def _reject(self, stream_id: int, code: int, message: str,
                http_status: bytes = b"200") -> None:
        """Answer a call that never started with a trailers-only response."""
        if not self._is_open(stream_id):         # the client reset it in the same read
            return
        self._h2.send_headers(stream_id, [(b":status", http_status),
                                          (b"content-type", b"application/grpc"),
                                          *status_trailers(code, message)], end_stream=True)
        self._stop_client(stream_id)

    def _stop_client(self, stream_id: int) -> None:
        """After our END_STREAM: RST_STREAM(NO_ERROR) if the client is still sending
        (RFC 9113 §8.1; grpc-go http2_server.go WriteStatus does the same)."""
        if self._is_open(stream_id):
            self._h2.reset_stream(stream_id, ErrorCodes.NO_ERROR)

    def _is_open(self, stream_id: int) -> bool:
        """Whether h2 still lets us send on `stream_id`. Events are handled after h2 has
        read the whole chunk, so a later frame of it may already have closed the stream."""
        stream = self._h2.streams.get(stream_id)
        return stream is not None and not stream.closed

    def _schedule_flush(self) -> None:
        """Coalesce every stream's frames into one write per reactor turn."""
        if self._flush_call is None and not self._flushing and not self._lost:
            self._flush_call = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        self._flushing = True
        try:
            while self._dirty:
                dirty, self._dirty = self._dirty, {}
                for call in dirty.values():
                    if not call.closed:
                        self._drain(call)
        finally:
            self._flushing = False
        data = self._h2.data_to_send()
        if self._extra_frames:
            data += b"".join(self._extra_frames)
            self._extra_frames.clear()
        if data:
            self._write(data)
        if self._lose_after_flush:
            self._lose_after_flush = False
            self.transport.loseConnection()

    def _write(self, data: bytes) -> None:
        """Send at once when the TCP transport has nothing queued; queue the rest.

        # NB: Twisted's write() only queues and registers for writability (two epoll_ctl
        # calls and a poll round per write); measured ~8 % of a put's CPU. A plain TCP
        # connection with an empty buffer can take the bytes now, as Twisted's own
        # doWrite would. Anything else (TLS, a backlog) goes through write().
        """
        transport = self.transport
        if (transport.__class__ is tcp.Server and transport.connected
                and not transport.disconnecting and not transport.dataBuffer
                and not transport._tempDataBuffer):
            try:
                sent = transport.socket.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = 0       # write() below meets the error and closes as Twisted does
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)

    def _drain(self, call: _Call) -> None:
        """Hand `call`'s queue to h2 as far as the windows allow; then its trailers."""
        h2, stream_id = self._h2, call.stream_id
        try:
            if not call.headers_sent:
                if call.trailers is not None and not call.out:      # trailers-only
                    h2.send_headers(stream_id, _RESPONSE_HEADERS + call.trailers,
                                    end_stream=True)
                    self._stream_done(call)
                    return
                h2.send_headers(stream_id, _RESPONSE_HEADERS)
                call.headers_sent = True
            if call.out and (self._paused or not self._send_data(call)):
                self._blocked[stream_id] = call
            elif call.trailers is not None:
                h2.send_headers(stream_id, call.trailers, end_stream=True)
                self._stream_done(call)
                return
        except ProtocolError:                    # the stream went away under us
            self._forget(call)
            self._cancel_handler(call)
            return
        if (call.writable_callbacks and not call.finished
                and call.out_bytes < self._max_queued_bytes):
            callbacks, call.writable_callbacks = call.writable_callbacks, []
            for callback in callbacks:
                try:
                    callback()
                except Exception:
                    self._fail_with(call, Failure())

    def _send_data(self, call: _Call) -> bool:
        """Send as much of `call.out` as fits the window; True when all of it left.

        All messages queued this turn go as one run of DATA frames (packed, not one
        frame per message).
        """
        h2, stream_id, out = self._h2, call.stream_id, call.out
        data = out[0] if len(out) == 1 else b"".join(out)
        size = len(data)
        self._queued_bytes -= call.out_bytes     # re-added below for what stays queued
        window = h2.local_flow_control_window(stream_id)
        max_frame = h2.max_outbound_frame_size
        if size <= window and size <= max_frame:
            h2.send_data(stream_id, data)
            out.clear()
            call.out_bytes = 0
            return True
        view, sent = memoryview(data), 0
        while sent < size and window > 0:
            chunk = min(size - sent, window, max_frame)
            h2.send_data(stream_id, view[sent:sent + chunk])
            sent += chunk
            window -= chunk
        if sent == size:
            out.clear()
            call.out_bytes = 0
            return True
        call.out = [view[sent:]]                 # no copy of the unsent rest
        call.out_bytes = size - sent
        self._queued_bytes += call.out_bytes
        return False

    def _stream_done(self, call: _Call) -> None:
        self._stop_client(call.stream_id)
        self._forget(call)
