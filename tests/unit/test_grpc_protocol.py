"""GrpcProtocol over StringTransport + Clock, driven by a client-side h2 connection."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (DataReceived, PingAckReceived, ResponseReceived,
                       StreamEnded, StreamReset, TrailersReceived)
from h2.settings import SettingCodes
from hyperframe.frame import Frame, GoAwayFrame
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.compat import iterbytes
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from etcdd.api.framing import Deframer, decode_grpc_message, encode
from etcdd.api.grpc import GrpcProtocol
from etcdd.api.router import CallContext, IServerStream, IStreamHandler, Router
from etcdd.api.rpctypes import GrpcError, Status
from etcdd.mvcc.errors import CompactedError
from etcdd.proto.kv_pb2 import KeyValue

RANGE = "/etcdserverpb.KV/Range"
WATCH = "/etcdserverpb.Watch/Watch"
OK_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
OK_TRAILERS = [(b"grpc-status", b"0")]


# -- harness (imported by the other transport tests) ---------------------------------------

class CountingTransport(StringTransport):
    """A StringTransport that counts write() calls."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


@dataclass
class StreamResult:
    """What the client saw on one stream."""
    headers: list[tuple[bytes, bytes]] | None = None
    data: bytearray = field(default_factory=bytearray)
    data_frames: int = 0
    trailers: list[tuple[bytes, bytes]] | None = None
    ended: bool = False
    reset: int | None = None

    @property
    def messages(self) -> list[bytes]:
        deframer = Deframer(1 << 31)
        messages = deframer.feed(bytes(self.data))
        deframer.end_of_stream()
        return messages

    @property
    def status(self) -> tuple[int, str]:
        """(grpc-status, decoded grpc-message) from trailers or a trailers-only answer."""
        fields = dict(self.trailers if self.trailers is not None else self.headers or [])
        return (int(fields[b"grpc-status"]),
                decode_grpc_message(fields.get(b"grpc-message", b"")))


def split_frames(data: bytes) -> list[tuple[Frame, bytes]]:
    """Server output cut into (parsed frame, raw bytes) pairs."""
    frames, view = [], memoryview(data)
    while view:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9:9 + length])
        frames.append((frame, view[:9 + length].tobytes()))
        view = view[9 + length:]
    return frames


def frame_types(data: bytes) -> list[str]:
    """The frame type names in a chunk of server output."""
    return [type(frame).__name__ for frame, _ in split_frames(data)]


