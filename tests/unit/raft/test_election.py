"""Leader election (Raft §5.2, §5.4.1; thesis §9.6 pre-vote, §6.2 check-quorum)."""
from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from etcdd.proto import raft_pb2
from etcdd.raft import RaftConfig, RawNode, StateType
from tests.unit.raft.network import SILENT, Network, msg, new_storage


def lone(id: int = 1, peers: tuple[int, ...] = (1, 2, 3), **cfg: object) -> RawNode:
    """A node of a `peers` cluster that nobody talks to."""
    return RawNode(RaftConfig(id=id, storage=new_storage(peers), logger=SILENT, **cfg))


def sent(node: RawNode) -> list[raft_pb2.Message]:
    """The messages of the node's next Ready (persisting is left to the caller)."""
    rd = node.ready()
    node.advance(rd)
    return rd.messages


class ElectionTests(SynchronousTestCase):

    def test_leader_elected_3_and_5_nodes(self) -> None:
        """A candidate that gets votes from a majority becomes leader and all others follow it.

        Reference: §5.2 "A candidate wins an election if it receives votes from a majority of
        the servers in the full cluster for the same term."
        """
        for ids in ((1, 2, 3), (1, 2, 3, 4, 5)):
            for pre_vote in (True, False):
                net = Network(ids, pre_vote=pre_vote)
                net.campaign(1)
                self.assertEqual(net.leader(), 1)
                self.assertEqual({n.term for n in net.nodes.values()}, {1})
                self.assertEqual({n.lead for n in net.nodes.values()}, {1})

    def test_election_by_timeout(self) -> None:
        """Followers that hear from no leader for an election timeout elect one by themselves.

        Reference: §5.2 "If a follower receives no communication over a period of time called
        the election timeout, then it assumes there is no viable leader and begins an election."
        """
        net = Network((1, 2, 3, 4, 5), seed=3)
        net.tick_all(20)
        lead = net.leader()
        self.assertNotEqual(lead, 0)
        self.assertEqual({n.lead for n in net.nodes.values()}, {lead})

    def test_randomized_timeouts_are_in_range(self) -> None:
        """Each node's election timeout is drawn from [election_ticks, 2 * election_ticks).

        Reference: §5.2 "election timeouts are chosen randomly from a fixed interval".
        """
        seen = set()
        for seed in range(50):
            node = lone(rand=random.Random(seed), pre_vote=False)
            ticks = 0
            while node.state == StateType.FOLLOWER:
                node.tick()
                ticks += 1
            seen.add(ticks)
        self.assertEqual(min(seen), 10)
        self.assertEqual(max(seen), 19)

    def test_minority_candidate_loses(self) -> None:
        """A candidate that a majority rejects goes back to follower.

        Reference: §5.2 "candidate ... continues in this state until ... another server
        establishes itself as leader, or a period of time goes by with no winner".
        """
        net = Network((1, 2, 3), pre_vote=False, check_quorum=False)
        net.campaign(1)
        net.isolate(1)
        net.nodes[2].campaign()
        net.stabilize()
        net.recover()
        net.tick_all(1)
        self.assertEqual(net.leader(), 2)
        node = lone(pre_vote=False)
        node.campaign()
        self.assertEqual(node.state, StateType.CANDIDATE)
        for frm in (2, 3):
            node.step(msg(raft_pb2.MsgVoteResp, frm, 1, term=1, reject=True))
        self.assertEqual(node.state, StateType.FOLLOWER)

    def test_split_vote_resolves(self) -> None:
        """When two candidates split the vote, randomized timeouts elect a leader later.

        Reference: §5.2 "Raft uses randomized election timeouts to ensure that split votes
        are rare and that they are resolved quickly."
        """
        net = Network((1, 2, 3, 4), seed=7, pre_vote=False)
        net.nodes[1].campaign()
        net.nodes[3].campaign()
        net.partition((1, 2), (3, 4))
        net.stabilize()
        self.assertEqual(net.leader(), 0)
        self.assertEqual([n.state for n in net.nodes.values()],
                         [StateType.CANDIDATE, StateType.FOLLOWER] * 2)
        net.recover()
        net.tick_all(40)
        self.assertNotEqual(net.leader(), 0)

    def test_one_vote_per_term(self) -> None:
        """A node grants one vote per term: another candidate of that term is refused.

        Reference: §5.2 "Each server will vote for at most one candidate in a given term,
        on a first-come-first-served basis."
        """
        node = lone(peers=(1, 2, 3), pre_vote=False)
        node.step(msg(raft_pb2.MsgVote, 2, 1, term=1))
        node.step(msg(raft_pb2.MsgVote, 3, 1, term=1))
        node.step(msg(raft_pb2.MsgVote, 2, 1, term=1))       # a repeat is granted again
        self.assertEqual([(m.to, m.reject) for m in sent(node)],
                         [(2, False), (3, True), (2, False)])

    def test_no_double_vote_after_restart(self) -> None:
        """A vote is in the hard state: after a restart the node still refuses others.

        Reference: Figure 2 "Persistent state on all servers: currentTerm, votedFor".
        """
        storage = new_storage((1, 2, 3))
        node = RawNode(RaftConfig(id=1, storage=storage, logger=SILENT, pre_vote=False))
        node.step(msg(raft_pb2.MsgVote, 2, 1, term=5))
        rd = node.ready()
        self.assertTrue(rd.must_sync)
        storage.set_hard_state(rd.hard_state)
        restarted = RawNode(RaftConfig(id=1, storage=storage, logger=SILENT, pre_vote=False))
        self.assertEqual((restarted.term, restarted.status().vote), (5, 2))
        restarted.step(msg(raft_pb2.MsgVote, 3, 1, term=5))
        restarted.step(msg(raft_pb2.MsgVote, 2, 1, term=5))
        self.assertEqual([(m.to, m.reject) for m in sent(restarted)], [(3, True), (2, False)])

    def test_election_restriction(self) -> None:
        """A candidate whose log lacks committed entries cannot win.

        Reference: §5.4.1 "the voter denies its vote if its own log is more up-to-date than
        that of the candidate."
        """
        net = Network((1, 2, 3), pre_vote=False, check_quorum=False)
        net.campaign(1)
        net.isolate(3)
        net.propose(1, b"a")
        net.propose(1, b"b")
        net.crash(1)
        net.recover()
        net.campaign(3)          # 3 missed a and b: 2 refuses
        self.assertEqual(net.nodes[3].state, StateType.CANDIDATE)
        self.assertEqual(net.nodes[2].state, StateType.FOLLOWER)
        net.campaign(2)
        self.assertEqual(net.leader(), 2)
        self.assertEqual(net.values(3), [b"a", b"b"])

    def test_up_to_date_comparison(self) -> None:
        """Later last term wins; with equal last terms the longer log wins.

        Reference: §5.4.1 "If the logs have last entries with different terms, then the log
        with the later term is more up-to-date. If the logs end with the same term, then
        whichever log is longer is more up-to-date."
        """
        storage = new_storage((1, 2))
        storage.append([raft_pb2.Entry(Index=1, Term=1), raft_pb2.Entry(Index=2, Term=2),
                        raft_pb2.Entry(Index=3, Term=2)])
        storage.set_hard_state(raft_pb2.HardState(term=2))
        # Our log ends at index 3, term 2. Cases: (candidate's last term, last index).
        cases = [((1, 1), True), ((1, 3), True), ((1, 5), True), ((2, 2), True),
                 ((2, 3), False), ((2, 4), False), ((3, 1), False), ((3, 3), False),
                 ((3, 4), False)]
        for (last_term, last_index), reject in cases:
            node = RawNode(RaftConfig(id=1, storage=storage, logger=SILENT, pre_vote=False))
            node.step(msg(raft_pb2.MsgVote, 2, 1, term=3, index=last_index,
                          logTerm=last_term))
            self.assertEqual([m.reject for m in sent(node)], [reject],
                             (last_term, last_index))

    def test_higher_term_turns_leader_into_follower(self) -> None:
        """A leader that sees a later term steps down.

        Reference: §5.1 "If a candidate or leader discovers that its term is out of date, it
        immediately reverts to follower state."
        """
        net = Network((1, 2, 3))
        net.campaign(1)
        net.nodes[1].step(msg(raft_pb2.MsgApp, 2, 1, term=7))
        self.assertEqual((net.nodes[1].state, net.nodes[1].term, net.nodes[1].lead),
                         (StateType.FOLLOWER, 7, 2))

    def test_stale_term_message_ignored(self) -> None:
        """A message from an earlier term is rejected without effect.

        Reference: §5.1 "If a server receives a request with a stale term number, it rejects
        the request."
        """
        node = lone(check_quorum=False, pre_vote=False)
        node.step(msg(raft_pb2.MsgApp, 2, 1, term=3))
        sent(node)
        node.step(msg(raft_pb2.MsgVote, 3, 1, term=2, index=9, logTerm=9))
        self.assertEqual((sent(node), node.term, node.lead), ([], 3, 2))

    def test_learner_never_campaigns(self) -> None:
        """A learner does not start elections, whatever its ticks."""
        node = RawNode(RaftConfig(id=2, storage=new_storage((1,), (2,)), logger=SILENT))
        self.assertTrue(node.is_learner)
        for _ in range(100):
            node.tick()
        node.campaign()
        self.assertEqual((node.state, node.term, sent(node)), (StateType.FOLLOWER, 0, []))

    def test_single_node_elects_itself(self) -> None:
        """A one-voter cluster elects itself at once, through pre-vote too."""
        node = lone(peers=(1,))
        node.campaign()
        self.assertEqual((node.state, node.term), (StateType.LEADER, 1))


