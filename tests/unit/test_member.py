"""The member (`etcdd/server/member.py`) and its raft loop (`server/raftloop.py`) as one
voter, on a real KVStore and raft core with an in-memory WAL, a Clock as reactor and an
executor the test drives: batching per reactor turn, per-request refusals, raft indexes and
terms, linearizable reads, bounds, timeouts, stopping, compaction and durability failures."""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from etcdd.mvcc.errors import CompactedError, FutureRevError
from etcdd.proto import raft_pb2, rpc_pb2 as pb
from etcdd.server.errors import (KeyNotFoundError, LeaseNotFoundError, NotLeaderError,
                                 RequestTooLargeError, StoppedError,
                                 TimeoutWaitAppliedIndexError)
from tests.unit.members import QueuedExecutor, SingleMember
from tests.unit.stores import open_store

def put(key: bytes, value: bytes = b"v", **kw: Any) -> pb.PutRequest:
    return pb.PutRequest(key=key, value=value, **kw)



class MemberTestCase(SynchronousTestCase):

    def setUp(self) -> None:
        self.store = open_store(self)

    def single(self, disk: Any = None, **kw: Any) -> SingleMember:
        self.s = SingleMember(self, self.store, disk=disk, **kw).start()
        self.clock = self.s.clock
        return self.s

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

    def test_fresh_member_leads_at_term_2_index_4(self) -> None:
        """A fresh one-member cluster elects itself at term 2 and commits what etcd 3.4
        commits: its ConfChange, the leader's empty entry, its published attributes and
        the cluster version (raft index 4), recorded as the consistent index."""
        s = self.single()
        m = s.member
        self.assertEqual((m.term, m.committed_index, m.applied_index), (2, 4, 4))
        self.assertEqual((self.store.consistent_index(), self.store.term()), (4, 2))
        self.assertEqual(s.cluster.version, "3.4.0")
        me = s.cluster.members[m.identity.member_id]
        self.assertEqual((me.name, me.client_urls), ("m1", ("http://127.0.0.1:2379",)))
        self.assertEqual(m.leader, m.identity.member_id)
        self.assertEqual([e.Index for e in s.wal.entries], [1, 2, 3, 4])


