"""The gRPC method table: which path is which method, how its requests parse, who handles it.

Core. Independent of the HTTP/2 engine: `api/grpc.py` looks a path up here, parses request
messages with `request_type`, and calls the handler. Paths are etcd 3.4's
(`/etcdserverpb.KV/Range`, ...).

Two kinds of method:

* unary: `handler(request, context)` returns the response message or a Deferred of it; an
  exception (raised or as the Deferred's failure) becomes the call's grpc-status through
  `api/rpctypes.status_for`.
* streaming (server- or bidi-streaming): `handler(context, stream)` returns an
  `IStreamHandler`; requests arrive through `message_received`, responses leave through
  `stream.send()`, and the call ends with `stream.finish()`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from zope.interface import Attribute, Interface


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler may know about its call besides the request."""
    path: str
    metadata: Mapping[str, str] = field(default_factory=dict)  # lower-case names, no pseudo-headers
    peer: str = ""
    deadline: float | None = None    # reactor seconds; None when the client sent no grpc-timeout


class IServerStream(Interface):
    """The transport's side of a streaming call, given to the handler."""

    def send(message: Any) -> None:
        """Queue one response message; frames leave at the end of the reactor turn."""

    def finish(error: BaseException | None = None) -> None:
        """End the call: trailers with grpc-status 0, or the status for `error`."""

    def is_writable() -> bool:
        """False while the bytes queued for this stream are over its bound (backpressure)."""

    def on_writable(callback: Callable[[], None]) -> None:
        """Call `callback` once when the stream becomes writable again."""

    finished = Attribute("True once finish() was called or the stream was reset.")


class IStreamHandler(Interface):
    """The service's side of a streaming call."""

    def message_received(message: Any) -> None:
        """One parsed request message."""

    def end_of_input() -> None:
        """The client half-closed its side."""

    def cancelled() -> None:
        """The client reset the stream or the connection went away: release everything."""


@dataclass(frozen=True, slots=True)
class UnaryMethod:
    request_type: type
    handler: Callable[[Any, CallContext], Any]


@dataclass(frozen=True, slots=True)
class StreamMethod:
    request_type: type
    handler: Callable[[CallContext, IServerStream], IStreamHandler]


class Router:
    """Path -> method. Built once at start; looked up per call."""

    def __init__(self, guard: Callable[[CallContext, Any], None] | None = None) -> None:
        """`guard(context, request)` runs before every etcd handler (not grpc.health's)
        and may raise to refuse the call, as etcd's v3rpc interceptors do; `request` is
        None for a stream."""
        self._methods: dict[str, UnaryMethod | StreamMethod] = {}
        self._guard = guard

    def _guarded(self, path: str, handler: Callable[..., Any],
                 context_at: int) -> Callable[..., Any]:
        guard = self._guard
        if guard is None or path.startswith("/grpc."):
            return handler

        def guarded(*args: Any) -> Any:
            guard(args[context_at], args[0] if context_at else None)
            return handler(*args)
        return guarded

    def add_unary(self, path: str, request_type: type,
                  handler: Callable[[Any, CallContext], Any]) -> None:
        self._methods[path] = UnaryMethod(request_type, self._guarded(path, handler, 1))

    def add_stream(self, path: str, request_type: type,
                   handler: Callable[[CallContext, IServerStream], IStreamHandler]) -> None:
        self._methods[path] = StreamMethod(request_type, self._guarded(path, handler, 0))

    def lookup(self, path: str) -> UnaryMethod | StreamMethod | None:
        """The method for `path`, or None (the transport answers UNIMPLEMENTED)."""
        return self._methods.get(path)

    def paths(self) -> list[str]:
        return sorted(self._methods)
