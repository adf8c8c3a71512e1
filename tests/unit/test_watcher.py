"""The watcher core: interval lookup, notify, history sync, compaction and victims.

Behaviour of etcd 3.4 `mvcc/watchable_store.go` and `mvcc/watcher_group.go`, checked
against brute force and a small model store under random schedules.
"""
from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from etcdd.api.concurrency import prefix_end
from etcdd.mvcc.watcher import (NODELETE, NOPUT, EmptyWatcherRangeError, SyncPlan,
                                WatchableCore, Watcher, WatcherGroup)
from etcdd.proto.kv_pb2 import Event, KeyValue

KEYS = [bytes([a]) + bytes([b]) for a in b"abc" for b in b"abc"] + [b"a", b"b", b"", b"\xff"]


def put(key: bytes, rev: int, prev: bool = False) -> Event:
    ev = Event(type=Event.PUT, kv=KeyValue(key=key, mod_revision=rev, value=b"v%d" % rev))
    if prev:
        ev.prev_kv.CopyFrom(KeyValue(key=key, mod_revision=rev - 1))
    return ev


def delete(key: bytes, rev: int) -> Event:
    return Event(type=Event.DELETE, kv=KeyValue(key=key, mod_revision=rev))


def shape(evs: list[Event]) -> list[tuple[int, bytes, int]]:
    return [(ev.type, ev.kv.key, ev.kv.mod_revision) for ev in evs]


def random_range(rand: random.Random) -> tuple[bytes, bytes]:
    kind = rand.randrange(4)
    key = rand.choice(KEYS)
    if kind == 0:
        return key, b""
    if kind == 1:
        return key, b"\x00"
    if kind == 2:
        return key, prefix_end(key)
    lo, hi = sorted(rand.sample(KEYS, 2))
    return lo, hi


class WatcherGroupTests(SynchronousTestCase):

    def test_lookup_matches_brute_force(self) -> None:
        """watchers_for and wants agree with each watcher's own range test under churn."""
        rand = random.Random(7)
        group = WatcherGroup(random.Random(1))
        live: list[Watcher] = []
        probes = KEYS + [b"aa\x00", b"ab\xff", b"bz", b"c", b"d"]
        for step in range(600):
            if live and rand.random() < 0.4:
                w = live.pop(rand.randrange(len(live)))
                self.assertTrue(group.remove(w))
                self.assertFalse(group.remove(w))
            else:
                key, end = random_range(rand)
                w = Watcher(id=step, key=key, range_end=end, start_rev=0)
                group.add(w)
                live.append(w)
            for probe in probes:
                want = {w for w in live if w.covers(probe)}
                self.assertEqual(group.watchers_for(probe), want, (step, probe))
                self.assertEqual(group.wants(probe), bool(want), (step, probe))
        self.assertEqual(len(group), len(live))

    def test_many_watchers_on_one_prefix_share_one_interval(self) -> None:
        """Ten thousand watchers on one prefix are found through one shared set."""
        group = WatcherGroup()
        for i in range(10_000):
            group.add(Watcher(id=i, key=b"/p/", range_end=prefix_end(b"/p/"), start_rev=0))
        group.add(Watcher(id=-1, key=b"/q/", range_end=prefix_end(b"/q/"), start_rev=0))
        sets = group.sets_for(b"/p/x")
        self.assertEqual([len(s) for s in sets], [10_000])
        self.assertEqual(group.sets_for(b"/r"), [])

    def test_adding_twice_is_refused(self) -> None:
        """A watcher cannot be added to the same group twice."""
        group = WatcherGroup()
        w = Watcher(id=1, key=b"a", range_end=b"", start_rev=0)
        group.add(w)
        self.assertRaises(ValueError, group.add, w)

    def test_choose_limits_and_drops_compacted(self) -> None:
        """choose picks at most max_watchers and drops those below the compaction."""
        group = WatcherGroup()
        ws = [Watcher(id=i, key=b"k", range_end=b"", start_rev=i + 1, min_rev=i + 1)
              for i in range(6)]
        for w in ws:
            group.add(w)
        chosen, min_rev, compacted = group.choose(3, cur_rev=10, compact_rev=3)
        self.assertEqual(compacted, ws[:2])
        self.assertTrue(all(w.compacted for w in compacted))
        self.assertEqual(list(chosen), ws[2:5])
        self.assertEqual(min_rev, 3)
        self.assertEqual(list(group), ws[2:])
        chosen, min_rev, compacted = group.choose(10, cur_rev=10, compact_rev=0)
        self.assertIs(chosen, group)
        self.assertEqual((min_rev, compacted), (3, []))


class NotifyTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.core = WatchableCore(current_rev=1)

    def test_ranges_select_watchers(self) -> None:
        """Single-key, range, from-key and prefix watchers each get exactly their keys."""
        single = self.core.watch(b"foo", b"", 0, 1, watch_id=1)
        ranged = self.core.watch(b"fo", b"fz", 0, 1, watch_id=2)
        from_key = self.core.watch(b"g", b"\x00", 0, 1, watch_id=3)
        prefix = self.core.watch(b"foo", prefix_end(b"foo"), 0, 1, watch_id=4)
        evs = [put(b"foo", 2), put(b"foo/bar", 2), put(b"fz", 2), put(b"zzz", 2)]
        got = {w.id: [e.kv.key for e in v] for w, v in self.core.notify(2, evs).items()}
        self.assertEqual(got, {single.id: [b"foo"], ranged.id: [b"foo", b"foo/bar"],
                               from_key.id: [b"zzz"], prefix.id: [b"foo", b"foo/bar"]})
        self.assertEqual(single.min_rev, 3)

    def test_empty_range_is_refused(self) -> None:
        """A finite range whose end is not after its key is refused, as etcd does."""
        self.assertRaises(EmptyWatcherRangeError, self.core.watch, b"b", b"b", 0, 1,
                          watch_id=1)
        self.assertRaises(EmptyWatcherRangeError, self.core.watch, b"b", b"a", 0, 1,
                          watch_id=1)

    def test_filters_drop_event_types(self) -> None:
        """NOPUT drops puts, NODELETE drops deletes, and all-filtered watchers get nothing."""
        noput = self.core.watch(b"k", b"", 0, 1, watch_id=1, filters=[NOPUT])
        nodel = self.core.watch(b"k", b"", 0, 1, watch_id=2, filters=[NODELETE])
        got = self.core.notify(2, [put(b"k", 2)])
        self.assertEqual(list(got), [nodel])
        self.assertEqual(noput.min_rev, 3)
        got = self.core.notify(3, [delete(b"k", 3)])
        self.assertEqual(shape(got[noput]), [(Event.DELETE, b"k", 3)])
        self.assertNotIn(nodel, got)

    def test_prev_kv_only_when_asked(self) -> None:
        """prev_kv is stripped for watchers that did not ask, without touching the event."""
        want = self.core.watch(b"k", b"", 0, 1, watch_id=1, prev_kv=True)
        plain = self.core.watch(b"k", b"", 0, 1, watch_id=2)
        other = self.core.watch(b"k", b"l", 0, 1, watch_id=3)
        ev = put(b"k", 2, prev=True)
        got = self.core.notify(2, [ev])
        self.assertIs(got[want][0], ev)
        self.assertFalse(got[plain][0].HasField("prev_kv"))
        self.assertIs(got[plain][0], got[other][0])
        self.assertEqual(got[plain][0].kv, ev.kv)
        self.assertTrue(ev.HasField("prev_kv"))

    def test_future_start_rev_waits(self) -> None:
        """A watcher starting beyond the current revision is synced but skips earlier ones."""
        w = self.core.watch(b"k", b"", 4, 1, watch_id=1)
        self.assertTrue(self.core.is_synced(w))
        self.assertEqual(self.core.notify(2, [put(b"k", 2)]), {})
        self.assertEqual(self.core.notify(3, [put(b"k", 3)]), {})
        self.assertEqual(shape(self.core.notify(4, [put(b"k", 4)])[w]), [(0, b"k", 4)])

    def test_cancel_stops_events(self) -> None:
        """A canceled watcher gets nothing more, and a second cancel reports it gone."""
        w = self.core.watch(b"k", b"", 0, 1, watch_id=1)
        self.assertTrue(self.core.cancel(w))
        self.assertFalse(self.core.cancel(w))
        self.assertEqual(self.core.notify(2, [put(b"k", 2)]), {})


class HistoryTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.core = WatchableCore(current_rev=5, max_revs_per_batch=2)
        self.history = [put(b"k", 2), put(b"x", 3), delete(b"k", 4), put(b"k", 5)]

    def read(self, lo: int, hi: int) -> list[Event]:
        return [e for e in self.history if lo <= e.kv.mod_revision <= hi]

    def test_past_start_rev_catches_up_then_syncs(self) -> None:
        """A watcher from a past revision is served history in batches, then goes synced."""
        w = self.core.watch(b"k", b"", 2, 5, watch_id=1)
        self.assertFalse(self.core.is_synced(w))
        plan = self.core.sync_batch(5, 0)
        self.assertEqual((plan.min_rev, plan.max_rev, plan.compacted), (2, 5, ()))
        self.assertTrue(plan.wants(b"k"))
        self.assertFalse(plan.wants(b"x"))
        got = self.core.deliver_history(plan, self.read(plan.min_rev, plan.max_rev))
        self.assertEqual(shape(got[w]), [(0, b"k", 2), (1, b"k", 4)])
        self.assertEqual(w.min_rev, 5)
        self.assertFalse(self.core.is_synced(w))
        plan = self.core.sync_batch(5, 0)
        self.assertEqual(plan.min_rev, 5)
        got = self.core.deliver_history(plan, self.read(plan.min_rev, plan.max_rev))
        self.assertEqual(shape(got[w]), [(0, b"k", 5)])
        self.assertTrue(self.core.is_synced(w))
        self.assertEqual(shape(self.core.notify(6, [put(b"k", 6)])[w]), [(0, b"k", 6)])

    def test_write_during_read_keeps_watcher_unsynced(self) -> None:
        """A revision applied while history is read is served by the next round, once."""
        w = self.core.watch(b"k", b"", 5, 5, watch_id=1)
        plan = self.core.sync_batch(5, 0)
        self.assertEqual(self.core.notify(6, [put(b"k", 6)]), {})
        self.history.append(put(b"k", 6))
        got = self.core.deliver_history(plan, self.read(plan.min_rev, 6))
        self.assertEqual(shape(got[w]), [(0, b"k", 5)])
        self.assertFalse(self.core.is_synced(w))
        plan = self.core.sync_batch(6, 0)
        got = self.core.deliver_history(plan, self.read(plan.min_rev, plan.max_rev))
        self.assertEqual(shape(got[w]), [(0, b"k", 6)])
        self.assertTrue(self.core.is_synced(w))

    def test_compacted_start_rev(self) -> None:
        """A watcher whose start revision was compacted is reported once and dropped."""
        old = self.core.watch(b"k", b"", 2, 5, watch_id=1)
        ok = self.core.watch(b"k", b"", 3, 5, watch_id=2)
        plan = self.core.sync_batch(5, 3)
        self.assertEqual(plan.compacted, (old,))
        self.assertTrue(old.compacted)
        self.assertEqual(list(plan.group), [ok])
        self.assertFalse(self.core.cancel(old))
        got = self.core.deliver_history(plan, self.read(plan.min_rev, plan.max_rev))
        self.assertEqual(list(got), [ok])

    def test_cancel_while_syncing_and_abandon(self) -> None:
        """A watcher canceled mid-read gets nothing; an abandoned plan returns to unsynced."""
        gone = self.core.watch(b"k", b"", 2, 5, watch_id=1)
        kept = self.core.watch(b"k", b"", 2, 5, watch_id=2)
        plan = self.core.sync_batch(5, 0)
        self.assertTrue(self.core.cancel(gone))
        self.core.abandon_sync(plan)
        self.assertEqual(list(self.core.unsynced), [kept])
        plan = self.core.sync_batch(5, 0)
        self.assertEqual(list(self.core.deliver_history(plan, self.read(2, 5))), [kept])

    def test_max_watchers_per_round(self) -> None:
        """At most max_watchers unsynced watchers are chosen per round."""
        ws = [self.core.watch(b"k", b"", 5, 5, watch_id=i) for i in range(5)]
        plan = self.core.sync_batch(5, 0, max_watchers=2)
        self.assertEqual(list(plan.group), ws[:2])
        self.assertEqual(list(self.core.unsynced), ws[2:])


