"""What each raft role does with each message: one dispatch table per role.

Core (pure). Matches etcd 3.4 `raft/raft.go` `stepLeader`, `stepCandidate`,
`stepFollower`, `handleAppendEntries`, `handleHeartbeat`, `handleSnapshot` and `restore`.
`Raft.step` has already done the term bookkeeping (and MsgHup / vote requests) when a
handler here runs. A handler takes the Raft and the message; it raises
ProposalDroppedError for a proposal it cannot take, and returns nothing otherwise.
"""
from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING

from etcdd.proto import raft_pb2
from etcdd.raft.progress import Progress, ProgressState, ProgressTracker, VoteResult
from etcdd.raft.read_only import ReadState
from etcdd.raft.storage import (ProposalDroppedError, RaftInvariantError,
                                SnapshotTemporarilyUnavailableError)

if TYPE_CHECKING:
    from etcdd.raft.raft import Raft

Message = raft_pb2.Message
Entry = raft_pb2.Entry
Handler = Callable[["Raft", Message], None]

NONE = 0                               # etcd `None`: no node / no leader
CAMPAIGN_PRE_ELECTION = b"CampaignPreElection"
CAMPAIGN_ELECTION = b"CampaignElection"
CAMPAIGN_TRANSFER = b"CampaignTransfer"
MSG_NAMES = {v.number: v.name for v in raft_pb2.MessageType.DESCRIPTOR.values}


class StateType(enum.IntEnum):
    """A node's role (etcd `StateType`)."""

    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2
    PRE_CANDIDATE = 3

_CONF_CHANGE_TYPES = frozenset((raft_pb2.EntryConfChange, raft_pb2.EntryConfChangeV2))


def _from(m: Message) -> int:
    return getattr(m, "from")


# --- leader ----------------------------------------------------------------------------

def _leader_beat(r: Raft, m: Message) -> None:
    r.bcast_heartbeat()


def _leader_check_quorum(r: Raft, m: Message) -> None:
    """Step down unless a quorum was heard from in the last election timeout."""
    pr = r.prs.progress.get(r.id)
    if pr is not None:     # a leader that removed itself has no progress
        pr.recent_active = True
    if not r.prs.quorum_active():
        r.logger.warn("{id:x} stepped down to follower since quorum is not active", id=r.id)
        r.become_follower(r.term, NONE)
    for i, pr in r.prs.progress.items():
        if i != r.id:
            pr.recent_active = False


def _leader_prop(r: Raft, m: Message) -> None:
    """Append proposed entries and replicate them; one pending conf change at a time."""
    if not m.entries:     # etcd panics; from the network it is bad input, so refuse it
        r.logger.error("{id:x} stepped empty MsgProp", id=r.id)
        raise ProposalDroppedError()
    if r.id not in r.prs.progress:
        raise ProposalDroppedError()     # removed while leading
    if r.lead_transferee != NONE:
        r.logger.debug("{id:x} [term {term}] transfer leadership to {to:x} is in progress; "
                       "dropping proposal", id=r.id, term=r.term, to=r.lead_transferee)
        raise ProposalDroppedError()
    ents = list(m.entries)
    for i, e in enumerate(ents):
        if e.Type not in _CONF_CHANGE_TYPES:
            continue
        applied = r.raft_log.applied
        if e.Type == raft_pb2.EntryConfChangeV2:
            refused = "ConfChangeV2 (joint consensus) is not supported"
        elif r.pending_conf_index > applied:
            refused = (f"possible unapplied conf change at index {r.pending_conf_index} "
                       f"(applied to {applied})")
        else:
            r.pending_conf_index = r.raft_log.last_index() + i + 1
            continue
        r.logger.info("{id:x} ignoring conf change at config {config}: {refused}", id=r.id,
                      config=r.prs.config_string(), refused=refused)
        ents[i] = Entry(Type=raft_pb2.EntryNormal)
    if not r.append_entry(ents):
        raise ProposalDroppedError()
    # NB: etcd broadcasts here; we defer to the next Ready so that all proposals of one
    # reactor turn leave as one MsgApp per follower (RawNode.ready flushes).
    r.pending_append = True


