"""The leader's view of each follower: Progress, the Inflights window, the ProgressTracker.

Core (pure). Matches etcd 3.4 `raft/tracker/*` and `raft/quorum/majority.go` for a single
(non-joint) majority configuration, plus the single-step membership changes of
`raft/confchange/confchange.go` (`Simple`) and `restore.go`.

A follower's progress moves between three states::

    PROBE --ack--> REPLICATE --reject/unreachable--> PROBE
    PROBE/REPLICATE --next compacted--> SNAPSHOT --applied or reported--> PROBE

In PROBE the leader sends one MsgApp and waits (`probe_sent`); in REPLICATE it streams
MsgApps optimistically, at most `max_inflight` unacknowledged; in SNAPSHOT it sends nothing.
"""
from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping

from etcdd.proto import raft_pb2
from etcdd.raft.storage import RaftInvariantError

NO_LIMIT = (1 << 64) - 1   # etcd `math.MaxUint64`: the committed index of an empty config


class ProgressState(enum.IntEnum):
    """etcd `tracker.StateType`."""

    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class VoteResult(enum.IntEnum):
    """etcd `quorum.VoteResult`."""

    PENDING = 1
    LOST = 2
    WON = 3


class Inflights:
    """The last indexes of the MsgApps sent to one follower and not yet acknowledged.

    Invariant: `len(self._buffer) <= size` and the indexes are increasing.
    """

    __slots__ = ("size", "_buffer")

    def __init__(self, size: int) -> None:
        self.size = size
        self._buffer: deque[int] = deque()

    def add(self, inflight: int) -> None:
        """Record a MsgApp whose last entry is `inflight`; raises when full."""
        if len(self._buffer) >= self.size:
            raise RaftInvariantError("cannot add into a full inflights")
        self._buffer.append(inflight)

    def free_le(self, to: int) -> None:
        """Forget every MsgApp whose last index is at most `to` (acknowledged)."""
        buf = self._buffer
        while buf and buf[0] <= to:
            buf.popleft()

    def free_first_one(self) -> None:
        """Forget the oldest MsgApp (a heartbeat response proved the follower alive)."""
        if self._buffer:
            self._buffer.popleft()

    def full(self) -> bool:
        """Whether no more MsgApp may be sent."""
        return len(self._buffer) >= self.size

    def count(self) -> int:
        """How many MsgApps are unacknowledged."""
        return len(self._buffer)

    def reset(self) -> None:
        """Forget everything."""
        self._buffer.clear()


