"""Asking a running cluster for its members, before joining it.

Shell, blocking (it runs once at start, before the reactor serves anyone). A member
started with `--initial-cluster-state existing` knows neither its ID nor the cluster's:
etcd 3.4 asks the other peers of `--initial-cluster` (`GetClusterFromRemotePeers`, `GET
/members` on their peer URLs) and finds itself among the members by its peer URLs. On our
peer port that is a call stream opened with a HELLO of zeros, answered with the cluster
ID, and one `members` call (`protocol.PeerServerProtocol._start_discovery`)::

    > HELLO(cluster 0, from 0, to 0, CALL)   < HELLO(cluster C, from M, to 0, CALL)
    > CALL 1 "members"                       < REPLY 1 [member JSON, ...]
"""
from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from etcdd.peer.framing import (FrameDecoder, FrameKind, Hello, StreamKind, decode_error,
                                decode_hello, decode_reply, encode_call, encode_hello,
                                reply_message)
from etcdd.peer.protocol import MEMBERS_CALL
from etcdd.server.cluster import members_from_json
from etcdd.server.membership import Member

MAX_REPLY_BYTES = 16 << 20


class DiscoveryError(Exception):
    """No peer answered with the cluster's members; the message says why."""


@dataclass(frozen=True, slots=True)
class RemoteCluster:
    cluster_id: int
    members: tuple[Member, ...]


def fetch_cluster(peer_urls: Sequence[str], timeout_seconds: float = 2.0,
                  attempts: int = 3) -> RemoteCluster:
    """The cluster ID and members from the first of `peer_urls` that answers (each tried
    `attempts` times). Raises DiscoveryError with every URL's failure."""
    failures: list[str] = []
    for attempt in range(attempts):
        for url in peer_urls:
            try:
                return _ask(url, timeout_seconds)
            except (OSError, ValueError, DiscoveryError) as e:
                if attempt == attempts - 1:
                    failures.append(f"{url}: {e}")
        if attempt < attempts - 1:
            time.sleep(0.5)
    raise DiscoveryError("could not retrieve cluster information from the given URLs ("
                         + "; ".join(failures) + ")")


def _ask(url: str, timeout_seconds: float) -> RemoteCluster:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None or parts.port is None:
        raise ValueError(f"cannot dial peer URL {url}")
    with socket.create_connection((parts.hostname, parts.port), timeout_seconds) as sock:
        sock.settimeout(timeout_seconds)
        sock.sendall(encode_hello(Hello(0, 0, 0, StreamKind.CALL))
                     + encode_call(1, MEMBERS_CALL, b""))
        decoder = FrameDecoder(MAX_REPLY_BYTES)
        cluster_id = None
        while True:
            data = sock.recv(1 << 16)
            if not data:
                raise DiscoveryError("connection closed before the members were sent")
            for kind, payload in decoder.feed(data):
                if kind == FrameKind.ERROR:
                    raise DiscoveryError(f"refused: {decode_error(payload)}")
                if kind == FrameKind.HELLO:
                    cluster_id = decode_hello(payload).cluster_id
                elif kind == FrameKind.REPLY and cluster_id is not None:
                    _, status, body = decode_reply(payload)
                    if status:
                        raise DiscoveryError(reply_message(body))
                    return RemoteCluster(cluster_id, tuple(members_from_json(body)))
                else:
                    raise DiscoveryError(f"unexpected frame kind {kind}")


def match_local(local: dict[str, tuple[str, ...]], remote: Sequence[Member],
                name: str) -> int:
    """This member's ID in the running cluster (etcd `ValidateClusterAndAssignIDs`): the
    `--initial-cluster` members must be the running ones, matched by peer URLs, and
    `name`'s URLs must be one of them. Raises DiscoveryError with etcd's words."""
    if len(local) != len(remote):
        raise DiscoveryError("member count is unequal")
    by_urls = {tuple(sorted(m.peer_urls)): m for m in remote}
    own = None
    for member_name, urls in local.items():
        found = by_urls.get(tuple(sorted(urls)))
        if found is None:
            raise DiscoveryError(f"unmatched member while checking PeerURLs ("
                                 f"{member_name}={','.join(urls)} is not a member of the "
                                 f"running cluster)")
        if member_name == name:
            own = found
    if own is None:
        raise DiscoveryError(f'couldn\'t find local name "{name}" in the initial cluster '
                             "configuration")
    return own.id
