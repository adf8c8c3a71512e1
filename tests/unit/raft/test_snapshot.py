"""Snapshots: sending them when the log is compacted, restoring them (Raft §7)."""
from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from etcdd.proto import raft_pb2
from etcdd.raft import (MemoryStorage, ProgressState, SnapshotTemporarilyUnavailableError,
                        StateType)
from tests.unit.raft.network import Network, Solo, describe, entries, msg, new_storage


def snapshot(index: int, term: int, voters: tuple[int, ...] = (1, 2, 3),
             data: bytes = b"") -> raft_pb2.Snapshot:
    snap = raft_pb2.Snapshot(data=data)
    snap.metadata.index, snap.metadata.term = index, term
    snap.metadata.conf_state.voters.extend(voters)
    return snap


def compacted_leader(**cfg: object) -> Solo:
    """Leader 1 of (1, 2) whose log starts after a snapshot at 10/1; 2 has matched nothing."""
    storage = MemoryStorage()
    storage.apply_snapshot(snapshot(10, 1, (1, 2)))
    storage.set_hard_state(raft_pb2.HardState(term=1, commit=10))
    solo = Solo(peers=(1, 2), storage=storage, **cfg)
    solo.elect()
    return solo


class SnapshotSendTests(SynchronousTestCase):

    def test_leader_sends_snapshot_when_next_is_compacted(self) -> None:
        """A follower that needs compacted entries gets the snapshot; its progress waits.

        Reference: §7 "the leader must occasionally send snapshots to followers that lag
        behind ... when the leader has already discarded the next log entry".
        """
        solo = compacted_leader()
        out = solo.step(msg(raft_pb2.MsgAppResp, 2, 1, term=2, index=10, reject=True,
                            rejectHint=0))
        pr = solo.raft.prs.progress[2]
        self.assertEqual((pr.state, pr.pending_snapshot), (ProgressState.SNAPSHOT, 10))
        (m,) = out
        self.assertEqual((m.type, m.snapshot.metadata.index), (raft_pb2.MsgSnap, 10))
        solo.node.propose(b"x")
        self.assertEqual(solo.msgs(), [])              # paused while the snapshot travels
        out = solo.step(msg(raft_pb2.MsgAppResp, 2, 1, term=2, index=10))
        self.assertEqual(pr.state, ProgressState.REPLICATE)
        self.assertEqual([describe(m) for m in out],
                         ["1->2 MsgApp Term:2 Log:1/10 Commit:10 Entries:[2/11 2/12]"])

    def test_snapshot_status_resumes_probing(self) -> None:
        """report_snapshot moves the follower to probe: past the snapshot on success, back
        from its match on failure; either way it waits for one more answer first."""
        for failed, next_index in ((False, 11), (True, 1)):
            solo = compacted_leader()
            solo.step(msg(raft_pb2.MsgAppResp, 2, 1, term=2, index=10, reject=True,
                          rejectHint=0))
            solo.node.report_snapshot(2, failed=failed)
            pr = solo.raft.prs.progress[2]
            self.assertEqual((pr.state, pr.next, pr.probe_sent, pr.pending_snapshot),
                             (ProgressState.PROBE, next_index, True, 0))

    def test_no_snapshot_to_inactive_follower(self) -> None:
        """A follower not heard from since the last check-quorum gets no snapshot."""
        solo = compacted_leader()
        solo.raft.prs.progress[2].recent_active = False
        solo.raft.maybe_send_append(2, True)
        self.assertEqual(solo.msgs(), [])

    def test_snapshot_temporarily_unavailable(self) -> None:
        """A storage that is still building its snapshot makes the leader wait and retry."""
        solo = compacted_leader()
        storage = solo.storage

        def busy() -> raft_pb2.Snapshot:
            raise SnapshotTemporarilyUnavailableError()
        storage.snapshot = busy                           # type: ignore[method-assign]
        solo.step(msg(raft_pb2.MsgAppResp, 2, 1, term=2, index=10, reject=True, rejectHint=0))
        self.assertEqual(solo.raft.prs.progress[2].state, ProgressState.PROBE)

    def test_compacted_follower_catches_up_through_network(self) -> None:
        """A follower that was away while the leader compacted converges via a snapshot."""
        net = Network((1, 2, 3))
        net.campaign(1)
        net.isolate(3)
        for k in range(5):
            net.propose(1, b"%d" % k)
        self.assertTrue(net.compact(1))
        net.recover()
        net.tick_all(2)
        self.assertEqual(net.values(3), [b"%d" % k for k in range(5)])
        self.assertEqual(net.storages[3].first_index(), 7)
        self.assertTrue(net.propose(1, b"5"))
        self.assertEqual(net.values(3)[-1], b"5")


