"""RaftLog and its unstable tail against etcd 3.4 `raft/log.go` and `log_unstable.go`."""
from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from etcdd.proto import raft_pb2
from etcdd.raft import CompactedError, MemoryStorage, RaftInvariantError
from etcdd.raft.log import RaftLog
from tests.unit.raft.network import SILENT, entries


def terms(ents: list[raft_pb2.Entry]) -> list[tuple[int, int]]:
    return [(e.Index, e.Term) for e in ents]


def new_log(*stable_terms: int, snapshot_at: int = 0, max_next: int | None = None) -> RaftLog:
    """A log whose storage holds `stable_terms` after a snapshot at `snapshot_at`."""
    storage = MemoryStorage()
    if snapshot_at:
        snap = raft_pb2.Snapshot()
        snap.metadata.index, snap.metadata.term = snapshot_at, 1
        storage.apply_snapshot(snap)
    storage.append(entries(*stable_terms, start=snapshot_at + 1))
    return RaftLog(storage, SILENT, max_next)


class RaftLogTests(SynchronousTestCase):

    def test_find_conflict(self) -> None:
        """The first index whose term differs (or is new); 0 when all match.

        Worked example on 1/1 2/2 3/3: [2/2 3/3] -> 0; [3/3 4/4] -> 4; [2/2 3/4] -> 3.
        """
        log = RaftLog(MemoryStorage(), SILENT)
        log.append(entries(1, 2, 3))
        cases = [(entries(), 0), (entries(2, 3, start=2), 0), (entries(3, 4, start=3), 4),
                 (entries(2, 4, start=2), 3), (entries(4, 4, start=1), 1),
                 (entries(1, 2, 3, 4, 5), 4)]
        for ents, want in cases:
            self.assertEqual(log.find_conflict(ents), want, terms(ents))

    def test_maybe_append(self) -> None:
        """Append after a matching (index, term); commit min(leader commit, last new)."""
        log = RaftLog(MemoryStorage(), SILENT)
        log.append(entries(1, 2, 3))
        self.assertIsNone(log.maybe_append(3, 2, 3, entries(4, start=4)))   # term mismatch
        self.assertIsNone(log.maybe_append(4, 3, 3, entries(4, start=5)))   # index missing
        self.assertEqual(log.maybe_append(3, 3, 2, entries(4, start=4)), 4)
        self.assertEqual(log.committed, 2)
        self.assertEqual(log.maybe_append(2, 2, 9, entries(5, start=3)), 3)  # truncates 3, 4
        self.assertEqual((log.committed, terms(log.entries(1, None))),
                         (3, [(1, 1), (2, 2), (3, 5)]))

    def test_maybe_append_refuses_conflict_with_committed(self) -> None:
        """A conflict at or below the commit index is a broken invariant."""
        log = RaftLog(MemoryStorage(), SILENT)
        log.append(entries(1, 2, 3))
        log.commit_to(2)
        with self.assertRaises(RaftInvariantError):
            log.maybe_append(1, 1, 3, entries(9, 9, start=2))
        with self.assertRaises(RaftInvariantError):
            log.append(entries(9, start=2))

    def test_unstable_then_stable(self) -> None:
        """Appended entries stay unstable until stable_to with a matching term."""
        log = new_log(1, 1)
        log.append(entries(2, 2, start=3))
        self.assertEqual(terms(log.unstable_entries()), [(3, 2), (4, 2)])
        log.stable_to(4, 1)                     # stale term: nothing happens
        self.assertEqual(len(log.unstable_entries()), 2)
        log.stable_to(3, 2)
        self.assertEqual((terms(log.unstable_entries()), log.unstable.offset), ([(4, 2)], 4))

    def test_truncate_unstable(self) -> None:
        """An append inside the unstable tail replaces the rest of it."""
        log = new_log(1)
        log.append(entries(1, 1, 1, start=2))
        log.append(entries(2, start=3))
        self.assertEqual(terms(log.entries(1, None)), [(1, 1), (2, 1), (3, 2)])
        log.append(entries(3, start=2))                       # at the unstable offset
        self.assertEqual(terms(log.entries(1, None)), [(1, 1), (2, 3)])

    def test_slice_spans_storage_and_unstable(self) -> None:
        """A slice reads storage then the unstable tail; compacted indexes raise."""
        log = new_log(2, 3, snapshot_at=3)                    # stable 4/2 5/3
        log.append(entries(4, 5, start=6))
        self.assertEqual(terms(log.slice(4, 8, None)), [(4, 2), (5, 3), (6, 4), (7, 5)])
        self.assertEqual(terms(log.slice(5, 7, None)), [(5, 3), (6, 4)])
        self.assertEqual(len(log.slice(4, 8, 0)), 1)
        self.assertRaises(CompactedError, log.slice, 3, 5, None)
        self.assertRaises(RaftInvariantError, log.slice, 4, 9, None)
        self.assertEqual((log.term(3), log.term(2), log.term(8)), (1, 0, 0))

    def test_next_ents_and_applied(self) -> None:
        """Committed, unapplied entries come out bounded by size; applied cannot pass commit."""
        log = new_log(1, 1, 1, 1)
        log.commit_to(3)
        self.assertEqual(terms(log.next_ents()), [(1, 1), (2, 1), (3, 1)])
        log.applied_to(2)
        self.assertEqual(terms(log.next_ents()), [(3, 1)])
        self.assertRaises(RaftInvariantError, log.applied_to, 4)
        self.assertRaises(RaftInvariantError, log.applied_to, 1)
        self.assertRaises(RaftInvariantError, log.commit_to, 5)
        bounded = new_log(1, 1, 1, 1, max_next=0)
        bounded.commit_to(4)
        self.assertEqual(len(bounded.next_ents()), 1)

    def test_restore(self) -> None:
        """Restoring a snapshot empties the log past it and commits up to it."""
        log = new_log(1, 1)
        snap = raft_pb2.Snapshot()
        snap.metadata.index, snap.metadata.term = 10, 4
        log.restore(snap)
        self.assertEqual((log.first_index(), log.last_index(), log.last_term(), log.committed),
                         (11, 10, 4, 10))
        self.assertTrue(log.match_term(10, 4))
        log.stable_snap_to(10)
        self.assertIsNone(log.unstable.snapshot)

    def test_maybe_commit_needs_term(self) -> None:
        """The leader's commit moves only to an index of the given term."""
        log = new_log(1, 2)
        self.assertFalse(log.maybe_commit(1, 2))
        self.assertTrue(log.maybe_commit(2, 2))
        self.assertFalse(log.maybe_commit(1, 1))
        self.assertEqual(log.committed, 2)
