"""The HTTP/1.1 side of the client port: a twisted.web resource tree.

Shell. Wire-compatible with etcd 3.4 `etcdserver/api/etcdhttp` (`base.go`, `metrics.go`)
as served by Go's `net/http`: `GET /health`, `GET /version`, Go's plain-text 404 for
anything else and 405 (with `Allow: GET`) for other methods. Later rooms hang more
resources on the root with `putChild` (`/metrics`, the `/v3/` JSON gateway).

Bodies, byte for byte, as etcd 3.4 sends them:

    GET /health   200 text/plain; charset=utf-8   {"health":"true"}      (Go sniffs the type)
                  503 text/plain; charset=utf-8   {"health":"false"}\\n   (http.Error)
    GET /version  200 application/json            {"etcdserver":"3.4.23","etcdcluster":"3.4.0"}
    other paths   404 text/plain; charset=utf-8   404 page not found\\n
"""
from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from etcdd.version import ETCD_CLUSTER_VERSION, ETCD_SERVER_VERSION

TEXT_PLAIN = b"text/plain; charset=utf-8"
APPLICATION_JSON = b"application/json"
DEFAULT_IDLE_TIMEOUT_SECONDS = 60.0

_HEALTHY = b'{"health":"true"}'
_UNHEALTHY = b'{"health":"false"}'
_VERSION = json.dumps({"etcdserver": ETCD_SERVER_VERSION, "etcdcluster": ETCD_CLUSTER_VERSION},
                      separators=(",", ":")).encode()


def _respond(request: Request, code: int, content_type: bytes, body: bytes) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type)
    request.responseHeaders.removeHeader(b"server")     # Go sends none
    return body


def http_error(request: Request, code: int, text: bytes) -> bytes:
    """What Go's `http.Error(w, text, code)` writes: plain text, nosniff, a newline."""
    request.setHeader(b"x-content-type-options", b"nosniff")
    return _respond(request, code, TEXT_PLAIN, text + b"\n")


class EtcdResource(Resource):
    """A resource answering like a Go `http.ServeMux` entry: exact path, GET only.

    Subclasses implement `render_GET`; a path below them is Go's 404.
    """

    allowed_methods = (b"GET",)

    def getChild(self, path: bytes, request: Request) -> Resource:
        return NOT_FOUND

    def render(self, request: Request) -> bytes:
        if request.method not in self.allowed_methods:
            # etcd 3.4 etcdhttp allowMethod
            request.setHeader(b"allow", b", ".join(self.allowed_methods))
            return http_error(request, 405, b"Method Not Allowed")
        return self.render_GET(request)


class NotFoundResource(EtcdResource):
    """Go's `http.NotFound` for any method."""

    def render(self, request: Request) -> bytes:
        return http_error(request, 404, b"404 page not found")


NOT_FOUND = NotFoundResource()


class RootResource(NotFoundResource):
    """The client port's root: 404 itself, children added with `putChild`."""


class HealthResource(EtcdResource):
    """`GET /health`: 200 when `is_healthy()` says so, else 503 (etcdhttp NewHealthHandler)."""

    def __init__(self, is_healthy: Callable[[], "bool | Deferred[bool]"]) -> None:
        super().__init__()
        self._is_healthy = is_healthy

    def render_GET(self, request: Request) -> Any:
        healthy = self._is_healthy()
        if not isinstance(healthy, Deferred):
            return self._answer(request, healthy)

        def answer(ok: bool) -> None:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(self._answer(request, ok))
                request.finish()
        healthy.addErrback(lambda _: False).addCallback(answer)
        return NOT_DONE_YET

    @staticmethod
    def _answer(request: Request, healthy: bool) -> bytes:
        if healthy:
            return _respond(request, 200, TEXT_PLAIN, _HEALTHY)
        return http_error(request, 503, _UNHEALTHY)


class VersionResource(EtcdResource):
    """`GET /version`: server and cluster versions (etcdhttp serveVersion)."""

    def render_GET(self, request: Request) -> bytes:
        return _respond(request, 200, APPLICATION_JSON, _VERSION)


class ClientSite(Site):
    """A Site without access logging (etcd logs no client requests) or its log clock."""

    displayTracebacks = False
    noisy = False

    def log(self, request: Request) -> None:
        pass

    def startFactory(self) -> None:
        pass

    def stopFactory(self) -> None:
        pass


def build_root(health: Callable[[], "bool | Deferred[bool]"]) -> RootResource:
    """The resource tree of the client port's HTTP/1.1 side; `health()` decides /health."""
    root = RootResource()
    root.putChild(b"health", HealthResource(health))
    root.putChild(b"version", VersionResource())
    return root


def client_site(root: Resource, reactor: IReactorTime,
                idle_timeout_seconds: float | None = DEFAULT_IDLE_TIMEOUT_SECONDS) -> ClientSite:
    """The Site to hand to `mux.ClientPortFactory`."""
    return ClientSite(root, reactor=reactor, timeout=idle_timeout_seconds)
