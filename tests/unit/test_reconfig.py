"""Membership changes: the strict reconfig rules (`server/reconfig.py`), the validation every
member runs when a ConfChange applies (`server/cluster.py`), and the peer port's side of
joining and removal (`peer/protocol.py`: the members query, refusing a removed member).

The rules are etcd 3.4's (`IsReadyToAddVotingMember`, `IsReadyToRemoveVotingMember`,
`IsReadyToPromoteMember`, `isLearnerReady`, `ValidateConfigurationChange`).
"""
from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from etcdd.peer.discovery import DiscoveryError, match_local
from etcdd.peer.framing import (FrameDecoder, FrameKind, Hello, StreamKind, decode_error,
                                decode_hello, decode_reply, encode_call, encode_hello)
from etcdd.peer.protocol import REMOVED_REASON
from etcdd.proto import raft_pb2
from etcdd.server import errors
from etcdd.server.cluster import (ClusterState, member_json, members_from_json,
                                  members_json)
from etcdd.server.membership import Member
from etcdd.server.reconfig import (connected_voters, learner_ready, parse_peer_urls,
                                   ready_to_add_voter, ready_to_promote,
                                   ready_to_remove_voter)
from tests.unit.test_peer_transport import CLUSTER_ID, Cluster, accept


def voters(started: int, unstarted: int = 0) -> list[Member]:
    """`started` published voters (with a name) and `unstarted` ones (no name yet)."""
    out = [Member(i + 1, f"m{i + 1}", (f"http://127.0.0.1:{2380 + i}",))
           for i in range(started)]
    out += [Member(100 + i, "", (f"http://127.0.0.1:{3380 + i}",)) for i in range(unstarted)]
    return out


class StrictRuleTests(SynchronousTestCase):

    def test_add_voter_needs_a_started_quorum_after_the_add(self) -> None:
        """A voter may be added while the started voters stay a quorum of the new size;
        a lone started member may always add a second."""
        self.assertTrue(ready_to_add_voter(voters(1)))
        self.assertTrue(ready_to_add_voter(voters(3)))
        self.assertTrue(ready_to_add_voter(voters(2)))          # 2 of 3
        self.assertFalse(ready_to_add_voter(voters(2, 1)))      # 2 of 4
        self.assertFalse(ready_to_add_voter(voters(1, 1)))      # 1 of 3

    def test_remove_voter_needs_a_started_quorum_of_the_rest(self) -> None:
        """Removing a voter leaves enough started voters, or it is refused."""
        self.assertTrue(ready_to_remove_voter(voters(3), 1))
        self.assertTrue(ready_to_remove_voter(voters(2, 1), 100))
        self.assertFalse(ready_to_remove_voter(voters(1, 2), 1))
        self.assertFalse(ready_to_remove_voter(voters(2, 1), 1))  # 1 started of 2 left
        self.assertFalse(ready_to_remove_voter(voters(2, 2), 1))

    def test_promote_counts_the_learner_as_started(self) -> None:
        """The learner counts as a started voter of the new configuration."""
        self.assertTrue(ready_to_promote(voters(1)))
        self.assertTrue(ready_to_promote(voters(2, 1)))
        self.assertFalse(ready_to_promote(voters(1, 2)))

    def test_learner_ready_at_ninety_percent(self) -> None:
        """A learner is in sync once its match is 90 % of the leader's."""
        self.assertTrue(learner_ready(90, 100))
        self.assertFalse(learner_ready(89, 100))
        self.assertFalse(learner_ready(0, 10))
        self.assertTrue(learner_ready(None, 10))

    def test_connected_voters_counts_self_and_long_connected_peers(self) -> None:
        """Peers count when connected since at least `since`; we always count."""
        since = {1: None, 2: 10.0, 3: 20.0}
        n = connected_voters(since.get, 15.0, me=1, voters=voters(3))
        self.assertEqual(n, 2)

    def test_peer_urls_are_checked(self) -> None:
        """MemberAdd URLs must parse as etcd's; none at all is refused too."""
        self.assertEqual(parse_peer_urls(["http://127.0.0.1:2", "http://127.0.0.1:1"]),
                         ("http://127.0.0.1:1", "http://127.0.0.1:2"))
        for bad in ([], ["127.0.0.1:1"], ["http://127.0.0.1:1/path"], ["ftp://h:1"]):
            self.assertRaises(errors.MemberBadURLsError, parse_peer_urls, bad)