class Progress:
    """What the leader knows of one follower's log.

    Invariants: `match < next`; `pending_snapshot` is non-zero only in SNAPSHOT.
    """

    __slots__ = ("match", "next", "state", "pending_snapshot", "recent_active",
                 "probe_sent", "inflights", "is_learner")

    def __init__(self, next: int, max_inflight: int, *, match: int = 0,
                 is_learner: bool = False, recent_active: bool = False) -> None:
        self.match = match
        self.next = next
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0
        self.recent_active = recent_active
        self.probe_sent = False
        self.inflights = Inflights(max_inflight)
        self.is_learner = is_learner

    def __repr__(self) -> str:
        return (f"{self.state.name} match={self.match} next={self.next}"
                f"{' learner' if self.is_learner else ''}"
                f"{' paused' if self.is_paused() else ''}"
                f"{f' pendingSnap={self.pending_snapshot}' if self.pending_snapshot else ''}"
                f"{'' if self.recent_active else ' inactive'}"
                f"{f' inflight={self.inflights.count()}' if self.inflights.count() else ''}")

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        """Probe from just past `match` (or past the snapshot that was being sent)."""
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        """Stream entries from just past `match`."""
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        """Stop sending entries until the snapshot at `snapshot_index` is applied."""
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, n: int) -> bool:
        """Record that the follower holds the log up to `n`; whether `match` grew."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        if self.next < n + 1:
            self.next = n + 1
        return updated

    def maybe_decr_to(self, rejected: int, last: int) -> bool:
        """Back `next` off after the follower rejected a MsgApp at index `rejected`.

        `last` is the follower's last index (its reject hint): etcd 3.4 probes next at
        `min(rejected, last + 1)`. Returns False for a stale rejection.
        """
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, last + 1), 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        """Whether the leader must not send a MsgApp to this follower now."""
        state = self.state
        if state == ProgressState.PROBE:
            return self.probe_sent
        if state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True


class ProgressTracker:
    """The voters, the learners, their Progress and the votes of the current election.

    Invariants: `voters` and `learners` are disjoint; `progress` has exactly their ids
    and iterates in increasing id order (etcd `Visit`); `progress[i].is_learner` iff
    `i in learners`.
    """

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.voters: frozenset[int] = frozenset()
        self.learners: frozenset[int] = frozenset()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}

    def config_string(self) -> str:
        """etcd's rendering of the configuration, e.g. ``voters=(1 2 3) learners=(4)``."""
        text = "voters=(" + " ".join(str(i) for i in sorted(self.voters)) + ")"
        if self.learners:
            text += " learners=(" + " ".join(str(i) for i in sorted(self.learners)) + ")"
        return text

    def conf_state(self) -> raft_pb2.ConfState:
        """The configuration as a ConfState, ids sorted."""
        return raft_pb2.ConfState(voters=sorted(self.voters), learners=sorted(self.learners))

    def is_singleton(self) -> bool:
        """Whether the only voter decides alone."""
        return len(self.voters) == 1

    def committed(self) -> int:
        """The largest index a majority of voters has: the quorum's commit index.

        Worked example: matches 5, 7, 9 give 7; matches 5, 7, 9, 12 give 7.
        """
        voters = self.voters
        if not voters:
            return NO_LIMIT
        progress = self.progress
        matches = sorted([progress[i].match for i in voters], reverse=True)
        return matches[len(matches) // 2]

    def vote_result(self, votes: Mapping[int, bool]) -> VoteResult:
        """Whether `votes` (id -> granted) are a majority yes, a majority no, or neither yet."""
        voters = self.voters
        if not voters:
            return VoteResult.WON
        yes = missing = 0
        for i in voters:
            v = votes.get(i)
            if v is None:
                missing += 1
            elif v:
                yes += 1
        quorum = len(voters) // 2 + 1
        if yes >= quorum:
            return VoteResult.WON
        if yes + missing >= quorum:
            return VoteResult.PENDING
        return VoteResult.LOST

    def quorum_active(self) -> bool:
        """Whether a majority of voters was heard from since the last check."""
        progress = self.progress
        return self.vote_result({i: progress[i].recent_active for i in self.voters}) \
            == VoteResult.WON

    def reset_votes(self) -> None:
        """Forget the votes of the previous election."""
        self.votes = {}

    def record_vote(self, id: int, granted: bool) -> None:
        """Remember the first answer of `id` in this election."""
        self.votes.setdefault(id, granted)

    def tally_votes(self) -> tuple[int, int, VoteResult]:
        """(granted, rejected, result) over the voters' recorded answers."""
        granted = rejected = 0
        for i in self.voters:
            v = self.votes.get(i)
            if v is True:
                granted += 1
            elif v is False:
                rejected += 1
        return granted, rejected, self.vote_result(self.votes)

    def apply_change(self, cc_type: int, node_id: int, last_index: int) -> None:
        """Apply one single-step membership change (etcd `confchange.Changer.Simple`).

        A new member starts probing at `last_index`. Node id 0 is a no-op (the shell's
        way to skip a rejected change). Raises RaftError when no voter would remain.
        """
        if node_id == 0 or cc_type == raft_pb2.ConfChangeUpdateNode:
            return
        voters, learners = set(self.voters), set(self.learners)
        pr = self.progress.get(node_id)
        if cc_type == raft_pb2.ConfChangeAddNode:
            voters.add(node_id)
            learners.discard(node_id)
        elif cc_type == raft_pb2.ConfChangeAddLearnerNode:
            if pr is None or not pr.is_learner:
                voters.discard(node_id)
                learners.add(node_id)
        elif cc_type == raft_pb2.ConfChangeRemoveNode:
            voters.discard(node_id)
            learners.discard(node_id)
        else:
            raise RaftInvariantError(f"unexpected conf type {cc_type}")
        if not voters:
            raise RaftInvariantError("removed all voters")
        self._switch(voters, learners, last_index)

    def restore(self, conf_state: raft_pb2.ConfState, last_index: int) -> None:
        """Rebuild the configuration from a ConfState (etcd `confchange.Restore`)."""
        if conf_state.voters_outgoing or conf_state.learners_next:
            raise RaftInvariantError(f"joint configuration unsupported: {conf_state}")
        self.voters, self.learners, self.progress = frozenset(), frozenset(), {}
        for i in conf_state.voters:
            self.apply_change(raft_pb2.ConfChangeAddNode, i, last_index)
        for i in conf_state.learners:
            self.apply_change(raft_pb2.ConfChangeAddLearnerNode, i, last_index)

    def _switch(self, voters: Iterable[int], learners: Iterable[int], last_index: int) -> None:
        """Adopt the new member sets, creating and dropping Progress to match."""
        self.voters, self.learners = frozenset(voters), frozenset(learners)
        old = self.progress
        new: dict[int, Progress] = {}
        for i in sorted(self.voters | self.learners):
            pr = old.get(i)
            if pr is None:
                # etcd 3.4 initProgress: probe at the last index; recently active so a
                # new member does not make the leader step down at the next check-quorum.
                pr = Progress(last_index, self.max_inflight, recent_active=True)
            pr.is_learner = i in self.learners
            new[i] = pr
        self.progress = new