class BatchTests(MemberTestCase):

    def test_one_turn_is_one_batch_applied_in_order(self) -> None:
        """Proposals made in one reactor turn become consecutive entries, are applied in
        order in one commit, and are answered only after it."""
        s = self.single()
        m = s.member
        commits = self.count_commits()
        ds = [m.propose("put", put(b"a", b"1")),
              m.propose("put", put(b"a", b"2", prev_kv=True)),
              m.propose("delete_range", pb.DeleteRangeRequest(key=b"a", prev_kv=True)),
              m.propose("txn", pb.TxnRequest(success=[
                  pb.RequestOp(request_put=put(b"b", b"3"))]))]
        for d in ds:
            self.assertNoResult(d)
        s.settle()
        self.assertEqual(commits, [8])
        put1, put2, delete, txn = [self.successResultOf(d) for d in ds]
        self.assertEqual([put1.header.revision, put2.header.revision,
                          delete.header.revision, txn.header.revision], [2, 3, 4, 5])
        self.assertEqual(put2.prev_kv.value, b"1")
        self.assertEqual([kv.value for kv in delete.prev_kvs], [b"2"])
        self.assertEqual((self.value(b"a"), self.value(b"b")), (None, b"3"))

    def test_each_proposal_takes_one_index(self) -> None:
        """Every proposal takes one raft index, whether it is applied or refused."""
        s = self.single()
        m = s.member
        applied = m.propose("put", put(b"a"))
        refused = m.propose("put", put(b"missing", b"", ignore_value=True))
        s.settle()
        self.successResultOf(applied)
        self.failureResultOf(refused, KeyNotFoundError)
        self.assertEqual((m.committed_index, m.applied_index), (6, 6))
        self.assertEqual((self.store.consistent_index(), self.store.term()), (6, 2))

    def test_entries_are_durable_before_they_are_applied(self) -> None:
        """An answered write's entry was saved to the WAL with an fsync first."""
        s = self.single()
        syncs = s.wal.syncs
        d = s.member.propose("put", put(b"a"))
        s.settle()
        self.successResultOf(d)
        self.assertGreater(s.wal.syncs, syncs)
        self.assertEqual(s.wal.entries[-1].Index, 5)
        self.assertEqual(s.wal.hard_state.commit, 5)

    def test_applied_index_covers_a_proposal_when_it_is_answered(self) -> None:
        """When a proposal's Deferred fires, the applied index already includes it."""
        s = self.single()
        m = s.member
        seen: list[int] = []
        m.propose("put", put(b"a")).addCallback(lambda _: seen.append(m.applied_index))
        s.settle()
        self.assertEqual(seen, [5])

    def test_refusal_fails_only_its_own_deferred(self) -> None:
        """A refused request fails its own Deferred; the rest of its batch commits."""
        s = self.single()
        m = s.member
        commits = self.count_commits()
        first = m.propose("put", put(b"a"))
        refused = m.propose("put", put(b"missing", b"", ignore_value=True))
        leased = m.propose("txn", pb.TxnRequest(success=[
            pb.RequestOp(request_put=put(b"x")),
            pb.RequestOp(request_put=put(b"y", lease=42))]))
        future = m.compact(pb.CompactionRequest(revision=100))
        last = m.propose("put", put(b"b"))
        s.settle()
        self.assertEqual(commits, [9])
        self.failureResultOf(refused, KeyNotFoundError)
        self.failureResultOf(leased, LeaseNotFoundError)
        self.failureResultOf(future, FutureRevError)
        self.assertEqual(self.successResultOf(first).header.revision, 2)
        self.assertEqual(self.successResultOf(last).header.revision, 3)
        self.assertEqual((self.value(b"a"), self.value(b"b"), self.value(b"x")),
                         (b"v", b"v", None))

    def test_proposals_during_a_batch_form_the_next_batch(self) -> None:
        """Proposals arriving while a Ready is on the disk thread wait, then go together
        as the next batch."""
        disk = QueuedExecutor()
        s = self.single(disk)
        m = s.member
        commits = self.count_commits()
        a = m.propose("put", put(b"a"))
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(len(disk.queue), 1)
        b = m.propose("put", put(b"b"))
        c = m.propose("put", put(b"c"))
        self.clock.advance(0)
        self.assertEqual(len(disk.queue), 1)
        s.settle()
        self.assertEqual([self.successResultOf(d).header.revision for d in (a, b, c)],
                         [2, 3, 4])
        self.assertEqual(commits, [5, 7])

    def test_reads_see_only_applied_entries(self) -> None:
        """A serializable range served while a write is on the disk thread does not see
        it; a linearizable range waits for the write's index."""
        disk = QueuedExecutor()
        s = self.single(disk)
        m = s.member
        d = m.propose("put", put(b"a"))
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(m.range(pb.RangeRequest(key=b"a", serializable=True)).count, 0)
        lin = m.range(pb.RangeRequest(key=b"a"))
        self.assertNoResult(lin)
        s.settle()
        self.successResultOf(d)
        self.assertEqual(self.successResultOf(lin).count, 1)


class ReadIndexTests(MemberTestCase):

    def test_one_read_index_round_serves_every_waiting_read(self) -> None:
        """Linearizable reads that arrive together share one ReadIndex round."""
        s = self.single()
        m = s.member
        calls: list[bytes] = []
        real = s.loop.read_index
        s.loop.read_index = lambda ctx: (calls.append(ctx), real(ctx))  # type: ignore
        reads = [m.range(pb.RangeRequest(key=b"k")) for _ in range(5)]
        s.settle()
        self.assertEqual(len(calls), 1)
        for d in reads:
            self.assertEqual(self.successResultOf(d).count, 0)

    def test_read_txn_is_linearizable_unless_every_range_is_serializable(self) -> None:
        """A read-only txn waits for ReadIndex unless all its ranges are serializable."""
        s = self.single()
        m = s.member
        lin = m.read_txn(pb.TxnRequest(success=[
            pb.RequestOp(request_range=pb.RangeRequest(key=b"k"))]))
        self.assertIsInstance(lin, Deferred)
        s.settle()
        self.assertTrue(self.successResultOf(lin).succeeded)
        local = m.read_txn(pb.TxnRequest(success=[
            pb.RequestOp(request_range=pb.RangeRequest(key=b"k", serializable=True))]))
        self.assertTrue(local.succeeded)


