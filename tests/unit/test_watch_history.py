"""The watchable store (`etcdd/mvcc/watchable.py`) behind the Watch service, against etcd
3.4 `mvcc/watchable_store.go`: history replay from a past, future or compacted start
revision, restore, history read in bounded batches, victims (blocked streams, slow
deliveries), cleanup of a cancelled stream, and seeded random schedules checked against
the model of the committed history. Fixtures are in watch_fakes.py.
"""
from __future__ import annotations

import random
from typing import Any, Callable

from etcdd.proto import rpc_pb2 as pb
from etcdd.api.concurrency import prefix_end
from tests.unit.watch_fakes import (NODELETE, NOPUT, FakeStream, Op, WatchTestCase, header,
                                    parse)


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
        self.assertEqual(core.victim_count(), 0)
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
        # NB: parked watchers are retried on the next reactor turn; look before it runs.
        settle, self.settle = self.settle, lambda: None
        self.put(b"hot", b"1")
        self.settle = settle
        served = sum(1 for fake in streams if fake.events_of(0))
        self.assertLess(served, 100)
        self.assertGreater(self.watchable.core.victim_count(), 0)
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
        self.assertEqual(core.victim_count(), 1)
        sent = len(fake.sent)
        handler.cancelled()
        self.assertEqual((len(core.synced), len(core.unsynced)), (0, 0))
        self.assertEqual(core.victim_count(), 0)
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


class SinkVictimTests(WatchTestCase):
    """Victims are kept per stream: a full stream costs one failed send per retry."""

    def test_a_full_stream_is_tried_once_per_retry_not_once_per_watcher(self) -> None:
        """500 watchers on one blocked stream: a tick tries one send, not 500; once the
        stream drains every watcher gets each event once, in order."""
        self.watchable.start()
        self.addCleanup(self.watchable.stop)
        handler, fake = self.open()
        for _ in range(500):
            self.create(handler, b"k")
        fake.take()
        self.settle()
        fake.writable = False
        attempts = []
        real_deliver = handler.deliver

        def counting_deliver(watcher: Any, events: list, rev: int) -> bool:
            attempts.append(watcher.id)
            return real_deliver(watcher, events, rev)
        handler.deliver = counting_deliver       # type: ignore[method-assign]
        revs = [self.put(b"k", b"%d" % i) for i in range(3)]
        self.assertEqual(self.watchable.core.victim_count(), 500)
        attempts.clear()
        self.clock.advance(0.1)                  # a tick retries the blocked stream
        self.settle()
        self.assertEqual(len(attempts), 1)
        for _ in range(50):
            fake.drain()
            self.clock.advance(0.1)
            self.settle()
        got: dict[int, list[int]] = {}
        for resp in fake.responses():
            got.setdefault(resp.watch_id, []).extend(e.kv.mod_revision for e in resp.events)
        self.assertEqual(len(got), 500)
        self.assertEqual({tuple(v) for v in got.values()}, {tuple(revs)})
        self.assertEqual(self.watchable.core.victim_count(), 0)
