"""The Watch service (`etcdd/api/watch.py`) over the watchable store
(`etcdd/mvcc/watchable.py`) on a real KVStore, against etcd 3.4 `v3rpc/watch.go` (created,
canceled, progress and compacted responses, `sendFragments`) and
`mvcc/watchable_store.go` (one response per txn, history replay, victims, restore).

Writes go through real write batches and reach the watchers through `notify`, as the
member hands them over; history reads go through a `ReadQueue` the test flushes, so
interleavings of reads and writes are chosen by the test. Event sequences are compared
with a brute-force model of the committed history.
"""
from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from etcdd.api.kv import HeaderFiller
from etcdd.api.router import CallContext, IServerStream, IStreamHandler, Router, StreamMethod
from etcdd.api.watch import WatchService, WatchStream
from etcdd.mvcc.watchable import IWatchSink, WatchableStore
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


def prefix_end(prefix: bytes) -> bytes:
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\x00"
    end[-1] += 1
    return bytes(end)


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
        self.finished = True

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


class WatchCreateTests(WatchTestCase):

    def test_register_routes_the_watch_stream(self) -> None:
        """register() adds etcd's Watch path as a stream method taking WatchRequest."""
        router = Router()
        self.service.register(router)
        method = router.lookup(WATCH_PATH)
        self.assertIsInstance(method, StreamMethod)
        self.assertIs(method.request_type, pb.WatchRequest)
        handler, _ = self.open()
        verifyObject(IStreamHandler, handler)
        verifyObject(IWatchSink, handler)
        verifyObject(IServerStream, FakeStream())

    def test_created_response_carries_current_revision(self) -> None:
        """The created response's header is the current revision; events start after it."""
        self.put(b"a")
        self.put(b"a")
        handler, fake = self.open()
        self.create(handler, b"a")
        self.assertEqual(fake.take(), [pb.WatchResponse(header=header(3), watch_id=0,
                                                        created=True)])
        self.put(b"a", b"new")
        [resp] = fake.take()
        self.assertEqual((resp.header, resp.watch_id), (header(4), 0))
        self.assertEqual([(ev.type, ev.kv.mod_revision, ev.kv.value) for ev in resp.events],
                         [(PUT, 4, b"new")])

    def test_server_assigned_ids_count_from_zero(self) -> None:
        """Watch IDs the server assigns on one stream are 0, 1, 2; a new stream starts at 0."""
        handler, fake = self.open()
        for key in (b"a", b"b", b"c"):
            self.create(handler, key)
        self.assertEqual([r.watch_id for r in fake.take()], [0, 1, 2])
        handler2, fake2 = self.open()
        self.create(handler2, b"a")
        self.assertEqual([r.watch_id for r in fake2.take()], [0])

    def test_client_chosen_ids_are_kept_and_skipped(self) -> None:
        """A client's non-zero watch ID is used as given; assigned IDs skip IDs in use."""
        handler, fake = self.open()
        self.create(handler, b"a", watch_id=1)
        self.create(handler, b"b")
        self.create(handler, b"c")
        self.create(handler, b"d", watch_id=100)
        self.assertEqual([(r.watch_id, r.created, r.canceled) for r in fake.take()],
                         [(1, True, False), (0, True, False), (2, True, False),
                          (100, True, False)])
        self.put(b"d")
        self.assertEqual([(r.watch_id, r.events[0].kv.key) for r in fake.take()],
                         [(100, b"d")])

    def test_duplicate_id_answers_created_and_canceled(self) -> None:
        """A watch ID already in use answers created + canceled, watch ID -1, etcd's reason;
        the first watcher keeps working."""
        self.put(b"x")
        handler, fake = self.open()
        self.create(handler, b"a", watch_id=5)
        self.create(handler, b"b", watch_id=5)
        self.assertEqual(fake.take()[1], pb.WatchResponse(
            header=header(2), watch_id=-1, created=True, canceled=True,
            cancel_reason=DUPLICATE_ID))
        self.put(b"a")
        self.put(b"b")
        self.assertEqual([(r.watch_id, r.events[0].kv.key) for r in fake.take()],
                         [(5, b"a")])

    def test_empty_range_answers_created_and_canceled(self) -> None:
        """A range end at or before the key answers created + canceled, watch ID -1,
        etcd's reason, at the current revision."""
        self.put(b"x")
        handler, fake = self.open()
        self.create(handler, b"b", b"a")
        self.create(handler, b"b", b"b")
        want = pb.WatchResponse(header=header(2), watch_id=-1, created=True, canceled=True,
                                cancel_reason=EMPTY_RANGE)
        self.assertEqual(fake.take(), [want, want])
        self.assertEqual(len(self.watchable.core.synced), 0)

    def test_refused_empty_range_does_not_use_up_an_id(self) -> None:
        """etcd checks the range before assigning an ID: after a refused create the next
        server-assigned ID is still 0 (mvcc/watcher.go watchStream.Watch)."""
        handler, fake = self.open()
        self.create(handler, b"b", b"a")
        self.create(handler, b"a")
        self.assertEqual([r.watch_id for r in fake.take()], [-1, 0])

    def test_empty_range_is_reported_before_a_duplicate_id(self) -> None:
        """A create with both a duplicate ID and an empty range gets etcd's first check's
        reason: the empty range."""
        handler, fake = self.open()
        self.create(handler, b"a", watch_id=3)
        self.create(handler, b"b", b"a", watch_id=3)
        self.assertEqual(fake.take()[1].cancel_reason, EMPTY_RANGE)

    def test_empty_key_and_from_key_range_watch_everything(self) -> None:
        """An empty key means \\x00 and range end \\x00 means every key >= key."""
        handler, fake = self.open()
        self.create(handler, b"", b"\x00")
        self.create(handler, b"m", b"\x00")
        fake.take()
        self.commit([("put", b"\x00", b"1"), ("put", b"a", b"2"), ("put", b"z", b"3")])
        got = {r.watch_id: [ev.kv.key for ev in r.events] for r in fake.take()}
        self.assertEqual(got, {0: [b"\x00", b"a", b"z"], 1: [b"z"]})