class BoundsTests(MemberTestCase):

    def test_oversize_request_is_refused(self) -> None:
        """etcd's TestV3TooLargeRequest: a 2 MiB put is refused under the default 1.5 MiB
        limit without taking an index; a 1 MiB put is accepted."""
        s = self.single()
        m = s.member
        self.failureResultOf(m.propose("put", put(b"foo", bytes(2 * 1024 * 1024))),
                             RequestTooLargeError)
        d = m.propose("put", put(b"foo", bytes(1024 * 1024)))
        s.settle()
        self.successResultOf(d)
        self.assertEqual(m.committed_index, 5)

    def test_request_limit_is_configurable(self) -> None:
        """max_request_bytes bounds the proposal size, counting the request itself."""
        s = self.single(max_request_bytes=100)
        m = s.member
        self.failureResultOf(m.propose("put", put(b"k", bytes(100))), RequestTooLargeError)
        self.failureResultOf(m.propose("txn", pb.TxnRequest(success=[
            pb.RequestOp(request_put=put(b"k", bytes(100)))])), RequestTooLargeError)
        d = m.propose("put", put(b"k", bytes(10)))
        s.settle()
        self.successResultOf(d)

    def test_stopped_member_fails_waiters_and_refuses_new_proposals(self) -> None:
        """After stop() everyone waiting and every new proposal fails with StoppedError."""
        s = self.single()
        m = s.member
        queued = m.propose("put", put(b"a"))
        m.stop()
        self.assertTrue(m.stopped)
        self.failureResultOf(queued, StoppedError)
        self.failureResultOf(m.propose("put", put(b"b")), StoppedError)
        self.failureResultOf(m.compact(pb.CompactionRequest(revision=1)), StoppedError)
        self.failureResultOf(m.range(pb.RangeRequest(key=b"a")), StoppedError)


class LeadershipTests(MemberTestCase):

    def test_move_leader_to_itself_and_to_strangers(self) -> None:
        """MoveLeader to the leader itself succeeds at once; to an unknown member it is
        refused; a follower refuses it as `not leader`."""
        from etcdd.server.errors import BadLeaderTransfereeError
        s = self.single()
        m = s.member
        self.successResultOf(m.move_leader(m.identity.member_id))
        self.failureResultOf(m.move_leader(12345), BadLeaderTransfereeError)
        s.loop._state = 0   # NB: pretend to be a follower
        self.failureResultOf(m.move_leader(m.identity.member_id), NotLeaderError)


class CompactionTests(MemberTestCase):

    def setUp(self) -> None:
        super().setUp()
        self.disk = QueuedExecutor()
        self.single(self.disk)
        self.m = self.s.member
        ds = [self.m.propose("put", put(b"k%d" % (i % 2), b"%d" % i)) for i in range(6)]
        self.s.settle()            # revisions 2..7
        for d in ds:
            self.successResultOf(d)

    def propose_compact(self, rev: int, physical: bool = False) -> Deferred:
        d = self.m.compact(pb.CompactionRequest(revision=rev, physical=physical))
        for _ in range(20):
            self.clock.advance(0)
            if not self.disk.queue:
                continue
            fn = self.disk.queue[0][0]
            if getattr(fn, "__name__", "") == "compact_step":
                break
            self.disk.run_next()
        return d

    def test_physical_compaction_answers_after_the_records_are_gone(self) -> None:
        """A physical compaction is answered only once compact_step has finished."""
        d = self.propose_compact(6, physical=True)
        self.assertNoResult(d)
        self.assertEqual(self.store.compact_revision(), 6)
        self.assertTrue(self.store.pending_compaction())
        self.s.settle()
        self.assertEqual(self.successResultOf(d).header.revision, 7)
        self.assertFalse(self.store.pending_compaction())
        self.assertEqual([r.main for r in self.store.history(b"k0")], [6])

    def test_logical_compaction_answers_once_scheduled(self) -> None:
        """A compaction without `physical` is answered when its entry is applied, before
        the records are deleted."""
        d = self.propose_compact(6)
        self.assertEqual(self.successResultOf(d).header.revision, 7)
        self.assertTrue(self.store.pending_compaction())
        self.s.settle()
        self.assertFalse(self.store.pending_compaction())

    def test_compaction_refusals(self) -> None:
        """Compacting past the current revision or at/below the compact revision fails
        that request only."""
        self.failureResultOf(self.propose_compact(8), FutureRevError)
        self.successResultOf(self.propose_compact(4))
        self.s.settle()
        self.failureResultOf(self.propose_compact(4), CompactedError)
        self.failureResultOf(self.propose_compact(3), CompactedError)


