"""The lessor core (etcd 3.4 `lease/lessor.go`) driven by a `Clock`."""
from __future__ import annotations

import math
import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from etcdd.api.rpctypes import status_for
from etcdd.lease.lessor import (
    FOREVER_REMAINING_SECONDS, Lease, LeaseExistsError, LeaseExpiredError, LeaseNotFoundError,
    LeaseTTLTooLargeError, Lessor, NotPrimaryError, _DueQueue)


def primary(clock: Clock, **kwargs: object) -> Lessor:
    lessor = Lessor(clock, min_ttl_seconds=5, **kwargs)  # type: ignore[arg-type]
    lessor.promote(extend_seconds=0)
    return lessor


class GrantTests(SynchronousTestCase):

    def test_grant_returns_lease(self) -> None:
        """A grant returns the new lease with its TTL and no keys."""
        lessor = primary(Clock())
        lease = lessor.grant(lease_id=7, ttl_seconds=10)
        self.assertEqual(lease, Lease(7, 10, 0, 10.0, set()))
        self.assertIs(lessor.lookup(7), lease)
        self.assertTrue(lessor.exists(7))

    def test_ttl_raised_to_minimum(self) -> None:
        """A TTL below the minimum is raised to it."""
        lessor = primary(Clock())
        self.assertEqual(lessor.grant(1, 2).ttl_seconds, 5)
        self.assertEqual(lessor.grant(2, -3).ttl_seconds, 5)

    def test_ttl_too_large(self) -> None:
        """A TTL above 9e9 seconds is refused with etcd's error and nothing is granted."""
        lessor = primary(Clock())
        self.assertEqual(lessor.grant(1, 9_000_000_000).ttl_seconds, 9_000_000_000)
        with self.assertRaises(LeaseTTLTooLargeError) as caught:
            lessor.grant(2, 9_000_000_001)
        self.assertEqual(status_for(caught.exception)[1], "etcdserver: too large lease TTL")
        self.assertIsNone(lessor.lookup(2))

    def test_grant_existing_id(self) -> None:
        """Granting an id twice is refused and keeps the first lease."""
        lessor = primary(Clock())
        first = lessor.grant(1, 10)
        self.assertRaises(LeaseExistsError, lessor.grant, 1, 20)
        self.assertIs(lessor.lookup(1), first)

    def test_grant_zero_id(self) -> None:
        """Lease id 0 means no lease and cannot be granted."""
        self.assertRaises(ValueError, primary(Clock()).grant, 0, 10)

    def test_leases_sorted_by_id(self) -> None:
        """`leases()` lists every lease in id order."""
        lessor = primary(Clock())
        for lease_id in (30, 10, 20):
            lessor.grant(lease_id, 10)
        self.assertEqual([lease.id for lease in lessor.leases()], [10, 20, 30])


