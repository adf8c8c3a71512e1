"""The client transport under a real gRPC client (grpcio) and a real HTTP client, on one
loopback port served by the real reactor.

grpcio runs in the reactor's thread pool (deferToThread); the server runs in the
reactor thread as in the daemon. Every test leaves no connection or listener behind.
"""
from __future__ import annotations

import json
import urllib.request
from typing import Any, Callable

import grpc
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from etcdd.api.http import build_root, client_site
from etcdd.api.mux import ClientPortFactory
from etcdd.api.router import CallContext, IServerStream, IStreamHandler, Router
from etcdd.api.rpctypes import GrpcError, Status

UNARY = "/test.Echo/Unary"
STREAM = "/test.Echo/Stream"
MiB = 1024 * 1024
CLIENT_OPTIONS = [("grpc.enable_http_proxy", 0),
                  ("grpc.max_send_message_length", 16 * MiB),
                  ("grpc.max_receive_message_length", 16 * MiB)]


class RawBytes:
    """A request type whose messages are the raw payload bytes."""
    FromString = staticmethod(bytes)


@implementer(IStreamHandler)
class CountDown:
    """Server-streaming: the request b"N" is answered with N messages, then OK."""

    def __init__(self, context: CallContext, stream: IServerStream) -> None:
        self.stream = stream

    def message_received(self, message: bytes) -> None:
        for i in range(int(message)):
            self.stream.send(b"message %d" % i)
        self.stream.finish()

    def end_of_input(self) -> None:
        pass

    def cancelled(self) -> None:
        pass