class PreVoteTests(SynchronousTestCase):

    def test_partitioned_node_keeps_its_term(self) -> None:
        """With pre-vote an isolated node never raises its term, so rejoining disrupts nothing.

        Reference: thesis §9.6 "a candidate would first ask other servers whether its log was
        up-to-date enough to get their vote. Only if the candidate believed it could get votes
        from a majority of the cluster would it increment its term and start a normal election."
        """
        net = Network((1, 2, 3), seed=1)
        net.campaign(1)
        net.isolate(3)
        net.tick_all(100)
        self.assertEqual(net.nodes[3].term, 1)
        self.assertEqual(net.nodes[3].state, StateType.PRE_CANDIDATE)
        net.recover()
        net.tick_all(3)
        self.assertEqual(net.leader(), 1)
        self.assertEqual({n.term for n in net.nodes.values()}, {1})

    def test_without_pre_vote_the_term_inflates(self) -> None:
        """Without pre-vote the isolated node's term grows and deposes the leader on return.

        Reference: thesis §9.6 "when the server rejoins the cluster, it will ... force the
        leader to step down" (the problem pre-vote solves).
        """
        net = Network((1, 2, 3), seed=1, pre_vote=False)
        net.campaign(1)
        net.isolate(3)
        net.tick_all(100)
        self.assertGreater(net.nodes[3].term, 3)
        net.recover()
        net.tick_all(30)
        self.assertGreater(net.nodes[1].term, 3)

    def test_pre_vote_granted_without_term_change(self) -> None:
        """A pre-vote grant answers with the proposed term and changes neither term nor vote."""
        node = lone(check_quorum=False)
        node.step(msg(raft_pb2.MsgPreVote, 2, 1, term=4))
        (m,) = sent(node)
        self.assertEqual((m.type, m.term, m.reject), (raft_pb2.MsgPreVoteResp, 4, False))
        self.assertEqual((node.term, node.status().vote), (0, 0))

    def test_pre_vote_from_lower_term_is_rejected(self) -> None:
        """A pre-vote for a term not above ours is rejected with our term."""
        node = lone(check_quorum=False)
        node.step(msg(raft_pb2.MsgApp, 2, 1, term=5))
        sent(node)
        node.step(msg(raft_pb2.MsgPreVote, 3, 1, term=4))
        (m,) = sent(node)
        self.assertEqual((m.type, m.term, m.reject), (raft_pb2.MsgPreVoteResp, 5, True))

    def test_pre_candidate_loses_on_rejection(self) -> None:
        """A pre-candidate rejected by a majority returns to follower in its own term."""
        node = lone()
        node.step(msg(raft_pb2.MsgHeartbeat, 2, 1, term=1))
        node.campaign()
        self.assertEqual(node.state, StateType.PRE_CANDIDATE)
        for frm in (2, 3):
            node.step(msg(raft_pb2.MsgPreVoteResp, frm, 1, term=1, reject=True))
        self.assertEqual((node.state, node.term), (StateType.FOLLOWER, 1))

    def test_pre_candidate_ignores_stale_vote_answers(self) -> None:
        """A pre-candidate counts MsgPreVoteResp only, a candidate MsgVoteResp only."""
        node = lone()
        node.step(msg(raft_pb2.MsgHeartbeat, 2, 1, term=1))
        node.campaign()
        node.step(msg(raft_pb2.MsgVoteResp, 2, 1, term=1))
        node.step(msg(raft_pb2.MsgVoteResp, 3, 1, term=1))
        self.assertEqual((node.state, node.term), (StateType.PRE_CANDIDATE, 1))
        node.step(msg(raft_pb2.MsgPreVoteResp, 2, 1, term=2))
        self.assertEqual((node.state, node.term), (StateType.CANDIDATE, 2))
        node.step(msg(raft_pb2.MsgPreVoteResp, 3, 1, term=2))
        self.assertEqual(node.state, StateType.CANDIDATE)
        node.step(msg(raft_pb2.MsgVoteResp, 3, 1, term=2))
        self.assertEqual(node.state, StateType.LEADER)


