"""The Raft state machine: terms, elections, the log, replication and membership.

Core (pure). Matches etcd 3.4 `raft/raft.go` (`raft`), with pre-vote (thesis §9.6),
check-quorum, leader transfer (thesis §3.10), learners, ReadIndex (ReadOnlySafe, thesis
§6.4) and single-step membership changes. No joint consensus.

Every input is a `raft_pb2.Message` given to `step`; outputs accumulate in `msgs` and in
the log, and `RawNode` hands them out as a Ready. The role-specific handlers live in
`etcdd/raft/roles.py`, one dispatch table per role, swapped on each transition.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from etcdd.proto import raft_pb2
from etcdd.raft import roles
from etcdd.raft.log import RaftLog
from etcdd.raft.progress import Progress, ProgressState, ProgressTracker, VoteResult
from etcdd.raft.read_only import ReadOnly, ReadState
from etcdd.raft.roles import (CAMPAIGN_ELECTION, CAMPAIGN_PRE_ELECTION, CAMPAIGN_TRANSFER,
                              MSG_NAMES, NONE, StateType)
from etcdd.raft.storage import (CompactedError, MemoryStorage, RaftError, RaftInvariantError,
                                UnavailableError)

Entry = raft_pb2.Entry
Message = raft_pb2.Message

_VOTE_TYPES = frozenset((raft_pb2.MsgVote, raft_pb2.MsgVoteResp,
                         raft_pb2.MsgPreVote, raft_pb2.MsgPreVoteResp))
_VOTE_RESP = {raft_pb2.MsgVote: raft_pb2.MsgVoteResp,
              raft_pb2.MsgPreVote: raft_pb2.MsgPreVoteResp}
_LEADER_MSGS = frozenset((raft_pb2.MsgApp, raft_pb2.MsgHeartbeat, raft_pb2.MsgSnap))
_CONF_CHANGE_TYPES = frozenset((raft_pb2.EntryConfChange, raft_pb2.EntryConfChangeV2))


@dataclass(frozen=True)
class RaftConfig:
    """How to start one raft node (etcd `raft.Config`).

    `applied` is the last index the state machine applied before a restart; entries at or
    before it are not handed out again, conf changes included, so they never reach
    `apply_conf_change` (etcd's server leaves it 0, so raft replays everything after the
    snapshot, and skips what its store already has by consistent index).
    `max_size_per_msg` also bounds the committed entries of one Ready (etcd
    `MaxCommittedSizePerReady` defaults to it). `max_uncommitted_entries_size` 0 is
    unlimited.
    """

    id: int
    storage: MemoryStorage
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    applied: int = 0
    max_size_per_msg: int = 1 << 20
    max_inflight_msgs: int = 512
    max_uncommitted_entries_size: int = 0
    check_quorum: bool = True
    pre_vote: bool = True
    rand: random.Random = field(default_factory=lambda: random.Random(0))
    disable_proposal_forwarding: bool = False
    logger: Any = field(default_factory=lambda: Logger(namespace="etcdd.raft"))

    def __post_init__(self) -> None:
        if self.id == NONE:
            raise RaftError("cannot use none as id")
        if self.heartbeat_ticks <= 0:
            raise RaftError("heartbeat tick must be greater than 0")
        if self.election_ticks <= self.heartbeat_ticks:
            raise RaftError("election tick must be greater than heartbeat tick")
        if self.max_inflight_msgs <= 0:
            raise RaftError("max inflight messages must be greater than 0")


class Raft:
    """One node's consensus state.

    Invariants: at most one vote per term (`vote` is persisted with `term`); a leader's
    `prs.progress[id].match == raft_log.last_index()`; `lead_transferee` is NONE unless
    this node is leader.
    """

    def __init__(self, config: RaftConfig) -> None:
        self.id = config.id
        self.logger = config.logger
        self.raft_log = RaftLog(config.storage, config.logger, config.max_size_per_msg)
        self.max_msg_size = config.max_size_per_msg
        self.max_uncommitted_size = config.max_uncommitted_entries_size
        self.prs = ProgressTracker(config.max_inflight_msgs)
        self.election_timeout = config.election_ticks
        self.heartbeat_timeout = config.heartbeat_ticks
        self.check_quorum = config.check_quorum
        self.pre_vote = config.pre_vote
        self.disable_proposal_forwarding = config.disable_proposal_forwarding
        self.rand = config.rand
        self.term = 0
        self.vote = NONE
        self.lead = NONE
        self.state = StateType.FOLLOWER
        self.is_learner = False
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = 0
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.read_only = ReadOnly()
        self.pending_read_index_messages: list[Message] = []
        self.pending_append = False          # proposals appended, MsgApps not yet sent
        self.tick: Callable[[], None] = self.tick_election
        self.handlers: dict[int, Callable[[Raft, Message], None]] = roles.FOLLOWER

        hs, cs = config.storage.initial_state()
        self.prs.restore(cs, self.raft_log.last_index())
        self.switch_to_config()
        if hs.term or hs.vote or hs.commit:
            self.load_state(hs)
        if config.applied > 0:
            self.raft_log.applied_to(config.applied)
        self.become_follower(self.term, NONE)
        self.logger.info(
            "newRaft {id:x} [peers: [{peers}], term: {term}, commit: {commit}, applied: "
            "{applied}, lastindex: {last_index}, lastterm: {last_term}]",
            id=self.id, peers=",".join(f"{i:x}" for i in sorted(self.prs.voters)),
            term=self.term, commit=self.raft_log.committed, applied=self.raft_log.applied,
            last_index=self.raft_log.last_index(), last_term=self.raft_log.last_term())

    # --- state snapshots -------------------------------------------------------------

    def hard_state(self) -> raft_pb2.HardState:
        """What must be durable before messages go out: term, vote, commit."""
        return raft_pb2.HardState(term=self.term, vote=self.vote,
                                  commit=self.raft_log.committed)

    def load_state(self, hs: raft_pb2.HardState) -> None:
        """Restore term, vote and commit from a saved hard state."""
        log = self.raft_log
        if hs.commit < log.committed or hs.commit > log.last_index():
            raise RaftInvariantError(f"{self.id:x} state.commit {hs.commit} is out of range "
                                     f"[{log.committed}, {log.last_index()}]")
        log.committed = hs.commit
        self.term = hs.term
        self.vote = hs.vote

    def promotable(self) -> bool:
        """Whether this node is a voter in its configuration (and so may campaign)."""
        pr = self.prs.progress.get(self.id)
        return pr is not None and not pr.is_learner

    # --- sending ---------------------------------------------------------------------

    def send(self, m: Message) -> None:
        """Queue `m` for the Ready, stamping `from` and (except proposals/reads) the term."""
        setattr(m, "from", self.id)
        mt = m.type
        if mt in _VOTE_TYPES:
            if m.term == 0:
                raise RaftInvariantError(f"term should be set when sending {MSG_NAMES[mt]}")
        else:
            if m.term != 0:
                raise RaftInvariantError(
                    f"term should not be set when sending {MSG_NAMES[mt]} (was {m.term})")
            if mt != raft_pb2.MsgProp and mt != raft_pb2.MsgReadIndex:
                m.term = self.term
        self.msgs.append(m)

    def send_append(self, to: int) -> None:
        """Send `to` the entries it lacks, or an empty MsgApp carrying the commit index."""
        self.maybe_send_append(to, True)

    def maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        """Send `to` a MsgApp (or a MsgSnap when its next entry is compacted); whether sent."""
        pr = self.prs.progress[to]
        if pr.is_paused():
            return False
        log = self.raft_log
        failed = False
        try:
            term = log.term(pr.next - 1)
        except (CompactedError, UnavailableError):
            failed, term = True, 0
        try:
            ents = log.entries(pr.next, self.max_msg_size)
        except CompactedError:
            failed, ents = True, []
        if not ents and not send_if_empty:
            return False
        if failed:
            return roles.send_snapshot(self, to, pr)
        m = Message(type=raft_pb2.MsgApp, to=to, index=pr.next - 1, logTerm=term,
                    commit=log.committed)
        if ents:
            m.entries.extend(ents)
            if pr.state == ProgressState.REPLICATE:     # optimistic: assume it arrives
                last = ents[-1].Index
                pr.next = last + 1
                pr.inflights.add(last)
            elif pr.state == ProgressState.PROBE:
                pr.probe_sent = True
            else:
                raise RaftInvariantError(
                    f"{self.id:x} is sending append in unhandled state {pr.state.name}")
        self.send(m)
        return True

    def send_heartbeat(self, to: int, ctx: bytes) -> None:
        """Heartbeat `to`, carrying min(its match, commit): never commit past what it has."""
        commit = min(self.prs.progress[to].match, self.raft_log.committed)
        self.send(Message(type=raft_pb2.MsgHeartbeat, to=to, commit=commit, context=ctx))

    def bcast_append(self) -> None:
        """Send every peer what it lacks."""
        for i in self.prs.progress:
            if i != self.id:
                self.maybe_send_append(i, True)

    def flush_appends(self) -> None:
        """Send the entries proposals appended since the last Ready (one MsgApp per peer)."""
        self.pending_append = False
        if self.state == StateType.LEADER:
            for i in self.prs.progress:
                if i != self.id:
                    self.maybe_send_append(i, False)

    def bcast_heartbeat(self) -> None:
        """Heartbeat every peer, carrying the newest pending ReadIndex context."""
        self.bcast_heartbeat_with_ctx(self.read_only.last_pending_request_ctx())

    def bcast_heartbeat_with_ctx(self, ctx: bytes) -> None:
        """Heartbeat every peer with `ctx`."""
        for i in self.prs.progress:
            if i != self.id:
                self.send_heartbeat(i, ctx)

    def send_timeout_now(self, to: int) -> None:
        """Tell `to` to campaign at once (leader transfer)."""
        self.send(Message(type=raft_pb2.MsgTimeoutNow, to=to))

    # --- log -------------------------------------------------------------------------

    def advance(self, committed_entries: Sequence[Entry], entries: Sequence[Entry],
                snapshot: raft_pb2.Snapshot | None) -> None:
        """The shell persisted `entries`/`snapshot` and applied `committed_entries`."""
        if committed_entries:
            self.raft_log.applied_to(committed_entries[-1].Index)
        elif snapshot is not None and snapshot.metadata.index > 0:
            self.raft_log.applied_to(snapshot.metadata.index)
        self.reduce_uncommitted_size(committed_entries)
        if entries:
            e = entries[-1]
            self.raft_log.stable_to(e.Index, e.Term)
        if snapshot is not None:
            self.raft_log.stable_snap_to(snapshot.metadata.index)

    def maybe_commit(self) -> bool:
        """Commit what a quorum of voters has, if it is of this term; whether it moved."""
        return self.raft_log.maybe_commit(self.prs.committed(), self.term)

    def append_entry(self, ents: list[Entry]) -> bool:
        """Stamp `ents` with this term and the next indexes and append them (leader).

        Returns False (appending nothing) when the uncommitted size limit would be passed.
        """
        li = self.raft_log.last_index()
        term = self.term
        for i, e in enumerate(ents, li + 1):
            e.Term = term
            e.Index = i
        if not self.increase_uncommitted_size(ents):
            self.logger.debug("{id:x} appending new entries to log would exceed uncommitted "
                              "entry size limit; dropping proposal", id=self.id)
            return False
        li = self.raft_log.append(ents)
        self.prs.progress[self.id].maybe_update(li)
        # NB: etcd calls maybeCommit unconditionally; with two or more voters the leader's
        # own append cannot move the quorum index (followers' matches are all below it).
        if self.prs.is_singleton():
            self.maybe_commit()
        return True

    def increase_uncommitted_size(self, ents: Sequence[Entry]) -> bool:
        """Account for proposed entries; False when they would pass the limit."""
        if not self.max_uncommitted_size:     # unlimited: nothing to track
            return True
        s = sum(len(e.Data) for e in ents)
        # NB: an empty uncommitted tail admits one proposal of any size (etcd).
        if self.uncommitted_size > 0 and self.uncommitted_size + s > self.max_uncommitted_size:
            return False
        self.uncommitted_size += s
        return True

    def reduce_uncommitted_size(self, ents: Sequence[Entry]) -> None:
        """Committed entries no longer count towards the uncommitted size."""
        if self.uncommitted_size == 0:
            return
        s = sum(len(e.Data) for e in ents)
        self.uncommitted_size = max(self.uncommitted_size - s, 0)

    # --- time and transitions --------------------------------------------------------

    def tick_election(self) -> None:
        """Follower and candidate tick: campaign once the randomized timeout passed."""
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_election_timeout and self.promotable():
            self.election_elapsed = 0
            self.step(Message(type=raft_pb2.MsgHup, **{"from": self.id}))

    def tick_heartbeat(self) -> None:
        """Leader tick: heartbeat, check quorum, and abort a transfer that took too long."""
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.check_quorum:
                self.step(Message(type=raft_pb2.MsgCheckQuorum, **{"from": self.id}))
            if self.state == StateType.LEADER and self.lead_transferee != NONE:
                self.abort_leader_transfer()
        if self.state != StateType.LEADER:
            return
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(Message(type=raft_pb2.MsgBeat, **{"from": self.id}))

    def reset(self, term: int) -> None:
        """Enter `term` (forgetting the vote if it is new) with fresh timers and progress."""
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = (self.election_timeout
                                            + self.rand.randrange(self.election_timeout))
        self.abort_leader_transfer()
        prs = self.prs
        prs.reset_votes()
        last = self.raft_log.last_index()
        fresh = {}
        for i, old in prs.progress.items():
            fresh[i] = Progress(last + 1, prs.max_inflight, is_learner=old.is_learner,
                                match=last if i == self.id else 0)
        prs.progress = fresh
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self.read_only = ReadOnly()

    def become_follower(self, term: int, lead: int) -> None:
        """Follow `lead` (NONE: unknown) in `term`."""
        self.handlers = roles.FOLLOWER
        self.reset(term)
        self.tick = self.tick_election
        self.lead = lead
        self.state = StateType.FOLLOWER
        self.logger.info("{id:x} became follower at term {term}", id=self.id, term=self.term)

    def become_candidate(self) -> None:
        """Start an election in the next term, voting for ourselves."""
        if self.state == StateType.LEADER:
            raise RaftInvariantError("invalid transition [leader -> candidate]")
        self.handlers = roles.CANDIDATE
        self.reset(self.term + 1)
        self.tick = self.tick_election
        self.vote = self.id
        self.state = StateType.CANDIDATE
        self.logger.info("{id:x} became candidate at term {term}", id=self.id, term=self.term)

    def become_pre_candidate(self) -> None:
        """Ask whether we could win the next term, without changing term or vote (§9.6)."""
        if self.state == StateType.LEADER:
            raise RaftInvariantError("invalid transition [leader -> pre-candidate]")
        self.handlers = roles.PRE_CANDIDATE
        self.prs.reset_votes()
        self.tick = self.tick_election
        self.lead = NONE
        self.state = StateType.PRE_CANDIDATE
        self.logger.info("{id:x} became pre-candidate at term {term}",
                         id=self.id, term=self.term)

    def become_leader(self) -> None:
        """Lead this term: replicate to everyone, starting with an empty entry (§5.4.2)."""
        if self.state == StateType.FOLLOWER:
            raise RaftInvariantError("invalid transition [follower -> leader]")
        self.handlers = roles.LEADER
        self.reset(self.term)
        self.tick = self.tick_heartbeat
        self.lead = self.id
        self.state = StateType.LEADER
        self.prs.progress[self.id].become_replicate()
        # Any conf change in the log may still be unapplied: refuse new ones until the
        # whole current log is applied (etcd: conservative, no log scan).
        self.pending_conf_index = self.raft_log.last_index()
        empty = Entry()
        if not self.append_entry([empty]):
            raise RaftInvariantError("empty entry was dropped")
        self.logger.info("{id:x} became leader at term {term}", id=self.id, term=self.term)

    def abort_leader_transfer(self) -> None:
        """Forget any leader transfer in progress."""
        self.lead_transferee = NONE

    # --- elections -------------------------------------------------------------------

    def hup(self) -> None:
        """Start an election (pre-vote first when enabled), unless that would be unsafe."""
        if self.state == StateType.LEADER:
            self.logger.debug("{id:x} ignoring MsgHup because already leader", id=self.id)
            return
        if not self.promotable():
            self.logger.warn("{id:x} is unpromotable and can not campaign; ignoring MsgHup",
                             id=self.id)
            return
        log = self.raft_log
        if log.committed > log.applied:
            lo = max(log.applied + 1, log.first_index())
            n = sum(1 for e in log.slice(lo, log.committed + 1, None)
                    if e.Type in _CONF_CHANGE_TYPES)
            if n:
                self.logger.warn("{id:x} cannot campaign at term {term} since there are "
                                 "still {n} pending configuration changes to apply",
                                 id=self.id, term=self.term, n=n)
                return
        self.logger.info("{id:x} is starting a new election at term {term}",
                         id=self.id, term=self.term)
        self.campaign(CAMPAIGN_PRE_ELECTION if self.pre_vote else CAMPAIGN_ELECTION)

    def campaign(self, kind: bytes) -> None:
        """Become (pre-)candidate and ask every other voter for its vote."""
        if not self.promotable():
            self.logger.warn("{id:x} is unpromotable; campaign() should have been called",
                             id=self.id)
        if kind == CAMPAIGN_PRE_ELECTION:
            self.become_pre_candidate()
            vote_msg, term = raft_pb2.MsgPreVote, self.term + 1   # not yet our term
        else:
            self.become_candidate()
            vote_msg, term = raft_pb2.MsgVote, self.term
        if self.poll(self.id, _VOTE_RESP[vote_msg], True)[2] == VoteResult.WON:
            if kind == CAMPAIGN_PRE_ELECTION:   # a single voter: win at once
                self.campaign(CAMPAIGN_ELECTION)
            else:
                self.become_leader()
            return
        ctx = kind if kind == CAMPAIGN_TRANSFER else b""
        last_index, last_term = self.raft_log.last_index(), self.raft_log.last_term()
        for i in sorted(self.prs.voters):
            if i == self.id:
                continue
            self.logger.info("{id:x} [logterm: {log_term}, index: {index}] sent {type} "
                             "request to {to:x} at term {term}", id=self.id,
                             log_term=last_term, index=last_index, type=MSG_NAMES[vote_msg],
                             to=i, term=self.term)
            self.send(Message(type=vote_msg, to=i, term=term, index=last_index,
                              logTerm=last_term, context=ctx))

    def poll(self, id: int, t: int, granted: bool) -> tuple[int, int, VoteResult]:
        """Record `id`'s answer of type `t`; (granted, rejected, result) so far."""
        if granted:
            self.logger.info("{id:x} received {type} from {frm:x} at term {term}",
                             id=self.id, type=MSG_NAMES[t], frm=id, term=self.term)
        else:
            self.logger.info("{id:x} received {type} rejection from {frm:x} at term {term}",
                             id=self.id, type=MSG_NAMES[t], frm=id, term=self.term)
        self.prs.record_vote(id, granted)
        return self.prs.tally_votes()

    # --- stepping --------------------------------------------------------------------

    def step(self, m: Message) -> None:
        """Handle one message: term bookkeeping first, then the current role's handler.

        Raises ProposalDroppedError for a proposal that cannot be accepted.
        """
        mt, mterm = m.type, m.term
        if mterm > self.term:
            if not self._step_higher_term(m, mt, mterm):
                return
        elif 0 < mterm < self.term:
            self._step_lower_term(m, mt, mterm)
            return
        if mt == raft_pb2.MsgHup:
            self.hup()
        elif mt == raft_pb2.MsgVote or mt == raft_pb2.MsgPreVote:
            self._on_vote_request(m, mt)
        else:
            handler = self.handlers.get(mt)
            if handler is not None:
                handler(self, m)

    def _step_higher_term(self, m: Message, mt: int, mterm: int) -> bool:
        """React to a message from a later term; False when it must be ignored."""
        mfrom = getattr(m, "from")
        if mt == raft_pb2.MsgVote or mt == raft_pb2.MsgPreVote:
            force = m.context == CAMPAIGN_TRANSFER
            in_lease = (self.check_quorum and self.lead != NONE
                        and self.election_elapsed < self.election_timeout)
            if not force and in_lease:
                # Thesis §4.2.3: a server that heard from a leader within the minimum
                # election timeout neither updates its term nor grants its vote.
                self.logger.info(
                    "{id:x} [logterm: {log_term}, index: {index}, vote: {vote:x}] ignored "
                    "{type} from {frm:x} [logterm: {m_log_term}, index: {m_index}] at term "
                    "{term}: lease is not expired (remaining ticks: {remaining})", id=self.id,
                    log_term=self.raft_log.last_term(), index=self.raft_log.last_index(),
                    vote=self.vote, type=MSG_NAMES[mt], frm=mfrom, m_log_term=m.logTerm,
                    m_index=m.index, term=self.term,
                    remaining=self.election_timeout - self.election_elapsed)
                return False
        if mt == raft_pb2.MsgPreVote:
            pass                        # never change our term for a pre-vote
        elif mt == raft_pb2.MsgPreVoteResp and not m.reject:
            pass                        # granted for a term we have not entered yet
        else:
            self.logger.info("{id:x} [term: {term}] received a {type} message with higher "
                             "term from {frm:x} [term: {m_term}]", id=self.id, term=self.term,
                             type=MSG_NAMES[mt], frm=mfrom, m_term=mterm)
            self.become_follower(mterm, mfrom if mt in _LEADER_MSGS else NONE)
        return True

    def _step_lower_term(self, m: Message, mt: int, mterm: int) -> None:
        """Answer or drop a message from an earlier term."""
        mfrom = getattr(m, "from")
        if (self.check_quorum or self.pre_vote) and (mt == raft_pb2.MsgHeartbeat
                                                     or mt == raft_pb2.MsgApp):
            # A stale leader (or we advanced our term while partitioned): tell it our
            # term so it steps down; with check-quorum and pre-vote votes alone won't.
            self.send(Message(type=raft_pb2.MsgAppResp, to=mfrom))
        elif mt == raft_pb2.MsgPreVote:
            self.logger.info(
                "{id:x} [logterm: {log_term}, index: {index}, vote: {vote:x}] rejected {type} "
                "from {frm:x} [logterm: {m_log_term}, index: {m_index}] at term {term}",
                id=self.id, log_term=self.raft_log.last_term(),
                index=self.raft_log.last_index(), vote=self.vote, type=MSG_NAMES[mt],
                frm=mfrom, m_log_term=m.logTerm, m_index=m.index, term=self.term)
            self.send(Message(type=raft_pb2.MsgPreVoteResp, to=mfrom, term=self.term,
                              reject=True))
        else:
            self.logger.info("{id:x} [term: {term}] ignored a {type} message with lower term "
                             "from {frm:x} [term: {m_term}]", id=self.id, term=self.term,
                             type=MSG_NAMES[mt], frm=mfrom, m_term=mterm)

    def _on_vote_request(self, m: Message, mt: int) -> None:
        """Grant or refuse a (pre-)vote: one vote per term, candidate log up to date (§5.4.1)."""
        mfrom = getattr(m, "from")
        can_vote = (self.vote == mfrom                                   # a repeat
                    or (self.vote == NONE and self.lead == NONE)         # free this term
                    or (mt == raft_pb2.MsgPreVote and m.term > self.term))
        # NB: learners vote too: one may have been promoted without knowing it yet (etcd).
        granted = can_vote and self.raft_log.is_up_to_date(m.index, m.logTerm)
        self.logger.info(
            "{id:x} [logterm: {log_term}, index: {index}, vote: {vote:x}] {verb} {type} "
            "{prep} {frm:x} [logterm: {m_log_term}, index: {m_index}] at term {term}",
            id=self.id, log_term=self.raft_log.last_term(), index=self.raft_log.last_index(),
            vote=self.vote, verb="cast" if granted else "rejected", type=MSG_NAMES[mt],
            prep="for" if granted else "from", frm=mfrom, m_log_term=m.logTerm,
            m_index=m.index, term=self.term)
        if granted:
            # Answer with the message's term: a pre-vote's is in our future.
            self.send(Message(type=_VOTE_RESP[mt], to=mfrom, term=m.term))
            if mt == raft_pb2.MsgVote:
                self.election_elapsed = 0
                self.vote = mfrom
        else:
            self.send(Message(type=_VOTE_RESP[mt], to=mfrom, term=self.term, reject=True))

    # --- membership ------------------------------------------------------------------

    def apply_conf_change(self, cc: raft_pb2.ConfChange) -> raft_pb2.ConfState:
        """Apply a committed single-step membership change; the resulting ConfState."""
        self.prs.apply_change(cc.type, cc.node_id, self.raft_log.last_index())
        return self.switch_to_config()

    def switch_to_config(self) -> raft_pb2.ConfState:
        """React to a new configuration: learner flag, commit, probe new members."""
        self.logger.info("{id:x} switched to configuration {config}",
                         id=self.id, config=self.prs.config_string())
        cs = self.prs.conf_state()
        pr = self.prs.progress.get(self.id)
        self.is_learner = pr is not None and pr.is_learner
        if self.state != StateType.LEADER or pr is None or self.is_learner:
            # NB: etcd 3.4 keeps a removed leader leading; the server stops it.
            return cs
        if not cs.voters:
            return cs
        if self.maybe_commit():
            self.bcast_append()
        else:
            for i in self.prs.progress:
                if i != self.id:
                    self.maybe_send_append(i, False)
        if self.lead_transferee != NONE and self.lead_transferee not in self.prs.progress:
            self.abort_leader_transfer()
        return cs
