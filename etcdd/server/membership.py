"""Member and cluster IDs, and the members a new cluster bootstraps with.

A core: pure. Matches etcd 3.4 ``etcdserver/api/membership/member.go`` ``newMember`` and
``cluster.go`` ``NewClusterFromURLsMap``/``genID``, so an etcdd member reports the same
``cluster_id``/``member_id`` as an etcd member started with the same flags (checked against
etcd 3.4.23 in ``tests/unit/test_membership.py``).

Worked example, ``etcd`` with no flags (``default=http://localhost:2380``, token
``etcd-cluster``)::

    sha1(b"http://localhost:2380" b"etcd-cluster")[:8]  -> member 0x8e9e05c52164694d
    sha1((0x8e9e05c52164694d).to_bytes(8, "big"))[:8]   -> cluster 0xcdf818194e3a8c32
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from etcdd.config import Config, ConfigError


@dataclass(frozen=True, slots=True)
class Member:
    """One cluster member. ``peer_urls`` are sorted; ``id`` is never 0 (raft.None)."""
    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...] = ()
    is_learner: bool = False


def member_id(peer_urls: Sequence[str], cluster_token: str, now_unix: int | None = None) -> int:
    """The ID etcd derives for a member: the first 8 bytes, big-endian, of
    ``sha1(sorted peer URLs concatenated + cluster_token [+ decimal now_unix])``.

    Bootstrap members use ``--initial-cluster-token`` and no time. A member added at run
    time (``MemberAdd``) uses an empty token and the leader's wall clock in Unix seconds:
    etcd 3.4 ``v3rpc/member.go`` calls ``NewMember("", urls, "", &now)``.
    """
    data = "".join(sorted(peer_urls)) + cluster_token
    if now_unix is not None:
        data += str(now_unix)   # Go fmt.Sprintf("%d", now.Unix())
    return int.from_bytes(hashlib.sha1(data.encode()).digest()[:8], "big")


def cluster_id(member_ids: Iterable[int]) -> int:
    """etcd ``genID``: first 8 bytes of sha1 over the 8-byte big-endian IDs in ascending order."""
    data = b"".join(mid.to_bytes(8, "big") for mid in sorted(member_ids))
    return int.from_bytes(hashlib.sha1(data).digest()[:8], "big")


def initial_members(config: Config) -> list[Member]:
    """The members ``--initial-cluster`` bootstraps with, in ascending ID order.

    Client URLs are empty: etcd members publish theirs through raft once started. Raises
    `ConfigError` when two members hash to the same ID or one hashes to 0, as etcd does.
    """
    members: dict[int, Member] = {}
    for name, urls in config.initial_cluster_urls().items():
        mid = member_id(urls, config.initial_cluster_token)
        if mid in members:
            raise ConfigError(f"member exists with identical ID {mid:x}")
        if mid == 0:
            raise ConfigError("cannot use 0 as member id")
        members[mid] = Member(id=mid, name=name, peer_urls=urls)
    return [members[mid] for mid in sorted(members)]


def initial_cluster_id(config: Config) -> int:
    """The cluster ID a new cluster bootstrapped from ``config`` gets."""
    return cluster_id(m.id for m in initial_members(config))


def local_member_id(config: Config) -> int:
    """This member's ID at bootstrap, from its own entry in ``--initial-cluster``.

    Raises `ConfigError` (etcd's message) if the name is missing.
    """
    urls = config.initial_cluster_urls().get(config.name)
    if urls is None:
        raise ConfigError(f'couldn\'t find local name "{config.name}" in the initial cluster '
                          "configuration")
    return member_id(urls, config.initial_cluster_token)