class CheckQuorumTests(SynchronousTestCase):

    def test_isolated_leader_steps_down(self) -> None:
        """A leader that hears from no quorum for an election timeout becomes follower.

        Reference: thesis §6.2 "a leader ... steps down if an election timeout elapses
        without a successful round of heartbeats to a majority of its cluster".
        """
        net = Network((1, 2, 3))
        net.campaign(1)
        net.isolate(1)
        net.tick(1, 10)
        net.stabilize()
        self.assertEqual(net.nodes[1].state, StateType.LEADER)
        net.tick(1, 10)
        net.stabilize()
        self.assertEqual((net.nodes[1].state, net.nodes[1].lead), (StateType.FOLLOWER, 0))

    def test_connected_leader_stays(self) -> None:
        """A leader with an active quorum keeps leading across many check-quorum rounds."""
        net = Network((1, 2, 3))
        net.campaign(1)
        net.isolate(3)
        net.tick_all(100)
        self.assertEqual((net.leader(), net.nodes[1].term), (1, 1))

    def test_vote_ignored_within_lease(self) -> None:
        """A node that heard from its leader within the election timeout ignores votes.

        Reference: §6 "if a server receives a RequestVote request within the minimum election
        timeout of hearing from a current leader, it does not update its term or grant its vote".
        """
        net = Network((1, 2, 3), pre_vote=False)
        net.campaign(1)
        net.isolate(1)
        net.nodes[3].campaign()      # 3 is impatient; 2 still trusts leader 1
        net.stabilize()
        self.assertEqual((net.nodes[2].term, net.nodes[2].lead), (1, 1))
        self.assertEqual(net.nodes[3].state, StateType.CANDIDATE)

    def test_lower_term_app_gets_term_back(self) -> None:
        """With check-quorum a stale leader's MsgApp is answered so it learns the new term."""
        node = lone()
        node.step(msg(raft_pb2.MsgHeartbeat, 2, 1, term=4))
        sent(node)
        node.step(msg(raft_pb2.MsgApp, 3, 1, term=2))
        (m,) = sent(node)
        self.assertEqual((m.type, m.to, m.term), (raft_pb2.MsgAppResp, 3, 4))
