"""Log replication and commitment (Raft §5.3, §5.4.2) and the leader's flow control."""
from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from etcdd.proto import raft_pb2
from etcdd.raft import ProgressState, ProposalDroppedError, StateType
from tests.unit.raft.network import Network, Solo, describe, entries, msg, new_storage

MsgApp, MsgAppResp = raft_pb2.MsgApp, raft_pb2.MsgAppResp


def app_resp(frm: int, index: int, term: int = 1, **kw: object) -> raft_pb2.Message:
    return msg(MsgAppResp, frm, 1, term=term, index=index, **kw)


class ReplicationTests(SynchronousTestCase):

    def test_leader_appends_empty_entry_on_election(self) -> None:
        """A new leader appends an empty entry of its term and replicates it at once.

        Reference: §8 "each leader commit a blank no-op entry into the log at the start of
        its term".
        """
        solo = Solo()
        solo.node.campaign()
        solo.msgs()
        solo.node.step(msg(raft_pb2.MsgPreVoteResp, 2, 1, term=1))
        solo.msgs()
        solo.node.step(msg(raft_pb2.MsgVoteResp, 2, 1, term=1))
        rd = solo.ready()
        self.assertEqual([(e.Index, e.Term, e.Data) for e in rd.entries], [(1, 1, b"")])
        self.assertEqual([describe(m) for m in rd.messages],
                         ["1->2 MsgApp Term:1 Log:0/0 Entries:[1/1]",
                          "1->3 MsgApp Term:1 Log:0/0 Entries:[1/1]"])

    def test_proposal_replicated_and_committed(self) -> None:
        """A proposal reaches every log and is applied everywhere once a majority stored it.

        Reference: §5.3 "A log entry is committed once the leader that created the entry has
        replicated it on a majority of the servers."
        """
        net = Network((1, 2, 3, 4, 5))
        net.campaign(1)
        net.isolate(4)
        net.isolate(5)
        self.assertTrue(net.propose(1, b"x"))
        self.assertEqual([net.values(i) for i in (1, 2, 3, 4, 5)],
                         [[b"x"], [b"x"], [b"x"], [], []])
        net.isolate(3)
        self.assertTrue(net.propose(1, b"y"))
        self.assertEqual(net.nodes[1].committed, 2)      # 1 and 2 alone: not a majority
        net.recover()
        net.tick_all(1)
        self.assertEqual([net.values(i) for i in (1, 2, 3, 4, 5)], [[b"x", b"y"]] * 5)

    def test_follower_forwards_proposal(self) -> None:
        """A follower forwards a proposal to the leader; without a leader it is dropped."""
        net = Network((1, 2, 3))
        with self.assertRaises(ProposalDroppedError):
            net.nodes[2].propose(b"early")
        net.campaign(1)
        self.assertTrue(net.propose(3, b"via-3"))
        self.assertEqual(net.values(1), [b"via-3"])
        net2 = Network((1, 2, 3), disable_proposal_forwarding=True)
        net2.campaign(1)
        self.assertFalse(net2.propose(3, b"no"))

    def test_log_matching_after_leader_changes(self) -> None:
        """After several leader changes with proposals on each side, all logs are identical.

        Reference: §5.3 "If two entries in different logs have the same index and term, then
        the logs are identical in all preceding entries."
        """
        net = Network((1, 2, 3, 4, 5), check_quorum=False)
        for round, lead in enumerate((1, 2, 3, 4, 5, 1)):
            net.campaign(lead)
            self.assertEqual(net.leader(), lead)
            net.propose(lead, b"r%d" % round)
            net.isolate(lead)
            net.propose(lead, b"lost%d" % round)      # only in the old leader's log
            net.recover()
        net.tick_all(2)
        logs = [net.log_of(i) for i in net.nodes]
        self.assertEqual(logs, [logs[0]] * 5)
        # Every isolated leader's entry was replaced, but the last: nobody deposed it.
        self.assertEqual(net.values(1), [b"r%d" % r for r in range(6)] + [b"lost5"])

    def test_follower_truncates_conflicting_suffix(self) -> None:
        """A follower's uncommitted entries that conflict with the leader are replaced.

        Reference: §5.3 "If an existing entry conflicts with a new one (same index but
        different terms), delete the existing entry and all that follow it".
        """
        net = Network((1, 2, 3), check_quorum=False)
        net.campaign(1)
        net.isolate(1)
        for data in (b"a", b"b", b"c"):
            net.propose(1, data)
        self.assertEqual(net.storages[1].last_index(), 4)
        net.recover()
        net.isolate(1)
        net.campaign(2)
        net.propose(2, b"z")
        net.recover()
        net.tick_all(2)
        self.assertEqual(net.log_of(1), [(1, 1, b""), (2, 2, b""), (3, 2, b"z")])
        self.assertEqual(net.values(1), [b"z"])

    def test_follower_commit_bounded_by_last_new_entry(self) -> None:
        """A follower commits min(leaderCommit, index of last new entry), never its stale tail.

        Reference: Figure 2, AppendEntries 5: "set commitIndex = min(leaderCommit, index of
        last new entry)".
        """
        storage = new_storage((1, 2, 3))
        storage.append(entries(1, 1, 1))
        solo = Solo(id=2, storage=storage)
        out = solo.step(msg(MsgApp, 1, 2, term=2, index=1, logTerm=1, commit=3))
        self.assertEqual([describe(m) for m in out], ["2->1 MsgAppResp Term:2 Log:0/1"])
        self.assertEqual(solo.node.committed, 1)

    def test_follower_rejects_mismatch_with_hint(self) -> None:
        """A MsgApp whose previous entry does not match is rejected with our last index.

        Reference: §5.3 "If the follower does not find an entry in its log with the same
        index and term, then it refuses the new entries."
        """
        storage = new_storage((1, 2))
        storage.append(entries(1, 1))
        solo = Solo(id=2, peers=(1, 2), storage=storage)
        out = solo.step(msg(MsgApp, 1, 2, term=3, index=5, logTerm=3, commit=0),
                        msg(MsgApp, 1, 2, term=3, index=2, logTerm=2, commit=0))
        self.assertEqual([describe(m) for m in out],
                         ["2->1 MsgAppResp Term:3 Log:0/5 Rejected (Hint: 2)",
                          "2->1 MsgAppResp Term:3 Log:0/2 Rejected (Hint: 2)"])

    def test_reject_hint_backoff(self) -> None:
        """The leader probes next at min(rejected index, hint + 1) (etcd 3.4 fast backoff)."""
        solo = Solo(peers=(1, 2))
        solo.storage.append(entries(1, 1, 1, 1, 1))
        solo.storage.set_hard_state(raft_pb2.HardState(term=1, commit=5))
        solo.restart()
        solo.elect()                                  # term 2, empty entry at 6
        pr = solo.raft.prs.progress[2]
        self.assertEqual((pr.state, pr.next), (ProgressState.PROBE, 6))
        out = solo.step(app_resp(2, 5, term=2, reject=True, rejectHint=2))
        self.assertEqual([describe(m) for m in out],
                         ["1->2 MsgApp Term:2 Log:1/2 Commit:5 Entries:[1/3 1/4 1/5 2/6]"])
        out = solo.step(app_resp(2, 5, term=2, reject=True, rejectHint=2))    # stale
        self.assertEqual(out, [])
        out = solo.step(app_resp(2, 6, term=2))
        self.assertEqual((pr.state, pr.match, pr.next), (ProgressState.REPLICATE, 6, 7))
        self.assertEqual([describe(m) for m in out], ["1->2 MsgApp Term:2 Log:2/6 Commit:6"])

    def test_heartbeat_commit_is_min_of_match_and_commit(self) -> None:
        """Heartbeats never tell a follower to commit past what it holds."""
        solo = Solo()
        solo.elect()
        solo.step(app_resp(2, 1))
        solo.node.propose(b"x")
        solo.step(app_resp(2, 2))
        self.assertEqual(solo.node.committed, 2)
        solo.node.tick()
        out = solo.msgs()
        self.assertEqual([(m.to, m.commit) for m in out if m.type == raft_pb2.MsgHeartbeat],
                         [(2, 2), (3, 0)])


