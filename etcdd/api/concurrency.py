"""The member's own KV, watch and lease as the Lock and Election services see them, and
the recipes both services share.

No IO of its own (Deferreds only, no reactor). Matches etcd 3.4 `clientv3/concurrency`,
which etcd's v3lock and v3election servers run over an in-process client: `session.go`
(a request without a lease gets a fresh 60 s lease), `key.go` `waitDeletes`/`waitDelete`
(wait until every key of a prefix created before ours is deleted), and the key names
`<name>/<lease id as %x>`.

Errors: etcd's servers return the in-process client's errors, which clientv3 has turned
into `rpctypes.EtcdError` values; those carry no gRPC status, so grpc-go sends every one
of them as Unknown with etcd's message (`google.golang.org/grpc/server.go`:
`status.FromError` fails, `codes.Unknown`). `as_client_error` does the same here.
"""
from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from etcdd.api.rpctypes import WIRE_ERRORS, GrpcError, Status, status_for
from etcdd.mvcc.errors import CompactedError
from etcdd.proto import kv_pb2, rpc_pb2 as pb

# etcd 3.4 clientv3/concurrency/session.go defaultSessionTTL
DEFAULT_SESSION_TTL_SECONDS = 60

PUT = kv_pb2.Event.PUT
DELETE = kv_pb2.Event.DELETE

_log = Logger()


class IWatchHandle(Interface):
    """One watch started by `ILocalClient.watch`."""

    def cancel() -> None:
        """Stop the watch: no callback runs after this returns. Idempotent, and harmless
        after the watch ended by itself (compaction)."""


class ILocalClient(Interface):
    """The member's own KV, watch and lease, as the server-side services see them.

    Every Deferred fires on the reactor; responses have their headers filled. Failures
    arrive as failed Deferreds carrying etcd's exceptions (`etcdd.server.errors`,
    `etcdd.mvcc.errors`).
    """

    def range(req: pb.RangeRequest) -> Deferred:
        """A linearizable RangeResponse."""

    def put(req: pb.PutRequest) -> Deferred:
        """A PutResponse once applied."""

    def delete_range(req: pb.DeleteRangeRequest) -> Deferred:
        """A DeleteRangeResponse once applied."""

    def txn(req: pb.TxnRequest) -> Deferred:
        """A TxnResponse once applied (a put with an unknown lease fails with
        `LeaseNotFoundError`, as etcd's applier checks)."""

    def lease_grant(req: pb.LeaseGrantRequest) -> Deferred:
        """A LeaseGrantResponse once applied (etcd's session grants one for lease 0)."""

    def watch(key: bytes, range_end: bytes, start_rev: int,
              on_events: Callable[[list[kv_pb2.Event]], None],
              on_compacted: Callable[[int], None]) -> IWatchHandle:
        """Watch `[key, range_end)` (`range_end` empty: `key` alone).

        `on_events` gets the events with `mod_revision >= start_rev` (0: from now) in
        revision order, every event of one revision in one call; it may be called before
        `watch()` returns (history). `on_compacted(compact_revision)` instead if
        `start_rev` is already compacted; the watch is then over.
        """

    def header() -> pb.ResponseHeader:
        """A new, filled header for the current revision (the caller may modify it)."""


def prefix_end(prefix: bytes) -> bytes:
    """The end of the range of every key starting with `prefix` (clientv3
    `GetPrefixRangeEnd`): `b"a/"` -> `b"a0"`, `b"a\\xff"` -> `b"b"`, all-0xff -> `b"\\x00"`."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            del end[i + 1:]
            return bytes(end)
    return b"\x00"


def owner_key(prefix: bytes, lease: int) -> bytes:
    """The key a session writes under `prefix`: `b"lock/"`, 0x694d7 -> `b"lock/694d7"`
    (Go's `%x` of the lease ID)."""
    return prefix + format(lease, "x").encode()


def first_created(prefix: bytes) -> pb.RangeRequest:
    """The key under `prefix` with the lowest create revision (clientv3 `WithFirstCreate`)."""
    return pb.RangeRequest(key=prefix, range_end=prefix_end(prefix), limit=1,
                           sort_order=pb.RangeRequest.ASCEND,
                           sort_target=pb.RangeRequest.CREATE)


def last_created_before(prefix: bytes, max_create_revision: int) -> pb.RangeRequest:
    """The newest key under `prefix` created at or before `max_create_revision`
    (clientv3 `WithLastCreate` + `WithMaxCreateRev`)."""
    return pb.RangeRequest(key=prefix, range_end=prefix_end(prefix), limit=1,
                           sort_order=pb.RangeRequest.DESCEND,
                           sort_target=pb.RangeRequest.CREATE,
                           max_create_revision=max_create_revision)


def created_at(key: bytes, revision: int) -> pb.Compare:
    """The compare `create_revision(key) == revision` (0: the key does not exist)."""
    return pb.Compare(key=key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL,
                      create_revision=revision)


def put_op(key: bytes, value: bytes, lease: int) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease))


