"""The member's proposal path (`etcdd/server/member.py`) on a real KVStore, a Clock as
reactor and an executor the test drives: batching per reactor turn, per-request
refusals, raft indexes and terms, bounds, stopping, compaction and durability failures."""
from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from etcdd.mvcc.errors import CompactedError, FutureRevError
from etcdd.mvcc.store import KVStore
from etcdd.proto import rpc_pb2 as pb
from etcdd.server.disk import SynchronousExecutor
from etcdd.server.errors import (KeyNotFoundError, LeaseNotFoundError, RequestTooLargeError,
                                 StoppedError, TooManyRequestsError)
from etcdd.server.member import MAX_PENDING_PROPOSALS, Identity, Member
from tests.unit.stores import new_store_path, open_store

IDENTITY = Identity(cluster_id=0xCDF818194E3A8C32, member_id=0x8E9E05C52164694D, name="m1")


class QueuedExecutor:
    """A disk executor that holds submitted work, in order, until the test runs it."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred]] = []

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def submit(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        d: Deferred = Deferred()
        self.queue.append((fn, args, d))
        return d

    def run_next(self) -> None:
        """Run the oldest queued work and fire its Deferred with the outcome."""
        fn, args, d = self.queue.pop(0)
        try:
            result = fn(*args)
        except BaseException:
            d.errback(Failure())
        else:
            d.callback(result)

    def run_all(self) -> None:
        while self.queue:
            self.run_next()


def put(key: bytes, value: bytes = b"v", **kw: Any) -> pb.PutRequest:
    return pb.PutRequest(key=key, value=value, **kw)


class MemberTestCase(SynchronousTestCase):

    def setUp(self) -> None:
        self.path = new_store_path(self)
        self.clock = Clock()
        self.store = open_store(self, self.path)

    def reopen(self) -> KVStore:
        self.store.backend.close()
        self.store = open_store(self, self.path)
        return self.store

    def member(self, disk: Any = None, **kw: Any) -> Member:
        m = Member(IDENTITY, self.store, disk if disk is not None else SynchronousExecutor(),
                   self.clock, **kw)
        m.start_synchronously()
        return m

    def count_commits(self) -> list[int]:
        """Wrap the store's write_batch; the list gets the consistent index of each commit."""
        commits: list[int] = []
        real_write_batch, store = self.store.write_batch, self.store

        def write_batch() -> Any:
            batch = real_write_batch()
            real_commit = batch.commit

            def commit() -> None:
                real_commit()
                commits.append(store.consistent_index())
            batch.commit = commit
            return batch
        self.store.write_batch = write_batch   # type: ignore[method-assign]
        return commits

    def fail_commits(self, error: Exception) -> None:
        """Make every later batch's commit raise `error` without committing."""
        real_write_batch = self.store.write_batch

        def write_batch() -> Any:
            batch = real_write_batch()

            def commit() -> None:
                raise error
            batch.commit = commit
            return batch
        self.store.write_batch = write_batch   # type: ignore[method-assign]

    def value(self, key: bytes) -> bytes | None:
        kvs = self.store.range(key).kvs
        return kvs[0].value if kvs else None


class StartTests(MemberTestCase):

    def test_fresh_store_starts_at_term_2_index_5(self) -> None:
        """A member on a fresh store serves at term 2, raft index 5, recorded durably."""
        m = self.member()
        self.assertEqual((m.term, m.committed_index, m.applied_index), (2, 5, 5))
        self.assertEqual((self.store.consistent_index(), self.store.term()), (5, 2))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_restart_adds_one_term_and_four_indexes(self) -> None:
        """Each restart begins term + 1 at index + 4, after the indexes proposals took."""
        m = self.member()
        for key in (b"a", b"b", b"c"):
            m.propose("put", put(key))
        self.clock.advance(0)
        self.assertEqual(m.committed_index, 8)
        self.reopen()
        m = self.member()
        self.assertEqual((m.term, m.committed_index, m.applied_index), (3, 12, 12))
        self.reopen()
        m = self.member()
        self.assertEqual((m.term, m.applied_index), (4, 16))
        self.assertEqual((self.store.consistent_index(), self.store.term()), (16, 4))
        self.assertEqual(self.value(b"c"), b"v")


