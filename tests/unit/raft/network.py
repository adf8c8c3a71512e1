"""A deterministic in-memory cluster of RawNodes for raft tests.

Each node has a MemoryStorage (its "disk") and a StateMachine (its applied state, kept
across restarts like etcd's backend with its consistent index). `process_ready` plays the
shell: persist the snapshot, entries and hard state, queue the messages, apply committed
entries (conf changes go back into raft), then `advance`. Messages wait in `in_flight`
until delivered; links can be cut, messages dropped by type or at random, and nodes
crashed and restarted from their storage.

Every entry applied anywhere is checked against the first application of its index
(state-machine safety), and every persisted entry against the first (index, term) seen
with its data and predecessor term (log matching).
"""
from __future__ import annotations

import hashlib
import pickle
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from etcdd.proto import raft_pb2
from etcdd.raft import (MemoryStorage, ProposalDroppedError, RaftConfig, RawNode, Ready,
                        StateType, StepPeerNotFoundError)
from etcdd.raft.roles import MSG_NAMES

Message = raft_pb2.Message
Entry = raft_pb2.Entry

SILENT = Logger(observer=lambda event: None)


class SafetyViolation(AssertionError):
    """A Raft safety property failed."""


def msg(type: int, frm: int = 0, to: int = 0, **fields: Any) -> Message:
    """A Message with `from` set (a Python keyword)."""
    return Message(type=type, to=to, **{"from": frm}, **fields)


def conf_change(cc_type: int, node_id: int) -> raft_pb2.ConfChange:
    """A single-step ConfChange."""
    return raft_pb2.ConfChange(type=cc_type, node_id=node_id)


@dataclass
class StateMachine:
    """What a node applied: a hash chain over every entry, plus normal entries' data."""

    applied_index: int = 0
    digest: bytes = b""
    values: list[bytes] = field(default_factory=list)

    def apply(self, e: Entry) -> None:
        self.applied_index = e.Index
        self.digest = hashlib.blake2b(self.digest + e.SerializeToString(),
                                      digest_size=16).digest()
        if e.Type == raft_pb2.EntryNormal and e.Data:
            self.values.append(e.Data)

    def encode(self) -> bytes:
        return pickle.dumps((self.applied_index, self.digest, self.values))

    def restore(self, snap: raft_pb2.Snapshot) -> None:
        self.applied_index, self.digest, values = pickle.loads(snap.data)
        self.values = list(values)


def new_storage(voters: Iterable[int], learners: Iterable[int] = ()) -> MemoryStorage:
    """An empty log whose initial configuration is `voters` and `learners`."""
    return MemoryStorage(raft_pb2.ConfState(voters=sorted(voters), learners=sorted(learners)))


