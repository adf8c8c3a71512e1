"""The raft core's public face: RawNode, Ready, and the status value types.

Core (pure). Matches etcd 3.4 `raft/rawnode.go`, `raft/bootstrap.go`, `raft/status.go`
and the `Ready` of `raft/node.go`. The shell drives it in one loop::

    node.tick() / node.step(msg) / node.propose(data) ...
    if node.has_ready():
        rd = node.ready()
        persist rd.snapshot, rd.entries, rd.hard_state (fsync when rd.must_sync)
        send rd.messages (a leader may send before persisting; a follower after)
        apply rd.snapshot, then rd.committed_entries (apply_conf_change for conf changes)
        node.advance(rd)
"""
from __future__ import annotations

from dataclasses import dataclass

from etcdd.proto import raft_pb2
from etcdd.raft.progress import ProgressState
from etcdd.raft.raft import Raft, RaftConfig
from etcdd.raft.read_only import ReadState
from etcdd.raft.roles import NONE, StateType
from etcdd.raft.storage import RaftError, StepLocalMsgError, StepPeerNotFoundError

Entry = raft_pb2.Entry
Message = raft_pb2.Message

__all__ = ["ProgressInfo", "RawNode", "ReadState", "Ready", "SoftState", "Status"]

_LOCAL_MSGS = frozenset((raft_pb2.MsgHup, raft_pb2.MsgBeat, raft_pb2.MsgUnreachable,
                         raft_pb2.MsgSnapStatus, raft_pb2.MsgCheckQuorum))
_RESPONSE_MSGS = frozenset((raft_pb2.MsgAppResp, raft_pb2.MsgVoteResp,
                            raft_pb2.MsgHeartbeatResp, raft_pb2.MsgUnreachable,
                            raft_pb2.MsgPreVoteResp))


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting: who leads and our role. Never persisted."""

    lead: int
    raft_state: StateType


@dataclass(slots=True)
class Ready:
    """Everything the shell must do after some input, in the order of the module docstring.

    `soft_state`/`hard_state` are None when unchanged since the last Ready. `snapshot`,
    when set, precedes `committed_entries` (which then follow it).
    """

    soft_state: SoftState | None
    hard_state: raft_pb2.HardState | None
    read_states: list[ReadState]
    entries: list[Entry]
    snapshot: raft_pb2.Snapshot | None
    committed_entries: list[Entry]
    messages: list[Message]
    must_sync: bool


@dataclass(frozen=True, slots=True)
class ProgressInfo:
    """The leader's view of one follower (a copy)."""

    match: int
    next: int
    state: ProgressState
    recent_active: bool
    is_learner: bool


@dataclass(frozen=True)
class Status:
    """A node's state for humans and the status API; `progress` only on the leader."""

    id: int
    term: int
    vote: int
    commit: int
    lead: int
    raft_state: StateType
    applied: int
    lead_transferee: int
    progress: dict[int, ProgressInfo]