class VictimTests(SynchronousTestCase):

    def test_blocked_watcher_becomes_victim_and_returns(self) -> None:
        """A blocked watcher misses nothing: its events wait, then it catches up."""
        core = WatchableCore(current_rev=1)
        w = core.watch(b"k", b"", 0, 1, watch_id=1)
        got = core.notify(2, [put(b"k", 2)])
        core.add_victim(w, got[w])
        self.assertTrue(w.victim)
        self.assertEqual(core.notify(3, [put(b"k", 3)]), {})
        retry = core.retry_victims()
        self.assertEqual(shape(retry[w]), [(0, b"k", 2)])
        core.victim_delivered(w, False)
        self.assertEqual(len(core.victims), 1)
        core.victim_delivered(w, True)    # not in flight any more: ignored
        self.assertTrue(w.victim)
        core.retry_victims()
        core.victim_delivered(w, True)
        self.assertFalse(w.victim)
        self.assertEqual(list(core.unsynced), [w])
        plan = core.sync_batch(3, 0)
        got = core.deliver_history(plan, [put(b"k", 3)])
        self.assertEqual(shape(got[w]), [(0, b"k", 3)])
        self.assertTrue(core.is_synced(w))

    def test_victim_without_newer_revisions_goes_synced(self) -> None:
        """A victim whose pending events reach the current revision rejoins synced."""
        core = WatchableCore(current_rev=1)
        w = core.watch(b"k", b"", 0, 1, watch_id=1)
        core.add_victim(w, core.notify(2, [put(b"k", 2)])[w])
        core.retry_victims()
        core.victim_delivered(w, True)
        self.assertTrue(core.is_synced(w))

    def test_cancel_victim(self) -> None:
        """A victim can be canceled while parked or in flight."""
        core = WatchableCore(current_rev=1)
        a = core.watch(b"k", b"", 0, 1, watch_id=1)
        b = core.watch(b"k", b"", 0, 1, watch_id=2)
        got = core.notify(2, [put(b"k", 2)])
        core.add_victim(a, got[a])
        core.add_victim(b, got[b])
        self.assertRaises(ValueError, core.add_victim, a, got[a])
        self.assertTrue(core.cancel(a))
        self.assertEqual(list(core.retry_victims()), [b])
        self.assertTrue(core.cancel(b))
        core.victim_delivered(b, True)
        self.assertEqual((len(core.synced), len(core.unsynced)), (0, 0))