class Client:
    """A client-side h2 connection wired to a fresh GrpcProtocol."""

    def __init__(self, router: Router, *, clock: Clock | None = None,
                 byte_at_a_time: bool = False, reading: bool = True,
                 initial_window: int | None = None, **options: Any) -> None:
        self.clock = clock or Clock()
        self.transport = CountingTransport()
        self.protocol = GrpcProtocol(router, self.clock, **options)
        self.protocol.makeConnection(self.transport)
        self.byte_at_a_time = byte_at_a_time
        self.reading = reading
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        if initial_window is not None:
            self.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: initial_window})
        self.streams: dict[int, StreamResult] = {}
        self.goaway: GoAwayFrame | None = None
        self.ping_acks: list[bytes] = []
        self.last_output = b""
        self.pump()

    def feed(self, data: bytes) -> None:
        if self.byte_at_a_time:
            for byte in iterbytes(data):
                self.protocol.dataReceived(byte)
        else:
            self.protocol.dataReceived(data)

    def pump(self) -> None:
        """Client frames in, one reactor turn, server frames back out to the client."""
        data = self.conn.data_to_send()
        if data:
            self.feed(data)
        self.clock.advance(0)
        self.receive()

    def receive(self) -> None:
        data = self.last_output = self.transport.value()
        self.transport.clear()
        if not data:
            return
        # NB: h2 refuses every frame after a GOAWAY, but a real client still reads the
        # answers to its streams in flight, so the GOAWAY is taken out before h2 sees it.
        kept = []
        for frame, raw in split_frames(data):
            if isinstance(frame, GoAwayFrame):
                self.goaway = frame
            else:
                kept.append(raw)
        for event in self.conn.receive_data(b"".join(kept)):
            stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, ResponseReceived):
                stream.headers = list(event.headers)
            elif isinstance(event, DataReceived):
                stream.data += event.data
                stream.data_frames += 1
                if self.reading:
                    self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                        event.stream_id)
            elif isinstance(event, TrailersReceived):
                stream.trailers = list(event.headers)
            elif isinstance(event, StreamEnded):
                stream.ended = True
            elif isinstance(event, StreamReset):
                stream.reset = event.error_code
            elif isinstance(event, PingAckReceived):
                self.ping_acks.append(event.ping_data)

    def open(self, path: str, metadata: tuple[tuple[bytes, bytes], ...] = (),
             end_stream: bool = False) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, [
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
            (b":authority", b"localhost"), (b"content-type", b"application/grpc"),
            (b"te", b"trailers"), *metadata], end_stream=end_stream)
        self.streams[stream_id] = StreamResult()
        return stream_id

    def send(self, stream_id: int, payload: bytes, end_stream: bool = False) -> None:
        self.conn.send_data(stream_id, encode(payload), end_stream=end_stream)

    def unary(self, path: str, payload: bytes,
              metadata: tuple[tuple[bytes, bytes], ...] = ()) -> StreamResult:
        stream_id = self.open(path, metadata)
        self.send(stream_id, payload, end_stream=True)
        self.pump()
        return self.streams[stream_id]


def echo(request: KeyValue, context: CallContext) -> KeyValue:
    return KeyValue(key=request.key, value=request.value)


def echo_router() -> Router:
    router = Router()
    router.add_unary(RANGE, KeyValue, echo)
    return router


def kv(key: bytes = b"k", value: bytes = b"") -> bytes:
    return KeyValue(key=key, value=value).SerializeToString()


@implementer(IStreamHandler)
class RecordingHandler:
    """Records what the transport tells it; echoes each message back."""

    def __init__(self, context: CallContext, stream: IServerStream) -> None:
        self.context, self.stream = context, stream
        self.received: list[KeyValue] = []
        self.ended = False
        self.cancels = 0

    def message_received(self, message: KeyValue) -> None:
        if message.key == b"boom":
            raise RuntimeError("handler blew up")
        self.received.append(message)
        self.stream.send(message)

    def end_of_input(self) -> None:
        self.ended = True
        self.stream.finish()

    def cancelled(self) -> None:
        self.cancels += 1


@implementer(IStreamHandler)
class FloodHandler:
    """Sends `total` copies of `message`, only while the stream is writable."""

    def __init__(self, stream: IServerStream, message: bytes, total: int) -> None:
        self.stream, self.message, self.total = stream, message, total
        self.sent = 0
        self.waits = 0
        self.cancels = 0
        self.pump()

    def pump(self) -> None:
        while self.stream.is_writable() and self.sent < self.total:
            self.stream.send(self.message)
            self.sent += 1
        if self.sent < self.total:
            self.waits += 1
            self.stream.on_writable(self.pump)
        else:
            self.stream.finish()

    def message_received(self, message: Any) -> None:
        pass

    def end_of_input(self) -> None:
        pass

    def cancelled(self) -> None:
        self.cancels += 1


def stream_router(factory: Callable[[CallContext, IServerStream], Any]) -> Router:
    router = echo_router()
    router.add_stream(WATCH, KeyValue, factory)
    return router


# -- tests -------------------------------------------------------------------------------

