"""Learners and single-step membership changes (Raft §6 / thesis §4.1, §4.2.1)."""
from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from etcdd.proto import raft_pb2
from etcdd.raft import ProposalDroppedError, RaftInvariantError, StateType, StepPeerNotFoundError
from tests.unit.raft.network import Network, Solo, conf_change, msg

Add, Remove = raft_pb2.ConfChangeAddNode, raft_pb2.ConfChangeRemoveNode
AddLearner, Update = raft_pb2.ConfChangeAddLearnerNode, raft_pb2.ConfChangeUpdateNode


def app_resp(frm: int, index: int, term: int = 1) -> raft_pb2.Message:
    return msg(raft_pb2.MsgAppResp, frm, 1, term=term, index=index)


class LearnerTests(SynchronousTestCase):

    def test_learner_receives_log_but_is_not_counted(self) -> None:
        """A learner gets every entry, but its copy never makes an entry committed."""
        net = Network((1, 2), learners=(3,))
        net.campaign(1)
        net.isolate(2)
        net.propose(1, b"x")
        self.assertEqual(net.storages[3].last_index(), 2)
        self.assertEqual(net.nodes[1].committed, 1)
        net.recover()
        net.tick_all(1)
        self.assertEqual([net.values(i) for i in (1, 2, 3)], [[b"x"]] * 3)

    def test_learner_grant_does_not_elect(self) -> None:
        """A candidate does not count a learner's vote."""
        solo = Solo(peers=(1, 2, 3), learners=(4,), pre_vote=False)
        solo.node.campaign()
        solo.msgs()
        solo.step(msg(raft_pb2.MsgVoteResp, 4, 1, term=1))
        self.assertEqual(solo.node.state, StateType.CANDIDATE)
        solo.step(msg(raft_pb2.MsgVoteResp, 2, 1, term=1))
        self.assertEqual(solo.node.state, StateType.LEADER)

    def test_learner_is_not_asked_to_vote(self) -> None:
        """Vote requests go to voters only."""
        solo = Solo(peers=(1, 2), learners=(3,))
        solo.node.campaign()
        self.assertEqual([m.to for m in solo.msgs()], [2])

    def test_promote_learner(self) -> None:
        """AddNode on a learner makes it a voter that counts and may campaign."""
        net = Network((1, 2), learners=(3,), check_quorum=False)
        net.campaign(1)
        net.nodes[1].propose_conf_change(conf_change(Add, 3))
        net.stabilize()
        self.assertEqual([net.nodes[i].is_learner for i in (1, 2, 3)], [False] * 3)
        self.assertEqual(list(net.conf_states[3].voters), [1, 2, 3])
        net.isolate(2)
        net.propose(1, b"y")
        self.assertEqual(net.values(1), [b"y"])        # 1 and 3 are a majority now
        net.recover()
        net.campaign(3)
        self.assertEqual(net.leader(), 3)

    def test_demote_voter_to_learner(self) -> None:
        """AddLearnerNode on a voter makes it a learner that stops counting."""
        solo = Solo()
        cs = solo.node.apply_conf_change(conf_change(AddLearner, 3))
        self.assertEqual((list(cs.voters), list(cs.learners)), ([1, 2], [3]))


