"""Bad input to GrpcProtocol: each case gets its exact error, and the daemon keeps serving.

STYLE.md §6 kind 1: a clear error for that caller, the same protocol (for stream-level
faults) or a fresh one (after a connection-level fault) still serves.
"""
from __future__ import annotations

from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from hpack import Encoder
from hyperframe.frame import GoAwayFrame, HeadersFrame
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.compat import iterbytes
from twisted.trial.unittest import SynchronousTestCase

from etcdd.api.grpc import DEFAULT_MAX_MESSAGE_BYTES, GrpcProtocol
from etcdd.api.router import CallContext, IServerStream
from tests.unit.test_grpc_protocol import (OK_HEADERS, RANGE, WATCH, Client,
                                           FloodHandler, RecordingHandler, StreamResult,
                                           echo_router, kv, split_frames, stream_router)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def request_headers(path: bytes = RANGE.encode()) -> list[tuple[bytes, bytes]]:
    return [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
            (b":authority", b"localhost"), (b"content-type", b"application/grpc")]


class ConnectionLevelTests(SynchronousTestCase):
    """Malformed HTTP/2: GOAWAY and close that connection only."""

    def _assert_goaway(self, raw: bytes, error_code: ErrorCodes | None) -> None:
        """Feed `raw` byte by byte: the connection ends with GOAWAY(`error_code`) (None:
        closed without one) and a fresh connection is served."""
        clock, transport = Clock(), StringTransport()
        protocol = GrpcProtocol(echo_router(), clock)
        protocol.makeConnection(transport)
        for byte in iterbytes(raw):
            protocol.dataReceived(byte)
        clock.advance(0)
        frames = [frame for frame, _ in split_frames(transport.value())]
        if error_code is None:
            self.assertEqual([type(f).__name__ for f in frames],
                             ["SettingsFrame", "WindowUpdateFrame"])
        else:
            self.assertIsInstance(frames[-1], GoAwayFrame)
            self.assertEqual(frames[-1].error_code, error_code)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost()
        self.assertEqual(clock.getDelayedCalls(), [])
        # the daemon keeps serving everyone else
        self.assertEqual(Client(echo_router()).unary(RANGE, kv()).status, (0, ""))

    def test_garbage_instead_of_preface(self) -> None:
        """Bytes that are not the HTTP/2 preface: closed at the first wrong byte (RFC 9113
        §3.4; the peer speaks no HTTP/2, so h2 sends it no GOAWAY)."""
        self._assert_goaway(b"PRI * HTTP/1.1\r\n\r\nXX\r\n\r\n" + b"\x00" * 9, None)

    def test_headers_on_even_stream_id(self) -> None:
        """A client-initiated stream with an even id: GOAWAY(PROTOCOL_ERROR)."""
        frame = HeadersFrame(2, flags=["END_HEADERS"])
        frame.data = Encoder().encode(request_headers())
        self._assert_goaway(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + frame.serialize(),
                            ErrorCodes.PROTOCOL_ERROR)

    def test_data_on_stream_zero(self) -> None:
        """A DATA frame on stream 0 is a connection error: GOAWAY(PROTOCOL_ERROR)."""
        self._assert_goaway(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
                            + b"\x00\x00\x03\x00\x00\x00\x00\x00\x00abc",
                            ErrorCodes.PROTOCOL_ERROR)

    def test_upper_case_header_name(self) -> None:
        """Inbound header validation stays on: an upper-case name is refused."""
        conn = H2Connection(H2Configuration(client_side=True, header_encoding=None,
                                            validate_outbound_headers=False,
                                            normalize_outbound_headers=False))
        conn.initiate_connection()
        conn.send_headers(1, request_headers() + [(b"Token", b"x")], end_stream=True)
        self._assert_goaway(conn.data_to_send(), ErrorCodes.PROTOCOL_ERROR)

    def test_bytes_after_fatal_error_ignored(self) -> None:
        """Once the connection is condemned, later bytes are dropped without a second reply."""
        clock, transport = Clock(), StringTransport()
        protocol = GrpcProtocol(echo_router(), clock)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n" + b"x" * 20)
        transport.clear()
        protocol.dataReceived(b"more garbage")
        clock.advance(0)
        self.assertEqual(transport.value(), b"")