class ConnectionTests(SynchronousTestCase):

    def test_first_frame_is_settings(self) -> None:
        """The server's first frame is SETTINGS, advertising 2^32-1 concurrent streams."""
        clock, transport = Clock(), StringTransport()
        GrpcProtocol(Router(), clock).makeConnection(transport)
        clock.advance(0)
        data = transport.value()
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        self.assertEqual(type(frame).__name__, "SettingsFrame")
        self.assertEqual(frame.settings[SettingCodes.MAX_CONCURRENT_STREAMS], 2**32 - 1)
        self.assertEqual(frame_types(data), ["SettingsFrame", "WindowUpdateFrame"])

    def test_ping_answered(self) -> None:
        """A PING is acknowledged with its payload and never answered with GOAWAY."""
        client = Client(echo_router())
        for i in range(5):
            client.conn.ping(b"pingpng" + bytes([i]))
            client.pump()
        self.assertEqual(client.ping_acks, [b"pingpng" + bytes([i]) for i in range(5)])
        self.assertIsNone(client.goaway)
        self.assertEqual(client.unary(RANGE, kv()).status, (0, ""))

    def test_one_write_per_turn(self) -> None:
        """Frames of every stream answered in one turn leave in one transport.write."""
        client = Client(echo_router())
        ids = [client.open(RANGE) for _ in range(20)]
        for stream_id in ids:
            client.send(stream_id, kv(b"%d" % stream_id), end_stream=True)
        client.feed(client.conn.data_to_send())
        before = client.transport.writes
        client.clock.advance(0)
        self.assertEqual(client.transport.writes - before, 1)
        client.receive()
        for stream_id in ids:
            self.assertEqual(client.streams[stream_id].messages, [kv(b"%d" % stream_id)])

    def test_nothing_written_before_turn_ends(self) -> None:
        """Answers wait for the end of the reactor turn (the flush), not the first frame."""
        client = Client(echo_router())
        stream_id = client.open(RANGE)
        client.send(stream_id, kv(), end_stream=True)
        client.feed(client.conn.data_to_send())
        self.assertEqual(client.transport.value(), b"")
        client.clock.advance(0)
        client.receive()
        self.assertEqual(client.streams[stream_id].status, (0, ""))