class CommitRuleTests(SynchronousTestCase):

    def test_leader_commits_only_current_term_by_counting(self) -> None:
        """Entries of earlier terms are not committed by counting replicas.

        Reference: §5.4.2 "Raft never commits log entries from previous terms by counting
        replicas. Only log entries from the leader's current term are committed".
        """
        storage = new_storage((1, 2, 3))
        storage.append(entries(1, 1))
        storage.set_hard_state(raft_pb2.HardState(term=2))
        solo = Solo(storage=storage)
        solo.elect()                                  # term 3, empty entry at 3
        solo.step(app_resp(2, 2, term=3))
        self.assertEqual(solo.node.committed, 0)      # 1/1 1/2 on a majority: not enough
        solo.step(app_resp(2, 3, term=3))
        self.assertEqual(solo.node.committed, 3)

    def test_figure_8(self) -> None:
        """An old-term entry stored on a majority stays uncommitted until a current-term one is.

        Reference: §5.4.2, Figure 8 (c)-(e): S1, leader of term 4, gets 2/2 onto S2 and S3 but
        must not commit it, because S5 (last entry 3/2) could still be elected by S2, S3 and
        S4 and overwrite it; once 4/3 is on a majority, both commit.
        """
        s1 = Solo(peers=(1, 2, 3, 4, 5), storage=new_storage((1, 2, 3, 4, 5)))
        s1.storage.append(entries(1, 2))
        s1.storage.set_hard_state(raft_pb2.HardState(term=3, commit=1))
        s1.restart()
        s1.elect()
        self.assertEqual((s1.node.term, s1.raft.raft_log.last_index()), (4, 3))
        s1.step(app_resp(2, 2, term=4), app_resp(3, 2, term=4))    # (c) 2/2 on S1, S2, S3
        self.assertEqual(s1.node.committed, 1)
        # (d) S2 holds 1/1 2/2 and would still vote for S5 (last entry 3/2) and take its log.
        s2 = Solo(id=2, peers=(1, 2, 3, 4, 5), storage=new_storage((1, 2, 3, 4, 5)))
        s2.storage.append(entries(1, 2))
        s2.storage.set_hard_state(raft_pb2.HardState(term=4, commit=1))
        s2.restart(check_quorum=False)
        out = s2.step(msg(raft_pb2.MsgVote, 5, 2, term=5, index=2, logTerm=3))
        self.assertEqual([m.reject for m in out], [False])
        s2.step(msg(MsgApp, 5, 2, term=5, index=1, logTerm=1, commit=1,
                    entries=entries(3, start=2)))
        self.assertEqual(s2.storage.term(2), 3)
        # (e) S1 gets its own 4/3 onto a majority: 2/2 and 4/3 commit together.
        s1.step(app_resp(2, 3, term=4))
        self.assertEqual(s1.node.committed, 1)        # 4/3 on S1, S2 only
        s1.step(app_resp(3, 3, term=4))
        self.assertEqual(s1.node.committed, 3)


