"""Shared fixtures for the Watch service tests (test_watch_service.py, test_watch_history.py):
`FakeStream`, `ReadQueue`, the brute-force `Model` of the committed history, an etcd 3.4
`sendFragments` oracle, and `WatchTestCase`, which wires a real KVStore, a WatchableStore
and a WatchService together.

Writes go through real write batches and reach the watchers through `notify`, as the
member hands them over; history reads go through a `ReadQueue` the test flushes, so
interleavings of reads and writes are chosen by the test. Event sequences are compared
with the model.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from etcdd.api.kv import HeaderFiller
from etcdd.api.router import CallContext, IServerStream
from etcdd.api.watch import WatchService, WatchStream
from etcdd.mvcc.watchable import WatchableStore
from etcdd.proto import rpc_pb2 as pb
from etcdd.proto.kv_pb2 import Event, KeyValue
from tests.unit.stores import open_store

CLUSTER_ID, MEMBER_ID, TERM = 0xCDF818194E3A8C32, 0x8E9E05C52164694D, 3
WATCH_PATH = "/etcdserverpb.Watch/Watch"
PUT, DELETE = Event.PUT, Event.DELETE
NOPUT, NODELETE = pb.WatchCreateRequest.NOPUT, pb.WatchCreateRequest.NODELETE
DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"
EMPTY_RANGE = "mvcc: watcher range is empty"

Op = tuple  # ("put", key, value) | ("delete", key, range_end)


def covers(key: bytes, start: bytes, end: bytes) -> bool:
    """etcd's range rule: b"" one key, b"\\x00" every key >= start, else [start, end)."""
    if not end:
        return key == start
    return key >= start and (end == b"\x00" or key < end)


def header(rev: int) -> pb.ResponseHeader:
    return pb.ResponseHeader(cluster_id=CLUSTER_ID, member_id=MEMBER_ID, revision=rev,
                             raft_term=TERM)


def parse(message: Any) -> pb.WatchResponse:
    """A sent message as a WatchResponse (events go out as bytes, control as messages)."""
    if isinstance(message, bytes):
        return pb.WatchResponse.FromString(message)
    copy = pb.WatchResponse()
    copy.CopyFrom(message)
    return copy


def etcd_fragments(resp: pb.WatchResponse, limit: int) -> list[pb.WatchResponse]:
    """The responses etcd 3.4 `sendFragments` sends for `resp` (an oracle, by its rules):
    whole if smaller than the limit or under two events; else fragments that add events
    while the fragment stays under the limit (at least one each), all but the last
    flagged `fragment`."""
    if resp.ByteSize() < limit or len(resp.events) < 2:
        return [resp]
    events, out, idx = list(resp.events), [], 0
    while True:
        cur = pb.WatchResponse()
        cur.CopyFrom(resp)
        del cur.events[:]
        cur.fragment = True
        while idx < len(events):
            cur.events.append(events[idx])
            if len(cur.events) > 1 and cur.ByteSize() >= limit:
                del cur.events[-1]
                break
            idx += 1
        if idx == len(events):
            cur.fragment = False
        out.append(cur)
        if not cur.fragment:
            return out