class RestoreTests(SynchronousTestCase):

    def test_follower_restores_snapshot(self) -> None:
        """A newer snapshot replaces the follower's log and configuration; the Ready carries it.

        Reference: §7 "the follower discards its entire log; it is all superseded by the
        snapshot".
        """
        solo = Solo(id=2)
        solo.storage.append(entries(1, 1))
        solo.restart()
        snap = snapshot(11, 3, (1, 2, 3, 4))
        solo.node.step(msg(raft_pb2.MsgSnap, 1, 2, term=3, snapshot=snap))
        rd = solo.ready()
        self.assertEqual(rd.snapshot.metadata.index, 11)
        self.assertEqual(rd.hard_state.commit, 11)
        self.assertEqual([describe(m) for m in rd.messages], ["2->1 MsgAppResp Term:3 Log:0/11"])
        self.assertEqual((solo.storage.first_index(), solo.storage.last_index()), (12, 11))
        self.assertEqual(sorted(solo.raft.prs.voters), [1, 2, 3, 4])
        self.assertEqual(solo.node.status().applied, 11)

    def test_stale_snapshot_ignored(self) -> None:
        """A snapshot at or before the commit index is ignored; the answer is our commit."""
        solo = Solo(id=2)
        solo.step(msg(raft_pb2.MsgApp, 1, 2, term=1, index=0, logTerm=0, commit=3,
                      entries=entries(1, 1, 1)))
        out = solo.step(msg(raft_pb2.MsgSnap, 1, 2, term=1, snapshot=snapshot(2, 1)))
        self.assertEqual([describe(m) for m in out], ["2->1 MsgAppResp Term:1 Log:0/3"])
        self.assertEqual(solo.storage.first_index(), 1)

    def test_matching_snapshot_fast_forwards_commit(self) -> None:
        """A snapshot whose last entry our log already has only moves the commit index."""
        solo = Solo(id=2)
        solo.step(msg(raft_pb2.MsgApp, 1, 2, term=1, index=0, logTerm=0, commit=1,
                      entries=entries(1, 1, 1)))
        solo.node.step(msg(raft_pb2.MsgSnap, 1, 2, term=1, snapshot=snapshot(3, 1)))
        rd = solo.ready()
        self.assertIsNone(rd.snapshot)
        self.assertEqual((solo.node.committed, [e.Index for e in rd.committed_entries]),
                         (3, [2, 3]))
        self.assertEqual([describe(m) for m in rd.messages], ["2->1 MsgAppResp Term:1 Log:0/3"])

    def test_snapshot_without_us_ignored(self) -> None:
        """A snapshot whose configuration does not contain us is ignored."""
        solo = Solo(id=2)
        solo.node.step(msg(raft_pb2.MsgSnap, 1, 2, term=1, snapshot=snapshot(5, 1, (1, 3))))
        self.assertIsNone(solo.ready().snapshot)

    def test_restart_from_snapshot(self) -> None:
        """A node restarted on a compacted storage starts after the snapshot, with its config."""
        storage = MemoryStorage()
        storage.apply_snapshot(snapshot(7, 2, (1, 2, 3)))
        storage.append(entries(2, 3, start=8))
        storage.set_hard_state(raft_pb2.HardState(term=3, vote=1, commit=8))
        solo = Solo(storage=storage)
        st = solo.node.status()
        self.assertEqual((st.term, st.vote, st.commit, st.applied), (3, 1, 8, 7))
        self.assertEqual([e.Index for e in solo.ready().committed_entries], [8])
        self.assertEqual(solo.node.state, StateType.FOLLOWER)
        self.assertEqual(sorted(solo.raft.prs.voters), [1, 2, 3])

    def test_storage_seed_conf_state(self) -> None:
        """new_storage seeds the membership as etcd tests' withPeers do."""
        self.assertEqual(list(new_storage((1, 2)).initial_state()[1].voters), [1, 2])
