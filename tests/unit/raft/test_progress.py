"""Progress, Inflights and quorum math against etcd 3.4 `raft/tracker` and `raft/quorum`."""
from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from etcdd.proto import raft_pb2
from etcdd.raft import ProgressState, RaftInvariantError
from etcdd.raft.progress import Inflights, Progress, ProgressTracker, VoteResult


def tracker(voters: tuple[int, ...], learners: tuple[int, ...] = ()) -> ProgressTracker:
    t = ProgressTracker(max_inflight=4)
    t.restore(raft_pb2.ConfState(voters=voters, learners=learners), last_index=1)
    return t


class InflightsTests(SynchronousTestCase):

    def test_add_free_full(self) -> None:
        """The window fills to its size, frees acknowledged indexes, refuses overflow."""
        inf = Inflights(3)
        for i in (5, 7, 9):
            inf.add(i)
        self.assertTrue(inf.full())
        self.assertRaises(RaftInvariantError, inf.add, 11)
        inf.free_le(6)
        self.assertEqual((inf.count(), inf.full()), (2, False))
        inf.free_first_one()
        inf.free_le(100)
        self.assertEqual(inf.count(), 0)


class ProgressTests(SynchronousTestCase):

    def test_maybe_update(self) -> None:
        """Match only grows; next is at least match + 1; a probe ack unpauses."""
        pr = Progress(5, 4, match=3)
        pr.probe_sent = True
        self.assertFalse(pr.maybe_update(2))
        self.assertTrue(pr.probe_sent)
        self.assertTrue(pr.maybe_update(7))
        self.assertEqual((pr.match, pr.next, pr.probe_sent), (7, 8, False))

    def test_maybe_decr_to_probe(self) -> None:
        """In probe, only a rejection of next - 1 counts; next = min(rejected, hint + 1)."""
        pr = Progress(10, 4, match=0)
        self.assertFalse(pr.maybe_decr_to(5, 3))        # stale
        self.assertTrue(pr.maybe_decr_to(9, 3))
        self.assertEqual(pr.next, 4)
        self.assertTrue(pr.maybe_decr_to(3, 7))
        self.assertEqual(pr.next, 3)
        pr = Progress(1, 4)
        self.assertTrue(pr.maybe_decr_to(0, 0))
        self.assertEqual(pr.next, 1)                    # never below 1

    def test_maybe_decr_to_replicate(self) -> None:
        """In replicate, a rejection above match rewinds next to match + 1."""
        pr = Progress(10, 4, match=5)
        pr.become_replicate()
        pr.next = 12
        self.assertFalse(pr.maybe_decr_to(5, 5))
        self.assertTrue(pr.maybe_decr_to(9, 0))
        self.assertEqual(pr.next, 6)

    def test_pause_rules(self) -> None:
        """Probe pauses after one send; replicate when the window is full; snapshot always."""
        pr = Progress(2, 1, match=1)
        self.assertFalse(pr.is_paused())
        pr.probe_sent = True
        self.assertTrue(pr.is_paused())
        pr.become_replicate()
        self.assertFalse(pr.is_paused())
        pr.inflights.add(3)
        self.assertTrue(pr.is_paused())
        pr.become_snapshot(10)
        self.assertTrue(pr.is_paused())
        pr.become_probe()
        self.assertEqual((pr.state, pr.next), (ProgressState.PROBE, 11))


class QuorumTests(SynchronousTestCase):

    def test_committed_index(self) -> None:
        """The commit index is the largest match a majority of voters reached; learners don't
        count. Worked examples: 5,7,9 -> 7; 5,7,9,12 -> 7; 1 voter -> its match."""
        for matches, want in (((5, 7, 9), 7), ((5, 7, 9, 12), 7), ((4,), 4),
                              ((1, 2, 3, 4, 5), 3)):
            t = tracker(tuple(range(1, len(matches) + 1)), learners=(99,))
            for i, m in enumerate(matches, 1):
                t.progress[i].match = m
            t.progress[99].match = 1000
            self.assertEqual(t.committed(), want, matches)

    def test_vote_result(self) -> None:
        """Won with a majority of yes, lost once a majority is impossible, else pending."""
        t = tracker((1, 2, 3, 4, 5), learners=(6,))
        cases = [({}, VoteResult.PENDING), ({1: True, 2: True}, VoteResult.PENDING),
                 ({1: True, 2: True, 3: True}, VoteResult.WON),
                 ({1: False, 2: False, 3: False}, VoteResult.LOST),
                 ({1: True, 2: True, 6: True, 7: True}, VoteResult.PENDING)]
        for votes, want in cases:
            self.assertEqual(t.vote_result(votes), want, votes)

    def test_record_vote_keeps_first(self) -> None:
        """A node's first answer in an election counts; learners are not tallied."""
        t = tracker((1, 2, 3), learners=(4,))
        t.record_vote(2, True)
        t.record_vote(2, False)
        t.record_vote(4, True)
        self.assertEqual(t.tally_votes(), (1, 0, VoteResult.PENDING))


class ConfChangeTests(SynchronousTestCase):

    def test_changes(self) -> None:
        """Add, add-learner, promote, demote and remove keep voters and learners disjoint."""
        t = tracker((1,))
        t.apply_change(raft_pb2.ConfChangeAddNode, 2, last_index=7)
        self.assertEqual((t.progress[2].next, t.progress[2].recent_active), (7, True))
        t.apply_change(raft_pb2.ConfChangeAddLearnerNode, 3, last_index=7)
        self.assertEqual((sorted(t.voters), sorted(t.learners)), ([1, 2], [3]))
        t.progress[3].match = 6
        t.apply_change(raft_pb2.ConfChangeAddNode, 3, last_index=9)      # promote
        self.assertEqual((sorted(t.voters), t.progress[3].match, t.progress[3].is_learner),
                         ([1, 2, 3], 6, False))
        t.apply_change(raft_pb2.ConfChangeAddLearnerNode, 2, last_index=9)    # demote
        self.assertEqual((sorted(t.voters), sorted(t.learners)), ([1, 3], [2]))
        t.apply_change(raft_pb2.ConfChangeRemoveNode, 2, last_index=9)
        self.assertEqual((sorted(t.progress), t.config_string()), ([1, 3], "voters=(1 3)"))
        self.assertEqual(t.conf_state(), raft_pb2.ConfState(voters=[1, 3]))

    def test_joint_conf_state_refused(self) -> None:
        """A joint ConfState (etcd 3.4 ConfChangeV2) is not supported and says so."""
        t = ProgressTracker(4)
        with self.assertRaises(RaftInvariantError):
            t.restore(raft_pb2.ConfState(voters=[1], voters_outgoing=[2]), 0)