class DurabilityFailureTests(MemberTestCase):

    def test_failed_wal_save_stops_the_member(self) -> None:
        """A failed WAL write calls on_fatal once, fails every waiting proposal with
        StoppedError, applies nothing and refuses what comes after."""
        fatal: list[Failure] = []
        s = self.single(on_fatal=fatal.append)
        m = s.member
        s.wal.fail_with = OSError("disk is gone")
        waiting = [m.propose("put", put(b"a")), m.propose("put", put(b"b"))]
        s.settle()
        for d in waiting:
            self.failureResultOf(d, StoppedError)
        self.assertEqual(len(fatal), 1)
        self.assertTrue(fatal[0].check(OSError))
        self.assertTrue(m.stopped)
        self.failureResultOf(m.propose("put", put(b"d")), StoppedError)
        self.assertEqual(self.value(b"a"), None)

    def test_failed_commit_stops_the_member(self) -> None:
        """A failed LMDB commit of applied entries stops the member the same way."""
        fatal: list[Failure] = []
        s = self.single(on_fatal=fatal.append)
        m = s.member
        self.fail_commits(OSError("disk is gone"))
        d = m.propose("put", put(b"a"))
        s.settle()
        self.failureResultOf(d, StoppedError)
        self.assertEqual(len(fatal), 1)
        self.assertEqual((self.store.consistent_index(), self.store.current_revision()), (4, 1))

    def test_failed_compaction_step_fails_a_physical_compaction(self) -> None:
        """A compact_step failure stops the member and fails a physical compaction
        waiting for it with StoppedError."""
        fatal: list[Failure] = []
        s = self.single(on_fatal=fatal.append)
        m = s.member
        m.propose("put", put(b"a"))
        m.propose("put", put(b"a"))
        s.settle()

        def broken_step() -> bool:
            raise OSError("disk is gone")
        self.store.compact_step = broken_step   # type: ignore[method-assign]
        d = m.compact(pb.CompactionRequest(revision=2, physical=True))
        s.settle()
        self.assertEqual(len(fatal), 1)
        self.assertTrue(m.stopped)
        self.failureResultOf(d, StoppedError)


class SnapshotTests(MemberTestCase):

    def test_snapshot_after_snapshot_count_applied_entries(self) -> None:
        """Past `snapshot_count` applied entries the member saves a snapshot (.snap file,
        then the WAL record) at its applied index with the current voters."""
        s = self.single(snapshot_count=10)
        ds = [s.member.propose("put", put(b"k%d" % i)) for i in range(5)]
        s.settle()
        self.assertEqual(s.snapshotter.saved, [])
        ds += [s.member.propose("put", put(b"k%d" % i)) for i in range(5, 12)]
        s.settle()
        for d in ds:
            self.successResultOf(d)
        [snap] = s.snapshotter.saved
        self.assertEqual(snap.metadata.index, 16)
        self.assertEqual(list(snap.metadata.conf_state.voters), [s.member.identity.member_id])
        self.assertEqual(s.wal.snapshots, [(16, 2)])
        self.assertEqual(s.loop.snapshot_index, 16)
        self.assertEqual(s.storage.snapshot().metadata.index, 16)