@implementer(IServerStream)
class FakeStream:
    """A server stream that records what was sent; writable when the test says so.

    With `block_after_send`, every send makes it unwritable (a client that reads one
    response per `drain()`)."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.finished = False
        self.error: BaseException | None = None
        self.writable = True
        self.block_after_send = False
        self.callbacks: list[Callable[[], None]] = []
        self._seen = 0

    def send(self, message: Any) -> None:
        if self.finished:
            raise AssertionError("send after finish")
        self.sent.append(message)
        if self.block_after_send:
            self.writable = False

    def finish(self, error: BaseException | None = None) -> None:
        self.finished, self.error = True, error

    def is_writable(self) -> bool:
        return self.writable

    def on_writable(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)

    def drain(self) -> None:
        """The client read everything: writable again, waiting callbacks run."""
        self.writable = True
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()

    def responses(self) -> list[pb.WatchResponse]:
        return [parse(m) for m in self.sent]

    def take(self) -> list[pb.WatchResponse]:
        """Responses sent since the last take."""
        new = self.sent[self._seen:]
        self._seen = len(self.sent)
        return [parse(m) for m in new]

    def events_of(self, watch_id: int) -> list[Event]:
        """Every event sent for `watch_id`, in order."""
        return [ev for r in self.responses() if r.watch_id == watch_id for ev in r.events]


class ReadQueue:
    """`run_read` for the watchable store: reads run at once (`auto`) or wait for flush."""

    def __init__(self, auto: bool = True) -> None:
        self.auto = auto
        self.pending: list[tuple[Deferred, Callable[..., Any], tuple]] = []
        self.calls: list[tuple] = []        # the args of every read (plan, want_prev, ...)

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        self.calls.append(args)
        if self.auto:
            return maybeDeferred(fn, *args)
        d: Deferred = Deferred()
        self.pending.append((d, fn, args))
        return d

    def flush_one(self) -> bool:
        if not self.pending:
            return False
        d, fn, args = self.pending.pop(0)
        d.callback(fn(*args))
        return True

    def flush(self) -> int:
        n = 0
        while self.flush_one():
            n += 1
        return n


class Model:
    """Brute force: live keys and every event of the committed history, prev_kv included."""

    def __init__(self) -> None:
        self.live: dict[bytes, KeyValue] = {}
        self.events: list[Event] = []
        self.rev = 1

    def apply(self, ops: list[Op]) -> None:
        rev, out = self.rev + 1, []
        for op in ops:
            if op[0] == "put":
                _, key, value = op
                prev = self.live.get(key)
                kv = KeyValue(key=key, value=value, mod_revision=rev,
                              create_revision=prev.create_revision if prev else rev,
                              version=prev.version + 1 if prev else 1)
                self.live[key] = kv
                out.append(Event(type=PUT, kv=kv, prev_kv=prev))
            else:
                _, key, end = op
                for k in sorted(k for k in self.live if covers(k, key, end)):
                    prev = self.live.pop(k)
                    out.append(Event(type=DELETE, kv=KeyValue(key=k, mod_revision=rev),
                                     prev_kv=prev))
        if out:
            self.rev = rev
            self.events.extend(out)

    def expected(self, key: bytes, end: bytes, start_rev: int, filters: tuple = (),
                 prev_kv: bool = False) -> list[Event]:
        dropped = {PUT for f in filters if f == NOPUT} | {DELETE for f in filters
                                                           if f == NODELETE}
        out = []
        for ev in self.events:
            if ev.kv.mod_revision < start_rev or ev.type in dropped:
                continue
            if not covers(ev.kv.key, key, end):
                continue
            out.append(ev if prev_kv else Event(type=ev.type, kv=ev.kv))
        return out


class WatchTestCase(SynchronousTestCase):
    """A store, a WatchableStore (not started unless a test starts it) and a WatchService."""

    AUTO_READS = True
    MAX_REQUEST_BYTES = 1536 * 1024
    PROGRESS_SECONDS = 600.0
    MAX_HISTORY_RECORDS = 20_000

    def setUp(self) -> None:
        self.store = open_store(self)
        self.clock = Clock()
        self.reads = ReadQueue(auto=self.AUTO_READS)
        self.watchable = WatchableStore(self.store, self.clock, self.reads,
                                        max_history_records=self.MAX_HISTORY_RECORDS)
        member = SimpleNamespace(identity=SimpleNamespace(cluster_id=CLUSTER_ID,
                                                          member_id=MEMBER_ID), term=TERM)
        self.service = WatchService(self.watchable, HeaderFiller(member, self.store),
                                    self.clock, self.MAX_REQUEST_BYTES, self.PROGRESS_SECONDS)
        self.model = Model()

    # -- streams and requests ----------------------------------------------------------

    def open(self) -> tuple[WatchStream, FakeStream]:
        fake = FakeStream()
        handler = self.service.open(CallContext(path=WATCH_PATH), fake)
        return handler, fake

    def create(self, handler: WatchStream, key: bytes, range_end: bytes = b"",
               **kw: Any) -> None:
        handler.message_received(pb.WatchRequest(
            create_request=pb.WatchCreateRequest(key=key, range_end=range_end, **kw)))

    def watch(self, key: bytes, range_end: bytes = b"", **kw: Any
              ) -> tuple[WatchStream, FakeStream, int]:
        """Open a stream with one watcher; returns (handler, stream, its watch ID)."""
        handler, fake = self.open()
        self.create(handler, key, range_end, **kw)
        created = fake.take()[0]
        self.assertTrue(created.created and not created.canceled, created)
        self.settle()
        return handler, fake, created.watch_id

    @staticmethod
    def cancel(handler: WatchStream, watch_id: int) -> None:
        handler.message_received(pb.WatchRequest(
            cancel_request=pb.WatchCancelRequest(watch_id=watch_id)))

    # -- writes ---------------------------------------------------------------------------

    def commit(self, *txns: list[Op], notify: bool = True) -> int:
        """Apply each txn as one etcd txn, all in one write batch, hand the changes to the
        watchers as the member does, and settle; returns the store revision."""
        batch = self.store.write_batch()
        changes = []
        for ops in txns:
            txn = batch.txn()
            for op in ops:
                if op[0] == "put":
                    txn.put(op[1], op[2])
                else:
                    txn.delete_range(op[1], op[2])
            rev = txn.end()
            if txn.changes:
                changes.append((rev, txn.changes, txn.prevs))
            self.model.apply(list(ops))
        batch.commit()
        if notify:
            self.watchable.notify(changes)
        self.settle()
        return self.store.current_revision()

    def put(self, key: bytes, value: bytes = b"v") -> int:
        return self.commit([("put", key, value)])

    def delete(self, key: bytes, end: bytes = b"") -> int:
        return self.commit([("delete", key, end)])

    def compact(self, rev: int) -> None:
        with self.store.write_batch() as batch:
            batch.schedule_compaction(rev)
        while not self.store.compact_step():
            pass

    def settle(self) -> None:
        """Run every reactor call due now and (with auto reads) every history read."""
        for _ in range(10_000):
            self.clock.advance(0)
            if not (self.reads.auto and self.reads.flush()):
                return
        self.fail("the watchable store never settled")

    def assert_caught_up(self, fake: FakeStream, watch_id: int, key: bytes, end: bytes,
                         start_rev: int, **kw: Any) -> None:
        self.assertEqual(fake.events_of(watch_id),
                         self.model.expected(key, end, start_rev, **kw))
