"""Linearizable reads through ReadIndex (thesis §6.4, etcd ReadOnlySafe)."""
from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from etcdd.proto import raft_pb2
from etcdd.raft import ReadState
from tests.unit.raft.network import Network, Solo, describe, msg


def heartbeat_resp(frm: int, ctx: bytes, term: int = 1) -> raft_pb2.Message:
    return msg(raft_pb2.MsgHeartbeatResp, frm, 1, term=term, context=ctx)


class ReadIndexTests(SynchronousTestCase):

    def test_single_node_answers_at_once(self) -> None:
        """A lone voter knows it leads: the read index is its commit index, no round trip."""
        solo = Solo(peers=(1,))
        solo.elect()
        solo.node.read_index(b"ctx")
        rd = solo.ready()
        self.assertEqual((rd.read_states, rd.messages), ([ReadState(1, b"ctx")], []))

    def test_leader_confirms_with_a_heartbeat_quorum(self) -> None:
        """The leader records its commit index and answers once a majority acked the context.

        Reference: thesis §6.4 "The leader ... sends heartbeats ... once a majority ...
        acknowledged, the leader knows ... that it was the leader at the time it sent".
        """
        solo = Solo(peers=(1, 2, 3, 4, 5))
        solo.elect()
        for frm in (2, 3):
            solo.step(msg(raft_pb2.MsgAppResp, frm, 1, term=1, index=1))
        solo.node.read_index(b"r1")
        rd = solo.ready()
        self.assertEqual(rd.read_states, [])
        self.assertEqual([describe(m) for m in rd.messages][:1],
                         ["1->2 MsgHeartbeat Term:1 Log:0/0 Commit:1"])
        self.assertEqual({m.context for m in rd.messages}, {b"r1"})
        solo.node.step(heartbeat_resp(2, b"r1"))
        self.assertEqual(solo.ready().read_states, [])
        solo.node.step(heartbeat_resp(4, b"r1"))
        self.assertEqual(solo.ready().read_states, [ReadState(1, b"r1")])
        solo.node.step(heartbeat_resp(5, b"r1"))     # late acks change nothing
        self.assertEqual(solo.ready().read_states, [])

    def test_later_ack_releases_earlier_reads(self) -> None:
        """A quorum for a later request answers every request queued before it, in order."""
        solo = Solo()
        solo.elect()
        solo.step(msg(raft_pb2.MsgAppResp, 2, 1, term=1, index=1))
        solo.node.read_index(b"a")
        solo.node.propose(b"x")
        solo.step(msg(raft_pb2.MsgAppResp, 2, 1, term=1, index=2))
        solo.node.read_index(b"b")
        solo.msgs()
        solo.node.step(heartbeat_resp(3, b"b"))
        self.assertEqual(solo.ready().read_states, [ReadState(1, b"a"), ReadState(2, b"b")])

    def test_new_leader_postpones_reads_until_it_commits(self) -> None:
        """A leader answers reads only after committing an entry of its own term (etcd 3.4).

        Reference: thesis §6.4 "the leader must ... commit a blank no-op entry ... at the
        start of its term" before it knows the commit index.
        """
        solo = Solo()
        solo.elect()
        solo.node.read_index(b"early")
        self.assertEqual(solo.msgs(), [])
        out = solo.step(msg(raft_pb2.MsgAppResp, 2, 1, term=1, index=1))
        self.assertEqual([m.context for m in out if m.type == raft_pb2.MsgHeartbeat],
                         [b"early", b"early"])
        solo.node.step(heartbeat_resp(2, b"early"))
        self.assertEqual(solo.ready().read_states, [ReadState(1, b"early")])

    def test_follower_read_goes_through_leader(self) -> None:
        """A follower forwards the request; the leader's answer becomes the follower's ReadState."""
        net = Network((1, 2, 3))
        net.campaign(1)
        net.propose(1, b"x")
        net.nodes[2].read_index(b"f")
        states = []
        for _ in range(10):
            for i in sorted(net.nodes):
                rd = net.process_ready(i)
                if rd is not None and i == 2:
                    states.extend(rd.read_states)
            msgs, net.in_flight = net.in_flight, []
            for m in msgs:
                net.deliver(m)
        self.assertEqual(states, [ReadState(2, b"f")])

    def test_follower_without_leader_drops_the_read(self) -> None:
        """With no known leader the request is dropped (the shell times out and retries)."""
        solo = Solo(id=2)
        solo.node.read_index(b"lost")
        rd = solo.ready()
        self.assertEqual((rd.read_states, rd.messages), ([], []))