class BatchTests(MemberTestCase):

    def test_one_turn_is_one_batch_applied_in_order(self) -> None:
        """Proposals made in one reactor turn are applied in order in one commit, and
        answered only after it."""
        m = self.member()
        commits = self.count_commits()
        ds = [m.propose("put", put(b"a", b"1")),
              m.propose("put", put(b"a", b"2", prev_kv=True)),
              m.propose("delete_range", pb.DeleteRangeRequest(key=b"a", prev_kv=True)),
              m.propose("txn", pb.TxnRequest(success=[
                  pb.RequestOp(request_put=put(b"b", b"3"))]))]
        for d in ds:
            self.assertNoResult(d)
        self.assertEqual(commits, [])
        self.clock.advance(0)
        self.assertEqual(commits, [9])
        put1, put2, delete, txn = [self.successResultOf(d) for d in ds]
        self.assertEqual([put1.header.revision, put2.header.revision,
                          delete.header.revision, txn.header.revision], [2, 3, 4, 5])
        self.assertEqual(put2.prev_kv.value, b"1")
        self.assertEqual([kv.value for kv in delete.prev_kvs], [b"2"])
        self.assertEqual((self.value(b"a"), self.value(b"b")), (None, b"3"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_each_proposal_takes_one_index(self) -> None:
        """Every proposal takes one raft index, whether it is applied or refused."""
        m = self.member()
        applied = m.propose("put", put(b"a"))
        refused = m.propose("put", put(b"missing", b"", ignore_value=True))
        self.assertEqual((m.committed_index, m.applied_index), (5, 5))
        self.clock.advance(0)
        self.successResultOf(applied)
        self.failureResultOf(refused, KeyNotFoundError)
        self.assertEqual((m.committed_index, m.applied_index), (7, 7))
        self.assertEqual(self.store.consistent_index(), 7)
        self.assertEqual(self.store.term(), 2)

    def test_applied_index_covers_a_proposal_when_it_is_answered(self) -> None:
        """When a proposal's Deferred fires, the applied index already includes it."""
        m = self.member()
        seen: list[int] = []
        m.propose("put", put(b"a")).addCallback(lambda _: seen.append(m.applied_index))
        self.clock.advance(0)
        self.assertEqual(seen, [6])

    def test_refusal_fails_only_its_own_deferred(self) -> None:
        """A refused request fails its own Deferred; the rest of its batch commits."""
        m = self.member()
        commits = self.count_commits()
        first = m.propose("put", put(b"a"))
        refused = m.propose("put", put(b"missing", b"", ignore_value=True))
        leased = m.propose("txn", pb.TxnRequest(success=[
            pb.RequestOp(request_put=put(b"x")),
            pb.RequestOp(request_put=put(b"y", lease=42))]))
        future = m.compact(pb.CompactionRequest(revision=100))
        last = m.propose("put", put(b"b"))
        self.clock.advance(0)
        self.assertEqual(commits, [10])
        self.failureResultOf(refused, KeyNotFoundError)
        self.failureResultOf(leased, LeaseNotFoundError)
        self.failureResultOf(future, FutureRevError)
        self.assertEqual(self.successResultOf(first).header.revision, 2)
        self.assertEqual(self.successResultOf(last).header.revision, 3)
        self.assertEqual((self.value(b"a"), self.value(b"b"), self.value(b"x")),
                         (b"v", b"v", None))

    def test_proposals_during_a_batch_form_the_next_batch(self) -> None:
        """Proposals arriving while a batch is on the disk thread wait, then go together
        as the next batch as soon as it is applied."""
        disk = QueuedExecutor()
        m = self.member(disk)
        commits = self.count_commits()
        a = m.propose("put", put(b"a"))
        self.clock.advance(0)
        self.assertEqual(len(disk.queue), 1)
        b = m.propose("put", put(b"b"))
        c = m.propose("put", put(b"c"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual((m.committed_index, m.applied_index), (6, 5))
        disk.run_next()
        self.successResultOf(a)
        self.assertNoResult(b)
        self.assertNoResult(c)
        self.assertEqual(len(disk.queue), 1)
        self.assertEqual((m.committed_index, m.applied_index), (8, 6))
        disk.run_next()
        self.assertEqual([self.successResultOf(d).header.revision for d in (b, c)], [3, 4])
        self.assertEqual(commits, [6, 8])
        self.assertEqual((m.committed_index, m.applied_index), (8, 8))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reads_see_only_committed_batches(self) -> None:
        """A range served while a batch is in flight does not see that batch."""
        disk = QueuedExecutor()
        m = self.member(disk)
        d = m.propose("put", put(b"a"))
        self.clock.advance(0)
        self.assertEqual(m.range(pb.RangeRequest(key=b"a")).count, 0)
        disk.run_all()
        self.successResultOf(d)
        self.assertEqual(m.range(pb.RangeRequest(key=b"a")).count, 1)


class BoundsTests(MemberTestCase):

    def test_oversize_request_is_refused(self) -> None:
        """etcd's TestV3TooLargeRequest: a 2 MiB put is refused under the default 1.5 MiB
        limit without taking an index; a 1 MiB put is accepted."""
        m = self.member()
        self.failureResultOf(m.propose("put", put(b"foo", bytes(2 * 1024 * 1024))),
                             RequestTooLargeError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        d = m.propose("put", put(b"foo", bytes(1024 * 1024)))
        self.clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(m.committed_index, 6)

    def test_request_limit_is_configurable(self) -> None:
        """max_request_bytes bounds the proposal size, counting the request itself."""
        m = self.member(max_request_bytes=100)
        self.failureResultOf(m.propose("put", put(b"k", bytes(100))), RequestTooLargeError)
        self.failureResultOf(m.propose("txn", pb.TxnRequest(success=[
            pb.RequestOp(request_put=put(b"k", bytes(100)))])), RequestTooLargeError)
        d = m.propose("put", put(b"k", bytes(10)))
        self.clock.advance(0)
        self.successResultOf(d)

    def test_too_many_pending_proposals(self) -> None:
        """Past MAX_PENDING_PROPOSALS waiting proposals a new one is refused at once; the
        waiting ones still apply, and then proposals are accepted again."""
        m = self.member()
        ds = [m.propose("put", put(b"k")) for _ in range(MAX_PENDING_PROPOSALS)]
        self.failureResultOf(m.propose("put", put(b"k")), TooManyRequestsError)
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(ds[-1]).header.revision,
                         MAX_PENDING_PROPOSALS + 1)
        self.assertEqual(m.applied_index, 5 + MAX_PENDING_PROPOSALS)
        d = m.propose("put", put(b"k"))
        self.clock.advance(0)
        self.successResultOf(d)

    def test_stopped_member_refuses_new_proposals(self) -> None:
        """After stop() new proposals and compactions fail with StoppedError; ones queued
        before still apply."""
        m = self.member()
        queued = m.propose("put", put(b"a"))
        m.stop()
        self.assertTrue(m.stopped)
        self.failureResultOf(m.propose("put", put(b"b")), StoppedError)
        self.failureResultOf(m.compact(pb.CompactionRequest(revision=1)), StoppedError)
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(queued).header.revision, 2)
        self.assertEqual(m.applied_index, 6)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class CompactionTests(MemberTestCase):

    def setUp(self) -> None:
        super().setUp()
        self.disk = QueuedExecutor()
        self.m = self.member(self.disk)
        for i in range(6):
            self.m.propose("put", put(b"k%d" % (i % 2), b"%d" % i))
        self.clock.advance(0)
        self.disk.run_all()            # revisions 2..7

    def test_physical_compaction_answers_after_the_records_are_gone(self) -> None:
        """A physical compaction is answered only once compact_step has finished."""
        d = self.m.compact(pb.CompactionRequest(revision=6, physical=True))
        self.clock.advance(0)
        self.disk.run_next()                      # the batch scheduling the compaction
        self.assertNoResult(d)
        self.assertEqual(self.store.compact_revision(), 6)
        self.assertTrue(self.store.pending_compaction())
        self.assertEqual(len(self.disk.queue), 1)
        self.disk.run_next()                      # compact_step
        self.assertEqual(self.successResultOf(d).header.revision, 7)
        self.assertFalse(self.store.pending_compaction())
        self.assertEqual([r.main for r in self.store.history(b"k0")], [6])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_physical_compaction_waits_for_every_step(self) -> None:
        """A compaction done in several compact_steps is answered after the last one."""
        real_step = self.store.compact_step
        self.store.compact_step = lambda: real_step(2)   # type: ignore[method-assign]
        d = self.m.compact(pb.CompactionRequest(revision=6, physical=True))
        self.clock.advance(0)
        self.disk.run_next()
        steps = 0
        while self.disk.queue:
            self.assertNoResult(d)
            self.disk.run_next()
            steps += 1
        self.assertGreater(steps, 2)
        self.successResultOf(d)
        self.assertFalse(self.store.pending_compaction())

    def test_logical_compaction_answers_once_scheduled(self) -> None:
        """A compaction without `physical` is answered when its batch commits, before the
        records are deleted."""
        d = self.m.compact(pb.CompactionRequest(revision=6))
        self.clock.advance(0)
        self.disk.run_next()
        self.assertEqual(self.successResultOf(d).header.revision, 7)
        self.assertTrue(self.store.pending_compaction())
        self.disk.run_all()
        self.assertFalse(self.store.pending_compaction())

    def test_compaction_refusals(self) -> None:
        """Compacting past the current revision or at/below the compact revision fails
        that request only."""
        self.failureResultOf(self.propose_compact(8), FutureRevError)
        self.successResultOf(self.propose_compact(4))
        self.disk.run_all()
        self.failureResultOf(self.propose_compact(4), CompactedError)
        self.failureResultOf(self.propose_compact(3), CompactedError)

    def propose_compact(self, rev: int) -> Deferred:
        d = self.m.compact(pb.CompactionRequest(revision=rev))
        self.clock.advance(0)
        self.disk.run_next()
        return d

    def test_restart_resumes_an_unfinished_compaction(self) -> None:
        """A compaction scheduled but not finished before a restart is finished after it."""
        self.successResultOf(self.propose_compact(6))
        self.disk.queue.clear()                   # the member dies before compact_step
        self.reopen()
        self.assertTrue(self.store.pending_compaction())
        disk = QueuedExecutor()
        self.member(disk)
        self.clock.advance(0)
        disk.run_all()
        self.assertFalse(self.store.pending_compaction())
        self.assertEqual([r.main for r in self.store.history(b"k0")], [6])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class DurabilityFailureTests(MemberTestCase):

    def test_failed_commit_stops_the_member(self) -> None:
        """A failed commit calls on_fatal once, fails the batch and every waiting
        proposal with StoppedError, commits nothing and refuses what comes after."""
        fatal: list[Failure] = []
        disk = QueuedExecutor()
        m = self.member(disk, on_fatal=fatal.append)
        self.fail_commits(OSError("disk is gone"))
        in_batch = [m.propose("put", put(b"a")), m.propose("put", put(b"b"))]
        self.clock.advance(0)
        waiting = m.propose("put", put(b"c"))
        disk.run_next()
        for d in (*in_batch, waiting):
            self.failureResultOf(d, StoppedError)
        self.assertEqual(len(fatal), 1)
        self.assertTrue(fatal[0].check(OSError))
        self.assertTrue(m.stopped)
        self.failureResultOf(m.propose("put", put(b"d")), StoppedError)
        self.assertEqual((self.store.consistent_index(), self.store.current_revision()), (5, 1))
        self.assertEqual(self.value(b"a"), None)
        self.assertEqual(disk.queue, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failed_compaction_step_fails_a_physical_compaction(self) -> None:
        """A compact_step failure stops the member and fails a physical compaction
        waiting for it with StoppedError."""
        fatal: list[Failure] = []
        disk = QueuedExecutor()
        m = self.member(disk, on_fatal=fatal.append)
        m.propose("put", put(b"a"))
        m.propose("put", put(b"a"))
        self.clock.advance(0)
        disk.run_all()

        def broken_step() -> bool:
            raise OSError("disk is gone")
        self.store.compact_step = broken_step   # type: ignore[method-assign]
        d = m.compact(pb.CompactionRequest(revision=2, physical=True))
        self.clock.advance(0)
        disk.run_all()
        self.assertEqual(len(fatal), 1)
        self.assertTrue(m.stopped)
        self.failureResultOf(d, StoppedError)

    def test_failed_commit_fails_a_waiting_physical_compaction(self) -> None:
        """A failed commit while a physical compaction is still deleting records fails
        that compaction's Deferred with StoppedError too."""
        fatal: list[Failure] = []
        disk = QueuedExecutor()
        m = self.member(disk, on_fatal=fatal.append)
        for _ in range(10):
            m.propose("put", put(b"a"))
        self.clock.advance(0)
        disk.run_all()                  # revisions 2..11 of one key
        real_step = self.store.compact_step
        self.store.compact_step = lambda: real_step(2)   # type: ignore[method-assign]
        compaction = m.compact(pb.CompactionRequest(revision=10, physical=True))
        self.clock.advance(0)
        disk.run_next()                 # the compaction's batch
        disk.run_next()                 # compact_step 1 of about 8
        self.fail_commits(OSError("disk is gone"))
        write = m.propose("put", put(b"b"))
        self.clock.advance(0)
        disk.run_next()                 # compact_step 2; step 3 queues behind the batch
        self.assertNoResult(compaction)
        disk.run_next()                 # the failing batch
        self.failureResultOf(write, StoppedError)
        self.failureResultOf(compaction, StoppedError)
        self.assertEqual(len(fatal), 1)
        disk.run_all()                  # the compaction's remaining steps change nothing
        self.assertEqual(self.clock.getDelayedCalls(), [])
