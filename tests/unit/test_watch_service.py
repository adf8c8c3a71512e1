"""The Watch service (`etcdd/api/watch.py`) over the watchable store
(`etcdd/mvcc/watchable.py`) on a real KVStore, against etcd 3.4 `v3rpc/watch.go`: creates
(IDs, duplicates, empty ranges), events per txn, filters and prev_kv, cancel, progress
requests and notifications, and `sendFragments`. History replay, bounded reads, victims
and random schedules are in test_watch_history.py; the fixtures in watch_fakes.py.
"""
from __future__ import annotations

import random

from zope.interface.verify import verifyObject

from etcdd.api.router import IServerStream, IStreamHandler, Router, StreamMethod
from etcdd.mvcc.watchable import IWatchSink
from etcdd.proto import rpc_pb2 as pb
from etcdd.proto.kv_pb2 import Event, KeyValue
from etcdd.api.concurrency import prefix_end
from tests.unit.watch_fakes import (DELETE, DUPLICATE_ID, EMPTY_RANGE, NODELETE, NOPUT, PUT,
                                    WATCH_PATH, FakeStream, Op, WatchTestCase, etcd_fragments,
                                    header)


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
