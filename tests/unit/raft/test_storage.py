"""MemoryStorage against etcd 3.4 `raft/storage.go` semantics."""
from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from etcdd.proto import raft_pb2
from etcdd.raft import (CompactedError, MemoryStorage, RaftInvariantError,
                        SnapshotOutOfDateError, UnavailableError)
from etcdd.raft.storage import limit_size
from tests.unit.raft.network import entries


def storage_3_4_5() -> MemoryStorage:
    """A snapshot at 3/3, then entries 4/4 and 5/5 (etcd's storage_test layout)."""
    s = MemoryStorage()
    snap = raft_pb2.Snapshot()
    snap.metadata.index, snap.metadata.term = 3, 3
    s.apply_snapshot(snap)
    s.append(entries(4, 5, start=4))
    return s


def terms(ents: list[raft_pb2.Entry]) -> list[tuple[int, int]]:
    return [(e.Index, e.Term) for e in ents]


class MemoryStorageTests(SynchronousTestCase):

    def test_empty(self) -> None:
        """An empty storage: first 1, last 0, term(0) = 0, no entries yet."""
        s = MemoryStorage()
        self.assertEqual((s.first_index(), s.last_index(), s.term(0)), (1, 0, 0))
        self.assertRaises(UnavailableError, s.entries, 1, 1)
        self.assertRaises(UnavailableError, s.term, 1)

    def test_term(self) -> None:
        """Terms are known from the snapshot's index on; before it compacted, after it absent."""
        s = storage_3_4_5()
        self.assertRaises(CompactedError, s.term, 2)
        self.assertEqual([s.term(i) for i in (3, 4, 5)], [3, 4, 5])
        self.assertRaises(UnavailableError, s.term, 6)

    def test_entries(self) -> None:
        """entries(lo, hi) is a slice; a size limit keeps at least one entry."""
        s = storage_3_4_5()
        s.append(entries(6, start=6))
        self.assertRaises(CompactedError, s.entries, 3, 5)
        self.assertEqual(terms(s.entries(4, 5)), [(4, 4)])
        self.assertEqual(terms(s.entries(4, 7)), [(4, 4), (5, 5), (6, 6)])
        size = entries(4)[0].ByteSize()
        self.assertEqual(len(s.entries(4, 7, 0)), 1)
        self.assertEqual(len(s.entries(4, 7, 2 * size)), 2)
        self.assertEqual(len(s.entries(4, 7, 3 * size - 1)), 2)
        self.assertEqual(len(s.entries(4, 7, None)), 3)
        self.assertRaises(RaftInvariantError, s.entries, 4, 8)

    def test_compact(self) -> None:
        """Compaction keeps the term of the compacted index; compacting backwards is refused."""
        s = storage_3_4_5()
        self.assertRaises(CompactedError, s.compact, 3)
        s.compact(4)
        self.assertEqual((s.first_index(), s.last_index(), s.term(4)), (5, 5, 4))
        self.assertRaises(RaftInvariantError, s.compact, 6)
        s.compact(5)
        self.assertEqual((s.first_index(), s.last_index(), s.term(5)), (6, 5, 5))

    def test_create_snapshot(self) -> None:
        """A snapshot records index, term, membership and data; older indexes are refused."""
        s = storage_3_4_5()
        cs = raft_pb2.ConfState(voters=[1, 2, 3])
        snap = s.create_snapshot(4, cs, b"data")
        self.assertEqual((snap.metadata.index, snap.metadata.term, snap.data), (4, 4, b"data"))
        self.assertEqual(list(s.initial_state()[1].voters), [1, 2, 3])
        self.assertEqual(s.create_snapshot(5, None, b"d").metadata.conf_state, cs)
        self.assertRaises(SnapshotOutOfDateError, s.create_snapshot, 5, cs, b"")

    def test_apply_snapshot(self) -> None:
        """Applying a snapshot replaces the log; an older one is refused."""
        s = storage_3_4_5()
        snap = raft_pb2.Snapshot()
        snap.metadata.index, snap.metadata.term = 10, 7
        s.apply_snapshot(snap)
        self.assertEqual((s.first_index(), s.last_index(), s.term(10)), (11, 10, 7))
        old = raft_pb2.Snapshot()
        old.metadata.index = 10
        self.assertRaises(SnapshotOutOfDateError, s.apply_snapshot, old)

    def test_append(self) -> None:
        """Append truncates a conflicting suffix, skips compacted entries, refuses gaps.

        Worked example on 3/3 | 4/4 5/5 (etcd TestStorageAppend).
        """
        cases = [
            (entries(3, 4, 5, start=3), [(4, 4), (5, 5)]),
            (entries(3, 4, 6, start=3), [(4, 4), (5, 6)]),
            (entries(3, 4, 5, 5, start=3), [(4, 4), (5, 5), (6, 5)]),
            (entries(3, 3, 5, start=2), [(4, 5)]),              # 2, 3 compacted: skipped
            (entries(5, start=4), [(4, 5)]),                    # truncates 5
            (entries(5, start=5), [(4, 4), (5, 5)]),
            (entries(5, start=6), [(4, 4), (5, 5), (6, 5)]),
            (entries(1, start=1), [(4, 4), (5, 5)]),            # all compacted: no-op
        ]
        for ents, want in cases:
            s = storage_3_4_5()
            s.append(ents)
            self.assertEqual(terms(s.entries(s.first_index(), s.last_index() + 1)), want)
        self.assertRaises(RaftInvariantError, storage_3_4_5().append, entries(5, start=7))

    def test_limit_size(self) -> None:
        """limit_size keeps the longest prefix within the limit, and never less than one."""
        ents = [raft_pb2.Entry(Index=i, Data=bytes(10)) for i in range(1, 6)]
        one = ents[0].ByteSize()
        self.assertEqual(len(limit_size(ents, None)), 5)
        self.assertEqual(len(limit_size(ents, 0)), 1)
        self.assertEqual(len(limit_size(ents, one * 3)), 3)
        self.assertIs(limit_size(ents, one * 5), ents)