def _leader_read_index(r: Raft, m: Message) -> None:
    """Answer at once when alone; else after a heartbeat quorum (thesis §6.4)."""
    if r.prs.is_singleton():
        resp = response_to_read_index_req(r, m, r.raft_log.committed)
        if resp is not None:
            r.send(resp)
        return
    if not committed_entry_in_current_term(r):
        # Thesis §6.4: the commit index is only known once this term committed an entry.
        r.pending_read_index_messages.append(m)
        return
    send_read_index_response(r, m)


def _peer_progress(r: Raft, m: Message) -> Progress | None:
    pr = r.prs.progress.get(_from(m))
    if pr is None:
        r.logger.debug("{id:x} no progress available for {frm:x}", id=r.id, frm=_from(m))
    return pr


def _leader_app_resp(r: Raft, m: Message) -> None:
    """Advance or back off a follower's progress; commit and keep replicating."""
    pr = _peer_progress(r, m)
    if pr is None:
        return
    pr.recent_active = True
    mfrom = _from(m)
    if m.reject:
        r.logger.debug("{id:x} received MsgAppResp(MsgApp was rejected, lastindex: {hint}) "
                       "from {frm:x} for index {index}", id=r.id, hint=m.rejectHint,
                       frm=mfrom, index=m.index)
        if pr.maybe_decr_to(m.index, m.rejectHint):
            r.logger.debug("{id:x} decreased progress of {frm:x} to [{pr}]",
                           id=r.id, frm=mfrom, pr=repr(pr))
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
            r.send_append(mfrom)
        return
    old_paused = pr.is_paused()
    if not pr.maybe_update(m.index):
        return
    if pr.state == ProgressState.PROBE:
        pr.become_replicate()
    elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
        r.logger.debug("{id:x} recovered from needing snapshot, resumed sending replication "
                       "messages to {frm:x} [{pr}]", id=r.id, frm=mfrom, pr=repr(pr))
        pr.become_probe()
        pr.become_replicate()
    elif pr.state == ProgressState.REPLICATE:
        pr.inflights.free_le(m.index)
    if r.maybe_commit():
        if r.pending_read_index_messages:
            release_pending_read_index_messages(r)
        r.bcast_append()
    elif old_paused:
        r.send_append(mfrom)     # it may be missing the latest commit index
    while r.maybe_send_append(mfrom, False):
        pass
    if mfrom == r.lead_transferee and pr.match == r.raft_log.last_index():
        r.logger.info("{id:x} sent MsgTimeoutNow to {to:x} after received MsgAppResp",
                      id=r.id, to=mfrom)
        r.send_timeout_now(mfrom)


def _leader_heartbeat_resp(r: Raft, m: Message) -> None:
    """Mark the follower alive, resume it, and count it towards pending reads."""
    pr = _peer_progress(r, m)
    if pr is None:
        return
    pr.recent_active = True
    pr.probe_sent = False
    if pr.state == ProgressState.REPLICATE and pr.inflights.full():
        pr.inflights.free_first_one()
    mfrom = _from(m)
    if pr.match < r.raft_log.last_index():
        r.send_append(mfrom)
    ctx = m.context
    if not ctx:
        return
    acks = r.read_only.recv_ack(mfrom, ctx)
    if acks is None or r.prs.vote_result(acks) != VoteResult.WON:
        return
    for rs in r.read_only.advance(ctx):
        req = rs.req
        req_from = _from(req)
        if req_from == NONE or req_from == r.id:
            r.read_states.append(ReadState(rs.index, req.entries[0].Data))
        else:
            resp = Message(type=raft_pb2.MsgReadIndexResp, to=req_from, index=rs.index)
            resp.entries.extend(req.entries)
            r.send(resp)