class Network:
    """Nodes, their disks and state machines, and the messages between them."""

    def __init__(self, ids: Iterable[int] = (1, 2, 3), *, learners: Iterable[int] = (),
                 seed: int = 0, **config: Any) -> None:
        ids, learners = list(ids), list(learners)
        self.initial = (ids, learners)
        self.rand = random.Random(seed)
        self.config = {"election_ticks": 10, "heartbeat_ticks": 1, "logger": SILENT, **config}
        self.storages: dict[int, MemoryStorage] = {}
        self.machines: dict[int, StateMachine] = {}
        self.nodes: dict[int, RawNode] = {}
        # The shell's cursors: the last committed index it processed and the ConfState
        # it reached (etcd's `appliedi` and `confState`); they restart from the snapshot.
        self.shell_applied: dict[int, int] = {}
        self.conf_states: dict[int, raft_pb2.ConfState] = {}
        for i in ids + learners:
            self.storages[i] = new_storage(ids, learners)
            self.machines[i] = StateMachine()
            self.start(i)
        self.in_flight: list[Message] = []
        self.cut: set[tuple[int, int]] = set()
        self.ignored: set[int] = set()
        self.drop_rate = 0.0
        self.drop_if: Callable[[Message], bool] | None = None
        self.dropped_proposals = 0
        # Safety bookkeeping shared by every node.
        self.leaders: dict[int, int] = {}                   # term -> leader
        self.entries_seen: dict[tuple[int, int], tuple[int, bytes, int]] = {}
        self.applied_digests: dict[int, bytes] = {}         # index -> digest after it

    # --- membership of the simulation ----------------------------------------------------

    def start(self, i: int, **overrides: Any) -> RawNode:
        """(Re)start node `i` from its storage, as etcd does (Applied left unset)."""
        cfg = {**self.config, **overrides}
        cfg.setdefault("rand", random.Random(self.rand_seed(i)))
        self.nodes[i] = RawNode(RaftConfig(id=i, storage=self.storages[i], **cfg))
        snap = self.storages[i].snapshot()
        self.shell_applied[i] = snap.metadata.index
        self.conf_states[i] = snap.metadata.conf_state
        return self.nodes[i]

    def rand_seed(self, i: int) -> int:
        return self.rand.randrange(1 << 30) * 1000 + i

    def add_empty_node(self, i: int, **overrides: Any) -> RawNode:
        """A new member with an empty log and the initial membership (as the others had)."""
        self.storages[i] = new_storage(*self.initial)
        self.machines[i] = StateMachine()
        return self.start(i, **overrides)

    def crash(self, i: int) -> None:
        """Stop node `i`: it loses what it did not persist, and messages to it."""
        del self.nodes[i]
        lost = [m for m in self.in_flight if m.to == i]
        self.in_flight = [m for m in self.in_flight if m.to != i]
        for m in lost:
            if m.type == raft_pb2.MsgSnap:
                self.deliver(m)     # reaches nobody: its sender hears of the failure

    def restart(self, i: int) -> RawNode:
        """Crash and start node `i` again from its storage."""
        if i in self.nodes:
            self.crash(i)
        return self.start(i)

    # --- links ---------------------------------------------------------------------------

    def isolate(self, i: int) -> None:
        """Cut every link to and from `i`."""
        for j in self.storages:
            if j != i:
                self.cut.update({(i, j), (j, i)})

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut every link between different groups."""
        sets = [set(g) for g in groups]
        for a in sets:
            for b in sets:
                if a is not b:
                    self.cut.update((x, y) for x in a for y in b)

    def recover(self) -> None:
        """Heal every link and stop dropping."""
        self.cut.clear()
        self.ignored.clear()
        self.drop_rate = 0.0
        self.drop_if = None

    def _passes(self, m: Message) -> bool:
        if (getattr(m, "from"), m.to) in self.cut or m.type in self.ignored:
            return False
        if self.drop_if is not None and self.drop_if(m):
            return False
        return not (self.drop_rate and self.rand.random() < self.drop_rate)

    # --- driving -------------------------------------------------------------------------

    def process_ready(self, i: int) -> Ready | None:
        """Play the shell for one Ready of node `i`; the Ready, None when there was none."""
        node = self.nodes[i]
        if not node.has_ready():
            return None
        rd = node.ready()
        storage, sm = self.storages[i], self.machines[i]
        if rd.snapshot is not None:
            storage.apply_snapshot(rd.snapshot)
            self._check_snapshot(rd.snapshot)
            sm.restore(rd.snapshot)
            self.shell_applied[i] = rd.snapshot.metadata.index
            self.conf_states[i] = rd.snapshot.metadata.conf_state
        if rd.entries:
            self._check_log_matching(storage, rd.entries)
            storage.append(rd.entries)
        if rd.hard_state is not None:
            storage.set_hard_state(rd.hard_state)
        for m in rd.messages:
            if m.type == raft_pb2.MsgSnap:
                self._merge_snapshot(i, m)
            if self._passes(m):
                self.in_flight.append(m)
            elif m.type == raft_pb2.MsgSnap:      # the transport reports what it knows
                node.report_snapshot(m.to, failed=True)
            elif (i, m.to) in self.cut:
                node.report_unreachable(m.to)
        for e in rd.committed_entries:
            self._apply(i, e)
        if node.state == StateType.LEADER:
            self.check_one_leader(i)
        node.advance(rd)
        return rd

    def can_snapshot(self, i: int) -> bool:
        """Whether node `i`'s state machine is exactly at the shell's applied index."""
        return self.shell_applied[i] == self.machines[i].applied_index

    def compact(self, i: int, keep: int = 0) -> bool:
        """Snapshot node `i`'s applied state and compact its log; whether it did."""
        storage, index = self.storages[i], self.shell_applied[i]
        if not self.can_snapshot(i) or index <= storage.snapshot().metadata.index:
            return False
        storage.create_snapshot(index, self.conf_states[i], self.machines[i].encode())
        storage.compact(max(index - keep, storage.first_index()))
        return True

    def _merge_snapshot(self, i: int, m: Message) -> None:
        """Send the applied state as of now, as etcd's `createMergedSnapshotMessage` does."""
        meta = m.snapshot.metadata
        index = self.shell_applied[i]
        if not self.can_snapshot(i) or index <= meta.index:
            return
        meta.index = index
        meta.term = self.storages[i].term(index)
        meta.conf_state.CopyFrom(self.conf_states[i])
        m.snapshot.data = self.machines[i].encode()

    def _apply(self, i: int, e: Entry) -> None:
        sm = self.machines[i]
        self.shell_applied[i] = e.Index
        if e.Type == raft_pb2.EntryConfChange:
            cc = raft_pb2.ConfChange()
            cc.ParseFromString(e.Data)
            self.conf_states[i] = self.nodes[i].apply_conf_change(cc)
        if e.Index <= sm.applied_index:       # replayed after a restart
            return
        if e.Index != sm.applied_index + 1:
            raise SafetyViolation(f"node {i} applied {e.Index} after {sm.applied_index}")
        sm.apply(e)
        want = self.applied_digests.setdefault(e.Index, sm.digest)
        if want != sm.digest:
            raise SafetyViolation(f"node {i} applied a different entry at index {e.Index}")

    def _check_snapshot(self, snap: raft_pb2.Snapshot) -> None:
        index, digest, _ = pickle.loads(snap.data)
        want = self.applied_digests.get(index)
        if want is not None and want != digest:
            raise SafetyViolation(f"snapshot at {index} differs from the applied state")

    def _check_log_matching(self, storage: MemoryStorage, ents: list[Entry]) -> None:
        prev_term = storage.term(ents[0].Index - 1) if ents[0].Index > 1 else 0
        for e in ents:
            mine = (e.Type, e.Data, prev_term)
            seen = self.entries_seen.setdefault((e.Index, e.Term), mine)
            if seen != mine:
                raise SafetyViolation(f"two logs disagree before or at {e.Index}/{e.Term}")
            prev_term = e.Term

    def check_one_leader(self, i: int) -> None:
        term = self.nodes[i].term
        leader = self.leaders.setdefault(term, i)
        if leader != i:
            raise SafetyViolation(f"two leaders in term {term}: {leader} and {i}")

    def deliver(self, m: Message) -> None:
        """Step one message into its recipient (gone recipients lose it).

        Like etcd's transport, a snapshot's sender learns whether it arrived.
        """
        node = self.nodes.get(m.to)
        if node is not None:
            try:
                node.step(m)
            except ProposalDroppedError:
                self.dropped_proposals += 1
            except StepPeerNotFoundError:
                pass
        sender = self.nodes.get(getattr(m, "from"))
        if m.type == raft_pb2.MsgSnap and sender is not None:
            sender.report_snapshot(m.to, failed=node is None)

    def drain(self) -> bool:
        """Process every pending Ready once, then deliver every queued message once."""
        busy = False
        for i in sorted(self.nodes):
            busy |= self.process_ready(i) is not None
        msgs, self.in_flight = self.in_flight, []
        for m in msgs:
            self.deliver(m)
        return busy or bool(msgs)

    def stabilize(self, limit: int = 1000) -> None:
        """Run until no node has anything to do and no message is in flight."""
        for _ in range(limit):
            if not self.drain():
                return
        raise AssertionError("network did not stabilize")

    def send(self, *msgs: Message) -> None:
        """Step `msgs` into their recipients, then stabilize."""
        for m in msgs:
            self.deliver(m)
        self.stabilize()

    def tick(self, i: int, n: int = 1) -> None:
        """Tick node `i` `n` times (no processing in between)."""
        for _ in range(n):
            self.nodes[i].tick()

    def tick_all(self, n: int = 1) -> None:
        """Tick every running node `n` times, stabilizing after each round."""
        for _ in range(n):
            for node in self.nodes.values():
                node.tick()
            self.stabilize()

    def campaign(self, i: int) -> None:
        """Node `i` campaigns; the network runs to quiescence."""
        self.nodes[i].campaign()
        self.stabilize()

    def propose(self, i: int, data: bytes) -> bool:
        """Node `i` proposes `data` and the network stabilizes; whether it was accepted."""
        try:
            self.nodes[i].propose(data)
        except ProposalDroppedError:
            return False
        self.stabilize()
        return True

    # --- looking ---------------------------------------------------------------------------

    def leader(self) -> int:
        """The one running node that is leader in the highest term (0 if none)."""
        best = (0, 0)
        for i, node in self.nodes.items():
            if node.state == StateType.LEADER and node.term >= best[0]:
                best = (node.term, i)
        return best[1]

    def log_of(self, i: int) -> list[tuple[int, int, bytes]]:
        """(index, term, data) of every entry node `i` persisted."""
        s = self.storages[i]
        if s.last_index() < s.first_index():
            return []
        return [(e.Index, e.Term, e.Data)
                for e in s.entries(s.first_index(), s.last_index() + 1)]

    def values(self, i: int) -> list[bytes]:
        """The data of the normal entries node `i` applied."""
        return self.machines[i].values


