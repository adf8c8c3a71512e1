"""Leadership transfer (thesis §3.10, etcd MsgTransferLeader / MsgTimeoutNow)."""
from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from etcdd.proto import raft_pb2
from etcdd.raft import ProposalDroppedError, StateType
from tests.unit.raft.network import Network, Solo, msg


class TransferTests(SynchronousTestCase):

    def test_up_to_date_transferee_takes_over(self) -> None:
        """An up-to-date transferee gets MsgTimeoutNow and wins at once, despite leases.

        Reference: thesis §3.10 "the prior leader sends a TimeoutNow request to the target
        server ... the target server ... start[s] a new election".
        """
        net = Network((1, 2, 3))
        net.campaign(1)
        net.propose(1, b"x")
        net.nodes[1].transfer_leader(3)
        net.stabilize()
        self.assertEqual((net.leader(), net.nodes[3].term), (3, 2))
        self.assertEqual(net.nodes[1].lead, 3)
        self.assertTrue(net.propose(3, b"y"))
        self.assertEqual(net.values(1), [b"x", b"y"])

    def test_lagging_transferee_is_caught_up_first(self) -> None:
        """A transferee missing entries is sent them; MsgTimeoutNow follows its catch-up ack.

        Reference: thesis §3.10 "The prior leader ... [brings] the target server's log up
        to date".
        """
        net = Network((1, 2, 3))
        net.campaign(1)
        net.isolate(3)
        net.propose(1, b"x")
        net.recover()
        self.assertEqual(net.storages[3].last_index(), 1)
        net.nodes[1].transfer_leader(3)
        self.assertEqual(net.nodes[1].lead_transferee, 3)
        net.stabilize()
        self.assertEqual(net.leader(), 1)             # its probe to 3 is still paused
        net.tick_all(1)                               # heartbeat answer resumes it
        self.assertEqual(net.leader(), 3)
        self.assertEqual(net.values(3), [b"x"])

    def test_transfer_aborts_after_election_timeout(self) -> None:
        """An unreachable transferee: proposals are dropped, then after an election timeout
        the transfer is abandoned and the leader takes proposals again."""
        net = Network((1, 2, 3))
        net.campaign(1)
        net.isolate(3)
        net.nodes[1].transfer_leader(3)
        net.stabilize()
        with self.assertRaises(ProposalDroppedError):
            net.nodes[1].propose(b"during")
        net.tick(1, 10)
        net.stabilize()
        self.assertEqual((net.leader(), net.nodes[1].lead_transferee), (1, 0))
        self.assertTrue(net.propose(1, b"after"))

    def test_transfer_ignored_cases(self) -> None:
        """A transfer to the leader itself or to a learner is ignored; a repeat keeps going."""
        solo = Solo(peers=(1, 2), learners=(3,))
        solo.elect()
        solo.node.transfer_leader(1)
        solo.node.transfer_leader(3)
        self.assertEqual(solo.node.lead_transferee, 0)
        solo.node.transfer_leader(2)
        solo.msgs()
        solo.node.transfer_leader(2)
        self.assertEqual((solo.node.lead_transferee, solo.msgs()), (2, []))

    def test_new_transfer_replaces_old(self) -> None:
        """A transfer to another node aborts the one in progress."""
        solo = Solo()
        solo.elect()
        solo.node.transfer_leader(2)
        solo.node.transfer_leader(3)
        self.assertEqual(solo.node.lead_transferee, 3)

    def test_follower_forwards_transfer_request(self) -> None:
        """A follower forwards MsgTransferLeader to its leader (etcd: as coming from itself)."""
        net = Network((1, 2, 3))
        net.campaign(1)
        net.nodes[2].transfer_leader(3)
        net.stabilize()
        self.assertEqual(net.leader(), 2)

    def test_timeout_now_campaign_skips_pre_vote_and_lease(self) -> None:
        """MsgTimeoutNow starts a real election at once, with the transfer context."""
        solo = Solo(id=2)
        solo.step(msg(raft_pb2.MsgHeartbeat, 1, 2, term=1))
        out = solo.step(msg(raft_pb2.MsgTimeoutNow, 1, 2, term=1))
        self.assertEqual(solo.node.state, StateType.CANDIDATE)
        self.assertEqual({(m.type, m.term, m.context) for m in out},
                         {(raft_pb2.MsgVote, 2, b"CampaignTransfer")})
        voter = Solo(id=3)
        voter.step(msg(raft_pb2.MsgHeartbeat, 1, 3, term=1))       # 3 is within its lease
        resp = voter.step(*[m for m in out if m.to == 3])
        self.assertEqual([(m.type, m.reject) for m in resp], [(raft_pb2.MsgVoteResp, False)])