class FlowControlTests(SynchronousTestCase):

    def leader(self, **cfg: object) -> Solo:
        solo = Solo(peers=(1, 2), **cfg)
        solo.elect()
        solo.step(app_resp(2, 1))           # 2 is caught up: replicate
        return solo

    def test_inflight_window(self) -> None:
        """At most max_inflight_msgs MsgApps are unacknowledged; acks open the window."""
        solo = self.leader(max_inflight_msgs=3)
        sent = []
        for k in range(5):                  # one Ready each: one MsgApp each
            solo.node.propose(b"%d" % k)
            sent.extend(solo.msgs())
        self.assertEqual(len(sent), 3)
        pr = solo.raft.prs.progress[2]
        self.assertTrue(pr.is_paused())
        out = solo.step(app_resp(2, 3))     # frees the first two
        self.assertEqual([describe(m) for m in out],
                         ["1->2 MsgApp Term:1 Log:1/4 Commit:3 Entries:[1/5 1/6]"])
        self.assertEqual(pr.inflights.count(), 2)

    def test_heartbeat_resp_frees_one_slot_when_full(self) -> None:
        """A heartbeat answer from a follower with a full window lets one more MsgApp out."""
        solo = self.leader(max_inflight_msgs=1)
        solo.node.propose(b"a")
        self.assertEqual(len(solo.msgs()), 1)
        solo.node.propose(b"b")
        self.assertEqual(solo.msgs(), [])
        out = solo.step(msg(raft_pb2.MsgHeartbeatResp, 2, 1, term=1))
        self.assertEqual([describe(m) for m in out],
                         ["1->2 MsgApp Term:1 Log:1/2 Commit:1 Entries:[1/3]"])

    def test_proposals_of_one_ready_share_a_message(self) -> None:
        """Proposals made before one Ready leave as one MsgApp per follower (batching)."""
        solo = self.leader()
        for k in range(4):
            solo.node.propose(b"%d" % k)
        self.assertEqual([describe(m) for m in solo.msgs()],
                         ["1->2 MsgApp Term:1 Log:1/1 Commit:1 Entries:[1/2 1/3 1/4 1/5]"])

    def test_probe_sends_one_until_answer(self) -> None:
        """In probe state one MsgApp goes out; a heartbeat answer resumes the paused probe."""
        solo = Solo(peers=(1, 2))
        solo.elect()
        solo.node.propose(b"a")
        solo.node.propose(b"b")
        self.assertEqual(solo.msgs(), [])    # probe already sent at election
        out = solo.step(msg(raft_pb2.MsgHeartbeatResp, 2, 1, term=1))
        self.assertEqual([describe(m) for m in out],
                         ["1->2 MsgApp Term:1 Log:0/0 Entries:[1/1 1/2 1/3]"])

    def test_max_size_per_msg_cuts_entries(self) -> None:
        """A MsgApp carries entries up to max_size_per_msg bytes (at least one)."""
        solo = self.leader(max_size_per_msg=250)      # about two 100-byte entries
        solo.raft.prs.progress[2].become_probe()
        for k in range(6):
            solo.node.propose(bytes(100))
        out = solo.msgs()
        self.assertEqual([len(m.entries) for m in out], [2])    # the probe, then paused
        out = solo.step(app_resp(2, 3))
        self.assertEqual([len(m.entries) for m in out], [2, 2])

    def test_unreachable_turns_replicate_into_probe(self) -> None:
        """A report that a follower is unreachable stops optimistic streaming to it."""
        solo = self.leader()
        solo.node.report_unreachable(2)
        pr = solo.raft.prs.progress[2]
        self.assertEqual((pr.state, pr.next), (ProgressState.PROBE, 2))

    def test_uncommitted_size_limit_drops_proposals(self) -> None:
        """Past max_uncommitted_entries_size the leader drops proposals until entries commit."""
        solo = self.leader(max_uncommitted_entries_size=1000)
        solo.node.propose(bytes(600))
        with self.assertRaises(ProposalDroppedError):
            solo.node.propose(bytes(600))
        solo.step(app_resp(2, 2))
        solo.node.propose(bytes(600))
        self.assertEqual(solo.node.state, StateType.LEADER)