def _leader_snap_status(r: Raft, m: Message) -> None:
    """The shell reports a snapshot sent (or failed): probe again, after one more ack."""
    pr = _peer_progress(r, m)
    if pr is None or pr.state != ProgressState.SNAPSHOT:
        return
    if m.reject:
        pr.pending_snapshot = 0     # NB: first, or we would probe past a missing snapshot
        pr.become_probe()
        verb = "failed"
    else:
        pr.become_probe()
        verb = "succeeded"
    r.logger.debug("{id:x} snapshot {verb}, resumed sending replication messages to "
                   "{frm:x} [{pr}]", id=r.id, verb=verb, frm=_from(m), pr=repr(pr))
    # Success: wait for the MsgAppResp; failure: wait a heartbeat before retrying.
    pr.probe_sent = True


def _leader_unreachable(r: Raft, m: Message) -> None:
    """A MsgApp was probably lost: stop streaming to that follower, probe instead."""
    pr = _peer_progress(r, m)
    if pr is None:
        return
    if pr.state == ProgressState.REPLICATE:
        pr.become_probe()
    r.logger.debug("{id:x} failed to send message to {frm:x} because it is unreachable "
                   "[{pr}]", id=r.id, frm=_from(m), pr=repr(pr))


def _leader_transfer(r: Raft, m: Message) -> None:
    """Hand leadership to `from` (thesis §3.10): catch it up, then MsgTimeoutNow."""
    pr = _peer_progress(r, m)
    if pr is None:
        return
    if pr.is_learner:
        r.logger.debug("{id:x} is learner. Ignored transferring leadership", id=r.id)
        return
    transferee = _from(m)
    last = r.lead_transferee
    if last != NONE:
        if last == transferee:
            r.logger.info("{id:x} [term {term}] transfer leadership to {to:x} is in progress, "
                          "ignores request to same node {to:x}", id=r.id, term=r.term,
                          to=transferee)
            return
        r.abort_leader_transfer()
        r.logger.info("{id:x} [term {term}] abort previous transferring leadership to "
                      "{to:x}", id=r.id, term=r.term, to=last)
    if transferee == r.id:
        r.logger.debug("{id:x} is already leader. Ignored transferring leadership to self",
                       id=r.id)
        return
    r.logger.info("{id:x} [term {term}] starts to transfer leadership to {to:x}",
                  id=r.id, term=r.term, to=transferee)
    r.election_elapsed = 0     # the transfer must finish within one election timeout
    r.lead_transferee = transferee
    if pr.match == r.raft_log.last_index():
        r.send_timeout_now(transferee)
        r.logger.info("{id:x} sends MsgTimeoutNow to {to:x} immediately as {to:x} already "
                      "has up-to-date log", id=r.id, to=transferee)
    else:
        r.send_append(transferee)


def send_snapshot(r: Raft, to: int, pr: Progress) -> bool:
    """Send `to` the latest snapshot (its next entry is compacted); whether sent."""
    if not pr.recent_active:
        r.logger.debug("ignore sending snapshot to {to:x} since it is not recently active",
                       to=to)
        return False
    try:
        snap = r.raft_log.snapshot()
    except SnapshotTemporarilyUnavailableError:
        r.logger.debug("{id:x} failed to send snapshot to {to:x} because snapshot is "
                       "temporarily unavailable", id=r.id, to=to)
        return False
    if snap.metadata.index == 0:
        raise RaftInvariantError("need non-empty snapshot")
    m = Message(type=raft_pb2.MsgSnap, to=to)
    m.snapshot.CopyFrom(snap)
    r.logger.debug(
        "{id:x} [firstindex: {first}, commit: {commit}] sent snapshot[index: {index}, "
        "term: {term}] to {to:x} [{pr}]", id=r.id, first=r.raft_log.first_index(),
        commit=r.raft_log.committed, index=snap.metadata.index, term=snap.metadata.term,
        to=to, pr=repr(pr))
    pr.become_snapshot(snap.metadata.index)
    r.send(m)
    return True


# --- candidate -------------------------------------------------------------------------