class LoopFailureTests(MemberTestCase):

    def test_failure_after_the_disk_work_is_fatal(self) -> None:
        """An exception on the reactor side of a Ready (here the host's apply callback)
        stops the member with on_fatal instead of wedging the loop."""
        fatal: list[Failure] = []
        s = self.single(on_fatal=fatal.append)

        def broken(batch: Any) -> None:
            raise RuntimeError("host broke")
        s.member.entries_applied = broken    # type: ignore[method-assign]
        d = s.member.propose("put", put(b"a"))
        s.settle()
        self.assertEqual(len(fatal), 1)
        self.assertTrue(fatal[0].check(RuntimeError))
        self.failureResultOf(d, StoppedError)
        self.assertTrue(s.member.stopped)

    def test_broken_raft_invariant_from_a_message_is_fatal(self) -> None:
        """A raft invariant broken while stepping a peer's message stops the member."""
        from etcdd.raft import RaftInvariantError
        fatal: list[Failure] = []
        s = self.single(on_fatal=fatal.append)

        def step(message: Any) -> None:
            raise RaftInvariantError("entry 3 conflicts with committed entry")
        s.node.step = step    # type: ignore[method-assign]
        s.loop.process(raft_pb2.Message(type=raft_pb2.MsgApp, to=1, term=9))
        self.assertEqual(len(fatal), 1)
        self.assertTrue(fatal[0].check(RaftInvariantError))
        self.assertTrue(s.member.stopped)

    def test_msgsnap_without_its_database_is_dropped(self) -> None:
        """A MsgSnap reaching `process` (not `receive_snapshot`) never reaches raft."""
        s = self.single()
        stepped: list[Any] = []
        s.node.step = stepped.append    # type: ignore[method-assign]
        s.loop.process(raft_pb2.Message(type=raft_pb2.MsgSnap, to=1, term=2))
        self.assertEqual(stepped, [])
        self.assertFalse(s.member.stopped)


class NoLeaderTests(MemberTestCase):

    def test_timed_out_proposals_leave_the_queue(self) -> None:
        """Proposals queued while there is no leader fail with etcd's 'context deadline
        exceeded' at the request timeout and no longer count against the pending bound."""
        from etcdd.server.errors import ProposalDeadlineError
        s = self.single(request_timeout_seconds=1.0)
        s.loop._lead = 0     # NB: as if the leader were lost
        ds = [s.member.propose("put", put(b"k%d" % i)) for i in range(3)]
        s.settle()
        self.assertEqual(len(s.member._pending), 3)
        for _ in range(12):
            self.clock.advance(0.1)
        for d in ds:
            self.failureResultOf(d, ProposalDeadlineError)
        self.assertEqual(s.member._pending, {})


class HealthTests(MemberTestCase):

    def test_healthy_only_once_published_and_a_quorum_read_goes_through(self) -> None:
        """/health is true once the member published its attributes and a QGET is applied
        through raft; before publishing it is false, as etcd serves only once published."""
        s = self.single()
        committed = s.member.committed_index
        d = s.member.check_health()
        s.settle()
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(s.member.committed_index, committed + 1)
        s.member._published = False    # NB: as before the publish entry applied
        self.assertFalse(self.successResultOf(s.member.check_health()))


class WaitAppliedTests(MemberTestCase):
    """`wait_applied` (etcd 3.4 `waitAppliedIndex`), used before lease renewals."""

    def test_fires_once_what_was_committed_is_applied(self) -> None:
        """With a committed entry not yet applied the wait holds until it is."""
        disk = QueuedExecutor()
        s = self.single(disk)
        m = s.member
        self.successResultOf(m.wait_applied())          # nothing pending: at once
        d = m.propose("put", put(b"a"))
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertGreater(m.committed_index, m.applied_index)
        waited = m.wait_applied()
        self.assertNoResult(waited)
        s.settle()
        self.successResultOf(d)
        self.successResultOf(waited)

    def test_times_out_and_ignores_the_late_apply(self) -> None:
        """After the timeout the wait fails with etcd's error; the apply that comes
        later neither fires it again nor fails."""
        disk = QueuedExecutor()
        s = self.single(disk)
        m = s.member
        m.propose("put", put(b"a"))
        self.clock.advance(0)
        self.clock.advance(0)
        waited = m.wait_applied(timeout_seconds=1.0)
        self.clock.advance(1.0)
        self.failureResultOf(waited, TimeoutWaitAppliedIndexError)
        s.settle()
        self.assertEqual(m.applied_index, m.committed_index)
