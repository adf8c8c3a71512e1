"""RawNode: bootstrap, the Ready/advance contract, status, errors and log wording."""
from __future__ import annotations

from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from etcdd.proto import raft_pb2
from etcdd.raft import (MemoryStorage, ProgressInfo, ProgressState, RaftConfig, RaftError,
                        RawNode, SoftState, StateType, StepLocalMsgError)
from tests.unit.raft.network import SILENT, Solo, entries, msg


def bootstrapped(peers: list[tuple[int, bytes]], **cfg: object) -> tuple[RawNode, MemoryStorage]:
    storage = MemoryStorage()
    node = RawNode(RaftConfig(id=peers[0][0], storage=storage, logger=SILENT, **cfg))
    node.bootstrap(peers)
    return node, storage


class BootstrapTests(SynchronousTestCase):

    def test_bootstrap_entries_in_first_ready(self) -> None:
        """Bootstrap yields one committed AddNode entry per peer at term 1 (etcd StartNode)."""
        node, storage = bootstrapped([(1, b"m1"), (2, b"m2"), (3, b"")])
        self.assertEqual(sorted(node._raft.prs.voters), [1, 2, 3])
        rd = node.ready()
        self.assertEqual((rd.hard_state.term, rd.hard_state.vote, rd.hard_state.commit),
                         (1, 0, 3))
        self.assertTrue(rd.must_sync)
        self.assertEqual([(e.Index, e.Term, e.Type) for e in rd.entries],
                         [(i, 1, raft_pb2.EntryConfChange) for i in (1, 2, 3)])
        self.assertEqual(rd.committed_entries, rd.entries)
        ccs = [raft_pb2.ConfChange.FromString(e.Data) for e in rd.entries]
        self.assertEqual([(c.type, c.node_id, c.context) for c in ccs],
                         [(raft_pb2.ConfChangeAddNode, 1, b"m1"),
                          (raft_pb2.ConfChangeAddNode, 2, b"m2"),
                          (raft_pb2.ConfChangeAddNode, 3, b"")])
        storage.append(rd.entries)
        storage.set_hard_state(rd.hard_state)
        for cc in ccs:
            cs = node.apply_conf_change(cc)                # idempotent replay
        self.assertEqual(list(cs.voters), [1, 2, 3])
        node.advance(rd)
        self.assertFalse(node.has_ready())
        self.assertEqual(node.status().applied, 3)

    def test_bootstrap_single_node_campaigns(self) -> None:
        """A bootstrapped single member elects itself and commits its empty entry."""
        node, storage = bootstrapped([(1, b"")])
        rd = node.ready()
        storage.append(rd.entries)
        node.advance(rd)
        node.campaign()
        rd = node.ready()
        self.assertEqual(rd.soft_state, SoftState(1, StateType.LEADER))
        self.assertEqual([(e.Index, e.Term) for e in rd.committed_entries], [(2, 2)])

    def test_bootstrap_refuses_nonempty_storage(self) -> None:
        """Bootstrap needs an empty log and at least one peer."""
        storage = MemoryStorage()
        storage.append(entries(1))
        node = RawNode(RaftConfig(id=1, storage=storage, logger=SILENT))
        with self.assertRaises(RaftError):
            node.bootstrap([(1, b"")])
        with self.assertRaises(RaftError):
            RawNode(RaftConfig(id=1, storage=MemoryStorage(), logger=SILENT)).bootstrap([])