class WatchEventTests(WatchTestCase):

    def test_one_txn_is_one_response_at_its_revision(self) -> None:
        """All events of one txn arrive in one response, in sub-revision order, with the
        txn's revision as header revision; the next txn of the batch gets its own."""
        self.commit([("put", b"k1", b"old")])
        _, fake, wid = self.watch(b"k", prefix_end(b"k"))
        self.commit([("put", b"k3", b"c"), ("put", b"k2", b"b"), ("delete", b"k1", b"")],
                    [("put", b"k4", b"d")])
        r1, r2 = fake.take()
        self.assertEqual(r1.header, header(3))
        self.assertEqual([(ev.type, ev.kv.key, ev.kv.mod_revision) for ev in r1.events],
                         [(PUT, b"k3", 3), (PUT, b"k2", 3), (DELETE, b"k1", 3)])
        self.assertEqual((r2.header.revision, [ev.kv.key for ev in r2.events]), (4, [b"k4"]))
        self.assert_caught_up(fake, wid, b"k", prefix_end(b"k"), 3)

    def test_put_and_delete_filters(self) -> None:
        """NOPUT drops puts, NODELETE drops deletes; a txn with nothing left sends nothing."""
        handler, fake = self.open()
        self.create(handler, b"k", prefix_end(b"k"), filters=[NOPUT])
        self.create(handler, b"k", prefix_end(b"k"), filters=[NODELETE])
        self.create(handler, b"k", prefix_end(b"k"), filters=[NOPUT, NODELETE])
        fake.take()
        self.put(b"k1")
        self.delete(b"k1")
        self.commit([("put", b"k2", b"v"), ("put", b"k3", b"v")])
        self.commit([("put", b"k4", b"v"), ("delete", b"k2", b"")])
        got = {wid: [[(ev.type, ev.kv.key) for ev in r.events] for r in fake.responses()
                     if r.watch_id == wid and not r.created] for wid in (0, 1, 2)}
        self.assertEqual(got, {0: [[(DELETE, b"k1")], [(DELETE, b"k2")]],
                               1: [[(PUT, b"k1")], [(PUT, b"k2"), (PUT, b"k3")], [(PUT, b"k4")]],
                               2: []})

    def test_prev_kv_for_overwrites_and_deletes_not_creates(self) -> None:
        """With prev_kv a put over a live key and a delete carry the replaced record; a
        create (also after a delete) carries none; without prev_kv nothing does."""
        handler, fake = self.open()
        self.create(handler, b"a", prev_kv=True)
        self.create(handler, b"a")
        fake.take()
        self.put(b"a", b"1")
        self.put(b"a", b"2")
        self.delete(b"a")
        self.put(b"a", b"3")
        with_prev = fake.events_of(0)
        self.assertEqual([ev.HasField("prev_kv") for ev in with_prev],
                         [False, True, True, False])
        self.assertEqual(with_prev[1].prev_kv, KeyValue(key=b"a", value=b"1", create_revision=2,
                                                        mod_revision=2, version=1))
        self.assertEqual(with_prev[2].prev_kv, KeyValue(key=b"a", value=b"2", create_revision=2,
                                                        mod_revision=3, version=2))
        self.assertEqual([ev.HasField("prev_kv") for ev in fake.events_of(1)], [False] * 4)
        self.assert_caught_up(fake, 0, b"a", b"", 2, prev_kv=True)
        self.assert_caught_up(fake, 1, b"a", b"", 2)

    def test_delete_event_carries_key_and_mod_revision_only(self) -> None:
        """A delete event's kv is the key and the deleting revision, nothing else."""
        self.put(b"a", b"value")
        _, fake, _ = self.watch(b"a")
        rev = self.delete(b"a")
        [resp] = fake.take()
        self.assertEqual(list(resp.events), [Event(type=DELETE,
                                                   kv=KeyValue(key=b"a", mod_revision=rev))])

    def test_watchers_sharing_an_event_get_identical_bytes(self) -> None:
        """Many watchers of one event get byte-identical responses, etcd's serialization."""
        streams = [self.watch(b"p", prefix_end(b"p"))[1] for _ in range(20)]
        rev = self.commit([("put", b"p1", b"x" * 100), ("put", b"p2", b"y")])
        want = pb.WatchResponse(header=header(rev), watch_id=0,
                                events=self.model.expected(b"p1", b"\x00", rev))
        sent = [fake.sent[-1] for fake in streams]
        self.assertTrue(all(isinstance(raw, bytes) for raw in sent))
        self.assertEqual(set(sent), {want.SerializeToString()})

    def test_cancel_answers_canceled_and_stops_events(self) -> None:
        """A cancel answers canceled for the ID at the current revision; no events follow."""
        handler, fake, wid = self.watch(b"a")
        rev = self.put(b"a")
        fake.take()
        self.cancel(handler, wid)
        self.assertEqual(fake.take(), [pb.WatchResponse(header=header(rev), watch_id=wid,
                                                        canceled=True)])
        self.put(b"a")
        self.assertEqual(fake.take(), [])
        self.assertEqual(len(self.watchable.core.synced), 0)

    def test_cancel_of_unknown_id_is_ignored(self) -> None:
        """Canceling an ID the stream does not have sends nothing and keeps the others."""
        handler, fake, wid = self.watch(b"a")
        self.cancel(handler, wid + 7)
        self.assertEqual(fake.take(), [])
        self.put(b"a")
        self.assertEqual(len(fake.take()), 1)

    def test_progress_request_answers_current_revision(self) -> None:
        """A progress request answers a header-only response, watch ID -1, current revision."""
        handler, fake = self.open()
        rev = self.put(b"a")
        handler.message_received(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
        self.assertEqual(fake.take(), [pb.WatchResponse(header=header(rev), watch_id=-1)])

    def test_end_of_input_keeps_serving(self) -> None:
        """A client half-close does not end the stream (etcd keeps sending events)."""
        handler, fake, _ = self.watch(b"a")
        handler.end_of_input()
        self.put(b"a")
        self.assertFalse(fake.finished)
        self.assertEqual(len(fake.take()), 1)


class ProgressNotifyTests(WatchTestCase):

    PROGRESS_SECONDS = 5.0
    AUTO_READS = False

    def test_progress_notify_on_ticks_for_idle_synced_watchers(self) -> None:
        """Each interval, a progress_notify watcher that got no events since the last tick
        and is synced gets an empty response at the current revision; others get none."""
        handler, fake = self.open()
        self.create(handler, b"idle", progress_notify=True)        # 0
        self.create(handler, b"busy", progress_notify=True)        # 1
        self.create(handler, b"idle")                              # 2: no progress_notify
        self.create(handler, b"old", progress_notify=True, start_revision=1)  # 3: unsynced
        fake.take()
        self.clock.advance(1)
        self.put(b"busy")                     # the history read for 3 stays pending
        self.assertEqual([r.watch_id for r in fake.take()], [1])
        self.clock.advance(3.9)
        self.assertEqual(fake.take(), [])
        self.clock.advance(0.1)
        self.assertEqual(fake.take(), [pb.WatchResponse(header=header(2), watch_id=0)])
        self.clock.advance(5)
        self.assertEqual(fake.take(), [pb.WatchResponse(header=header(2), watch_id=0),
                                       pb.WatchResponse(header=header(2), watch_id=1)])
        self.assertFalse(self.watchable.is_synced(handler.watchers[3]))

    def test_progress_timer_stops_with_the_last_progress_watcher(self) -> None:
        """Canceling every progress_notify watcher (or the stream) leaves no timer behind."""
        handler, fake = self.open()
        self.create(handler, b"a", progress_notify=True)
        self.create(handler, b"b", progress_notify=True)
        self.cancel(handler, 0)
        self.clock.advance(5)
        self.assertEqual([(r.watch_id, r.created, r.canceled) for r in fake.take()],
                         [(0, True, False), (1, True, False), (0, False, True),
                          (1, False, False)])
        self.cancel(handler, 1)
        self.clock.advance(5)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        handler2, _ = self.open()
        self.create(handler2, b"a", progress_notify=True)
        handler2.cancelled()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FragmentTests(WatchTestCase):

    MAX_REQUEST_BYTES = 400

    def fresh_puts(self, prefix: bytes, sizes: list[int]) -> tuple[list[Op], list[Event]]:
        """Puts of new keys and the events they will make at the next revision."""
        rev = self.store.current_revision() + 1
        ops, events = [], []
        for i, size in enumerate(sizes):
            key, value = prefix + b"%03d" % i, bytes([97 + i % 26]) * size
            ops.append(("put", key, value))
            events.append(Event(type=PUT, kv=KeyValue(key=key, value=value, mod_revision=rev,
                                                      create_revision=rev, version=1)))
        return ops, events

    def test_large_response_is_split_as_etcd_sends_fragments(self) -> None:
        """A fragment watcher's response over the limit is split exactly as etcd splits it;
        the fragments reassemble to the full list; a plain watcher gets one response."""
        handler, fake = self.open()
        self.create(handler, b"f", prefix_end(b"f"), fragment=True)     # 0
        self.create(handler, b"f", prefix_end(b"f"))                    # 1
        fake.take()
        rand = random.Random(4)
        ops, events = self.fresh_puts(b"f", [rand.randrange(10, 150) for _ in range(12)])
        rev = self.commit(ops)
        full = pb.WatchResponse(header=header(rev), watch_id=0, events=events)
        want = etcd_fragments(full, self.MAX_REQUEST_BYTES)
        self.assertGreater(len(want), 2)
        got = fake.take()
        frags = [r for r in got if r.watch_id == 0]
        self.assertEqual(frags, want)
        self.assertEqual([r.fragment for r in frags], [True] * (len(frags) - 1) + [False])
        self.assertEqual([ev for r in frags for ev in r.events], events)
        plain = [r for r in got if r.watch_id == 1]
        self.assertEqual([list(r.events) for r in plain], [events])
        self.assertFalse(plain[0].fragment)
        self.put(b"other")
        self.create(handler, b"f", prefix_end(b"f"), fragment=True, start_revision=rev)
        self.settle()
        replay = [r for r in fake.take() if r.watch_id == 2 and not r.created]
        full.header.revision, full.watch_id = rev + 1, 2
        self.assertEqual(replay, etcd_fragments(full, self.MAX_REQUEST_BYTES))

    def test_split_at_limits_around_the_response_size(self) -> None:
        """For limits just below, at and above a response's size the split is etcd's: a
        response smaller than the limit is never split."""
        handler, fake = self.open()
        self.create(handler, b"", b"\x00", fragment=True)
        fake.take()
        wrong = []
        for case, delta in enumerate(range(-3, 4)):
            ops, events = self.fresh_puts(b"g%d/" % case, [60, 60, 60])
            rev = self.store.current_revision() + 1
            full = pb.WatchResponse(header=header(rev), watch_id=0, events=events)
            limit = full.ByteSize() + delta
            self.service.fragment_bytes = limit
            self.commit(ops)
            got, want = fake.take(), etcd_fragments(full, limit)
            if got != want:
                wrong.append((f"limit = size{delta:+d}", [len(r.events) for r in got],
                              [len(r.events) for r in want]))
        self.assertEqual(wrong, [])

    def test_one_event_over_the_limit_is_sent_whole(self) -> None:
        """A response with a single event is never split, whatever its size."""
        _, fake, _ = self.watch(b"big", fragment=True)
        self.put(b"big", b"x" * 1000)
        [resp] = fake.take()
        self.assertEqual((len(resp.events), resp.fragment), (1, False))


class HistoryTests(WatchTestCase):

    def test_past_start_revision_replays_history_with_prev_kv(self) -> None:
        """A start revision in the past replays every event since it (prev_kv included)
        at the sync's revision, then live events follow."""
        self.put(b"a", b"1")                                   # 2
        self.put(b"a", b"2")                                   # 3
        self.commit([("put", b"b", b"1"), ("put", b"a", b"3")])  # 4
        self.delete(b"a")                                      # 5
        self.put(b"a", b"4")                                   # 6
        _, fake, wid = self.watch(b"a", start_revision=3, prev_kv=True)
        [replay] = fake.take()
        self.assertEqual(replay.header.revision, 6)
        self.assertEqual(list(replay.events), self.model.expected(b"a", b"", 3, prev_kv=True))
        self.assertEqual([ev.HasField("prev_kv") for ev in replay.events],
                         [True, True, True, False])
        self.put(b"a", b"5")
        self.assert_caught_up(fake, wid, b"a", b"", 3, prev_kv=True)

    def test_start_revision_in_the_future_waits(self) -> None:
        """A start revision beyond the current one gets events from that revision on."""
        _, fake, wid = self.watch(b"a", start_revision=4)
        for value in (b"1", b"2", b"3", b"4"):
            self.put(b"a", value)
        self.assertEqual([ev.kv.mod_revision for ev in fake.events_of(wid)], [4, 5])

    def test_compacted_start_revision_cancels_with_compact_revision(self) -> None:
        """A start revision below the compact revision answers compact_revision set,
        canceled, header revision 0; the watcher is gone from the store."""
        for i in range(5):
            self.put(b"a", b"%d" % i)                         # 2..6
        self.compact(4)
        handler, fake, wid = self.watch(b"a", start_revision=3)
        self.assertEqual(fake.take(), [pb.WatchResponse(header=header(0), watch_id=wid,
                                                        compact_revision=4, canceled=True)])
        core = self.watchable.core
        self.assertEqual((len(core.synced), len(core.unsynced)), (0, 0))
        self.put(b"a")
        self.assertEqual(fake.take(), [])

    def test_start_at_the_compact_revision_replays(self) -> None:
        """A start revision equal to the compact revision is still served from history."""
        for i in range(5):
            self.put(b"a", b"%d" % i)
        self.compact(4)
        _, fake, wid = self.watch(b"a", start_revision=4)
        self.assertEqual([ev.kv.mod_revision for ev in fake.events_of(wid)], [4, 5, 6])

    def test_restore_catches_every_watcher_up_from_the_new_store(self) -> None:
        """After restore() (a snapshot install) watchers get what they missed, in order."""
        handler, fake, wid = self.watch(b"k", prefix_end(b"k"), prev_kv=True)
        self.put(b"k1")
        self.commit([("put", b"k1", b"2"), ("put", b"k2", b"1")], notify=False)
        self.commit([("delete", b"k", prefix_end(b"k"))], notify=False)
        self.assertEqual(len(fake.take()), 1)
        self.watchable.restore()
        self.settle()
        self.assert_caught_up(fake, wid, b"k", prefix_end(b"k"), 2, prev_kv=True)
        self.assertTrue(self.watchable.is_synced(handler.watchers[wid]))


class BoundedHistoryTests(WatchTestCase):

    AUTO_READS = False
    MAX_HISTORY_RECORDS = 2

    def test_history_read_in_bounded_batches(self) -> None:
        """With at most 2 records per read, a replay of 20 revisions takes many reads and
        the watcher still gets every revision once, in order."""
        for i in range(20):
            self.put(b"k%d" % (i % 3), b"%d" % i)
        handler, fake, wid = self.watch(b"k", prefix_end(b"k"), start_revision=2,
                                        prev_kv=True)
        reads = 0
        while self.reads.flush_one():
            reads += 1
            self.clock.advance(0)
        self.assertGreaterEqual(reads, 10)
        self.assert_caught_up(fake, wid, b"k", prefix_end(b"k"), 2, prev_kv=True)
        self.assertTrue(self.watchable.is_synced(handler.watchers[wid]))

    def test_a_batch_never_splits_a_revision(self) -> None:
        """A txn of five keys is read whole even over the record bound: one response."""
        self.commit([("put", b"k%d" % i, b"v") for i in range(5)])
        self.put(b"k9")
        _, fake, wid = self.watch(b"k", prefix_end(b"k"), start_revision=2)
        self.reads.flush_one()
        self.clock.advance(0)
        [first] = fake.take()
        self.assertEqual([ev.kv.key for ev in first.events], [b"k%d" % i for i in range(5)])
        self.reads.flush()
        self.clock.advance(0)
        self.reads.flush()
        self.assert_caught_up(fake, wid, b"k", prefix_end(b"k"), 2)

    def test_writes_during_history_reads_are_not_lost_or_repeated(self) -> None:
        """Revisions committed while a history read is in flight reach the watcher once,
        after the history, in order."""
        for i in range(6):
            self.put(b"k", b"%d" % i)
        _, fake, wid = self.watch(b"k", start_revision=2)
        for i in range(6, 12):
            self.put(b"k", b"%d" % i)
            self.reads.flush_one()
            self.clock.advance(0)
        while self.reads.flush_one():
            self.clock.advance(0)
        self.assert_caught_up(fake, wid, b"k", b"", 2)
        self.put(b"k", b"last")
        self.assert_caught_up(fake, wid, b"k", b"", 2)

    def test_history_reads_ask_for_prev_kv_only_when_a_watcher_wants_it(self) -> None:
        """A plan's read asks for prev_kv only if a chosen watcher has prev_kv."""
        self.put(b"a")
        self.watch(b"a", start_revision=2)
        self.reads.flush()
        self.watch(b"a", start_revision=2, prev_kv=True)
        self.reads.flush()
        self.assertEqual([args[2] for args in self.reads.calls], [False, True])


class VictimTests(WatchTestCase):

    def test_blocked_stream_victim_catches_up_in_order_and_rejoins(self) -> None:
        """A watcher whose stream is not writable becomes a victim; writes go on and other
        watchers are served; once writable it gets its events in order, then rejoins."""
        handler, slow, sid = self.watch(b"k", prefix_end(b"k"), prev_kv=True)
        _, fast, fid = self.watch(b"k", prefix_end(b"k"))
        slow.writable = False
        self.put(b"k1")
        self.commit([("put", b"k2", b"v"), ("put", b"k1", b"w")])
        self.delete(b"k1")
        core = self.watchable.core
        w = handler.watchers[sid]
        self.assertEqual(slow.take(), [])
        self.assertEqual(len(fast.take()), 3)
        self.assertFalse(self.watchable.is_synced(w))
        slow.drain()
        self.settle()
        got = slow.take()
        self.assertEqual([(r.header.revision, r.events[-1].kv.mod_revision) for r in got],
                         [(2, 2), (4, 4)])        # the victim's own, then the history
        self.assert_caught_up(slow, sid, b"k", prefix_end(b"k"), 2, prev_kv=True)
        self.assertTrue(self.watchable.is_synced(w))
        self.assertEqual([b for b in core.victims if b], [])
        self.put(b"k3")
        self.assert_caught_up(slow, sid, b"k", prefix_end(b"k"), 2, prev_kv=True)
        self.assert_caught_up(fast, fid, b"k", prefix_end(b"k"), 2)

    def test_stream_blocking_after_every_response_gets_every_event_once(self) -> None:
        """A client reading one response at a time still gets every event once, in order."""
        _, slow, sid = self.watch(b"k", prefix_end(b"k"))
        slow.block_after_send = True
        for i in range(8):
            self.commit([("put", b"k%d" % (i % 3), b"%d" % i)])
        for _ in range(50):
            slow.drain()
            self.settle()
        self.assert_caught_up(slow, sid, b"k", prefix_end(b"k"), 2)

    def test_ticks_retry_victims_without_piling_up_callbacks(self) -> None:
        """While a stream stays blocked the periodic victim retries do not pile up
        on_writable callbacks (every buffer has a bound)."""
        self.watchable.start()
        self.addCleanup(self.watchable.stop)
        _, slow, sid = self.watch(b"a")
        slow.writable = False
        self.put(b"a")
        for _ in range(100):
            self.clock.advance(0.1)
        self.assertLessEqual(len(slow.callbacks), 1)
        slow.drain()
        self.settle()
        self.assert_caught_up(slow, sid, b"a", b"", 2)

    def test_slow_deliveries_park_the_rest_as_victims_served_later(self) -> None:
        """When sending to many watchers outruns the delivery budget the rest become
        victims; ticks and history then give every watcher each event once, in order."""
        self.watchable.start()
        self.addCleanup(self.watchable.stop)
        clock = self.clock

        def slow_send(fake: FakeStream) -> Callable[[Any], None]:
            plain = fake.send

            def send(message: Any) -> None:
                clock.rightNow += 0.001          # each send costs 1 ms of reactor time
                plain(message)
            return send
        streams = []
        for _ in range(100):
            _, fake, _ = self.watch(b"hot")
            fake.send = slow_send(fake)          # type: ignore[method-assign]
            streams.append(fake)
        self.put(b"hot", b"1")
        served = sum(1 for fake in streams if fake.events_of(0))
        self.assertLess(served, 100)
        self.assertGreater(sum(len(b) for b in self.watchable.core.victims), 0)
        self.put(b"hot", b"2")
        for _ in range(100):
            clock.advance(0.1)
            self.settle()
        for fake in streams:
            self.assert_caught_up(fake, 0, b"hot", b"", 2)

    def test_tick_retries_a_victim_whose_stream_became_writable(self) -> None:
        """A victim whose stream turns writable without a callback is retried at the tick."""
        self.watchable.start()
        self.addCleanup(self.watchable.stop)
        _, slow, sid = self.watch(b"a")
        slow.writable = False
        self.put(b"a")
        slow.writable = True            # no callback runs
        self.clock.advance(0.1)
        self.settle()
        self.assert_caught_up(slow, sid, b"a", b"", 2)


class CleanupTests(WatchTestCase):

    AUTO_READS = False

    def test_cancelled_stream_removes_all_its_watchers(self) -> None:
        """A cancelled stream takes its synced, syncing and victim watchers out of the
        store; the pending history read then sends nothing."""
        self.put(b"a")
        handler, fake = self.open()
        self.create(handler, b"a")                          # synced
        self.create(handler, b"a", start_revision=2)        # syncing: read pending
        self.create(handler, b"b")                          # becomes a victim
        self.clock.advance(0)
        fake.writable = False
        self.put(b"b")
        core = self.watchable.core
        self.assertEqual(sum(len(b) for b in core.victims), 1)
        sent = len(fake.sent)
        handler.cancelled()
        self.assertEqual((len(core.synced), len(core.unsynced)), (0, 0))
        self.assertEqual(sum(len(b) for b in core.victims), 0)
        self.reads.flush()
        fake.drain()
        self.settle()
        self.put(b"a")
        self.assertEqual(len(fake.sent), sent)
        self.assertEqual((len(core.synced), len(core.unsynced)), (0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RandomScheduleTests(WatchTestCase):
    """Random writes, watchers, cancels, blocked streams and read timings: every live
    watcher's events equal the model's history for its range from its start."""

    AUTO_READS = False
    MAX_HISTORY_RECORDS = 3
    KEYS = [b"a", b"ab", b"b", b"ba", b"c", b"d"]

    def random_range(self, rand: random.Random) -> tuple[bytes, bytes]:
        key = rand.choice(self.KEYS)
        return rand.choice([(key, b""), (key, b"\x00"), (key, prefix_end(key)),
                            tuple(sorted(rand.sample(self.KEYS, 2)))])

    def random_txn(self, rand: random.Random) -> list[Op]:
        keys = rand.sample(self.KEYS, rand.randint(1, 3))
        ops: list[Op] = [("put", k, b"%d" % rand.randrange(100)) for k in keys[1:]]
        if rand.random() < 0.3:
            ops.append(("delete", keys[0], b""))
        else:
            ops.append(("put", keys[0], b"x"))
        return ops

    def run_schedule(self, seed: int) -> None:
        rand = random.Random(seed)
        streams = [self.open() for _ in range(3)]
        watchers: list[tuple[FakeStream, int, bytes, bytes, int, tuple, bool]] = []
        for step in range(120):
            handler, fake = rand.choice(streams)
            roll = rand.random()
            if roll < 0.15:
                key, end = self.random_range(rand)
                start = rand.choice([0, 0, rand.randint(1, self.model.rev + 2)])
                filters = tuple(rand.sample([NOPUT, NODELETE], rand.randint(0, 1)))
                prev = rand.random() < 0.5
                self.create(handler, key, end, start_revision=start, filters=filters,
                            prev_kv=prev)
                created = parse(fake.sent[-1])
                effective = start or self.watchable.current_revision + 1
                watchers.append((fake, created.watch_id, key, end, effective, filters, prev))
            elif roll < 0.2 and handler.watchers:
                self.cancel(handler, rand.choice(sorted(handler.watchers)))
            elif roll < 0.3:
                fake.writable = not fake.writable
                if fake.writable:
                    fake.drain()
            elif roll < 0.45:
                self.reads.flush_one()
            else:
                self.commit(*[self.random_txn(rand) for _ in range(rand.randint(1, 3))])
            self.clock.advance(0)
        for _ in range(200):
            for _, fake in streams:
                fake.drain()
            self.reads.flush()
            self.clock.advance(0)
        for fake, wid, key, end, start, filters, prev in watchers:
            handler = next(h for h, f in streams if f is fake)
            if wid in handler.watchers:
                self.assertEqual(fake.events_of(wid),
                                 self.model.expected(key, end, start, filters, prev),
                                 f"seed={seed} watch={wid} {key!r}..{end!r} from {start}")

    def test_random_schedules_match_the_model(self) -> None:
        """Seeded random schedules: every live watcher saw exactly its range's history."""
        for seed in range(6):
            self.setUp()                # a fresh store, watchable store and service
            self.run_schedule(seed)
