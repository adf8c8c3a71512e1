"""The member's own KV, lease and watch as an in-process client (`ILocalClient`).

Shell glue. etcd 3.4's v3lock and v3election servers run etcd's `clientv3` against the
server itself (`v3client.New`); etcdd hands the Lock and Election services
(`api/lock.py`, `api/election.py`) this object instead: the same requests go through
raft and the same watchable store, without a network round trip.
"""
from __future__ import annotations

from itertools import count
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from zope.interface import implementer

from etcdd.api.concurrency import ILocalClient, IWatchHandle
from etcdd.api.kv import HeaderFiller, is_read_only
from etcdd.mvcc.watchable import IWatchSink
from etcdd.proto import rpc_pb2 as pb


@implementer(ILocalClient)
class LocalClient:
    def __init__(self, member: Any, watchable: Any, leases: Any, header: HeaderFiller) -> None:
        self._member = member
        self._watchable = watchable
        self._leases = leases
        self._header = header
        self._ids = count(1)

    def range(self, req: Any) -> Deferred:
        return maybeDeferred(self._member.range, req).addCallback(self._header.fill)

    def put(self, req: Any) -> Deferred:
        return self._member.propose("put", req).addCallback(self._header.fill)

    def delete_range(self, req: Any) -> Deferred:
        return self._member.propose("delete_range", req).addCallback(self._header.fill)

    def txn(self, req: Any) -> Deferred:
        if is_read_only(req):
            return maybeDeferred(self._member.read_txn, req).addCallback(self._header.fill)
        return self._member.propose("txn", req).addCallback(self._header.fill)

    def lease_grant(self, req: Any) -> Deferred:
        return self._leases.grant(req).addCallback(self._header.fill)

    def watch(self, key: bytes, range_end: bytes, start_rev: int,
              on_events: Callable[[list], None],
              on_compacted: Callable[[int], None]) -> IWatchHandle:
        handle = _LocalWatch(self._watchable, on_events, on_compacted)
        handle.watcher = self._watchable.watch(key, range_end, start_rev,
                                               watch_id=next(self._ids), sink=handle)
        return handle

    def header(self) -> Any:
        resp = pb.RangeResponse()
        self._header.fill(resp)
        return resp.header


@implementer(IWatchHandle, IWatchSink)
class _LocalWatch:
    """A watch whose events go to callbacks, one call per revision."""

    def __init__(self, watchable: Any, on_events: Callable[[list], None],
                 on_compacted: Callable[[int], None]) -> None:
        self._watchable = watchable
        self._on_events = on_events
        self._on_compacted = on_compacted
        self.watcher: Any = None
        self._done = False

    def cancel(self) -> None:
        if not self._done:
            self._done = True
            if self.watcher is not None:
                self._watchable.cancel(self.watcher)

    def deliver(self, watcher: Any, events: list, rev: int) -> bool:
        start = 0
        for i in range(1, len(events) + 1):
            if self._done:
                return True
            if i == len(events) or events[i].kv.mod_revision != events[start].kv.mod_revision:
                self._on_events(events[start:i])
                start = i
        return True

    def compacted(self, watcher: Any, compact_rev: int) -> None:
        if not self._done:
            self._done = True
            self._on_compacted(compact_rev)

    def when_writable(self, callback: Callable[[], None]) -> None:
        callback()