def _drop_proposal_no_leader(r: Raft, m: Message) -> None:
    r.logger.info("{id:x} no leader at term {term}; dropping proposal", id=r.id, term=r.term)
    raise ProposalDroppedError()


def _candidate_app(r: Raft, m: Message) -> None:
    r.become_follower(m.term, _from(m))     # a leader of our own term won
    handle_append_entries(r, m)


def _candidate_heartbeat(r: Raft, m: Message) -> None:
    r.become_follower(m.term, _from(m))
    handle_heartbeat(r, m)


def _candidate_snap(r: Raft, m: Message) -> None:
    r.become_follower(m.term, _from(m))
    handle_snapshot(r, m)


def _candidate_vote_resp(r: Raft, m: Message) -> None:
    """Count a (pre-)vote answer; win, lose, or wait for more."""
    granted, rejected, result = r.poll(_from(m), m.type, not m.reject)
    r.logger.info("{id:x} has received {granted} {type} votes and {rejected} vote "
                  "rejections", id=r.id, granted=granted, type=MSG_NAMES[m.type],
                  rejected=rejected)
    if result == VoteResult.WON:
        if m.type == raft_pb2.MsgPreVoteResp:
            r.campaign(CAMPAIGN_ELECTION)
        else:
            r.become_leader()
            r.bcast_append()
    elif result == VoteResult.LOST:
        # A pre-vote answer carries our future term: stay in ours.
        r.become_follower(r.term, NONE)


def _candidate_timeout_now(r: Raft, m: Message) -> None:
    r.logger.debug("{id:x} [term {term} state {state}] ignored MsgTimeoutNow from {frm:x}",
                   id=r.id, term=r.term, state=r.state.name, frm=_from(m))


# --- follower --------------------------------------------------------------------------

def _follower_prop(r: Raft, m: Message) -> None:
    """Forward a proposal to the leader (or drop it)."""
    if r.lead == NONE:
        _drop_proposal_no_leader(r, m)
    if r.disable_proposal_forwarding:
        r.logger.info("{id:x} not forwarding to leader {lead:x} at term {term}; dropping "
                      "proposal", id=r.id, lead=r.lead, term=r.term)
        raise ProposalDroppedError()
    m.to = r.lead
    r.send(m)


def _follower_app(r: Raft, m: Message) -> None:
    r.election_elapsed = 0
    r.lead = _from(m)
    handle_append_entries(r, m)


def _follower_heartbeat(r: Raft, m: Message) -> None:
    r.election_elapsed = 0
    r.lead = _from(m)
    handle_heartbeat(r, m)


def _follower_snap(r: Raft, m: Message) -> None:
    r.election_elapsed = 0
    r.lead = _from(m)
    handle_snapshot(r, m)


def _forward_to_leader(r: Raft, m: Message, what: str) -> None:
    """A follower hands `m` to its leader; without one it is dropped (logged)."""
    if r.lead == NONE:
        r.logger.info("{id:x} no leader at term {term}; dropping {what}",
                      id=r.id, term=r.term, what=what)
        return
    m.to = r.lead
    r.send(m)


def _follower_transfer(r: Raft, m: Message) -> None:
    _forward_to_leader(r, m, "leader transfer msg")


def _follower_timeout_now(r: Raft, m: Message) -> None:
    """Campaign at once for a leader transfer: no pre-vote, ignoring leases."""
    if r.promotable():
        r.logger.info("{id:x} [term {term}] received MsgTimeoutNow from {frm:x} and starts an "
                      "election to get leadership.", id=r.id, term=r.term, frm=_from(m))
        r.campaign(CAMPAIGN_TRANSFER)
    else:
        r.logger.info("{id:x} received MsgTimeoutNow from {frm:x} but is not promotable",
                      id=r.id, frm=_from(m))


def _follower_read_index(r: Raft, m: Message) -> None:
    _forward_to_leader(r, m, "index reading msg")


