"""One client port for gRPC (HTTP/2 with prior knowledge) and HTTP/1.1.

Shell. Plays the part of etcd 3.4's `cmux` on the client URL (`embed/serve.go`): a
connection that opens with the HTTP/2 client preface goes to `grpc.GrpcProtocol`,
anything else to the twisted.web `Site` (`/health`, `/version`, later `/metrics` and the
JSON gateway). The decision needs at most 24 bytes and is made as soon as they disagree
with the preface (`GET ...` is decided on its first byte).

The service listens and stops like this::

    factory = ClientPortFactory(router, client_site(build_root(is_healthy), reactor), reactor)
    port = reactor.listenTCP(2379, factory, interface="127.0.0.1")   # or endpoint.listen()
    ...
    await port.stopListening()                       # no new connections
    await factory.close_gracefully(timeout_seconds=2.0)   # GOAWAY, drain, close
"""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.server import Site

from etcdd.api.grpc import (DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_QUEUED_BYTES,
                            DEFAULT_MAX_STREAMS, GrpcProtocol)
from etcdd.api.router import Router

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class MuxProtocol(Protocol):
    """Buffers the first bytes of a connection until they say which protocol it speaks.

    Invariants: `inner` is None until decided, then the chosen protocol, connected to our
    transport, which has seen every byte the peer sent, in order.
    """

    def __init__(self, factory: ClientPortFactory, address: IAddress) -> None:
        self._factory = factory
        self._address = address
        self._buffer = b""
        self.inner: Any = None
        self._lost_waiters: list[Deferred[None]] = []

    def connectionMade(self) -> None:
        self._factory.connections.add(self)

    def dataReceived(self, data: bytes) -> None:
        buffer = self._buffer + data
        if not H2_PREFACE.startswith(buffer[:len(H2_PREFACE)]):
            inner = self._factory.site.buildProtocol(self._address)
        elif len(buffer) >= len(H2_PREFACE):
            inner = self._factory.build_grpc_protocol()
        else:
            self._buffer = buffer
            return
        self._buffer = b""
        self.inner = inner
        # NB: the transport looks dataReceived up on its protocol (us) for every read, so
        # this instance attribute sends later bytes straight to the chosen protocol.
        self.dataReceived = inner.dataReceived          # type: ignore[method-assign]
        inner.makeConnection(self.transport)
        inner.dataReceived(buffer)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._factory.connections.discard(self)
        if self.inner is not None:
            self.inner.connectionLost(reason)
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def close_gracefully(self, timeout_seconds: float) -> Deferred[None]:
        """gRPC: GOAWAY and drain; HTTP/1.1 or undecided: close. Fires once closed."""
        if isinstance(self.inner, GrpcProtocol):
            return self.inner.close_gracefully(timeout_seconds)
        done: Deferred[None] = Deferred()
        self._lost_waiters.append(done)
        self.transport.loseConnection()
        return done


class ClientPortFactory(Factory):
    """Builds `MuxProtocol`s for the client port and knows every live connection."""

    noisy = False

    def __init__(self, router: Router, site: Site, reactor: IReactorTime, *,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 max_streams: int = DEFAULT_MAX_STREAMS,
                 max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES) -> None:
        self.router, self.site, self.reactor = router, site, reactor
        self._grpc_options = {"max_message_bytes": max_message_bytes,
                              "max_streams": max_streams,
                              "max_queued_bytes": max_queued_bytes}
        self.connections: set[MuxProtocol] = set()

    def buildProtocol(self, addr: IAddress) -> MuxProtocol:
        return MuxProtocol(self, addr)

    def build_grpc_protocol(self) -> GrpcProtocol:
        return GrpcProtocol(self.router, self.reactor, **self._grpc_options)

    def startFactory(self) -> None:
        self.site.doStart()

    def stopFactory(self) -> None:
        self.site.doStop()

    def close_gracefully(self, timeout_seconds: float = 2.0) -> Deferred[None]:
        """Close every live connection (gRPC ones with GOAWAY and a drain of at most
        `timeout_seconds`); fires when all are gone. Stop listening first."""
        closing = [conn.close_gracefully(timeout_seconds) for conn in list(self.connections)]
        done: Deferred[None] = DeferredList(closing, consumeErrors=True).addCallback(
            lambda _: None)
        return done