class RealClientTests(TestCase):

    timeout = 60

    def setUp(self) -> None:
        self.never: list[Deferred[bytes]] = []
        self.held: list[Deferred[bytes]] = []
        router = Router()
        router.add_unary(UNARY, RawBytes, self._unary)
        router.add_stream(STREAM, RawBytes, CountDown)
        site = client_site(build_root(lambda: True), reactor)
        self.factory = ClientPortFactory(router, site, reactor,
                                         max_message_bytes=4 * MiB)
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.address = f"127.0.0.1:{self.port.getHost().port}"
        self.channel = grpc.insecure_channel(self.address, options=CLIENT_OPTIONS)

    @inlineCallbacks
    def tearDown(self) -> Any:
        yield deferToThread(self.channel.close)
        yield self.port.stopListening()
        yield self.factory.close_gracefully(timeout_seconds=1)

    def _unary(self, request: bytes, context: CallContext) -> Any:
        if request == b"fail":
            raise GrpcError(Status.FAILED_PRECONDITION, "etcdserver: not leader")
        if request == b"slow":
            self.never.append(Deferred())
            return self.never[-1]
        if request.startswith(b"big:"):
            return b"x" * int(request[4:])
        if request == b"hold":
            self.held.append(Deferred())
            return self.held[-1]
        if request == b"token":
            return context.metadata.get("token", "").encode()
        return request

    @inlineCallbacks
    def _wait_for(self, condition: Callable[[], bool], timeout_seconds: float = 10) -> Any:
        """Poll `condition` on the reactor until true; fail after the deadline."""
        deadline = reactor.seconds() + timeout_seconds
        while not condition():
            self.assertLess(reactor.seconds(), deadline, "condition not reached in time")
            yield deferLater(reactor, 0.01, lambda: None)

    def _in_thread(self, fn: Callable[[], Any]) -> Deferred[Any]:
        return deferToThread(fn)

    def _call(self, path: str, request: bytes, **kwargs: Any) -> Deferred[Any]:
        method = self.channel.unary_unary(path)
        return self._in_thread(lambda: method(request, timeout=10, **kwargs))

    def _error(self, path: str, request: bytes, **kwargs: Any) -> Deferred[tuple[Any, str]]:
        method = self.channel.unary_unary(path)

        def call() -> tuple[Any, str]:
            try:
                method(request, **{"timeout": 10, **kwargs})
            except grpc.RpcError as e:
                return e.code(), e.details()
            raise AssertionError("the call succeeded")
        return self._in_thread(call)

    @inlineCallbacks
    def test_unary_echo(self) -> Any:
        """A grpcio unary call gets its answer; metadata reaches the handler."""
        self.assertEqual((yield self._call(UNARY, b"hello")), b"hello")
        self.assertEqual((yield self._call(UNARY, b"")), b"")
        self.assertEqual((yield self._call(UNARY, b"token", metadata=(("token", "t0k"),))),
                         b"t0k")

    @inlineCallbacks
    def test_many_concurrent_calls(self) -> Any:
        """200 calls in flight at once on one channel all get their own answers."""
        method = self.channel.unary_unary(UNARY)

        def run() -> list[bytes]:
            futures = [method.future(b"%d" % i, timeout=20) for i in range(200)]
            return [f.result() for f in futures]
        self.assertEqual((yield self._in_thread(run)), [b"%d" % i for i in range(200)])

    @inlineCallbacks
    def test_error_code_and_message(self) -> Any:
        """A handler's error reaches the client as its exact code and message."""
        self.assertEqual((yield self._error(UNARY, b"fail")),
                         (grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: not leader"))

    @inlineCallbacks
    def test_unimplemented(self) -> Any:
        """Unknown methods and services are UNIMPLEMENTED with grpc-go's texts."""
        self.assertEqual((yield self._error("/test.Echo/Nope", b"")),
                         (grpc.StatusCode.UNIMPLEMENTED,
                          "unknown method Nope for service test.Echo"))
        self.assertEqual((yield self._error("/test.Foo/Bar", b"")),
                         (grpc.StatusCode.UNIMPLEMENTED, "unknown service test.Foo"))

    @inlineCallbacks
    def test_deadline(self) -> Any:
        """A call outliving its deadline is DEADLINE_EXCEEDED; the connection serves on."""
        code, _ = yield self._error(UNARY, b"slow", timeout=0.3)
        self.assertEqual(code, grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertEqual((yield self._call(UNARY, b"after")), b"after")

    @inlineCallbacks
    def test_three_megabyte_messages(self) -> Any:
        """3 MB requests and responses pass both ways with raised limits."""
        request = b"r" * (3 * MiB)
        self.assertEqual((yield self._call(UNARY, request)), request)
        response = yield self._call(UNARY, b"big:%d" % (3 * MiB))
        self.assertEqual(len(response), 3 * MiB)

    @inlineCallbacks
    def test_oversize_refused(self) -> Any:
        """A request over the server's limit is RESOURCE_EXHAUSTED with grpc-go's text."""
        self.assertEqual((yield self._error(UNARY, b"o" * (5 * MiB))), (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"grpc: received message larger than max ({5 * MiB} vs. {4 * MiB})"))
        self.assertEqual((yield self._call(UNARY, b"still here")), b"still here")

    @inlineCallbacks
    def test_server_streaming(self) -> Any:
        """A server-streaming call delivers every message, then ends OK."""
        method = self.channel.unary_stream(STREAM)
        messages = yield self._in_thread(lambda: list(method(b"50", timeout=10)))
        self.assertEqual(messages, [b"message %d" % i for i in range(50)])

    @inlineCallbacks
    def test_http_health_on_same_port(self) -> Any:
        """HTTP/1.1 GET /health and /version are served on the gRPC port."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def fetch(path: str) -> tuple[int, str, bytes]:
            with opener.open(f"http://{self.address}{path}", timeout=10) as response:
                return response.status, response.headers["content-type"], response.read()
        self.assertEqual((yield self._in_thread(lambda: fetch("/health"))),
                         (200, "text/plain; charset=utf-8", b'{"health":"true"}'))
        status, content_type, body = yield self._in_thread(lambda: fetch("/version"))
        self.assertEqual((status, content_type, json.loads(body)),
                         (200, "application/json",
                          {"etcdserver": "3.4.23", "etcdcluster": "3.4.0"}))
        self.assertEqual((yield self._call(UNARY, b"grpc too")), b"grpc too")

    @inlineCallbacks
    def test_graceful_close_drains_call_in_flight(self) -> Any:
        """close_gracefully lets a call in flight finish before the connection closes; the
        client then reconnects for its next call."""
        answer = self._call(UNARY, b"hold")
        yield self._wait_for(lambda: bool(self.held))
        [connection] = self.factory.connections
        closed = self.factory.close_gracefully(timeout_seconds=10)
        yield self._wait_for(lambda: connection.inner._flush_call is None)   # GOAWAY out
        self.assertFalse(closed.called)
        self.assertFalse(connection.transport.disconnecting)
        self.held[0].callback(b"finished")
        self.assertEqual((yield answer), b"finished")
        yield closed
        self.assertEqual(self.factory.connections, set())
        self.assertEqual((yield self._call(UNARY, b"again")), b"again")