class Model:
    """A store's event history plus a shell that sends, blocks and drains at random."""

    def __init__(self, rand: random.Random) -> None:
        self.rand = rand
        self.core = WatchableCore(current_rev=1, max_revs_per_batch=3, rand=random.Random(3))
        self.rev = 1
        self.compact_rev = 0
        self.events: list[Event] = []
        self.received: dict[Watcher, list[Event]] = {}
        self.first_rev: dict[Watcher, int] = {}
        self.compacted: list[Watcher] = []
        self.pending: list[tuple[SyncPlan, int]] = []   # history reads outstanding

    def send(self, batch: dict[Watcher, list[Event]], may_block: bool = True) -> None:
        for w, evs in batch.items():
            if not evs or (w.prev_kv is False and any(e.HasField("prev_kv") for e in evs)):
                raise AssertionError(f"bad batch for {w.id}: {evs}")
            if may_block and self.rand.random() < 0.2:
                self.core.add_victim(w, evs)
            else:
                self.received[w].extend(evs)

    def txn(self) -> None:
        self.rev += 1
        keys = self.rand.sample(KEYS, self.rand.randint(1, 3))
        evs = [put(k, self.rev, prev=self.rand.random() < 0.5) if self.rand.random() < 0.7
               else delete(k, self.rev) for k in keys]
        self.events.extend(evs)
        self.send(self.core.notify(self.rev, evs))

    def watch(self, wid: int) -> None:
        key, end = random_range(self.rand)
        start = self.rand.choice([0, self.rand.randint(1, self.rev + 3)])
        filters = self.rand.choice([(), (NOPUT,), (NODELETE,)])
        w = self.core.watch(key, end, start, self.rev, watch_id=wid, filters=filters,
                            prev_kv=self.rand.random() < 0.5)
        self.received[w] = []
        self.first_rev[w] = start if 0 < start <= self.rev else max(start, self.rev + 1)

    def start_sync(self) -> None:
        plan = self.core.sync_batch(self.rev, self.compact_rev, max_watchers=4)
        self.compacted.extend(plan.compacted)
        self.pending.append((plan, self.rev))

    def finish_sync(self) -> None:
        plan, read_rev = self.pending.pop(0)
        history = [e for e in self.events if e.kv.mod_revision >= plan.min_rev
                   and e.kv.mod_revision <= read_rev and plan.wants(e.kv.key)]
        bare = [Event(type=e.type, kv=e.kv) for e in history]   # LMDB has no prev_kv
        self.send(self.core.deliver_history(plan, bare))

    def retry(self, may_block: bool = True) -> None:
        for w, evs in self.core.retry_victims().items():
            ok = not may_block or self.rand.random() < 0.6
            if ok:
                self.received[w].extend(evs)
            self.core.victim_delivered(w, ok)

    def step(self, wid: int) -> None:
        r = self.rand.random()
        if r < 0.35:
            self.txn()
        elif r < 0.5:
            self.watch(wid)
        elif r < 0.65:
            self.start_sync()
        elif r < 0.8 and self.pending:
            self.finish_sync()
        elif r < 0.95:
            self.retry()
        elif self.rand.random() < 0.3:
            self.compact_rev = self.rand.randint(self.compact_rev, self.rev)

    def drain(self) -> None:
        for _ in range(1000):
            while self.pending:
                self.finish_sync()
            self.retry(may_block=False)
            if not len(self.core.unsynced) and not self.core.victims:
                return
            plan = self.core.sync_batch(self.rev, self.compact_rev, max_watchers=4)
            self.compacted.extend(plan.compacted)
            self.send(self.core.deliver_history(plan, [
                Event(type=e.type, kv=e.kv) for e in self.events
                if plan.min_rev <= e.kv.mod_revision and plan.wants(e.kv.key)]),
                may_block=False)
        raise AssertionError("the core never drained")

    def expected(self, w: Watcher) -> list[tuple[int, bytes, int]]:
        return shape([e for e in self.events if e.kv.mod_revision >= self.first_rev[w]
                      and w.covers(e.kv.key) and e.type not in w.dropped_types])


class ModelTests(SynchronousTestCase):

    def test_every_event_exactly_once_in_order(self) -> None:
        """Under random writes, watches, blocking and reads, each watcher gets its history."""
        for seed in range(12):
            model = Model(random.Random(seed))
            for wid in range(300):
                model.step(wid)
            model.drain()
            self.assertEqual(len(model.core.synced), len(model.received) - len(model.compacted),
                             f"seed {seed}")
            for w, got in model.received.items():
                want = model.expected(w)
                if w.compacted:
                    self.assertEqual(shape(got), want[:len(got)], f"seed {seed} watcher {w.id}")
                else:
                    self.assertEqual(shape(got), want, f"seed {seed} watcher {w.id}")