class ExpiryTests(SynchronousTestCase):

    def test_lease_expires_at_ttl(self) -> None:
        """A lease is handed out for revocation when its TTL passes, not a moment before."""
        clock = Clock()
        lessor = Lessor(clock, min_ttl_seconds=5)
        lessor.promote(extend_seconds=0)
        lessor.grant(lease_id=7, ttl_seconds=10)
        clock.advance(9.5)
        self.assertEqual(lessor.take_expired(), [])
        clock.advance(0.5)
        self.assertEqual(lessor.take_expired(), [7])

    def test_expired_in_expiry_order_with_limit(self) -> None:
        """Expired leases come earliest first, at most `limit` per call."""
        clock = Clock()
        lessor = primary(clock)
        for lease_id, ttl in ((1, 30), (2, 10), (3, 20), (4, 100)):
            lessor.grant(lease_id, ttl)
        clock.advance(50)
        self.assertEqual(lessor.take_expired(limit=2), [2, 3])
        self.assertEqual(lessor.take_expired(limit=2), [1])
        self.assertEqual(lessor.take_expired(limit=2), [])

    def test_no_double_hand_out_until_retry(self) -> None:
        """An expired lease is handed out once, then again only after 3 s while unrevoked."""
        clock = Clock()
        lessor = primary(clock)
        lessor.grant(1, 10)
        clock.advance(10)
        self.assertEqual(lessor.take_expired(), [1])
        clock.advance(2.9)
        self.assertEqual(lessor.take_expired(), [])
        clock.advance(0.1)
        self.assertEqual(lessor.take_expired(), [1])
        lessor.revoke(1)
        clock.advance(10)
        self.assertEqual(lessor.take_expired(), [])

    def test_renew_extends(self) -> None:
        """A renew restarts the full TTL from now and returns it."""
        clock = Clock()
        lessor = primary(clock)
        lessor.grant(1, 10)
        clock.advance(8)
        self.assertEqual(lessor.renew(1), 10)
        self.assertEqual(lessor.time_to_live(1), (10, 10))
        clock.advance(9.9)
        self.assertEqual(lessor.take_expired(), [])
        clock.advance(0.1)
        self.assertEqual(lessor.take_expired(), [1])

    def test_renew_unknown_or_expired(self) -> None:
        """Renewing an unknown lease, or one already expired, answers lease-not-found."""
        clock = Clock()
        lessor = primary(clock)
        self.assertRaises(LeaseNotFoundError, lessor.renew, 9)
        lessor.grant(1, 10)
        clock.advance(10)
        with self.assertRaises(LeaseExpiredError) as caught:
            lessor.renew(1)
        self.assertIsInstance(caught.exception, LeaseNotFoundError)
        self.assertEqual(status_for(caught.exception)[1], "etcdserver: requested lease not found")

    def test_non_primary_never_expires_and_cannot_renew(self) -> None:
        """A lessor that was never promoted hands out nothing and refuses renewals."""
        clock = Clock()
        lessor = Lessor(clock, min_ttl_seconds=5)
        lease = lessor.grant(1, 10)
        clock.advance(1000)
        self.assertEqual(lease.expiry, math.inf)
        self.assertEqual(lessor.take_expired(), [])
        self.assertRaises(NotPrimaryError, lessor.renew, 1)
        self.assertFalse(lessor.is_primary)
        self.assertEqual(lessor.time_to_live(1), (10, FOREVER_REMAINING_SECONDS))

    def test_promote_extends(self) -> None:
        """Promotion sets every expiry to now plus the TTL plus `extend_seconds`."""
        clock = Clock()
        lessor = Lessor(clock, min_ttl_seconds=5)
        lessor.grant(1, 10)
        clock.advance(100)
        lessor.promote(extend_seconds=2.5)
        self.assertEqual(lessor.lookup(1).expiry, 112.5)  # type: ignore[union-attr]
        clock.advance(12.4)
        self.assertEqual(lessor.take_expired(), [])
        clock.advance(0.1)
        self.assertEqual(lessor.take_expired(), [1])

    def test_demote_stops_expiry(self) -> None:
        """After demotion expiries are infinite, nothing is handed out and renew is refused."""
        clock = Clock()
        lessor = primary(clock)
        lessor.grant(1, 10)
        lessor.demote()
        clock.advance(100)
        self.assertEqual(lessor.lookup(1).expiry, math.inf)  # type: ignore[union-attr]
        self.assertEqual(lessor.take_expired(), [])
        self.assertRaises(NotPrimaryError, lessor.renew, 1)
        lessor.promote(extend_seconds=0)
        self.assertEqual(lessor.take_expired(), [])
        clock.advance(10)
        self.assertEqual(lessor.take_expired(), [1])

    def test_time_to_live_truncates(self) -> None:
        """Remaining seconds are truncated toward zero, as etcd's int64(Seconds()) does."""
        clock = Clock()
        lessor = primary(clock)
        lessor.grant(1, 10)
        clock.advance(0.5)
        self.assertEqual(lessor.time_to_live(1), (10, 9))
        clock.advance(10.2)
        self.assertEqual(lessor.time_to_live(1), (10, 0))
        clock.advance(1)
        self.assertEqual(lessor.time_to_live(1), (10, -1))
        self.assertRaises(LeaseNotFoundError, lessor.time_to_live, 2)

    def test_promote_spreads_bunched_expiries(self) -> None:
        """With at least the revoke rate of leases, ~3/4 of the rate expire per second."""
        clock = Clock()
        lessor = Lessor(clock, min_ttl_seconds=5, revoke_rate_per_second=4)
        for lease_id in range(1, 6):
            lessor.grant(lease_id, 10)
        lessor.promote(extend_seconds=0)
        expiries = [round(lease.expiry, 2) for lease in lessor.leases()]
        self.assertEqual(expiries, [10.0, 10.0, 10.0, 11.33, 11.67])
        clock.advance(10)
        self.assertEqual(lessor.take_expired(), [1, 2, 3])
        clock.advance(2)
        self.assertEqual(lessor.take_expired(), [4, 5])


