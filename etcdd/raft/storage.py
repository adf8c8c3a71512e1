"""Raft's errors and the in-memory log storage the raft core reads through.

Core (pure). Matches etcd 3.4 `raft/storage.go` (`MemoryStorage`) and the error values of
`raft/raft.go` and `raft/rawnode.go`. The shell persists each Ready's entries, hard state
and snapshot to the WAL and mirrors them here; raft only reads.

The log is a list of entries after a compaction point (`_offset`, whose term is kept as
etcd keeps its dummy entry). Compacted to index 5 (term 2), with entries 6..8::

    _offset=5 _offset_term=2 _ents=[e6, e7, e8]
    first_index()=6  last_index()=8  term(5)=2  term(4) -> CompactedError
    entries(6, 9) = _ents[0:3]        entries(5, ...) -> CompactedError
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

from etcdd.proto import raft_pb2

Entry = raft_pb2.Entry
_byte_size = Entry.ByteSize


class RaftError(Exception):
    """Base of every error the raft core raises."""


class ProposalDroppedError(RaftError):
    """The proposal was ignored (no leader, leader transfer, size limit); fail fast."""

    def __init__(self, message: str = "raft proposal dropped") -> None:
        super().__init__(message)


class StepLocalMsgError(RaftError):
    """A message type that only the local node may generate arrived from the network."""

    def __init__(self, message: str = "raft: cannot step raft local message") -> None:
        super().__init__(message)


class StepPeerNotFoundError(RaftError):
    """A response arrived from a peer that is not in the configuration."""

    def __init__(self, message: str = "raft: cannot step as peer not found") -> None:
        super().__init__(message)


class CompactedError(RaftError):
    """The requested index is older than the storage's snapshot."""

    def __init__(self,
                 message: str = "requested index is unavailable due to compaction") -> None:
        super().__init__(message)


class SnapshotOutOfDateError(RaftError):
    """The snapshot is not newer than the one storage already holds."""

    def __init__(self,
                 message: str = "requested index is older than the existing snapshot") -> None:
        super().__init__(message)


class UnavailableError(RaftError):
    """The requested index is past the end of the stored log."""

    def __init__(self, message: str = "requested entry at index is unavailable") -> None:
        super().__init__(message)


class SnapshotTemporarilyUnavailableError(RaftError):
    """The snapshot is being built; the leader retries later."""

    def __init__(self, message: str = "snapshot is temporarily unavailable") -> None:
        super().__init__(message)


class RaftInvariantError(RaftError):
    """A broken invariant (etcd panics here): raise with the evidence, never repair."""


def limit_size(ents: list[Entry], max_size: int | None) -> list[Entry]:
    """The longest prefix of `ents` whose encoded size stays within `max_size`.

    Always keeps the first entry, so a single entry larger than the limit still moves
    (etcd `limitSize`). `None` means no limit. Returns `ents` itself when nothing is cut.
    """
    if max_size is None or len(ents) <= 1:
        return ents
    sizes = list(map(_byte_size, ents))
    if sum(sizes) <= max_size:
        return ents
    for i, total in enumerate(accumulate(sizes)):
        if total > max_size:
            return ents[:max(i, 1)]
    return ents