class UnaryTests(SynchronousTestCase):

    def test_round_trip_byte_at_a_time(self) -> None:
        """A unary call fed one byte at a time gets 200 + application/grpc headers, the
        response, and grpc-status 0 trailers; the handler sees metadata and peer."""
        contexts: list[CallContext] = []

        def handler(request: KeyValue, context: CallContext) -> KeyValue:
            contexts.append(context)
            return KeyValue(key=request.key.upper(), value=b"v")

        router = Router()
        router.add_unary(RANGE, KeyValue, handler)
        client = Client(router, byte_at_a_time=True)
        result = client.unary(RANGE, kv(b"key"), metadata=(
            (b"token", b"abc"), (b"authorization", b"Bearer x"), (b"hasleader", b"true")))
        self.assertEqual(result.headers, OK_HEADERS)
        self.assertEqual(result.messages, [KeyValue(key=b"KEY", value=b"v").SerializeToString()])
        self.assertEqual(result.trailers, OK_TRAILERS)
        self.assertTrue(result.ended)
        self.assertIsNone(result.reset)
        [context] = contexts
        self.assertEqual(context.path, RANGE)
        self.assertEqual(context.peer, "192.168.1.1:54321")
        self.assertIsNone(context.deadline)
        self.assertEqual({k: context.metadata[k] for k in ("token", "authorization", "hasleader")},
                         {"token": "abc", "authorization": "Bearer x", "hasleader": "true"})
        self.assertFalse(any(name.startswith(":") for name in context.metadata))
        self.assertEqual(client.clock.getDelayedCalls(), [])

    def test_deferred_response(self) -> None:
        """A handler's Deferred answers the call when it fires, in a later turn."""
        pending: list[Deferred[KeyValue]] = []
        router = Router()
        router.add_unary(RANGE, KeyValue, lambda request, context: pending.append(Deferred())
                         or pending[-1])
        client = Client(router)
        stream_id = client.open(RANGE)
        client.send(stream_id, kv(), end_stream=True)
        client.pump()
        self.assertIsNone(client.streams[stream_id].headers)
        pending[0].callback(KeyValue(key=b"late"))
        client.pump()
        self.assertEqual(client.streams[stream_id].messages, [kv(b"late")])
        self.assertEqual(client.streams[stream_id].trailers, OK_TRAILERS)

    def test_mapped_error_is_trailers_only(self) -> None:
        """A mapped exception is one HEADERS frame ending the stream with :status 200,
        content-type, grpc-status and grpc-message, and no DATA."""
        router = Router()
        router.add_unary(RANGE, KeyValue, lambda r, c: (_ for _ in ()).throw(CompactedError()))
        client = Client(router)
        result = client.unary(RANGE, kv())
        self.assertEqual(result.headers, OK_HEADERS + [
            (b"grpc-status", b"11"),
            (b"grpc-message", b"etcdserver: mvcc: required revision has been compacted")])
        self.assertIsNone(result.trailers)
        self.assertEqual(result.data_frames, 0)
        self.assertTrue(result.ended)
        self.assertEqual(frame_types(client.last_output), ["HeadersFrame"])

    def test_failed_deferred(self) -> None:
        """A failed Deferred answers with its status and fails only that call."""
        pending: list[Deferred[KeyValue]] = []
        router = echo_router()
        router.add_unary("/etcdserverpb.KV/Put", KeyValue,
                         lambda r, c: pending.append(Deferred()) or pending[-1])
        client = Client(router)
        stream_id = client.open("/etcdserverpb.KV/Put")
        client.send(stream_id, kv(), end_stream=True)
        client.pump()
        pending[0].errback(GrpcError(Status.UNAVAILABLE, "etcdserver: no leader"))
        client.pump()
        self.assertEqual(client.streams[stream_id].status, (14, "etcdserver: no leader"))
        self.assertEqual(client.unary(RANGE, kv()).status, (0, ""))

    def test_unmapped_exception_is_unknown_and_logged(self) -> None:
        """An unmapped exception becomes UNKNOWN with its text; its traceback is logged."""
        router = Router()
        router.add_unary(RANGE, KeyValue, lambda r, c: 1 / 0)
        client = Client(router)
        self.assertEqual(client.unary(RANGE, kv()).status, (2, "division by zero"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_grpc_message_percent_encoded(self) -> None:
        """grpc-message is percent-encoded as gRPC requires."""
        router = Router()
        router.add_unary(RANGE, KeyValue, lambda r, c: (_ for _ in ()).throw(
            GrpcError(Status.INVALID_ARGUMENT, "100% bad\nkey \u00e9")))
        result = Client(router).unary(RANGE, kv())
        self.assertEqual(dict(result.headers)[b"grpc-message"], b"100%25 bad%0Akey %C3%A9")
        self.assertEqual(result.status, (3, "100% bad\nkey \u00e9"))

    def test_unknown_service_and_method(self) -> None:
        """Unknown paths get UNIMPLEMENTED with grpc-go's texts, trailers-only."""
        client = Client(echo_router())
        cases = {
            "/etcdserverpb.Foo/Bar": (12, "unknown service etcdserverpb.Foo"),
            "/etcdserverpb.KV/Bar": (12, "unknown method Bar for service etcdserverpb.KV"),
            "/nomethod": (8, 'malformed method name: "/nomethod"'),
        }
        for path, status in cases.items():
            result = client.unary(path, kv())
            self.assertEqual(result.status, status, path)
            self.assertEqual(result.headers[:2], OK_HEADERS)
            self.assertIsNone(result.trailers)
        self.assertEqual(client.unary(RANGE, kv()).status, (0, ""))


class DeadlineTests(SynchronousTestCase):

    def _slow_router(self, pending: list[Deferred[KeyValue]],
                     contexts: list[CallContext]) -> Router:
        def handler(request: KeyValue, context: CallContext) -> Deferred[KeyValue]:
            contexts.append(context)
            pending.append(Deferred())
            return pending[-1]
        router = Router()
        router.add_unary(RANGE, KeyValue, handler)
        return router

    def test_deadline_exceeded_and_late_result_dropped(self) -> None:
        """grpc-timeout sets the context deadline; at it the call is answered
        DEADLINE_EXCEEDED and the handler's late result is dropped."""
        pending: list[Deferred[KeyValue]] = []
        contexts: list[CallContext] = []
        client = Client(self._slow_router(pending, contexts))
        client.clock.advance(10)
        stream_id = client.open(RANGE, metadata=((b"grpc-timeout", b"200m"),))
        client.send(stream_id, kv(), end_stream=True)
        client.pump()
        self.assertEqual(contexts[0].deadline, 10.2)
        client.clock.advance(0.1)
        client.receive()
        self.assertIsNone(client.streams[stream_id].headers)
        client.clock.advance(0.1)
        client.clock.advance(0)
        client.receive()
        result = client.streams[stream_id]
        self.assertEqual(result.status, (4, "context deadline exceeded"))
        self.assertIsNone(result.trailers)                 # trailers-only
        pending[0].callback(KeyValue(key=b"late"))
        client.pump()
        self.assertEqual(client.transport.value(), b"")
        self.assertEqual(result.data_frames, 0)
        self.assertEqual(client.clock.getDelayedCalls(), [])

    def test_late_failure_dropped(self) -> None:
        """A late failure after the deadline is consumed, not logged as unhandled."""
        pending: list[Deferred[KeyValue]] = []
        client = Client(self._slow_router(pending, []))
        stream_id = client.open(RANGE, metadata=((b"grpc-timeout", b"1S"),))
        client.send(stream_id, kv(), end_stream=True)
        client.pump()
        client.clock.advance(1)
        client.pump()
        pending[0].errback(RuntimeError("too late"))
        client.pump()
        self.assertEqual(client.streams[stream_id].status, (4, "context deadline exceeded"))
        self.assertEqual(self.flushLoggedErrors(RuntimeError), [])

    def test_answered_call_cancels_its_timer(self) -> None:
        """A call answered in time leaves no timer behind."""
        client = Client(echo_router())
        result = client.unary(RANGE, kv(), metadata=((b"grpc-timeout", b"5S"),))
        self.assertEqual(result.status, (0, ""))
        self.assertEqual(client.clock.getDelayedCalls(), [])


class FlowControlTests(SynchronousTestCase):

    def test_response_waits_for_window(self) -> None:
        """With a 100-byte stream window the server sends 100 bytes, then more only as
        WINDOW_UPDATEs arrive; trailers follow the last byte."""
        router = Router()
        router.add_unary(RANGE, KeyValue, lambda r, c: KeyValue(value=b"v" * 1000))
        client = Client(router, initial_window=100, reading=False)
        stream_id = client.open(RANGE)
        client.send(stream_id, kv(), end_stream=True)
        client.pump()
        result = client.streams[stream_id]
        self.assertEqual(len(result.data), 100)
        self.assertIsNone(result.trailers)
        total = 100
        while result.trailers is None:
            client.conn.increment_flow_control_window(100, stream_id)
            client.pump()
            self.assertLessEqual(len(result.data) - total, 100)
            total = len(result.data)
        self.assertEqual(result.messages, [KeyValue(value=b"v" * 1000).SerializeToString()])
        self.assertEqual(result.trailers, OK_TRAILERS)

    def test_initial_window_change_mid_connection(self) -> None:
        """Raising INITIAL_WINDOW_SIZE mid-connection (as grpc-go does) unblocks streams."""
        router = Router()
        router.add_unary(RANGE, KeyValue, lambda r, c: KeyValue(value=b"v" * 1000))
        client = Client(router, initial_window=10, reading=False)
        stream_id = client.open(RANGE)
        client.send(stream_id, kv(), end_stream=True)
        client.pump()
        self.assertEqual(len(client.streams[stream_id].data), 10)
        client.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 65535})
        client.pump()
        self.assertEqual(client.streams[stream_id].trailers, OK_TRAILERS)
        self.assertEqual(len(client.streams[stream_id].messages[0]), 1003)

    def test_large_request_never_stalls(self) -> None:
        """A 3 MB request sent as fast as the windows allow completes: received DATA is
        acknowledged promptly."""
        router = Router()
        router.add_unary(RANGE, KeyValue, lambda r, c: KeyValue(key=b"%d" % len(r.value)))
        client = Client(router, max_message_bytes=4 * 1024 * 1024)
        request = encode(kv(value=b"x" * (3 * 1024 * 1024)))
        stream_id = client.open(RANGE)
        sent, turns = 0, 0
        while sent < len(request):
            window = client.conn.local_flow_control_window(stream_id)
            self.assertGreater(window, 0, "client stalled on flow control")
            while window and sent < len(request):
                chunk = min(window, client.conn.max_outbound_frame_size, len(request) - sent)
                client.conn.send_data(stream_id, request[sent:sent + chunk],
                                      end_stream=sent + chunk == len(request))
                sent += chunk
                window -= chunk
            client.pump()
            turns += 1
        self.assertEqual(client.streams[stream_id].messages, [kv(b"%d" % (3 * 1024 * 1024))])
        self.assertLess(turns, 20)

    def test_large_response_in_many_frames(self) -> None:
        """A 3 MB response leaves in frames no larger than the peer's max frame size."""
        router = Router()
        router.add_unary(RANGE, KeyValue, lambda r, c: KeyValue(value=b"y" * (3 << 20)))
        client = Client(router)
        client.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        client.conn.increment_flow_control_window(2**31 - 1 - 65535)
        result = client.unary(RANGE, kv())
        for _ in range(100):
            if result.ended:
                break
            client.pump()
        self.assertEqual(result.messages, [KeyValue(value=b"y" * (3 << 20)).SerializeToString()])
        self.assertEqual(result.data_frames, -(-len(result.data) // 16384))
        self.assertEqual(result.trailers, OK_TRAILERS)

    def test_paused_transport_holds_data(self) -> None:
        """While the transport asks us to pause, DATA waits; resuming sends it."""
        client = Client(echo_router())
        client.protocol.pauseProducing()
        stream_id = client.open(RANGE)
        client.send(stream_id, kv(b"p"), end_stream=True)
        client.pump()
        self.assertEqual(client.streams[stream_id].data_frames, 0)
        client.protocol.resumeProducing()
        client.pump()
        self.assertEqual(client.streams[stream_id].messages, [kv(b"p")])
        self.assertEqual(client.streams[stream_id].trailers, OK_TRAILERS)


class StreamingTests(SynchronousTestCase):

    def test_bidi_echo_and_end(self) -> None:
        """Messages reach message_received in order, replies flow back, the client's
        half-close reaches end_of_input, finish() sends OK trailers."""
        handlers: list[RecordingHandler] = []
        client = Client(stream_router(lambda c, s: handlers.append(RecordingHandler(c, s))
                                      or handlers[-1]), byte_at_a_time=True)
        stream_id = client.open(WATCH)
        client.send(stream_id, kv(b"a"))
        client.send(stream_id, kv(b"b"))
        client.pump()
        [handler] = handlers
        verifyObject(IServerStream, handler.stream)
        self.assertEqual([m.key for m in handler.received], [b"a", b"b"])
        self.assertEqual(client.streams[stream_id].messages, [kv(b"a"), kv(b"b")])
        self.assertEqual(client.streams[stream_id].headers, OK_HEADERS)
        client.conn.end_stream(stream_id)
        client.pump()
        self.assertTrue(handler.ended)
        self.assertEqual(client.streams[stream_id].trailers, OK_TRAILERS)
        self.assertTrue(handler.stream.finished)
        self.assertEqual(handler.cancels, 0)

    def test_small_messages_packed_into_one_data_frame(self) -> None:
        """Many small messages queued in one turn leave as a single DATA frame."""
        handlers: list[FloodHandler] = []
        client = Client(stream_router(
            lambda c, s: handlers.append(FloodHandler(s, kv(b"e"), 200)) or handlers[-1]))
        stream_id = client.open(WATCH, end_stream=True)
        client.pump()
        result = client.streams[stream_id]
        self.assertEqual(len(result.messages), 200)
        self.assertEqual(result.data_frames, 1)
        self.assertEqual(result.trailers, OK_TRAILERS)

    def test_backpressure_bounds_queue(self) -> None:
        """A client that stops reading makes is_writable() False at the per-stream bound;
        the handler resumes through on_writable when the window opens again."""
        handlers: list[FloodHandler] = []
        message = kv(value=b"w" * 1000)
        client = Client(stream_router(
            lambda c, s: handlers.append(FloodHandler(s, message, 500)) or handlers[-1]),
            reading=False, max_queued_bytes=16 * 1024)
        stream_id = client.open(WATCH, end_stream=True)
        client.pump()
        [handler] = handlers
        call = client.protocol._calls[stream_id]
        self.assertLess(handler.sent, 500)
        self.assertFalse(handler.stream.is_writable())
        self.assertLess(call.out_bytes, 16 * 1024 + 1010)
        self.assertLessEqual(len(client.streams[stream_id].data), 65535)
        waits = handler.waits
        result = client.streams[stream_id]
        for _ in range(200):
            if result.ended:
                break
            client.conn.acknowledge_received_data(len(result.data), stream_id)
            client.reading = True
            client.pump()
        self.assertGreater(handler.waits, waits)
        self.assertEqual(len(result.messages), 500)
        self.assertEqual(result.trailers, OK_TRAILERS)

    def test_stream_reset_cancels_handler(self) -> None:
        """A client RST_STREAM calls cancelled() once; later sends are ignored; no timer
        is left behind."""
        handlers: list[RecordingHandler] = []
        client = Client(stream_router(lambda c, s: handlers.append(RecordingHandler(c, s))
                                      or handlers[-1]))
        stream_id = client.open(WATCH, metadata=((b"grpc-timeout", b"10S"),))
        client.send(stream_id, kv(b"a"))
        client.pump()
        client.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
        client.pump()
        [handler] = handlers
        self.assertEqual(handler.cancels, 1)
        self.assertTrue(handler.stream.finished)
        handler.stream.send(KeyValue(key=b"after"))
        handler.stream.finish()
        client.pump()
        self.assertEqual(client.transport.value(), b"")
        self.assertEqual(client.protocol._calls, {})
        self.assertEqual(client.clock.getDelayedCalls(), [])

    def test_stream_deadline_cancels_handler(self) -> None:
        """A streaming call past its deadline ends DEADLINE_EXCEEDED and cancels the handler."""
        handlers: list[RecordingHandler] = []
        client = Client(stream_router(lambda c, s: handlers.append(RecordingHandler(c, s))
                                      or handlers[-1]))
        stream_id = client.open(WATCH, metadata=((b"grpc-timeout", b"1S"),))
        client.pump()
        client.clock.advance(1)
        client.pump()
        self.assertEqual(client.streams[stream_id].status, (4, "context deadline exceeded"))
        self.assertEqual(handlers[0].cancels, 1)
        self.assertEqual(client.streams[stream_id].reset, ErrorCodes.NO_ERROR)

    def test_handler_exception_fails_only_its_call(self) -> None:
        """A handler raising in message_received ends that call UNKNOWN (logged) and is
        cancelled; another call on the connection carries on."""
        handlers: list[RecordingHandler] = []
        client = Client(stream_router(lambda c, s: handlers.append(RecordingHandler(c, s))
                                      or handlers[-1]))
        first, second = client.open(WATCH), client.open(WATCH)
        client.send(first, kv(b"boom"))
        client.send(second, kv(b"fine"))
        client.pump()
        self.assertEqual(client.streams[first].status, (2, "handler blew up"))
        self.assertEqual(handlers[0].cancels, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(client.streams[second].messages, [kv(b"fine")])
        client.conn.end_stream(second)
        client.pump()
        self.assertEqual(client.streams[second].trailers, OK_TRAILERS)

    def test_connection_lost_cancels_handlers(self) -> None:
        """Losing the connection cancels every open stream handler and every timer."""
        handlers: list[RecordingHandler] = []
        client = Client(stream_router(lambda c, s: handlers.append(RecordingHandler(c, s))
                                      or handlers[-1]))
        for _ in range(3):
            client.open(WATCH, metadata=((b"grpc-timeout", b"5S"),))
        client.pump()
        client.protocol.connectionLost()
        self.assertEqual([h.cancels for h in handlers], [1, 1, 1])
        self.assertEqual(client.clock.getDelayedCalls(), [])


class GracefulCloseTests(SynchronousTestCase):

    def test_goaway_drains_then_closes(self) -> None:
        """close_gracefully() sends GOAWAY(NO_ERROR, last stream), refuses newer streams,
        lets the call in flight finish, then closes; its Deferred fires on close."""
        pending: list[Deferred[KeyValue]] = []
        router = Router()
        router.add_unary(RANGE, KeyValue, lambda r, c: pending.append(Deferred()) or pending[-1])
        client = Client(router)
        stream_id = client.open(RANGE)
        client.send(stream_id, kv(), end_stream=True)
        client.pump()
        closed = client.protocol.close_gracefully(timeout_seconds=5)
        client.pump()
        self.assertEqual((client.goaway.error_code, client.goaway.last_stream_id),
                         (ErrorCodes.NO_ERROR, stream_id))
        self.assertFalse(client.transport.disconnecting)
        pending[0].callback(KeyValue(key=b"done"))
        client.pump()
        self.assertEqual(client.streams[stream_id].messages, [kv(b"done")])
        self.assertTrue(client.transport.disconnecting)
        self.assertNoResult(closed)
        client.protocol.connectionLost()
        self.assertIsNone(self.successResultOf(closed))
        self.assertEqual(client.clock.getDelayedCalls(), [])

    def test_streams_after_goaway_refused(self) -> None:
        """A stream opened after our GOAWAY is refused with REFUSED_STREAM."""
        client = Client(echo_router())
        client.protocol.close_gracefully()
        client.clock.advance(0)
        client.transport.clear()
        client.transport.disconnecting = False
        stream_id = client.open(RANGE)
        client.send(stream_id, kv(), end_stream=True)
        client.feed(client.conn.data_to_send())
        client.clock.advance(0)
        self.assertEqual(frame_types(client.transport.value()), ["RstStreamFrame"])

    def test_timeout_aborts(self) -> None:
        """Calls still open when the drain times out are cut off by aborting."""
        handlers: list[RecordingHandler] = []
        client = Client(stream_router(lambda c, s: handlers.append(RecordingHandler(c, s))
                                      or handlers[-1]))
        client.open(WATCH)
        client.pump()
        closed = client.protocol.close_gracefully(timeout_seconds=2)
        client.pump()
        client.clock.advance(2)
        self.assertTrue(client.transport.disconnected)
        client.protocol.connectionLost()
        self.successResultOf(closed)
        self.assertEqual(handlers[0].cancels, 1)
        self.assertEqual(client.clock.getDelayedCalls(), [])