class CallLevelTests(SynchronousTestCase):
    """Bad gRPC inside good HTTP/2: that call fails with grpc-go's error; the same
    connection serves the next call."""

    def _assert_fails(self, client: Client, stream_id: int, status: tuple[int, str]) -> None:
        client.pump()
        result = client.streams[stream_id]
        self.assertEqual(result.status, status)
        self.assertEqual(result.headers[:2], OK_HEADERS)
        self.assertIsNone(result.trailers)                   # trailers-only
        self.assertEqual(client.unary(RANGE, kv(b"next")).messages, [kv(b"next")])
        self.assertEqual(client.protocol._calls, {})

    def test_length_prefix_that_lies(self) -> None:
        """A prefix announcing more bytes than the stream carries: INTERNAL unexpected EOF."""
        client = Client(echo_router(), byte_at_a_time=True)
        stream_id = client.open(RANGE)
        client.conn.send_data(stream_id, b"\x00\x00\x00\x00\x0aabc", end_stream=True)
        self._assert_fails(client, stream_id, (13, "unexpected EOF"))

    def test_no_message_at_all(self) -> None:
        """A unary call that half-closes without a message: INTERNAL unexpected EOF."""
        client = Client(echo_router())
        stream_id = client.open(RANGE, end_stream=True)
        self._assert_fails(client, stream_id, (13, "unexpected EOF"))

    def test_unparsable_protobuf(self) -> None:
        """A payload that is not the request type: grpc-go's unmarshalling error."""
        client = Client(echo_router())
        stream_id = client.open(RANGE)
        client.send(stream_id, b"\xff\xff\xff", end_stream=True)
        self._assert_fails(client, stream_id, (
            13, "grpc: error unmarshalling request: Error parsing message with type "
                "'mvccpb.KeyValue': Wire format was corrupt"))

    def test_oversize_prefix_refused_before_buffering(self) -> None:
        """A 100 MB length prefix is refused from its 5 bytes: RESOURCE_EXHAUSTED with
        grpc-go's text, then RST_STREAM(NO_ERROR) so the client stops sending."""
        client = Client(echo_router(), byte_at_a_time=True)
        stream_id = client.open(RANGE)
        client.conn.send_data(stream_id, b"\x00" + (100 << 20).to_bytes(4, "big"))
        client.pump()
        result = client.streams[stream_id]
        self.assertEqual(result.status, (8, "grpc: received message larger than max "
                                            f"(104857600 vs. {DEFAULT_MAX_MESSAGE_BYTES})"))
        self.assertEqual(result.reset, ErrorCodes.NO_ERROR)
        self.assertNotIn(stream_id, client.protocol._calls)
        self.assertEqual(client.unary(RANGE, kv(b"next")).messages, [kv(b"next")])

    def test_message_over_max_in_one_frame(self) -> None:
        """A whole message one byte over the limit is refused the same way."""
        client = Client(echo_router(), max_message_bytes=100)
        stream_id = client.open(RANGE)
        client.send(stream_id, b"\x0a\x63" + b"k" * 99, end_stream=True)
        self._assert_fails(client, stream_id,
                           (8, "grpc: received message larger than max (101 vs. 100)"))

    def test_compressed_flag(self) -> None:
        """A compressed message (we negotiate none): grpc-go's INTERNAL error."""
        client = Client(echo_router())
        stream_id = client.open(RANGE)
        client.conn.send_data(stream_id, b"\x01\x00\x00\x00\x01k", end_stream=True)
        self._assert_fails(client, stream_id,
                           (13, "grpc: compressed flag set with identity or empty encoding"))

    def test_wrong_content_type(self) -> None:
        """A non-gRPC content-type: HTTP 415 with grpc-status INTERNAL (grpc-go)."""
        client = Client(echo_router())
        stream_id = client.conn.get_next_available_stream_id()
        headers = [h for h in request_headers() if h[0] != b"content-type"]
        client.conn.send_headers(stream_id, headers + [(b"content-type", b"text/html")],
                                 end_stream=True)
        client.streams[stream_id] = StreamResult()
        client.pump()
        result = client.streams[stream_id]
        self.assertEqual(result.headers, [
            (b":status", b"415"), (b"content-type", b"application/grpc"),
            (b"grpc-status", b"13"),
            (b"grpc-message", b'transport: received the unexpected content-type "text/html"')])
        self.assertEqual(client.unary(RANGE, kv()).status, (0, ""))

    def test_malformed_timeout(self) -> None:
        """A grpc-timeout that does not parse: INTERNAL with grpc-go's reason."""
        client = Client(echo_router())
        stream_id = client.open(RANGE, metadata=((b"grpc-timeout", b"5x"),))
        client.send(stream_id, kv(), end_stream=True)
        self._assert_fails(client, stream_id, (
            13, 'transport: malformed time-out: transport: timeout unit is not recognized: '
                '"5x"'))

    def test_unparsable_stream_message(self) -> None:
        """A bad message on a stream ends that stream INTERNAL and cancels its handler."""
        handlers: list[RecordingHandler] = []
        client = Client(stream_router(lambda c, s: handlers.append(RecordingHandler(c, s))
                                      or handlers[-1]))
        stream_id = client.open(WATCH)
        client.send(stream_id, kv(b"ok"))
        client.send(stream_id, b"\xff\xff")
        client.pump()
        result = client.streams[stream_id]
        self.assertEqual(result.messages, [kv(b"ok")])
        self.assertEqual(result.status, (
            13, "grpc: failed to unmarshal the received message Error parsing message with "
                "type 'mvccpb.KeyValue': Wire format was corrupt"))
        self.assertEqual(result.reset, ErrorCodes.NO_ERROR)
        self.assertEqual(handlers[0].cancels, 1)
        self.assertEqual(client.unary(RANGE, kv()).status, (0, ""))


    def test_reset_in_same_read_as_headers(self) -> None:
        """A stream the client resets in the same read as its HEADERS is dropped quietly,
        whether we would refuse, reject or serve it."""
        client = Client(echo_router(), max_streams=1)
        held = client.open(WATCH)                   # unknown here: rejected, then reset
        client.conn.reset_stream(held, ErrorCodes.CANCEL)
        client.pump()
        slow = Client(stream_router(lambda c, s: RecordingHandler(c, s)), max_streams=1)
        first = slow.open(WATCH)
        second = slow.open(WATCH)                   # over the limit: refused, then reset
        slow.conn.reset_stream(second, ErrorCodes.CANCEL)
        slow.conn.reset_stream(first, ErrorCodes.CANCEL)
        slow.pump()
        for c in (client, slow):
            self.assertIsNone(c.goaway)
            self.assertEqual(c.unary(RANGE, kv()).status, (0, ""))
            self.assertEqual(c.protocol._calls, {})