class FakeTxn:
    """Enough of an LMDB write transaction for ClusterState: dict per db handle."""

    def __init__(self, dbs: dict[bytes, dict]) -> None:
        self.dbs = dbs

    def put(self, key: bytes, value: bytes, db: Any) -> None:
        db[key] = value

    def delete(self, key: bytes, db: Any) -> None:
        db.pop(key, None)

    def get(self, key: bytes, db: Any) -> Any:
        return db.get(key)


def cc(kind: int, node: int, **context: Any) -> raft_pb2.ConfChange:
    return raft_pb2.ConfChange(type=kind, node_id=node,
                               context=json.dumps(context).encode() if context else b"")


class ValidationTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.dbs = {b"members": {}, b"members_removed": {}, b"cluster": {}}
        self.state = ClusterState(self.dbs)
        self.txn = FakeTxn(self.dbs)
        for m in voters(2):
            self.assertIsNone(self.state.apply_conf_change(
                self.txn, raft_pb2.ConfChange(type=raft_pb2.ConfChangeAddNode, node_id=m.id,
                                              context=member_json(m)), m.id))

    def apply(self, change: raft_pb2.ConfChange, index: int) -> Any:
        return self.state.apply_conf_change(self.txn, change, index)

    def test_add_refusals(self) -> None:
        """An existing ID, a peer URL in use and a second learner are refused, and
        remembered as refused at their index."""
        add = raft_pb2.ConfChangeAddNode
        self.assertIsInstance(self.apply(cc(add, 1, peerURLs=["http://x:1"]), 10),
                              errors.MemberExistsError)
        self.assertIsInstance(self.apply(cc(add, 7, peerURLs=["http://127.0.0.1:2380"]), 11),
                              errors.PeerURLExistsError)
        learner = raft_pb2.ConfChangeAddLearnerNode
        self.assertIsNone(self.apply(cc(learner, 8, peerURLs=["http://l:1"],
                                        isLearner=True), 12))
        self.assertTrue(self.state.members[8].is_learner)
        self.assertIsInstance(self.apply(cc(learner, 9, peerURLs=["http://l:2"],
                                            isLearner=True), 13), errors.TooManyLearnersError)
        self.assertTrue(self.state.was_refused(self.txn, 10))
        self.assertTrue(self.state.was_refused(self.txn, 13))
        self.assertFalse(self.state.was_refused(self.txn, 12))
        self.assertNotIn(9, self.state.members)

    def test_promote_remove_update(self) -> None:
        """Promotion needs a learner; removal needs the member and makes its ID unusable;
        update refuses another member's URL."""
        add = raft_pb2.ConfChangeAddNode
        self.assertIsInstance(self.apply(cc(add, 1, isPromote=True), 5),
                              errors.MemberNotLearnerError)
        self.assertIsInstance(self.apply(cc(add, 42, isPromote=True), 6),
                              errors.MemberNotFoundError)
        self.apply(cc(raft_pb2.ConfChangeAddLearnerNode, 8, peerURLs=["http://l:1"],
                      isLearner=True), 7)
        self.assertIsNone(self.apply(cc(add, 8, isPromote=True), 8))
        self.assertFalse(self.state.members[8].is_learner)
        update = raft_pb2.ConfChangeUpdateNode
        self.assertIsInstance(self.apply(cc(update, 8, peerURLs=["http://127.0.0.1:2380"]), 9),
                              errors.PeerURLExistsError)
        self.assertIsNone(self.apply(cc(update, 8, peerURLs=["http://l:9"]), 10))
        self.assertEqual(self.state.members[8].peer_urls, ("http://l:9",))
        remove = raft_pb2.ConfChangeRemoveNode
        self.assertIsNone(self.apply(cc(remove, 8), 11))
        self.assertIsInstance(self.apply(cc(remove, 8), 12), errors.MemberNotFoundError)
        self.assertIsInstance(self.apply(cc(add, 8, peerURLs=["http://l:7"]), 13),
                              errors.MemberNotFoundError)     # a removed ID never returns
        self.assertEqual(sorted(self.state.members), [1, 2])

    def test_members_json_round_trip(self) -> None:
        """What a joining member receives parses back into the same members."""
        members = self.state.sorted_members()
        self.assertEqual(members_from_json(members_json(members)), members)