class RawNode:
    """One raft node driven synchronously by the shell.

    Invariant: the hard state of the last Ready handed to `advance` is what the shell
    persisted; `ready()` reports changes relative to it.
    """

    def __init__(self, config: RaftConfig) -> None:
        """Start (or restart) from the hard state, ConfState and log in `config.storage`."""
        self._raft = Raft(config)
        self._prev_soft = self._soft_state()
        self._prev_hard = self._raft.hard_state()

    # --- cheap read-only properties for the shell ------------------------------------

    @property
    def id(self) -> int:
        """This node's id."""
        return self._raft.id

    @property
    def lead(self) -> int:
        """The leader this node knows of (0: none)."""
        return self._raft.lead

    @property
    def term(self) -> int:
        """The current term."""
        return self._raft.term

    @property
    def state(self) -> StateType:
        """This node's role."""
        return self._raft.state

    @property
    def committed(self) -> int:
        """The commit index."""
        return self._raft.raft_log.committed

    @property
    def is_learner(self) -> bool:
        """Whether this node is a learner in its configuration."""
        return self._raft.is_learner

    @property
    def lead_transferee(self) -> int:
        """The target of a leader transfer in progress (0: none)."""
        return self._raft.lead_transferee

    # --- inputs ----------------------------------------------------------------------

    def bootstrap(self, peers: list[tuple[int, bytes]]) -> None:
        """Start a new cluster: one ConfChangeAddNode entry per (id, context), committed.

        The entries come out in the next Ready as both `entries` and `committed_entries`;
        the shell applies them with `apply_conf_change` as usual (idempotent here). Raises
        RaftError when `peers` is empty or storage is not.
        """
        if not peers:
            raise RaftError("must provide at least one peer to Bootstrap")
        r = self._raft
        if r.raft_log.storage.last_index() != 0:
            raise RaftError("can't bootstrap a nonempty Storage")
        self._prev_hard = raft_pb2.HardState()     # nothing is persisted yet
        r.become_follower(1, NONE)
        ents = []
        for i, (node_id, context) in enumerate(peers, 1):
            # id=0 written explicitly: etcd's gogo encoding always carries it.
            cc = raft_pb2.ConfChange(id=0, type=raft_pb2.ConfChangeAddNode, node_id=node_id)
            if context:
                cc.context = context
            ents.append(Entry(Type=raft_pb2.EntryConfChange, Term=1, Index=i,
                              Data=cc.SerializeToString()))
        r.raft_log.append(ents)
        # NB: committed while still unstable, as etcd does; applied stays 0 so the shell
        # sees every conf change in committed_entries.
        r.raft_log.committed = len(ents)
        for node_id, _ in peers:
            r.apply_conf_change(raft_pb2.ConfChange(type=raft_pb2.ConfChangeAddNode,
                                                    node_id=node_id))

    def tick(self) -> None:
        """Advance logical time by one tick (elections, heartbeats, check-quorum)."""
        self._raft.tick()

    def campaign(self) -> None:
        """Start an election now (pre-vote first when enabled)."""
        self._raft.step(Message(type=raft_pb2.MsgHup))

    def propose(self, data: bytes) -> None:
        """Propose `data` for the log; raises ProposalDroppedError when it cannot be taken.

        Accepted is not committed: watch committed_entries for it.
        """
        m = Message(type=raft_pb2.MsgProp, **{"from": self._raft.id})
        m.entries.add(Data=data)
        self._raft.step(m)

    def propose_conf_change(self, cc: raft_pb2.ConfChange) -> None:
        """Propose a membership change; raises ProposalDroppedError.

        While an earlier change is unapplied the leader turns this one into an empty
        normal entry (etcd), so only the applied conf change counts.
        """
        m = Message(type=raft_pb2.MsgProp, **{"from": self._raft.id})
        m.entries.add(Type=raft_pb2.EntryConfChange, Data=cc.SerializeToString())
        self._raft.step(m)

    def step(self, m: Message) -> None:
        """Handle a message from a peer.

        Raises StepLocalMsgError for a type only the node itself may produce,
        StepPeerNotFoundError for a response from a node not in the configuration (the
        shell drops it), ProposalDroppedError for a forwarded proposal that is refused.
        """
        mt = m.type
        if mt in _LOCAL_MSGS:
            raise StepLocalMsgError()
        if mt in _RESPONSE_MSGS and getattr(m, "from") not in self._raft.prs.progress:
            raise StepPeerNotFoundError()
        self._raft.step(m)

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read point; the answer is a ReadState with `ctx`.

        With no known leader the request is dropped (logged); the shell retries.
        """
        m = Message(type=raft_pb2.MsgReadIndex)
        m.entries.add(Data=ctx)
        self._raft.step(m)

    def transfer_leader(self, transferee: int) -> None:
        """Ask this node, the leader, to hand leadership to `transferee`.

        NB: on a follower the request is forwarded to the leader as etcd 3.4 does, which
        makes it a transfer to the follower itself; call it on the leader.
        """
        self._raft.step(Message(type=raft_pb2.MsgTransferLeader, **{"from": transferee}))

    def report_unreachable(self, id: int) -> None:
        """The shell failed to send to `id`: stop streaming to it, probe instead."""
        self._raft.step(Message(type=raft_pb2.MsgUnreachable, **{"from": id}))

    def report_snapshot(self, id: int, failed: bool) -> None:
        """The snapshot sent to `id` was delivered (or failed)."""
        self._raft.step(Message(type=raft_pb2.MsgSnapStatus, reject=failed, **{"from": id}))

    def apply_conf_change(self, cc: raft_pb2.ConfChange) -> raft_pb2.ConfState:
        """Apply a committed membership change; the new ConfState (persist it)."""
        return self._raft.apply_conf_change(cc)

    # --- outputs ---------------------------------------------------------------------

    def _soft_state(self) -> SoftState:
        return SoftState(self._raft.lead, self._raft.state)

    @property
    def pending_snapshot_index(self) -> int:
        """The index of a snapshot raft took but the shell has not persisted yet, else 0."""
        snap = self._raft.raft_log.unstable.snapshot
        return snap.metadata.index if snap is not None else 0

    def take_messages(self, types: frozenset[int]) -> list[Message]:
        """Remove the pending messages of `types` from the next Ready and return them.

        For heartbeats and their responses, which claim nothing that must be persisted
        first: the shell sends them while its previous Ready is still on the disk (a
        long backend write, a defrag), so leadership survives a busy disk as in etcd,
        whose raft loop does not wait for applies."""
        r = self._raft
        taken = [m for m in r.msgs if m.type in types]
        if taken:
            r.msgs = [m for m in r.msgs if m.type not in types]
        return taken

    def has_ready(self) -> bool:
        """Whether `ready()` would have anything to do."""
        r = self._raft
        if r.pending_append:
            r.flush_appends()
        if r.msgs or r.read_states:
            return True
        log = r.raft_log
        if log.unstable.entries or log.unstable.snapshot is not None or log.has_next_ents():
            return True
        if r.lead != self._prev_soft.lead or r.state != self._prev_soft.raft_state:
            return True
        prev = self._prev_hard
        return ((r.term, r.vote, log.committed) != (prev.term, prev.vote, prev.commit)
                and (r.term or r.vote or log.committed) != 0)

    def ready(self) -> Ready:
        """Take what must be persisted, sent and applied now; call `advance` when done."""
        r = self._raft
        if r.pending_append:
            r.flush_appends()
        log = r.raft_log
        soft = None
        if r.lead != self._prev_soft.lead or r.state != self._prev_soft.raft_state:
            soft = self._prev_soft = self._soft_state()
        prev = self._prev_hard
        hard = None
        if (r.term, r.vote, log.committed) != (prev.term, prev.vote, prev.commit):
            hard = r.hard_state()
        entries = log.unstable_entries()
        rd = Ready(soft_state=soft, hard_state=hard, read_states=r.read_states,
                   entries=entries, snapshot=log.unstable.snapshot,
                   committed_entries=log.next_ents(), messages=r.msgs,
                   must_sync=bool(entries) or r.term != prev.term or r.vote != prev.vote)
        r.read_states = []
        r.msgs = []
        return rd

    def advance(self, rd: Ready) -> None:
        """The shell persisted and applied `rd`: mark entries stable and applied.

        Call only after `rd.entries`, `rd.hard_state` and `rd.snapshot` are durable.
        """
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        self._raft.advance(rd.committed_entries, rd.entries, rd.snapshot)

    def status(self) -> Status:
        """A copy of the node's state (progress of every member on the leader)."""
        r = self._raft
        progress: dict[int, ProgressInfo] = {}
        if r.state == StateType.LEADER:
            progress = {i: ProgressInfo(pr.match, pr.next, pr.state, pr.recent_active,
                                        pr.is_learner)
                        for i, pr in r.prs.progress.items()}
        return Status(id=r.id, term=r.term, vote=r.vote, commit=r.raft_log.committed,
                      lead=r.lead, raft_state=r.state, applied=r.raft_log.applied,
                      lead_transferee=r.lead_transferee, progress=progress)