class KeyTests(SynchronousTestCase):

    def test_attach_detach_lease_of(self) -> None:
        """Attached keys map to their lease until detached."""
        lessor = primary(Clock())
        lessor.grant(1, 10)
        lessor.attach(1, [b"a", b"b"])
        self.assertEqual(lessor.lease_of(b"a"), 1)
        self.assertEqual(lessor.lookup(1).keys, {b"a", b"b"})  # type: ignore[union-attr]
        lessor.detach(1, [b"a"])
        self.assertEqual(lessor.lease_of(b"a"), 0)
        self.assertEqual(lessor.lookup(1).keys, {b"b"})  # type: ignore[union-attr]

    def test_attach_unknown_lease(self) -> None:
        """Attaching to or detaching from an unknown lease is refused."""
        lessor = primary(Clock())
        self.assertRaises(LeaseNotFoundError, lessor.attach, 1, [b"a"])
        self.assertRaises(LeaseNotFoundError, lessor.detach, 1, [b"a"])
        self.assertEqual(lessor.lease_of(b"a"), 0)

    def test_attach_moves_key(self) -> None:
        """Attaching a key held by another lease moves it there."""
        lessor = primary(Clock())
        lessor.grant(1, 10)
        lessor.grant(2, 10)
        lessor.attach(1, [b"k"])
        lessor.attach(2, [b"k"])
        self.assertEqual(lessor.lease_of(b"k"), 2)
        self.assertEqual(lessor.lookup(1).keys, set())  # type: ignore[union-attr]
        lessor.detach(1, [b"k"])
        self.assertEqual(lessor.lease_of(b"k"), 2)

    def test_revoke_returns_keys(self) -> None:
        """Revoke removes the lease and returns it with its keys for the shell to delete."""
        lessor = primary(Clock())
        lessor.grant(1, 10)
        lessor.attach(1, [b"b", b"a"])
        lease = lessor.revoke(1)
        self.assertEqual((lease.id, lease.keys), (1, {b"a", b"b"}))
        self.assertIsNone(lessor.lookup(1))
        self.assertEqual(lessor.lease_of(b"a"), 0)
        self.assertRaises(LeaseNotFoundError, lessor.revoke, 1)


