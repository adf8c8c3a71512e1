"""The raft log: stable storage plus the unstable tail raft appended but the shell has not
yet persisted.

Core (pure). Matches etcd 3.4 `raft/log.go` (`raftLog`) and `raft/log_unstable.go`
(`unstable`). Storage holds indexes [first_index, offset); the unstable part holds an
optional incoming snapshot and entries [offset, last_index]::

    storage: snap@4 | 5 6 7         unstable: offset=8 | 8 9
    first_index()=5  last_index()=9  committed <= 9  applied <= committed
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from etcdd.proto import raft_pb2
from etcdd.raft.storage import (CompactedError, MemoryStorage, RaftInvariantError,
                                UnavailableError, limit_size)

Entry = raft_pb2.Entry


class Unstable:
    """Entries and a snapshot not yet written to storage.

    Invariants: `entries[k].Index == offset + k`; with a snapshot, `offset ==
    snapshot.metadata.index + 1`.
    """

    __slots__ = ("snapshot", "entries", "offset", "logger")

    def __init__(self, offset: int, logger: Any) -> None:
        self.snapshot: raft_pb2.Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset
        self.logger = logger

    def maybe_first_index(self) -> int | None:
        """The first index after an unstable snapshot, None without one."""
        if self.snapshot is not None:
            return self.snapshot.metadata.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        """The last unstable index (entry or snapshot), None when there is nothing."""
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.metadata.index
        return None

    def maybe_term(self, i: int) -> int | None:
        """The term of unstable index `i`, None when `i` is not held here."""
        if i < self.offset:
            snap = self.snapshot
            if snap is not None and snap.metadata.index == i:
                return snap.metadata.term
            return None
        k = i - self.offset
        if k < len(self.entries):
            return self.entries[k].Term
        return None

    def stable_to(self, i: int, t: int) -> None:
        """Drop entries up to `i` once persisted, unless `i` was since rewritten (term check)."""
        gt = self.maybe_term(i)
        if gt is None:
            return
        if gt == t and i >= self.offset:
            del self.entries[:i + 1 - self.offset]
            self.offset = i + 1

    def stable_snap_to(self, i: int) -> None:
        """Drop the unstable snapshot once persisted, if it is still the one at `i`."""
        if self.snapshot is not None and self.snapshot.metadata.index == i:
            self.snapshot = None

    def restore(self, snap: raft_pb2.Snapshot) -> None:
        """Replace everything by `snap`."""
        self.offset = snap.metadata.index + 1
        self.entries = []
        self.snapshot = snap

    def truncate_and_append(self, ents: Sequence[Entry]) -> None:
        """Append `ents`, first dropping any unstable entries at or after their first index."""
        after = ents[0].Index
        n = len(self.entries)
        if after == self.offset + n:
            self.entries.extend(ents)
        elif after <= self.offset:
            self.logger.info("replace the unstable entries from index {index}", index=after)
            self.offset = after
            self.entries = list(ents)
        else:
            self.logger.info("truncate the unstable entries before index {index}", index=after)
            self.entries = self.entries[:after - self.offset]
            self.entries.extend(ents)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Unstable entries [lo, hi); raises RaftInvariantError out of bounds."""
        upper = self.offset + len(self.entries)
        if lo > hi or lo < self.offset or hi > upper:
            raise RaftInvariantError(
                f"unstable.slice[{lo},{hi}) out of bound [{self.offset},{upper}]")
        return self.entries[lo - self.offset:hi - self.offset]