class MemoryStorage:
    """The stable log: a snapshot, then the entries after it, then the hard state.

    Invariants: entries are contiguous, `_ents[k].Index == _offset + 1 + k`, and
    `first_index() == _offset + 1`, `last_index() == _offset + len(_ents)`;
    `_offset` (compaction) and the snapshot's index move apart: `create_snapshot`, `compact`.
    Entries are shared, never copied: nobody mutates an entry after it is appended.
    """

    def __init__(self, conf_state: raft_pb2.ConfState | None = None) -> None:
        """An empty log; `conf_state` seeds the initial membership (etcd's test `withPeers`)."""
        self._hard_state = raft_pb2.HardState()
        self._snapshot = raft_pb2.Snapshot()
        if conf_state is not None:
            self._snapshot.metadata.conf_state.CopyFrom(conf_state)
        self._offset = 0
        self._offset_term = 0
        self._ents: list[Entry] = []

    def initial_state(self) -> tuple[raft_pb2.HardState, raft_pb2.ConfState]:
        """The saved hard state and the membership of the latest snapshot."""
        return self._hard_state, self._snapshot.metadata.conf_state

    def set_hard_state(self, hs: raft_pb2.HardState) -> None:
        """Save the current term, vote and commit index."""
        self._hard_state = hs

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries [lo, hi), cut to `max_size` encoded bytes (at least one entry).

        Raises CompactedError when `lo` is at or before the snapshot, UnavailableError when
        the log has no entries, RaftInvariantError when `hi` is past the last index + 1.
        """
        offset = self._offset
        if lo <= offset:
            raise CompactedError()
        if hi > offset + len(self._ents) + 1:
            raise RaftInvariantError(
                f"entries' hi({hi}) is out of bound lastindex({self.last_index()})")
        if not self._ents:
            raise UnavailableError()
        return limit_size(self._ents[lo - offset - 1:hi - offset - 1], max_size)

    def term(self, i: int) -> int:
        """The term of entry `i`; the snapshot's term at its index.

        Raises CompactedError before the snapshot, UnavailableError past the last index.
        """
        offset = self._offset
        if i < offset:
            raise CompactedError()
        if i == offset:
            return self._offset_term
        k = i - offset - 1
        if k >= len(self._ents):
            raise UnavailableError()
        return self._ents[k].Term

    def last_index(self) -> int:
        """The index of the last entry (the snapshot's index when there is none)."""
        return self._offset + len(self._ents)

    def first_index(self) -> int:
        """The index of the first entry that may be read (snapshot index + 1)."""
        return self._offset + 1

    def snapshot(self) -> raft_pb2.Snapshot:
        """The latest snapshot (empty, index 0, when none was taken)."""
        return self._snapshot

    def apply_snapshot(self, snap: raft_pb2.Snapshot) -> None:
        """Replace the whole log by `snap` (a follower catching up from the leader).

        Raises SnapshotOutOfDateError when `snap` is not newer than the current snapshot.
        """
        if self._snapshot.metadata.index >= snap.metadata.index:
            raise SnapshotOutOfDateError()
        self._snapshot = snap
        self._offset = snap.metadata.index
        self._offset_term = snap.metadata.term
        self._ents = []

    def create_snapshot(self, index: int, conf_state: raft_pb2.ConfState | None,
                        data: bytes) -> raft_pb2.Snapshot:
        """Record a snapshot of the applied state at `index`; call `compact` afterwards.

        Raises SnapshotOutOfDateError when `index` is not past the current snapshot and
        RaftInvariantError when it is past the last index.
        """
        if index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDateError()
        if index > self.last_index():
            raise RaftInvariantError(
                f"snapshot {index} is out of bound lastindex({self.last_index()})")
        snap = raft_pb2.Snapshot()
        snap.metadata.index = index
        snap.metadata.term = self.term(index)
        snap.metadata.conf_state.CopyFrom(conf_state if conf_state is not None
                                          else self._snapshot.metadata.conf_state)
        snap.data = data
        self._snapshot = snap
        return snap

    def compact(self, compact_index: int) -> None:
        """Drop entries up to and including `compact_index`; keep its term for matching.

        Raises CompactedError when already compacted that far and RaftInvariantError past
        the last index.
        """
        offset = self._offset
        if compact_index <= offset:
            raise CompactedError()
        if compact_index > self.last_index():
            raise RaftInvariantError(
                f"compact {compact_index} is out of bound lastindex({self.last_index()})")
        k = compact_index - offset
        self._offset_term = self._ents[k - 1].Term
        self._offset = compact_index
        del self._ents[:k]

    def append(self, entries: Sequence[Entry]) -> None:
        """Append `entries`, replacing any stored suffix they conflict with.

        Entries at or before the snapshot are skipped; a gap after the last index raises
        RaftInvariantError.
        """
        if not entries:
            return
        first = self._offset + 1
        start = entries[0].Index
        if start + len(entries) - 1 < first:
            return
        if first > start:
            entries = entries[first - start:]
            start = first
        k = start - first
        n = len(self._ents)
        if k < n:
            del self._ents[k:]
        elif k > n:
            raise RaftInvariantError(
                f"missing log entry [last: {self.last_index()}, append at: {start}]")
        self._ents.extend(entries)