class CheckpointTests(SynchronousTestCase):

    def test_checkpoints_due(self) -> None:
        """A lease with a TTL above the interval is checkpointed every interval once applied."""
        clock = Clock()
        lessor = primary(clock, checkpoint_interval_seconds=60)
        lessor.grant(1, 600)
        lessor.grant(2, 60)  # not above the interval: never checkpointed
        clock.advance(59.5)
        self.assertEqual(lessor.take_checkpoints(), [])
        clock.advance(0.5)
        self.assertEqual(lessor.take_checkpoints(), [(1, 540)])
        self.assertEqual(lessor.take_checkpoints(), [])
        clock.advance(60)
        self.assertEqual(lessor.take_checkpoints(), [])  # next one is scheduled on apply
        self.assertEqual(lessor.checkpoint(1, 540).remaining_ttl_seconds, 540)  # type: ignore
        clock.advance(59.5)
        self.assertEqual(lessor.take_checkpoints(), [])
        clock.advance(0.5)
        self.assertEqual(lessor.take_checkpoints(), [(1, 420)])

    def test_checkpoint_limit_and_not_primary(self) -> None:
        """Checkpoints come at most `limit` at a time, and never from a non-primary."""
        clock = Clock()
        lessor = primary(clock, checkpoint_interval_seconds=60)
        for lease_id in (1, 2, 3):
            lessor.grant(lease_id, 600)
        clock.advance(61)
        self.assertEqual(lessor.take_checkpoints(limit=2), [(1, 539), (2, 539)])
        lessor.demote()
        self.assertEqual(lessor.take_checkpoints(), [])

    def test_checkpoint_unknown_lease(self) -> None:
        """A checkpoint for an unknown lease is ignored."""
        self.assertIsNone(primary(Clock()).checkpoint(9, 10))

    def test_remaining_ttl_survives_leader_change(self) -> None:
        """A checkpointed remaining TTL is what a new leader's promote counts from."""
        clock = Clock()
        leader = primary(clock, checkpoint_interval_seconds=60)
        follower = Lessor(clock, min_ttl_seconds=5, checkpoint_interval_seconds=60)
        for lessor in (leader, follower):
            lessor.grant(1, 600)
        clock.advance(100)
        for lease_id, remaining in leader.take_checkpoints():
            for lessor in (leader, follower):
                lessor.checkpoint(lease_id, remaining)
        restarted = Lessor(clock, min_ttl_seconds=5)
        restarted.restore([(lease.id, lease.ttl_seconds, lease.remaining_ttl_seconds)
                           for lease in follower.leases()])
        restarted.promote(extend_seconds=1)
        self.assertEqual(restarted.time_to_live(1), (600, 501))  # checkpointed at t=100: 500
        clock.advance(500.5)
        self.assertEqual(restarted.take_expired(), [])
        clock.advance(0.5)
        self.assertEqual(restarted.take_expired(), [1])

    def test_renew_clears_remaining_ttl(self) -> None:
        """A renew resets a checkpointed remaining TTL and queues (id, 0) to propose."""
        clock = Clock()
        lessor = primary(clock, checkpoint_interval_seconds=60)
        lessor.grant(1, 600)
        clock.advance(60)
        self.assertEqual(lessor.take_checkpoints(), [(1, 540)])
        lessor.checkpoint(1, 540)
        self.assertEqual(lessor.renew(1), 600)
        self.assertEqual(lessor.lookup(1).remaining_ttl_seconds, 0)  # type: ignore[union-attr]
        self.assertEqual(lessor.take_checkpoints(), [(1, 0)])
        self.assertEqual(lessor.take_checkpoints(), [])
        lessor.renew(1)
        self.assertEqual(lessor.take_checkpoints(), [])


class RestoreTests(SynchronousTestCase):

    def test_restore(self) -> None:
        """Restore replaces every lease with backend rows, raising TTLs to the minimum."""
        clock = Clock()
        lessor = Lessor(clock, min_ttl_seconds=5)
        lessor.grant(99, 10)
        lessor.restore([(1, 10, 0), (2, 2, 0), (3, 100, 40)])
        self.assertEqual([(lease.id, lease.ttl_seconds, lease.remaining_ttl_seconds, lease.expiry)
                          for lease in lessor.leases()],
                         [(1, 10, 0, math.inf), (2, 5, 0, math.inf), (3, 100, 40, math.inf)])
        lessor.promote(extend_seconds=0)
        self.assertEqual([lease.expiry for lease in lessor.leases()], [10.0, 5.0, 40.0])

    def test_restore_on_primary_refreshes(self) -> None:
        """Restoring on a primary gives the restored leases real expiries at once."""
        clock = Clock()
        lessor = primary(clock)
        lessor.grant(1, 10)
        lessor.attach(1, [b"k"])
        clock.advance(3)
        lessor.restore([(2, 20, 0)])
        self.assertEqual(lessor.lease_of(b"k"), 0)
        self.assertEqual(lessor.lookup(2).expiry, 23.0)  # type: ignore[union-attr]
        clock.advance(20)
        self.assertEqual(lessor.take_expired(), [2])


class DueQueueTests(SynchronousTestCase):

    def test_against_model(self) -> None:
        """Random sets and discards pop in the same order as a dict model, and stay compact."""
        rand = random.Random(4)
        queue, model = _DueQueue(), {}
        for _ in range(5000):
            lease_id = rand.randrange(50)
            if rand.random() < 0.2:
                queue.discard(lease_id)
                model.pop(lease_id, None)
            else:
                at = float(rand.randrange(100))
                queue.set(lease_id, at)
                model[lease_id] = at
            self.assertLessEqual(len(queue._heap), 2 * len(model) + 65)
        popped = []
        while queue.peek() is not None:
            popped.append(queue.pop())
        self.assertEqual(popped, sorted((at, lease_id) for lease_id, at in model.items()))