class Solo:
    """One node driven by hand: `ready()` persists to its storage and advances."""

    def __init__(self, id: int = 1, peers: Iterable[int] = (1, 2, 3),
                 learners: Iterable[int] = (), storage: MemoryStorage | None = None,
                 **config: Any) -> None:
        self.storage = storage if storage is not None else new_storage(peers, learners)
        config.setdefault("logger", SILENT)
        self.config = config
        self.node = RawNode(RaftConfig(id=id, storage=self.storage, **config))
        self.applied: list[Entry] = []

    @property
    def raft(self) -> Any:
        """The Raft inside (white-box checks)."""
        return self.node._raft

    def ready(self) -> Ready:
        """Take the Ready, persist it, apply conf changes, advance; return it."""
        rd = self.node.ready()
        if rd.snapshot is not None:
            self.storage.apply_snapshot(rd.snapshot)
        self.storage.append(rd.entries)
        if rd.hard_state is not None:
            self.storage.set_hard_state(rd.hard_state)
        for e in rd.committed_entries:
            if e.Type == raft_pb2.EntryConfChange:
                cc = raft_pb2.ConfChange()
                cc.ParseFromString(e.Data)
                self.node.apply_conf_change(cc)
        self.applied.extend(rd.committed_entries)
        self.node.advance(rd)
        return rd

    def msgs(self) -> list[Message]:
        """The messages of the next Ready (which is persisted and advanced)."""
        return self.ready().messages

    def step(self, *msgs: Message) -> list[Message]:
        """Step `msgs` in; the messages they produced."""
        for m in msgs:
            self.node.step(m)
        return self.msgs()

    def elect(self) -> None:
        """Campaign and receive every voter's grant: leader of the next term."""
        node = self.node
        node.campaign()
        for kind in (raft_pb2.MsgPreVote, raft_pb2.MsgVote):
            asks = [m for m in self.msgs() if m.type == kind]
            for m in asks:
                resp = raft_pb2.MsgPreVoteResp if kind == raft_pb2.MsgPreVote \
                    else raft_pb2.MsgVoteResp
                node.step(msg(resp, m.to, node.id, term=m.term))
            if node.state == StateType.LEADER:
                break
        assert node.state == StateType.LEADER, node.state
        self.msgs()

    def restart(self, **overrides: Any) -> RawNode:
        """A new RawNode on the same storage."""
        self.node = RawNode(RaftConfig(id=self.node.id, storage=self.storage,
                                       **{**self.config, **overrides}))
        return self.node


def entries(*terms: int, start: int = 1) -> list[Entry]:
    """Entries with the given terms at consecutive indexes from `start`."""
    return [Entry(Index=start + k, Term=t) for k, t in enumerate(terms)]


def describe(m: Message) -> str:
    """etcd's short rendering: `1->2 MsgApp Term:1 Log:1/3 Commit:3 Entries:[1/4]`."""
    text = f"{getattr(m, 'from')}->{m.to} {MSG_NAMES[m.type]} Term:{m.term} " \
           f"Log:{m.logTerm}/{m.index}"
    if m.commit:
        text += f" Commit:{m.commit}"
    if m.entries:
        text += " Entries:[" + " ".join(f"{e.Term}/{e.Index}" for e in m.entries) + "]"
    if m.reject:
        text += f" Rejected (Hint: {m.rejectHint})"
    return text
