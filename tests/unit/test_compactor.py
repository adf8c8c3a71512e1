"""Auto compaction (issue 5 groundwork): the pure schedule (`server/compactor.py`) against
etcd 3.4's v3compactor, and the shell (`server/autocompact.py`) on a Clock."""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from etcdd.mvcc.errors import CompactedError
from etcdd.server.autocompact import AutoCompactor
from etcdd.server.compactor import (PeriodicCompactor, RevisionCompactor,
                                    parse_retention)


class ParseRetentionTests(SynchronousTestCase):

    def test_numbers_are_hours_or_revisions_and_durations_are_seconds(self) -> None:
        """etcd parseCompactionRetention: "1" is an hour (periodic) or one revision."""
        self.assertEqual(parse_retention("periodic", "1"), 3600.0)
        self.assertEqual(parse_retention("revision", "1000"), 1000.0)
        self.assertEqual(parse_retention("periodic", "90m"), 5400.0)
        self.assertEqual(parse_retention("periodic", "0"), 0.0)


class PeriodicTests(SynchronousTestCase):

    def test_first_compaction_after_one_period_at_the_revision_then(self) -> None:
        """Retention 10 s: samples every 1 s; at 10 s compact what was current at 0 s,
        then every 10 s the oldest of the last 11 samples (etcd's window: 11 s before)."""
        c = PeriodicCompactor(10.0, start_seconds=0.0, start_rev=100)
        self.assertEqual(c.interval_seconds, 1.0)
        got = {}
        for t in range(1, 31):
            target = c.tick(float(t), 100 + t, paused=False)
            if target is not None:
                got[t] = target
                c.succeeded(float(t))
        self.assertEqual(got, {10: 100, 20: 109, 30: 119})

    def test_long_retention_compacts_hourly_and_samples_every_six_minutes(self) -> None:
        """Retention 24 h: samples every 6 min, compacts every hour once a day passed."""
        c = PeriodicCompactor(24 * 3600.0, start_seconds=0.0, start_rev=1)
        self.assertEqual(c.interval_seconds, 360.0)
        self.assertEqual(c.compact_interval, 3600.0)

    def test_paused_member_samples_but_does_not_compact(self) -> None:
        """A follower keeps sampling; once leader it compacts at the sample a period old."""
        c = PeriodicCompactor(10.0, start_seconds=0.0, start_rev=0)
        for t in range(1, 15):
            self.assertIsNone(c.tick(float(t), t * 10, paused=True))
        self.assertEqual(c.tick(15.0, 150, paused=False), 40)

    def test_a_failure_is_retried_at_the_next_sample(self) -> None:
        """Without succeeded() the next tick tries again, the window moving on once it
        holds more than a period of samples."""
        c = PeriodicCompactor(10.0, start_seconds=0.0, start_rev=0)
        for t in range(1, 10):
            c.tick(float(t), t, paused=False)
        self.assertEqual(c.tick(10.0, 10, paused=False), 0)
        self.assertEqual(c.tick(11.0, 11, paused=False), 0)
        self.assertEqual(c.tick(12.0, 12, paused=False), 1)


class RevisionTests(SynchronousTestCase):

    def test_keeps_the_last_retention_revisions_and_skips_repeats(self) -> None:
        """Every 5 minutes compact current - retention, unless not positive or the same."""
        c = RevisionCompactor(100)
        self.assertEqual(c.interval_seconds, 300.0)
        self.assertIsNone(c.tick(0.0, 100, paused=False))
        self.assertEqual(c.tick(0.0, 150, paused=False), 50)
        c.succeeded(0.0)
        self.assertIsNone(c.tick(0.0, 150, paused=False))
        self.assertIsNone(c.tick(0.0, 400, paused=True))
        self.assertEqual(c.tick(0.0, 400, paused=False), 300)


class FakeMember:
    def __init__(self) -> None:
        self.is_leader = True
        self.compactions: list[tuple[int, Deferred]] = []

    def compact(self, req: Any) -> Deferred:
        d: Deferred = Deferred()
        self.compactions.append((req.revision, d))
        return d


class FakeStore:
    def __init__(self) -> None:
        self.rev = 1

    def current_revision(self) -> int:
        return self.rev


class AutoCompactorTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.clock, self.member, self.store = Clock(), FakeMember(), FakeStore()

    def compactor(self, mode: str, retention: str) -> AutoCompactor:
        c = AutoCompactor(self.member, self.store, self.clock, mode, retention)
        c.start()
        self.addCleanup(c.stop)
        return c

    def run_for(self, seconds: float, step: float, writes_per_step: int = 10) -> None:
        for _ in range(int(seconds / step)):
            self.store.rev += writes_per_step
            self.clock.advance(step)

    def test_zero_retention_disables(self) -> None:
        """--auto-compaction-retention 0 (the default) schedules nothing."""
        c = self.compactor("periodic", "0")
        self.assertFalse(c.enabled)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_leader_proposes_one_compaction_at_a_time(self) -> None:
        """Periodic 2 s: after 2 s the leader proposes one compaction and proposes no
        other until it answers; `required revision has been compacted` counts as done."""
        self.compactor("periodic", "2s")
        self.run_for(2.3, 0.2)
        self.assertEqual([rev for rev, _ in self.member.compactions], [1])
        self.run_for(1.0, 0.2)
        self.assertEqual(len(self.member.compactions), 1)
        self.member.compactions[0][1].errback(Failure(CompactedError()))
        self.run_for(2.0, 0.2)
        self.assertEqual(len(self.member.compactions), 2)

    def test_a_follower_proposes_nothing(self) -> None:
        """Not leading pauses the compactor (etcd updateLeadership)."""
        self.member.is_leader = False
        self.compactor("revision", "10")
        self.run_for(900.0, 300.0)
        self.assertEqual(self.member.compactions, [])

    def test_stop_leaves_no_timer(self) -> None:
        """After stop nothing is scheduled."""
        c = self.compactor("revision", "10")
        c.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