def _follower_read_index_resp(r: Raft, m: Message) -> None:
    if len(m.entries) != 1:
        r.logger.error("{id:x} invalid format of MsgReadIndexResp from {frm:x}, entries "
                       "count: {n}", id=r.id, frm=_from(m), n=len(m.entries))
        return
    r.read_states.append(ReadState(m.index, m.entries[0].Data))


# --- shared by follower and candidate --------------------------------------------------

def handle_append_entries(r: Raft, m: Message) -> None:
    """Append the leader's entries if they follow our log (§5.3), else reject with a hint."""
    log = r.raft_log
    if m.index < log.committed:
        r.send(Message(type=raft_pb2.MsgAppResp, to=_from(m), index=log.committed))
        return
    last_new = log.maybe_append(m.index, m.logTerm, m.commit, m.entries)
    if last_new is not None:
        r.send(Message(type=raft_pb2.MsgAppResp, to=_from(m), index=last_new))
        return
    r.logger.debug("{id:x} [logterm: {log_term}, index: {index}] rejected MsgApp [logterm: "
                   "{m_log_term}, index: {index}] from {frm:x}", id=r.id,
                   log_term=log.term_or_zero(m.index), index=m.index, m_log_term=m.logTerm,
                   frm=_from(m))
    r.send(Message(type=raft_pb2.MsgAppResp, to=_from(m), index=m.index, reject=True,
                   rejectHint=log.last_index()))


def handle_heartbeat(r: Raft, m: Message) -> None:
    """Commit what the leader says we have, and echo the read context."""
    r.raft_log.commit_to(m.commit)
    r.send(Message(type=raft_pb2.MsgHeartbeatResp, to=_from(m), context=m.context))


def handle_snapshot(r: Raft, m: Message) -> None:
    """Restore from the leader's snapshot (or say how far we already are)."""
    meta = m.snapshot.metadata
    if restore(r, m.snapshot):
        r.logger.info("{id:x} [commit: {commit}] restored snapshot [index: {index}, term: "
                      "{term}]", id=r.id, commit=r.raft_log.committed, index=meta.index,
                      term=meta.term)
        r.send(Message(type=raft_pb2.MsgAppResp, to=_from(m), index=r.raft_log.last_index()))
    else:
        r.logger.info("{id:x} [commit: {commit}] ignored snapshot [index: {index}, term: "
                      "{term}]", id=r.id, commit=r.raft_log.committed, index=meta.index,
                      term=meta.term)
        r.send(Message(type=raft_pb2.MsgAppResp, to=_from(m), index=r.raft_log.committed))


def restore(r: Raft, snap: raft_pb2.Snapshot) -> bool:
    """Replace log and configuration by `snap`; False when it is stale or already matched.

    A snapshot at or before our commit index is ignored; one whose (index, term) our log
    already has only fast-forwards the commit index.
    """
    meta = snap.metadata
    log = r.raft_log
    if meta.index <= log.committed:
        return False
    if r.state != StateType.FOLLOWER:
        r.logger.warn("{id:x} attempted to restore snapshot as leader; should never happen",
                      id=r.id)
        r.become_follower(r.term + 1, NONE)
        return False
    cs = meta.conf_state
    if r.id not in cs.voters and r.id not in cs.learners:
        r.logger.warn("{id:x} attempted to restore snapshot but it is not in the ConfState "
                      "{cs}; should never happen", id=r.id, cs=str(cs))
        return False
    if log.match_term(meta.index, meta.term):
        r.logger.info("{id:x} [commit: {commit}, lastindex: {last_index}, lastterm: "
                      "{last_term}] fast-forwarded commit to snapshot [index: {index}, term: "
                      "{term}]", id=r.id, commit=log.committed, last_index=log.last_index(),
                      last_term=log.last_term(), index=meta.index, term=meta.term)
        log.commit_to(meta.index)
        return False
    log.restore(snap)
    r.prs = ProgressTracker(r.prs.max_inflight)
    r.prs.restore(cs, log.last_index())
    r.switch_to_config()
    pr = r.prs.progress[r.id]
    pr.maybe_update(pr.next - 1)
    r.logger.info("{id:x} [commit: {commit}, lastindex: {last_index}, lastterm: {last_term}] "
                  "restored snapshot [index: {index}, term: {term}]", id=r.id,
                  commit=log.committed, last_index=log.last_index(), last_term=log.last_term(),
                  index=meta.index, term=meta.term)
    return True