class RaftLog:
    """Storage plus unstable, with the commit and apply cursors.

    Invariants: `applied <= committed <= last_index()`; entries at or before `committed`
    are never rewritten (a conflict there raises RaftInvariantError).
    """

    __slots__ = ("storage", "unstable", "committed", "applied", "logger",
                 "max_next_ents_size")

    def __init__(self, storage: MemoryStorage, logger: Any,
                 max_next_ents_size: int | None = None) -> None:
        self.storage = storage
        self.logger = logger
        self.max_next_ents_size = max_next_ents_size
        first = storage.first_index()
        self.unstable = Unstable(storage.last_index() + 1, logger)
        self.committed = first - 1
        self.applied = first - 1

    def __repr__(self) -> str:
        return (f"committed={self.committed}, applied={self.applied}, "
                f"unstable.offset={self.unstable.offset}, "
                f"len(unstable.Entries)={len(self.unstable.entries)}")

    def first_index(self) -> int:
        """The first index still readable (after any snapshot)."""
        i = self.unstable.maybe_first_index()
        return i if i is not None else self.storage.first_index()

    def last_index(self) -> int:
        """The index of the last entry, stable or not."""
        u = self.unstable
        if u.entries:
            return u.offset + len(u.entries) - 1
        if u.snapshot is not None:
            return u.snapshot.metadata.index
        return self.storage.last_index()

    def last_term(self) -> int:
        """The term of the last entry."""
        return self.term(self.last_index())

    def term(self, i: int) -> int:
        """The term of entry `i`; 0 outside [first_index - 1, last_index].

        Raises CompactedError (or UnavailableError) when storage no longer has it.
        """
        u = self.unstable
        k = i - u.offset
        if k >= 0:                       # the unstable tail, or past the last index
            ents = u.entries
            return ents[k].Term if k < len(ents) else 0
        snap = u.snapshot
        if snap is not None:             # offset == snapshot index + 1
            return snap.metadata.term if i == snap.metadata.index else 0
        storage = self.storage
        if i < storage.first_index() - 1:
            return 0
        return storage.term(i)

    def term_or_zero(self, i: int) -> int:
        """`term(i)`, but 0 when compacted (etcd `zeroTermOnErrCompacted`)."""
        try:
            return self.term(i)
        except CompactedError:
            return 0
        except UnavailableError as e:
            raise RaftInvariantError(f"unexpected error ({e})") from e

    def match_term(self, i: int, term: int) -> bool:
        """Whether entry `i` exists with term `term`."""
        try:
            return self.term(i) == term
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Whether a log ending at (`last_index`, `term`) is at least as new as ours (§5.4.1)."""
        last_term = self.last_term()
        return term > last_term or (term == last_term and last_index >= self.last_index())

    def maybe_append(self, index: int, log_term: int, committed: int,
                     ents: Sequence[Entry]) -> int | None:
        """Append a leader's entries that follow (`index`, `log_term`); None if no match.

        Returns the index of the last new entry and commits up to min(`committed`, it).
        Raises RaftInvariantError when the entries conflict with a committed entry.
        """
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(ents)
        ci = self.find_conflict(ents)
        if ci:
            if ci <= self.committed:
                raise RaftInvariantError(
                    f"entry {ci} conflict with committed entry [committed({self.committed})]")
            self.append(ents[ci - index - 1:])
        self.commit_to(min(committed, last_new))
        return last_new

    def append(self, ents: Sequence[Entry]) -> int:
        """Append `ents` to the unstable tail (truncating after their first index)."""
        if not ents:
            return self.last_index()
        after = ents[0].Index - 1
        if after < self.committed:
            raise RaftInvariantError(
                f"after({after}) is out of range [committed({self.committed})]")
        self.unstable.truncate_and_append(ents)
        return self.last_index()

    def find_conflict(self, ents: Sequence[Entry]) -> int:
        """The index of the first entry of `ents` not already in the log, 0 if none.

        Worked example: log 1/1 2/1 3/2; ents 2/1 3/3 4/3 -> 3 (conflict); ents 2/1 3/2 ->
        0; ents 3/2 4/2 -> 4 (new).
        """
        for e in ents:
            if not self.match_term(e.Index, e.Term):
                if e.Index <= self.last_index():
                    self.logger.info(
                        "found conflict at index {index} [existing term: {existing}, "
                        "conflicting term: {conflicting}]",
                        index=e.Index, existing=self.term_or_zero(e.Index), conflicting=e.Term)
                return e.Index
        return 0

    def unstable_entries(self) -> list[Entry]:
        """A copy of the unstable entries (the shell must persist them)."""
        return self.unstable.entries[:]

    def next_ents(self) -> list[Entry]:
        """Committed entries not yet applied, cut to `max_next_ents_size` bytes."""
        if self.committed <= self.applied:
            return []
        off = max(self.applied + 1, self.first_index())
        if self.committed + 1 > off:
            try:
                return self.slice(off, self.committed + 1, self.max_next_ents_size)
            except CompactedError as e:
                raise RaftInvariantError(
                    f"unexpected error when getting unapplied entries ({e})") from e
        return []

    def has_next_ents(self) -> bool:
        """Whether committed entries wait to be applied."""
        committed = self.committed
        return committed > self.applied and committed + 1 > self.first_index()

    def snapshot(self) -> raft_pb2.Snapshot:
        """The newest snapshot: the unstable one, else storage's."""
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    def commit_to(self, to_commit: int) -> None:
        """Raise the commit index to `to_commit` (never lowers it)."""
        if self.committed < to_commit:
            if self.last_index() < to_commit:
                raise RaftInvariantError(
                    f"tocommit({to_commit}) is out of range [lastIndex({self.last_index()})]. "
                    "Was the raft log corrupted, truncated, or lost?")
            self.committed = to_commit

    def applied_to(self, i: int) -> None:
        """Record that the state machine applied up to `i`."""
        if i == 0:
            return
        if self.committed < i or i < self.applied:
            raise RaftInvariantError(f"applied({i}) is out of range "
                                     f"[prevApplied({self.applied}), committed({self.committed})]")
        self.applied = i

    def stable_to(self, i: int, t: int) -> None:
        """Entries up to (`i`, `t`) are persisted."""
        self.unstable.stable_to(i, t)

    def stable_snap_to(self, i: int) -> None:
        """The snapshot at `i` is persisted."""
        self.unstable.stable_snap_to(i)

    def maybe_commit(self, max_index: int, term: int) -> bool:
        """Commit up to `max_index` if that entry is of `term` (Raft §5.4.2)."""
        if max_index > self.committed and self.term_or_zero(max_index) == term:
            self.commit_to(max_index)
            return True
        return False

    def restore(self, snap: raft_pb2.Snapshot) -> None:
        """Replace the log by `snap`; everything in it counts as committed."""
        self.logger.info("log [{log}] starts to restore snapshot [index: {index}, term: {term}]",
                         log=repr(self), index=snap.metadata.index, term=snap.metadata.term)
        self.committed = snap.metadata.index
        self.unstable.restore(snap)

    def entries(self, i: int, max_size: int | None) -> list[Entry]:
        """Entries from `i` to the end, cut to `max_size`; raises CompactedError."""
        last = self.last_index()
        if i > last:
            return []
        return self.slice(i, last + 1, max_size)

    def all_entries(self) -> list[Entry]:
        """Every readable entry (tests)."""
        return self.entries(self.first_index(), None)

    def slice(self, lo: int, hi: int, max_size: int | None) -> list[Entry]:
        """Entries [lo, hi) cut to `max_size` bytes; raises CompactedError before the log."""
        self._check_out_of_bounds(lo, hi)
        if lo == hi:
            return []
        u = self.unstable
        offset = u.offset
        ents: list[Entry] = []
        if lo < offset:
            stop = min(hi, offset)
            try:
                ents = self.storage.entries(lo, stop, max_size)
            except UnavailableError as e:
                raise RaftInvariantError(
                    f"entries[{lo}:{stop}) is unavailable from storage") from e
            if len(ents) < stop - lo:
                return ents
        if hi > offset:
            tail = u.entries[max(lo, offset) - offset:hi - offset]
            ents = ents + tail if ents else tail
        return limit_size(ents, max_size)

    def _check_out_of_bounds(self, lo: int, hi: int) -> None:
        if lo > hi:
            raise RaftInvariantError(f"invalid slice {lo} > {hi}")
        fi = self.first_index()
        if lo < fi:
            raise CompactedError()
        if hi > self.last_index() + 1:
            raise RaftInvariantError(
                f"slice[{lo},{hi}) out of bound [{fi},{self.last_index()}]")
