"""The client port: gRPC and HTTP/1.1 on one listener (etcdd.api.mux, etcdd.api.http)."""
from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, TrailersReceived
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.compat import iterbytes
from twisted.trial.unittest import SynchronousTestCase

from etcdd.api.framing import encode
from etcdd.api.grpc import GrpcProtocol
from etcdd.api.http import build_root, client_site
from etcdd.api.mux import H2_PREFACE, ClientPortFactory, MuxProtocol
from tests.unit.test_grpc_protocol import RANGE, echo_router, kv, split_frames

ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)


class Port:
    """A ClientPortFactory with a switchable health answer, on a Clock."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.healthy = True
        site = client_site(build_root(lambda: self.healthy), self.clock,
                           idle_timeout_seconds=None)
        self.factory = ClientPortFactory(echo_router(), site, self.clock)

    def connect(self) -> tuple[MuxProtocol, StringTransport]:
        protocol = self.factory.buildProtocol(ADDRESS)
        transport = StringTransport(peerAddress=ADDRESS)
        protocol.makeConnection(transport)
        return protocol, transport

    def http(self, request: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
        """One HTTP/1.1 exchange fed byte by byte: (status line, headers, body)."""
        protocol, transport = self.connect()
        for byte in iterbytes(request):
            protocol.dataReceived(byte)
        self.clock.advance(0)
        head, _, body = transport.value().partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers = {name.lower(): value
                   for name, value in (line.split(b": ", 1) for line in lines)}
        protocol.connectionLost()
        return status, headers, body


def get(path: bytes, method: bytes = b"GET") -> bytes:
    return method + b" " + path + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"


class MuxTests(SynchronousTestCase):

    def test_preface_goes_to_grpc(self) -> None:
        """A connection opening with the HTTP/2 preface (fed byte by byte) is served gRPC."""
        port = Port()
        protocol, transport = port.connect()
        client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        client.initiate_connection()
        client.send_headers(1, [(b":method", b"POST"), (b":scheme", b"http"),
                                (b":path", RANGE.encode()), (b":authority", b"x"),
                                (b"content-type", b"application/grpc")])
        client.send_data(1, encode(kv(b"via-mux")), end_stream=True)
        for byte in iterbytes(client.data_to_send()):
            protocol.dataReceived(byte)
        port.clock.advance(0)
        self.assertIsInstance(protocol.inner, GrpcProtocol)
        self.assertEqual(type(split_frames(transport.value())[0][0]).__name__, "SettingsFrame")
        events = client.receive_data(transport.value())
        self.assertEqual([e.data for e in events if isinstance(e, DataReceived)],
                         [encode(kv(b"via-mux"))])
        self.assertEqual([e.headers for e in events if isinstance(e, TrailersReceived)],
                         [[(b"grpc-status", b"0")]])
        self.assertTrue(any(isinstance(e, ResponseReceived) for e in events))
        protocol.connectionLost()
        self.assertEqual(port.clock.getDelayedCalls(), [])

    def test_partial_preface_waits(self) -> None:
        """Bytes that are still a prefix of the preface decide nothing yet."""
        protocol, transport = Port().connect()
        protocol.dataReceived(H2_PREFACE[:23])
        self.assertIsNone(protocol.inner)
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(H2_PREFACE[23:])
        self.assertIsInstance(protocol.inner, GrpcProtocol)

    def test_post_goes_to_http(self) -> None:
        """"POST ..." shares the preface's first byte but is decided HTTP/1.1 on the second."""
        status, _, body = Port().http(get(b"/v3/kv/range", b"POST"))
        self.assertEqual((status, body), (b"HTTP/1.1 404 Not Found", b"404 page not found\n"))


class HttpTests(SynchronousTestCase):

    def test_health_ok(self) -> None:
        """GET /health when healthy: 200, etcd's body and Go's sniffed content type."""
        status, headers, body = Port().http(get(b"/health"))
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(body, b'{"health":"true"}')
        self.assertEqual(headers[b"content-type"], b"text/plain; charset=utf-8")
        self.assertEqual(headers[b"content-length"], b"17")
        self.assertNotIn(b"server", headers)
        self.assertIn(b"date", headers)

    def test_health_unhealthy(self) -> None:
        """GET /health when unhealthy: 503 with http.Error's body and headers."""
        port = Port()
        port.healthy = False
        status, headers, body = port.http(get(b"/health?exclude=NOSPACE"))
        self.assertEqual(status, b"HTTP/1.1 503 Service Unavailable")
        self.assertEqual(body, b'{"health":"false"}\n')
        self.assertEqual(headers[b"content-type"], b"text/plain; charset=utf-8")
        self.assertEqual(headers[b"x-content-type-options"], b"nosniff")

    def test_version(self) -> None:
        """GET /version: etcd 3.4's JSON with content-type application/json."""
        status, headers, body = Port().http(get(b"/version"))
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(body, b'{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}')
        self.assertEqual(headers[b"content-type"], b"application/json")

    def test_not_found(self) -> None:
        """Any other path is Go's plain-text 404, whatever the method."""
        for request in (get(b"/"), get(b"/nope"), get(b"/health/x"), get(b"/v2/keys", b"PUT")):
            status, headers, body = Port().http(request)
            self.assertEqual(status, b"HTTP/1.1 404 Not Found", request)
            self.assertEqual(body, b"404 page not found\n")
            self.assertEqual(headers[b"content-type"], b"text/plain; charset=utf-8")

    def test_method_not_allowed(self) -> None:
        """A non-GET on /health or /version is 405 with Allow: GET (etcd allowMethod)."""
        for path in (b"/health", b"/version"):
            status, headers, body = Port().http(get(path, b"POST"))
            self.assertEqual(status, b"HTTP/1.1 405 Method Not Allowed")
            self.assertEqual(headers[b"allow"], b"GET")
            self.assertEqual(body, b"Method Not Allowed\n")


class LifecycleTests(SynchronousTestCase):

    def test_tracks_and_closes_connections(self) -> None:
        """The factory knows every live connection; close_gracefully sends GOAWAY to gRPC
        ones, closes HTTP/1.1 and undecided ones, and fires once all are gone."""
        port = Port()
        grpc, grpc_transport = port.connect()
        grpc.dataReceived(H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        http, http_transport = port.connect()
        http.dataReceived(b"GET /health HTTP/1.1\r\n")
        undecided, undecided_transport = port.connect()
        self.assertEqual(port.factory.connections, {grpc, http, undecided})
        port.clock.advance(0)
        grpc_transport.clear()

        closed = port.factory.close_gracefully(timeout_seconds=5)
        port.clock.advance(0)
        frames = [frame for frame, _ in split_frames(grpc_transport.value())]
        self.assertEqual(type(frames[-1]).__name__, "GoAwayFrame")
        for transport in (grpc_transport, http_transport, undecided_transport):
            self.assertTrue(transport.disconnecting)
        self.assertNoResult(closed)
        for protocol in (grpc, http, undecided):
            protocol.connectionLost()
        self.assertIsNone(self.successResultOf(closed))
        self.assertEqual(port.factory.connections, set())
        self.assertEqual(port.clock.getDelayedCalls(), [])

    def test_lost_before_deciding(self) -> None:
        """A connection that closes before saying anything is forgotten quietly."""
        port = Port()
        protocol, _ = port.connect()
        protocol.dataReceived(b"PR")
        protocol.connectionLost()
        self.assertEqual(port.factory.connections, set())