class ReadyTests(SynchronousTestCase):

    def test_unchanged_states_are_none(self) -> None:
        """Soft and hard state appear only when they changed since the last Ready."""
        solo = Solo()
        solo.node.campaign()
        rd = solo.ready()
        self.assertEqual(rd.soft_state, SoftState(0, StateType.PRE_CANDIDATE))
        self.assertIsNone(rd.hard_state)
        self.assertFalse(rd.must_sync)
        solo.node.step(msg(raft_pb2.MsgPreVoteResp, 2, 1, term=1))
        rd = solo.ready()
        self.assertEqual(rd.soft_state, SoftState(0, StateType.CANDIDATE))
        self.assertEqual((rd.hard_state.term, rd.hard_state.vote), (1, 1))
        self.assertTrue(rd.must_sync)
        self.assertFalse(solo.node.has_ready())

    def test_commit_only_change_needs_no_sync(self) -> None:
        """A Ready that only moves the commit index need not be fsync'd (etcd MustSync)."""
        solo = Solo(id=2)
        solo.step(msg(raft_pb2.MsgApp, 1, 2, term=1, index=0, logTerm=0, commit=0,
                      entries=entries(1)))
        solo.node.step(msg(raft_pb2.MsgHeartbeat, 1, 2, term=1, commit=1))
        rd = solo.ready()
        self.assertEqual((rd.hard_state.commit, rd.must_sync, rd.entries), (1, False, []))

    def test_advance_marks_stable_and_applied(self) -> None:
        """After advance the Ready's entries are stable and its committed entries applied."""
        solo = Solo(peers=(1,))
        solo.elect()
        solo.node.propose(b"x")
        rd = solo.node.ready()
        self.assertEqual([e.Data for e in rd.committed_entries], [b"x"])
        solo.storage.append(rd.entries)
        solo.node.advance(rd)
        log = solo.raft.raft_log
        self.assertEqual((log.unstable.entries, log.applied), ([], 2))

    def test_committed_entries_bounded_per_ready(self) -> None:
        """One Ready carries committed entries up to max_size_per_msg bytes (at least one)."""
        storage = MemoryStorage()
        storage.append([raft_pb2.Entry(Index=i, Term=1, Data=bytes(100)) for i in range(1, 7)])
        storage.set_hard_state(raft_pb2.HardState(term=1, commit=6))
        solo = Solo(storage=storage, max_size_per_msg=250)
        sizes = []
        while solo.node.has_ready():
            sizes.append(len(solo.ready().committed_entries))
        self.assertEqual(sizes, [2, 2, 2])

    def test_restart_skips_applied_entries(self) -> None:
        """config.applied marks entries the state machine already has."""
        storage = MemoryStorage(raft_pb2.ConfState(voters=[1]))
        storage.append(entries(1, 1, 1))
        storage.set_hard_state(raft_pb2.HardState(term=1, commit=3))
        solo = Solo(storage=storage, applied=2)
        self.assertEqual([e.Index for e in solo.ready().committed_entries], [3])

    def test_messages_and_read_states_are_handed_over_once(self) -> None:
        """Messages and read states leave with one Ready and are not repeated."""
        solo = Solo(peers=(1,))
        solo.elect()
        solo.node.read_index(b"a")
        rd = solo.node.ready()
        solo.node.read_index(b"b")
        self.assertEqual([s.request_ctx for s in rd.read_states], [b"a"])
        self.assertEqual([s.request_ctx for s in solo.node.ready().read_states], [b"b"])


class StepTests(SynchronousTestCase):

    def test_local_message_from_network_refused(self) -> None:
        """Message types only raft itself generates are refused from the network."""
        solo = Solo()
        for t in (raft_pb2.MsgHup, raft_pb2.MsgBeat, raft_pb2.MsgUnreachable,
                  raft_pb2.MsgSnapStatus, raft_pb2.MsgCheckQuorum):
            with self.assertRaises(StepLocalMsgError):
                solo.node.step(msg(t, 2, 1))
        self.assertEqual(solo.node.state, StateType.FOLLOWER)

    def test_config_validation(self) -> None:
        """Bad configurations are refused with etcd's words."""
        for kw, text in (({"id": 0}, "cannot use none as id"),
                         ({"heartbeat_ticks": 0}, "heartbeat tick must be greater than 0"),
                         ({"election_ticks": 1}, "election tick must be greater than heartbeat"),
                         ({"max_inflight_msgs": 0}, "max inflight messages")):
            with self.assertRaisesRegex(RaftError, text):
                RaftConfig(**{"id": 1, "storage": MemoryStorage(), **kw})


class StatusTests(SynchronousTestCase):

    def test_status_of_leader_and_follower(self) -> None:
        """Status reports the hard state and, on the leader only, every member's progress."""
        solo = Solo(peers=(1, 2), learners=(3,))
        follower = solo.node.status()
        self.assertEqual((follower.raft_state, follower.progress), (StateType.FOLLOWER, {}))
        solo.elect()
        solo.step(msg(raft_pb2.MsgAppResp, 2, 1, term=1, index=1))
        st = solo.node.status()
        self.assertEqual((st.id, st.term, st.vote, st.commit, st.lead, st.raft_state,
                          st.lead_transferee), (1, 1, 1, 1, 1, StateType.LEADER, 0))
        self.assertEqual(st.progress[2], ProgressInfo(1, 2, ProgressState.REPLICATE, True,
                                                      False))
        self.assertEqual(st.progress[3].is_learner, True)
        self.assertEqual((solo.node.lead, solo.node.term, solo.node.committed,
                          solo.node.is_learner), (1, 1, 1, False))


class LogWordingTests(SynchronousTestCase):

    def test_log_lines_use_etcd_wording(self) -> None:
        """Raft logs with named fields, in etcd's words."""
        events: list[dict] = []
        solo = Solo(peers=(1, 2, 3), logger=Logger(observer=events.append))
        solo.node.campaign()
        solo.msgs()
        solo.node.step(msg(raft_pb2.MsgPreVoteResp, 2, 1, term=1))
        solo.msgs()
        solo.node.step(msg(raft_pb2.MsgVoteResp, 3, 1, term=1))
        lines = [formatEvent(e) for e in events]
        for want in ("1 became follower at term 0",
                     "1 is starting a new election at term 0",
                     "1 became pre-candidate at term 0",
                     "1 [logterm: 0, index: 0] sent MsgPreVote request to 2 at term 0",
                     "1 received MsgPreVoteResp from 2 at term 0",
                     "1 has received 2 MsgPreVoteResp votes and 0 vote rejections",
                     "1 became candidate at term 1",
                     "1 became leader at term 1"):
            self.assertIn(want, lines)
        self.assertTrue(all("log_format" in e and "{" in e["log_format"] for e in events))