class JoinMatchTests(SynchronousTestCase):

    def test_match_by_peer_urls(self) -> None:
        """The joining member finds its ID by its peer URLs among the running members."""
        remote = [Member(5, "a", ("http://h:1",)), Member(9, "", ("http://h:2",), (), True)]
        local = {"a": ("http://h:1",), "new": ("http://h:2",)}
        self.assertEqual(match_local(local, remote, "new"), 9)

    def test_mismatches_are_refused(self) -> None:
        """Another member count or unknown URLs stop the join with etcd's words."""
        remote = [Member(5, "a", ("http://h:1",))]
        with self.assertRaises(DiscoveryError) as e:
            match_local({"a": ("http://h:1",), "b": ("http://h:2",)}, remote, "b")
        self.assertIn("member count is unequal", str(e.exception))
        with self.assertRaises(DiscoveryError) as e:
            match_local({"b": ("http://h:3",)}, remote, "b")
        self.assertIn("unmatched member while checking PeerURLs", str(e.exception))


class PeerPortTests(SynchronousTestCase):

    def frames(self, transport: Any) -> list[tuple[int, bytes]]:
        return FrameDecoder(1 << 20).feed(transport.value())

    def test_joining_member_may_ask_only_for_the_members(self) -> None:
        """A HELLO of zeros gets the cluster ID and one answer per call: the members for
        `members`, PERMISSION_DENIED for anything else."""
        cluster = Cluster(self, ids=(1, 2))
        members = [Member(1, "a", ("http://h:1",))]
        cluster.transports[2].set_membership(lambda mid: False, lambda: members_json(members),
                                             lambda: None)
        protocol, transport = accept(cluster, 2)
        protocol.dataReceived(encode_hello(Hello(0, 0, 0, StreamKind.CALL))
                              + encode_call(1, "members", b"")
                              + encode_call(2, "lease_renew", b"x" * 8))
        (k1, hello), (k2, reply), (k3, denied) = self.frames(transport)
        self.assertEqual((k1, decode_hello(hello)),
                         (FrameKind.HELLO, Hello(CLUSTER_ID, 2, 0, StreamKind.CALL)))
        self.assertEqual(decode_reply(reply), (1, 0, members_json(members)))
        self.assertEqual(decode_reply(denied)[:2], (2, 7))
        self.assertEqual(cluster.handlers[2].calls, [])
        cluster.stop(self)

    def test_removed_member_is_refused_and_told(self) -> None:
        """A removed member's HELLO is answered with etcd's removal message; a link that
        hears it calls `on_removed`."""
        cluster = Cluster(self, ids=(1, 2), start=False)
        removed: list[str] = []
        cluster.transports[2].set_membership(lambda mid: mid == 1, lambda: b"[]",
                                             lambda: removed.append("2"))
        cluster.transports[1].set_membership(lambda mid: False, lambda: b"[]",
                                             lambda: removed.append("1"))
        protocol, transport = accept(cluster, 2)
        protocol.dataReceived(encode_hello(Hello(CLUSTER_ID, 1, 2, StreamKind.MSG)))
        ((kind, payload),) = self.frames(transport)
        self.assertEqual((kind, decode_error(payload)), (FrameKind.ERROR, REMOVED_REASON))
        cluster.transports[1].start()
        cluster.network.flush()
        self.assertIn("1", removed)
        self.assertNotIn("2", removed)
        cluster.transports[2].start()
        cluster.stop(self)
