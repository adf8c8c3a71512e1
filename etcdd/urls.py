"""URLs as etcd 3.4 checks and compares them (`pkg/types/urls.go`, `pkg/netutil`).

A core: pure, no IO. Name resolution, where a comparison needs it, is passed in.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

URL_SCHEMES = ("http", "https", "unix", "unixs")


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where to listen, from a URL such as ``http://127.0.0.1:2379`` (host without brackets)."""
    scheme: str
    host: str
    port: int



def normalize_url(raw: str) -> str:
    """Check one URL as etcd's ``types.NewURLs`` does; return it with the scheme lower-cased.

    Raises ValueError with etcd's message, e.g. ``URL must not contain a path: http://h:1/x``.
    """
    s = raw.strip()
    try:
        u = urlsplit(s)
    except ValueError as e:
        raise ValueError(f"parse {go_quote(s)}: {e}") from None
    if u.scheme not in URL_SCHEMES or not s.lower().startswith(u.scheme + "://"):
        raise ValueError(f"URL scheme must be http, https, unix, or unixs: {s}")
    host, colon, port = u.netloc.rpartition("@")[2].rpartition(":")
    if not colon or not _is_host(host) or "]" in port:
        raise ValueError(f'URL address does not have the form "host:port": {s}')
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid port {go_quote(':' + port)} after host: {s}")
    if u.path:
        raise ValueError(f"URL must not contain a path: {s}")
    return u.scheme + s[len(u.scheme):]



def _is_host(host: str) -> bool:
    if host.startswith("["):
        return host.endswith("]") and ":" in host
    return ":" not in host


def url_host(url: str) -> str:
    return urlsplit(url).hostname or ""


def resolve_localhost(host: str) -> str:
    return "127.0.0.1" if host == "localhost" else host


def urls_equal(a: Sequence[str], b: Sequence[str], resolve: Callable[[str], str]) -> str | None:
    """netutil ``URLStringsEqual``: None if equal after resolving hosts, else etcd's reason."""
    if len(a) != len(b):
        return f"len({go_strings(a)}) != len({go_strings(b)})"

    def resolved(urls: Sequence[str]) -> list[str]:
        out = []
        for url in urls:
            u = urlsplit(url)
            host = resolve(u.hostname or "")
            host = f"[{host}]" if ":" in host else host
            out.append(f"{u.scheme}://{host}:{u.port}")
        return sorted(out)

    if sorted(a) == sorted(b):
        return None
    for x, y in zip(resolved(a), resolved(b)):
        if x != y:
            return f"resolved urls: {go_quote(x)} != {go_quote(y)}"
    return None


def urls_map(pairs) -> str:
    """etcd ``URLsMap.String()``: ``name=url`` pairs sorted, comma-joined."""
    return ",".join(sorted(f"{name}={url}" for name, url in pairs))


def go_quote(s: str) -> str:
    """Go's ``%q`` for the strings we quote (ASCII, no control characters)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def go_strings(ss: Sequence[str]) -> str:
    return "[" + " ".join(go_quote(s) for s in ss) + "]"