# --- ReadIndex -------------------------------------------------------------------------

def committed_entry_in_current_term(r: Raft) -> bool:
    """Whether this leader has committed an entry of its own term yet."""
    return r.raft_log.term_or_zero(r.raft_log.committed) == r.term


def response_to_read_index_req(r: Raft, req: Message, read_index: int) -> Message | None:
    """A ReadState for a local request (None returned), else the MsgReadIndexResp to send."""
    req_from = _from(req)
    if req_from == NONE or req_from == r.id:
        r.read_states.append(ReadState(read_index, req.entries[0].Data))
        return None
    resp = Message(type=raft_pb2.MsgReadIndexResp, to=req_from, index=read_index)
    resp.entries.extend(req.entries)
    return resp


def send_read_index_response(r: Raft, m: Message) -> None:
    """Queue `m` at the current commit index and confirm leadership with a heartbeat round."""
    ctx = m.entries[0].Data
    r.read_only.add_request(r.raft_log.committed, m)
    r.read_only.recv_ack(r.id, ctx)     # the leader acks itself
    r.bcast_heartbeat_with_ctx(ctx)


def release_pending_read_index_messages(r: Raft) -> None:
    """Serve the reads held back until this term's first commit."""
    if not committed_entry_in_current_term(r):
        r.logger.error("pending MsgReadIndex should be released only after first commit in "
                       "current term")
        return
    msgs, r.pending_read_index_messages = r.pending_read_index_messages, []
    for m in msgs:
        send_read_index_response(r, m)


# --- the tables ------------------------------------------------------------------------

LEADER: dict[int, Handler] = {
    raft_pb2.MsgBeat: _leader_beat,
    raft_pb2.MsgCheckQuorum: _leader_check_quorum,
    raft_pb2.MsgProp: _leader_prop,
    raft_pb2.MsgReadIndex: _leader_read_index,
    raft_pb2.MsgAppResp: _leader_app_resp,
    raft_pb2.MsgHeartbeatResp: _leader_heartbeat_resp,
    raft_pb2.MsgSnapStatus: _leader_snap_status,
    raft_pb2.MsgUnreachable: _leader_unreachable,
    raft_pb2.MsgTransferLeader: _leader_transfer,
}

_CANDIDATE_COMMON: dict[int, Handler] = {
    raft_pb2.MsgProp: _drop_proposal_no_leader,
    raft_pb2.MsgApp: _candidate_app,
    raft_pb2.MsgHeartbeat: _candidate_heartbeat,
    raft_pb2.MsgSnap: _candidate_snap,
    raft_pb2.MsgTimeoutNow: _candidate_timeout_now,
}
# A candidate counts only answers to its own kind of request: stale pre-vote answers
# arriving after it moved on to the real election are ignored, and vice versa.
CANDIDATE: dict[int, Handler] = {**_CANDIDATE_COMMON,
                                 raft_pb2.MsgVoteResp: _candidate_vote_resp}
PRE_CANDIDATE: dict[int, Handler] = {**_CANDIDATE_COMMON,
                                     raft_pb2.MsgPreVoteResp: _candidate_vote_resp}

FOLLOWER: dict[int, Handler] = {
    raft_pb2.MsgProp: _follower_prop,
    raft_pb2.MsgApp: _follower_app,
    raft_pb2.MsgHeartbeat: _follower_heartbeat,
    raft_pb2.MsgSnap: _follower_snap,
    raft_pb2.MsgTransferLeader: _follower_transfer,
    raft_pb2.MsgTimeoutNow: _follower_timeout_now,
    raft_pb2.MsgReadIndex: _follower_read_index,
    raft_pb2.MsgReadIndexResp: _follower_read_index_resp,
}