class ResourceBoundTests(SynchronousTestCase):

    def test_streams_over_limit_refused(self) -> None:
        """Streams beyond max_streams are refused with REFUSED_STREAM; a slot freed by a
        finished call is reusable."""
        handlers: list[RecordingHandler] = []
        client = Client(stream_router(lambda c, s: handlers.append(RecordingHandler(c, s))
                                      or handlers[-1]), max_streams=10)
        ids = [client.open(WATCH) for _ in range(11)]
        client.pump()
        self.assertEqual(len(handlers), 10)
        self.assertEqual(client.streams[ids[-1]].reset, ErrorCodes.REFUSED_STREAM)
        client.conn.end_stream(ids[0])
        client.pump()
        self.assertEqual(client.streams[ids[0]].status, (0, ""))
        self.assertEqual(client.streams[ids[0]].headers[:2], OK_HEADERS)
        self.assertEqual(client.unary(RANGE, kv()).status, (0, ""))

    def test_thousand_streams_never_read(self) -> None:
        """1,000 streams whose client never reads: what reaches the transport stays within
        the connection window, each stream's queue stays at its bound, handlers wait; a
        fresh connection is served as usual."""
        bound = 8 * 1024
        message = kv(value=b"z" * 1000)
        handlers: list[FloodHandler] = []

        def flood(context: CallContext, stream: IServerStream) -> Any:
            handlers.append(FloodHandler(stream, message, 10_000))
            return handlers[-1]

        client = Client(stream_router(flood), reading=False, max_queued_bytes=bound)
        written = 0
        ids = [client.open(WATCH, end_stream=True) for _ in range(1000)]
        client.pump()
        written += len(client.last_output)
        for _ in range(3):                      # more turns change nothing
            client.pump()
            written += len(client.last_output)
        self.assertEqual(len(handlers), 1000)
        self.assertTrue(all(not h.stream.is_writable() for h in handlers))
        per_stream = bound // len(message) + 1
        self.assertLessEqual(sum(h.sent for h in handlers),
                             1000 * per_stream + 65535 // len(message) + 1)
        self.assertLessEqual(max(call.out_bytes for call in client.protocol._calls.values()),
                             bound + len(message) + 5)
        data = sum(len(client.streams[i].data) for i in ids)
        self.assertLessEqual(data, 65535)
        self.assertLess(written, 65535 + 1000 * 9 * 3 + 4096)   # data + frame headers
        client.protocol.connectionLost()
        self.assertEqual([h.cancels for h in handlers], [1] * 1000)
        self.assertEqual(client.clock.getDelayedCalls(), [])
        self.assertEqual(Client(echo_router()).unary(RANGE, kv()).status, (0, ""))


class ConnectionQueueTests(SynchronousTestCase):

    def test_unread_unary_answers_cap_new_calls(self) -> None:
        """Past the per-connection bound of unsent answers, new calls get RESOURCE_EXHAUSTED;
        once the client reads again they are served, and the count returns to zero."""
        from etcdd.api.grpc import QUEUE_FULL_MESSAGE
        from etcdd.api.router import Router
        from etcdd.proto.kv_pb2 import KeyValue
        router = Router()
        router.add_unary(RANGE, KeyValue, lambda req, ctx: KeyValue(value=b"v" * 50_000))
        client = Client(router, reading=False, initial_window=1000,
                        max_connection_queued_bytes=200_000)
        answered = [client.unary(RANGE, kv()) for _ in range(5)]
        self.assertGreater(client.protocol._queued_bytes, 200_000)
        refused = client.unary(RANGE, kv())
        self.assertEqual(refused.status, (8, QUEUE_FULL_MESSAGE))
        for stream_id, result in client.streams.items():   # what arrived while not reading
            if result.data:
                client.conn.acknowledge_received_data(len(result.data), stream_id)
        client.reading = True
        for _ in range(2000):
            if all(r.ended for r in answered):
                break
            client.pump()
        self.assertTrue(all(r.ended and r.status == (0, "") for r in answered))
        self.assertEqual(client.protocol._queued_bytes, 0)
        again = client.unary(RANGE, kv())
        for _ in range(2000):
            if again.ended:
                break
            client.pump()
        self.assertEqual(again.status, (0, ""))
        self.assertEqual(client.protocol._queued_bytes, 0)
        self.assertEqual(client.clock.getDelayedCalls(), [])