class ConfChangeTests(SynchronousTestCase):

    def test_add_node_catches_up(self) -> None:
        """A new member with an empty log gets the whole log and then counts in the quorum."""
        net = Network((1, 2, 3))
        net.campaign(1)
        net.propose(1, b"before")
        net.add_empty_node(4)
        net.nodes[1].propose_conf_change(conf_change(Add, 4))
        net.stabilize()
        net.tick_all(2)
        self.assertEqual(net.values(4), [b"before"])
        self.assertEqual(list(net.conf_states[4].voters), [1, 2, 3, 4])
        net.isolate(2)
        net.isolate(3)
        net.propose(1, b"after")
        self.assertEqual(net.values(1), [b"before"])    # 1 and 4 of 4: no majority
        net.recover()
        net.tick_all(1)
        self.assertEqual(net.values(4), [b"before", b"after"])

    def test_remove_node_lets_pending_entries_commit(self) -> None:
        """Removing a silent voter shrinks the quorum, so what the rest hold commits."""
        solo = Solo(peers=(1, 2))
        solo.elect()
        solo.step(app_resp(2, 1))
        solo.node.propose_conf_change(conf_change(Remove, 2))
        solo.node.propose(b"x")
        solo.msgs()
        solo.node.step(app_resp(2, 2))
        self.assertEqual(solo.node.committed, 2)     # x is on the leader only
        solo.ready()                                  # applies the removal (in Solo.ready)
        self.assertEqual(solo.node.committed, 3)

    def test_one_pending_conf_change_at_a_time(self) -> None:
        """A conf change proposed before the previous one is applied becomes an empty entry."""
        solo = Solo(peers=(1, 2))
        solo.elect()
        solo.step(app_resp(2, 1))
        solo.node.propose_conf_change(conf_change(AddLearner, 3))
        solo.node.propose_conf_change(conf_change(AddLearner, 4))
        log = solo.raft.raft_log
        self.assertEqual([(e.Index, e.Type) for e in log.entries(2, None)],
                         [(2, raft_pb2.EntryConfChange), (3, raft_pb2.EntryNormal)])
        solo.step(app_resp(2, 3))
        solo.ready()
        solo.node.propose_conf_change(conf_change(AddLearner, 4))
        self.assertEqual(log.entries(4, None)[0].Type, raft_pb2.EntryConfChange)

    def test_new_leader_refuses_conf_change_until_log_applied(self) -> None:
        """A new leader accepts a conf change only once its whole log at election is applied."""
        solo = Solo(peers=(1, 2))
        solo.storage.append([raft_pb2.Entry(Index=1, Term=1, Type=raft_pb2.EntryConfChange)])
        solo.storage.set_hard_state(raft_pb2.HardState(term=1))
        solo.restart()
        solo.elect()                                  # term 2, empty entry at 2
        solo.node.propose_conf_change(conf_change(AddLearner, 3))
        log = solo.raft.raft_log
        self.assertEqual(log.entries(3, None)[0].Type, raft_pb2.EntryNormal)
        solo.step(app_resp(2, 3, term=2))             # commits and applies 1..3
        solo.node.propose_conf_change(conf_change(AddLearner, 3))
        self.assertEqual(log.entries(4, None)[0].Type, raft_pb2.EntryConfChange)

    def test_cannot_campaign_with_unapplied_conf_change(self) -> None:
        """A node with a committed but unapplied conf change does not start an election."""
        solo = Solo(id=2)
        solo.node.step(msg(raft_pb2.MsgApp, 1, 2, term=1, index=0, logTerm=0, commit=1,
                           entries=[raft_pb2.Entry(Index=1, Term=1,
                                                   Type=raft_pb2.EntryConfChange)]))
        solo.node.campaign()
        self.assertEqual(solo.node.state, StateType.FOLLOWER)

    def test_apply_conf_change_is_idempotent(self) -> None:
        """Applying the same change twice gives the same ConfState (bootstrap replays)."""
        solo = Solo(peers=(1,))
        once = solo.node.apply_conf_change(conf_change(Add, 2))
        twice = solo.node.apply_conf_change(conf_change(Add, 2))
        self.assertEqual(once, twice)
        self.assertEqual(list(solo.node.apply_conf_change(conf_change(Update, 2)).voters), [1, 2])
        self.assertEqual(list(solo.node.apply_conf_change(conf_change(Remove, 9)).voters),
                         [1, 2])

    def test_removing_the_last_voter_is_refused(self) -> None:
        """A change that would leave no voter raises and changes nothing."""
        solo = Solo(peers=(1,))
        with self.assertRaises(RaftInvariantError):
            solo.node.apply_conf_change(conf_change(Remove, 1))
        self.assertEqual(sorted(solo.raft.prs.voters), [1])

    def test_removed_leader_keeps_leading_but_drops_proposals(self) -> None:
        """A leader that applied its own removal stays leader (etcd 3.4) and drops proposals."""
        net = Network((1, 2, 3))
        net.campaign(1)
        net.nodes[1].propose_conf_change(conf_change(Remove, 1))
        net.stabilize()
        self.assertEqual(net.nodes[1].state, StateType.LEADER)
        self.assertEqual(list(net.conf_states[2].voters), [2, 3])
        with self.assertRaises(ProposalDroppedError):
            net.nodes[1].propose(b"x")
        net.crash(1)                                  # the server stops it
        net.tick_all(30)
        self.assertIn(net.leader(), (2, 3))

    def test_response_from_removed_peer_is_refused(self) -> None:
        """A response from a node outside the configuration raises StepPeerNotFoundError."""
        solo = Solo(peers=(1, 2))
        solo.elect()
        with self.assertRaises(StepPeerNotFoundError):
            solo.node.step(app_resp(9, 1))
        solo.node.step(msg(raft_pb2.MsgApp, 9, 1, term=1))     # not a response: stepped