def get_op(request: pb.RangeRequest) -> pb.RequestOp:
    return pb.RequestOp(request_range=request)


def session_lease(client: Any, lease: int) -> Deferred:
    """The lease a session of etcd's concurrency package would use: `lease` itself, or a
    fresh lease of `DEFAULT_SESSION_TTL_SECONDS` for 0 (session.go `NewSession`).

    # NB: etcd's servers orphan the session at once, so nothing keeps a granted lease
    # alive: a lock taken without a lease disappears after 60 s, as in etcd.
    """
    if lease != 0:
        return succeed(lease)
    d = client.lease_grant(pb.LeaseGrantRequest(TTL=DEFAULT_SESSION_TTL_SECONDS))
    return d.addCallback(lambda resp: resp.ID)


def as_client_error(failure: Failure) -> Failure:
    """etcd's error through etcd's in-process client: the same message, code Unknown.

    Exceptions without a wire form (bugs) and transport errors pass unchanged.
    """
    error = failure.value
    if any(cls in WIRE_ERRORS for cls in type(error).__mro__):
        return Failure(GrpcError(Status.UNKNOWN, status_for(error)[1]))
    return failure


def log_failure(failure: Failure, what: str, key: bytes) -> None:
    """Errback for clean-ups nobody waits for."""
    _log.failure("{what} of {key!r} failed", failure=failure, what=what, key=key)


class KeyWatch:
    """One watch whose own callbacks may stop it, even while `ILocalClient.watch` is
    still replaying history inside the call that starts it.

    `on_events(events)` returns True once it saw what it waited for; the watch then
    stops. Invariant: no callback runs once `stopped`.
    """

    __slots__ = ("stopped", "_handle", "_on_events", "_on_compacted")

    def __init__(self, client: Any, key: bytes, start_rev: int,
                 on_events: Callable[[list[Any]], bool],
                 on_compacted: Callable[[int], None], range_end: bytes = b"") -> None:
        self.stopped = False
        self._handle: Any = None
        self._on_events = on_events
        self._on_compacted = on_compacted
        handle = client.watch(key, range_end, start_rev, self._events, self._compacted)
        if self.stopped:
            handle.cancel()
        else:
            self._handle = handle

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            handle, self._handle = self._handle, None
            if handle is not None:
                handle.cancel()

    def _events(self, events: list[Any]) -> None:
        if not self.stopped and self._on_events(events):
            self.stop()

    def _compacted(self, compact_revision: int) -> None:
        if not self.stopped:
            self.stop()
            self._on_compacted(compact_revision)


class DeletesWaiter:
    """Waits until no key under `prefix` has `create_revision <= max_create_revision`
    (etcd 3.4 key.go `waitDeletes`): read the newest such key, watch it for its DELETE,
    read again.

    `done` fires with the header of the read that found none, or fails with the read's
    error or `CompactedError`; cancelling `done` stops the watch. Invariant: at most one
    watch is live, and none once `done` has fired.

    Example: keys created at 5 (holder), 7, 9 (ours, max 8): watch the key of 7; when it
    is deleted, read again and watch the key of 5; when that one goes, `done` fires.
    """

    __slots__ = ("done", "_client", "_request", "_watch")

    def __init__(self, client: Any, prefix: bytes, max_create_revision: int) -> None:
        self.done: Deferred = Deferred(self._cancel)
        self._client = client
        self._request = last_created_before(prefix, max_create_revision)
        self._watch: KeyWatch | None = None
        self._read()

    def _read(self) -> None:
        self._client.range(self._request).addCallbacks(self._ranged, self._failed)

    def _ranged(self, resp: pb.RangeResponse) -> None:
        if self.done.called:
            return
        if not resp.kvs:
            self.done.callback(resp.header)
            return
        # From the read's revision on: the key exists there, so its DELETE comes later.
        self._watch = KeyWatch(self._client, resp.kvs[0].key, resp.header.revision + 1,
                               self._events, self._compacted)

    def _events(self, events: list[Any]) -> bool:
        for event in events:
            if event.type == DELETE:
                self._watch = None
                self._read()
                return True
        return False

    def _compacted(self, compact_revision: int) -> None:
        self._watch = None
        if not self.done.called:
            self.done.errback(CompactedError(compact_revision))

    def _failed(self, failure: Failure) -> None:
        if not self.done.called:
            self.done.errback(failure)

    def _cancel(self, done: Deferred) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
