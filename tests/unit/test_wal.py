"""The WAL shell (etcdd/wal/wal.py): create, save, cut, replay, torn tails, release.

Also holds the helpers test_wal_corruption.py and test_snap.py import (entries, a model
log, segment inspection, the etcd 3.4.23 fixture under testdata/etcd-wal/).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import random
import shutil
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from etcdd.proto import etcdserver_pb2, raft_pb2
from etcdd.wal.record import (
    CRC, ENTRY, METADATA as METADATA_TYPE, SNAPSHOT, STATE, Decoder, Record, TornTail,
    decode_frame_size, metadata_record, snapshot_record)
from etcdd.wal.wal import (
    SEGMENT_BYTES, WAL, ReplayResult, WALError, WALNotFoundError, WALSnapshot,
    WALSnapshotMismatchError, parse_wal_name, valid_snapshots, wal_exists, wal_name)

METADATA = metadata_record(0x1111, 0x2222)[1]
TINY_SEGMENT_BYTES = 4096
FIXTURE = Path(__file__).parent / "testdata" / "etcd-wal"


def make_entries(first: int, count: int, term: int,
                 rng: random.Random | None = None) -> list[raft_pb2.Entry]:
    """`count` entries from index `first` at `term`, with random (or indexed) data."""
    out = []
    for index in range(first, first + count):
        data = rng.randbytes(rng.randrange(0, 300)) if rng else b"e%d" % index
        out.append(raft_pb2.Entry(Term=term, Index=index, Type=raft_pb2.EntryNormal,
                                  Data=data))
    return out


def hard_state(term: int, vote: int = 0, commit: int = 0) -> raft_pb2.HardState:
    """A HardState with the given fields."""
    return raft_pb2.HardState(term=term, vote=vote, commit=commit)


class ModelLog:
    """What a WAL should replay: every entry by index (overwrites truncate) and the last hard state."""

    def __init__(self) -> None:
        self.entries: dict[int, raft_pb2.Entry] = {}
        self.hard_state = raft_pb2.HardState()

    def save(self, hs: raft_pb2.HardState | None, entries: list[raft_pb2.Entry]) -> None:
        """Record a save: entries replace everything from their first index on."""
        if entries:
            for index in [i for i in self.entries if i >= entries[0].Index]:
                del self.entries[index]
            for entry in entries:
                self.entries[entry.Index] = entry
        if hs is not None and (hs.term or hs.vote or hs.commit):
            self.hard_state = hs

    @property
    def last_index(self) -> int:
        """Index of the last entry, 0 if none."""
        return max(self.entries, default=0)

    def after(self, index: int) -> list[raft_pb2.Entry]:
        """Entries after `index`, in order."""
        return [self.entries[i] for i in sorted(self.entries) if i > index]


def segment_paths(dirpath: str) -> list[str]:
    """The *.wal files of a directory, oldest first."""
    return sorted(os.path.join(dirpath, n) for n in os.listdir(dirpath) if n.endswith(".wal"))


def records_of(path: str) -> list[Record]:
    """Every record of one segment file, decoded on its own (crc adopted from its CRC record)."""
    with open(path, "rb") as f:
        data = f.read()
    return [r for r in Decoder([data]) if not isinstance(r, TornTail)]


def dir_digests(dirpath: str) -> dict[str, str]:
    """name -> sha256 of every file in a directory, to prove a failed open changed nothing."""
    out = {}
    for name in sorted(os.listdir(dirpath)):
        with open(os.path.join(dirpath, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def copy_fixture(root: str) -> tuple[str, str]:
    """Copy the etcd 3.4.23 fixture into `root`; return (wal dir, snap dir)."""
    wal_dir, snap_dir = os.path.join(root, "wal"), os.path.join(root, "snap")
    shutil.copytree(FIXTURE / "wal", wal_dir)
    shutil.copytree(FIXTURE / "snap", snap_dir)
    return wal_dir, snap_dir


def new_wal(test: SynchronousTestCase,
            segment_bytes: int = TINY_SEGMENT_BYTES) -> tuple[str, WAL]:
    """A freshly created WAL in a temp dir, closed at test end."""
    dirpath = os.path.join(test.mktemp(), "wal")
    wal = WAL.create(dirpath, METADATA, segment_bytes)
    test.addCleanup(wal.close)
    return dirpath, wal


def reopen(test: SynchronousTestCase, dirpath: str, snap: WALSnapshot = WALSnapshot(0, 0),
           segment_bytes: int = TINY_SEGMENT_BYTES) -> tuple[WAL, ReplayResult]:
    """Open `dirpath` at `snap` and replay it; the WAL is closed at test end."""
    wal = WAL.open(dirpath, snap, segment_bytes)
    test.addCleanup(wal.close)
    return wal, wal.read_all()


def fill(wal: WAL, model: ModelLog, rng: random.Random, batches: int, term: int = 1) -> None:
    """Save `batches` random batches of entries with a hard state after each."""
    for _ in range(batches):
        entries = make_entries(model.last_index + 1, rng.randrange(1, 6), term, rng)
        hs = hard_state(term, 1, entries[-1].Index)
        wal.save(hs, entries, must_sync=rng.random() < 0.5)
        model.save(hs, entries)


class CreateTests(SynchronousTestCase):
    """WAL.create lays out etcd's first segment."""

    def test_first_segment_is_etcds(self) -> None:
        """The first segment is 0-0, preallocated, and opens with crc(0), metadata, snapshot{0,0}."""
        dirpath, wal = new_wal(self)
        [path] = segment_paths(dirpath)
        self.assertEqual(os.path.basename(path), "0000000000000000-0000000000000000.wal")
        self.assertEqual(wal.path, path)
        self.assertEqual(os.path.getsize(path), TINY_SEGMENT_BYTES)
        got = [(r.type, r.crc, r.data) for r in records_of(path)]
        self.assertEqual(got[0], (CRC, 0, b""))
        self.assertEqual(got[1][::2], (METADATA_TYPE, METADATA))
        self.assertEqual((got[2][0], got[2][2]), snapshot_record(0, 0))
        self.assertFalse(os.path.exists(dirpath + ".tmp"))
        self.assertEqual(wal.last_index, 0)

    def test_create_refuses_an_existing_wal(self) -> None:
        """Creating over a directory that holds a segment raises WALError."""
        dirpath, wal = new_wal(self)
        self.assertRaises(WALError, WAL.create, dirpath, METADATA)

    def test_create_replaces_leftovers(self) -> None:
        """A stale `.tmp` build dir and a WAL dir without segments are replaced (as etcd)."""
        root = self.mktemp()
        dirpath = os.path.join(root, "wal")
        os.makedirs(dirpath + ".tmp")
        Path(dirpath + ".tmp", "junk").write_bytes(b"x")
        os.makedirs(dirpath)
        wal = WAL.create(dirpath, METADATA, TINY_SEGMENT_BYTES)
        wal.close()
        self.assertEqual(sorted(os.listdir(root)), ["wal"])
        self.assertEqual(os.listdir(dirpath), ["0000000000000000-0000000000000000.wal"])

    def test_fresh_wal_replays_empty(self) -> None:
        """A created WAL replays to its metadata, an empty hard state and no entries."""
        dirpath, wal = new_wal(self)
        wal.close()
        _, result = reopen(self, dirpath)
        self.assertEqual(result, ReplayResult(METADATA, raft_pb2.HardState(), []))


class RoundTripTests(SynchronousTestCase):
    """What is saved is what read_all returns."""

    def test_round_trip_across_segments(self) -> None:
        """Entries and hard states saved over many tiny segments replay equal to the model."""
        rng = random.Random(1)
        dirpath, wal = new_wal(self)
        model = ModelLog()
        fill(wal, model, rng, 60)
        wal.close()
        self.assertGreater(len(segment_paths(dirpath)), 3)
        wal, result = reopen(self, dirpath)
        self.assertEqual(result.metadata, METADATA)
        self.assertEqual(result.hard_state, model.hard_state)
        self.assertEqual(result.entries, model.after(0))
        self.assertEqual(wal.last_index, model.last_index)

    def test_overwritten_indexes_replace_the_tail(self) -> None:
        """A later entry at an index replaces it and everything after it, as etcd ReadAll."""
        dirpath, wal = new_wal(self)
        model = ModelLog()
        for first, count, term in ((1, 10, 1), (6, 2, 2), (8, 3, 3), (3, 1, 4)):
            entries = make_entries(first, count, term)
            wal.save(hard_state(term), entries, must_sync=True)
            model.save(hard_state(term), entries)
        wal.close()
        wal, result = reopen(self, dirpath)
        self.assertEqual([(e.Index, e.Term) for e in result.entries], [(1, 1), (2, 1), (3, 4)])
        self.assertEqual(result.entries, model.after(0))
        self.assertEqual(wal.last_index, 3)

    def test_overwrite_below_the_snapshot_drops_stale_entries(self) -> None:
        """Entries above a snapshot that a later overwrite below it removed do not replay."""
        dirpath, wal = new_wal(self)
        wal.save(hard_state(1), make_entries(1, 11, 1), must_sync=True)
        wal.save(hard_state(2, 0, 10), make_entries(6, 5, 2), must_sync=True)
        wal.save_snapshot(WALSnapshot(10, 2))
        wal.close()
        wal, result = reopen(self, dirpath, WALSnapshot(10, 2))
        self.assertEqual(result.entries, [])
        self.assertEqual(wal.last_index, 10)

    def test_appends_after_replay_continue_the_chain(self) -> None:
        """Entries saved after a replay extend the log and survive another reopen."""
        rng = random.Random(2)
        dirpath, wal = new_wal(self)
        model = ModelLog()
        fill(wal, model, rng, 10)
        wal.close()
        for term in (2, 3):
            wal, _ = reopen(self, dirpath)
            fill(wal, model, rng, 10, term)
            wal.close()
        _, result = reopen(self, dirpath)
        self.assertEqual(result.entries, model.after(0))
        self.assertEqual(result.hard_state, model.hard_state)

    def test_empty_save_writes_nothing(self) -> None:
        """Saving no entries and an empty (or no) hard state leaves the file as it was."""
        dirpath, wal = new_wal(self)
        before = dir_digests(dirpath)
        wal.save(None, [], must_sync=True)
        wal.save(raft_pb2.HardState(), [], must_sync=True)
        self.assertEqual(dir_digests(dirpath), before)

    def test_empty_hard_state_with_entries_is_skipped(self) -> None:
        """Entries saved with an empty hard state write no state record (etcd saveState)."""
        dirpath, wal = new_wal(self)
        wal.save(raft_pb2.HardState(), make_entries(1, 2, 1), must_sync=True)
        wal.close()
        self.assertEqual([r.type for r in records_of(segment_paths(dirpath)[0])],
                         [CRC, METADATA_TYPE, SNAPSHOT, ENTRY, ENTRY])

    def test_entries_without_explicit_fields_marshal_as_etcd(self) -> None:
        """An entry whose zero fields were never set is written with Type/Term/Index present."""
        dirpath, wal = new_wal(self)
        wal.save(None, [raft_pb2.Entry(Index=1, Term=1)], must_sync=True)
        wal.close()
        entry_data = records_of(segment_paths(dirpath)[0])[-1].data
        self.assertEqual(entry_data, bytes.fromhex("080010011801"))

    def test_save_before_read_all_is_refused(self) -> None:
        """An opened WAL refuses appends until read_all, and read_all runs once."""
        dirpath, wal = new_wal(self)
        wal.close()
        wal = WAL.open(dirpath, WALSnapshot(0, 0), TINY_SEGMENT_BYTES)
        self.addCleanup(wal.close)
        self.assertRaises(WALError, wal.save, hard_state(1), make_entries(1, 1, 1), True)
        wal.read_all()
        self.assertRaises(WALError, wal.read_all)

    def test_close_is_idempotent_and_refuses_appends(self) -> None:
        """close twice is harmless; a closed WAL refuses saves."""
        _, wal = new_wal(self)
        wal.close()
        wal.close()
        self.assertRaises(WALError, wal.save, hard_state(1), make_entries(1, 1, 1), True)


class RandomOperationsTests(SynchronousTestCase):
    """Seeded random saves, overwrites, snapshots, releases and reopens against a model."""

    def test_random_operations_match_model(self) -> None:
        """After every reopen the replay equals the model log from the latest snapshot."""
        for seed in range(8):
            self._run_seed(seed)

    def _run_seed(self, seed: int) -> None:
        rng = random.Random(seed)
        dirpath, wal = new_wal(self)
        model, snap, term = ModelLog(), WALSnapshot(0, 0), 1
        for step in range(120):
            op = rng.random()
            if op < 0.55:
                first = rng.randrange(snap.index + 1, model.last_index + 2)
                term += rng.random() < 0.2
                entries = make_entries(first, rng.randrange(1, 8), term, rng)
                hs = hard_state(term, rng.randrange(3), rng.randrange(entries[-1].Index + 1))
                hs = hs if rng.random() < 0.7 else None
                wal.save(hs, entries, must_sync=rng.random() < 0.5)
                model.save(hs, entries)
            elif op < 0.65 and model.last_index > snap.index:
                index = rng.randrange(snap.index + 1, model.last_index + 1)
                snap = WALSnapshot(index, model.entries[index].Term)
                wal.save_snapshot(snap)
            elif op < 0.75:
                wal.release_before(snap.index, max_wals=rng.randrange(0, 4))
            elif op < 0.85:
                wal.close()
                wal = WAL.open(dirpath, snap, TINY_SEGMENT_BYTES)
                self.addCleanup(wal.close)
                result = wal.read_all()
                where = f"seed {seed} step {step}"
                self.assertEqual(result.entries, model.after(snap.index), where)
                self.assertEqual(result.hard_state, model.hard_state, where)
                self.assertEqual(result.metadata, METADATA, where)
        wal.close()


class SegmentCutTests(SynchronousTestCase):
    """A full tail segment is cut as etcd cuts it."""

    def test_cut_names_and_first_records(self) -> None:
        """A cut makes seq+1 named after last_index+1, opening with crc(prev), metadata, state."""
        rng = random.Random(3)
        dirpath, wal = new_wal(self)
        model = ModelLog()
        while len(segment_paths(dirpath)) < 2:
            fill(wal, model, rng, 1)
        first, second = segment_paths(dirpath)
        old = records_of(first)
        last_entry = raft_pb2.Entry.FromString([r for r in old if r.type == ENTRY][-1].data)
        self.assertEqual(os.path.basename(second), wal_name(1, last_entry.Index + 1))
        self.assertEqual(wal.path, second)
        self.assertGreaterEqual(os.path.getsize(first), TINY_SEGMENT_BYTES)
        self.assertEqual(os.path.getsize(first), old[-1].offset + len(frame_of(first, old[-1])))
        self.assertEqual(os.path.getsize(second), TINY_SEGMENT_BYTES)
        head = records_of(second)
        self.assertEqual([r.type for r in head], [CRC, METADATA_TYPE, STATE])
        self.assertEqual(head[0].crc, old[-1].crc)
        self.assertEqual(head[1].data, METADATA)
        self.assertEqual(raft_pb2.HardState.FromString(head[2].data), model.hard_state)
        self.assertFalse(os.path.exists(os.path.join(dirpath, "0.tmp")))

    def test_names_parse_back(self) -> None:
        """Segment names are %016x-%016x.wal and parse back; other names do not."""
        self.assertEqual(wal_name(1, 0x412), "0000000000000001-0000000000000412.wal")
        self.assertEqual(parse_wal_name(wal_name(7, 2 ** 64 - 1)), (7, 2 ** 64 - 1))
        for bad in ("0.tmp", "1-2.wal", "0000000000000001-0000000000000412.wal.broken"):
            self.assertIsNone(parse_wal_name(bad))

    def test_reopened_wal_cuts_with_replayed_state(self) -> None:
        """A WAL reopened and then cut writes the replayed hard state into the new segment."""
        rng = random.Random(4)
        dirpath, wal = new_wal(self)
        model = ModelLog()
        fill(wal, model, rng, 2)
        wal.close()
        wal, _ = reopen(self, dirpath)
        while len(segment_paths(dirpath)) < 2:
            entries = make_entries(model.last_index + 1, 5, 1, rng)
            wal.save(None, entries, must_sync=False)
            model.save(None, entries)
        head = records_of(segment_paths(dirpath)[1])
        self.assertEqual(raft_pb2.HardState.FromString(head[2].data), model.hard_state)


def frame_of(path: str, rec: Record) -> bytes:
    """The framed bytes of `rec` in segment `path`."""
    with open(path, "rb") as f:
        data = f.read()
    record_bytes, pad = decode_frame_size(int.from_bytes(data[rec.offset:rec.offset + 8], "little"))
    return data[rec.offset:rec.offset + 8 + record_bytes + pad]


class TornTailTests(SynchronousTestCase):
    """A crash mid-write leaves a torn last record that open cuts durably."""

    def _wal_with_tail(self) -> tuple[str, ModelLog, str, Record]:
        """A closed single-segment WAL; returns (dir, model, segment, its last record)."""
        rng = random.Random(5)
        dirpath, wal = new_wal(self, segment_bytes=1 << 20)
        model = ModelLog()
        fill(wal, model, rng, 8)
        last = make_entries(model.last_index + 1, 1, 1)
        last[0].Data = bytes(range(1, 256)) * 6
        wal.save(None, last, must_sync=True)
        wal.close()
        [path] = segment_paths(dirpath)
        return dirpath, model, path, records_of(path)[-1]

    def _assert_cut(self, dirpath: str, model: ModelLog, path: str, torn: Record) -> None:
        """Replay drops the torn record, appends land after the cut, and a reopen agrees."""
        size = os.path.getsize(path)
        wal, result = reopen(self, dirpath, segment_bytes=1 << 20)
        self.assertEqual(result.entries, model.after(0))
        self.assertEqual(os.path.getsize(path), size)
        with open(path, "rb") as f:
            f.seek(torn.offset)
            self.assertFalse(any(f.read()))
        more = make_entries(model.last_index + 1, 3, 2)
        wal.save(hard_state(2, 0, 1), more, must_sync=True)
        model.save(hard_state(2, 0, 1), more)
        wal.close()
        _, again = reopen(self, dirpath, segment_bytes=1 << 20)
        self.assertEqual(again.entries, model.after(0))
        self.assertEqual(again.hard_state, model.hard_state)

    def test_truncated_last_record_is_cut(self) -> None:
        """A segment truncated mid-record replays without it and is appended to after it."""
        dirpath, model, path, torn = self._wal_with_tail()
        with open(path, "r+b") as f:
            f.truncate(torn.offset + 100)
        self._assert_cut(dirpath, model, path, torn)

    def test_zeroed_sector_of_last_record_is_cut(self) -> None:
        """A last record with an all-zero 512-byte sector is a torn write and is cut."""
        dirpath, model, path, torn = self._wal_with_tail()
        sector = (torn.offset // 512 + 1) * 512
        with open(path, "r+b") as f:
            f.seek(sector)
            f.write(b"\0" * 512)
        self._assert_cut(dirpath, model, path, torn)

    def test_garbage_after_the_end_is_zeroed(self) -> None:
        """Bytes after the zero length word that ends the data are zeroed (etcd ZeroToEnd)."""
        dirpath, model, path, _ = self._wal_with_tail()
        end = records_of(path)[-1]
        stop = end.offset + len(frame_of(path, end))
        with open(path, "r+b") as f:
            f.seek(stop + 64)
            f.write(b"\xab" * 100)
        _, result = reopen(self, dirpath, segment_bytes=1 << 20)
        with open(path, "rb") as f:
            f.seek(stop)
            self.assertFalse(any(f.read()))
        self.assertEqual(len(result.entries), len(model.after(0)) + 1)

    def test_torn_tail_in_a_later_segment(self) -> None:
        """Only the last of several segments is cut; earlier ones are read whole."""
        rng = random.Random(6)
        dirpath, wal = new_wal(self)
        model = ModelLog()
        while len(segment_paths(dirpath)) < 3:
            fill(wal, model, rng, 1)
        fill(wal, model, rng, 2)
        wal.close()
        tail = segment_paths(dirpath)[-1]
        states = [r for r in records_of(tail) if r.type == STATE]
        self.assertEqual(records_of(tail)[-1], states[-1])
        with open(tail, "r+b") as f:
            f.truncate(states[-1].offset + 5)
        _, result = reopen(self, dirpath)
        self.assertEqual(result.entries, model.after(0))
        self.assertEqual(result.hard_state, raft_pb2.HardState.FromString(states[-2].data))


class SnapshotRecordTests(SynchronousTestCase):
    """Snapshot marker records: where replay starts and what it checks."""

    def _wal_with_snapshot(self) -> tuple[str, ModelLog, WALSnapshot]:
        """A closed multi-segment WAL with a snapshot record at entry 50."""
        rng = random.Random(7)
        dirpath, wal = new_wal(self)
        model = ModelLog()
        while model.last_index < 60:
            fill(wal, model, rng, 1)
        snap = WALSnapshot(50, 1)
        wal.save_snapshot(snap)
        fill(wal, model, rng, 30)
        wal.close()
        return dirpath, model, snap

    def test_replay_from_snapshot_skips_older_entries(self) -> None:
        """read_all at a snapshot returns only the entries after its index."""
        dirpath, model, snap = self._wal_with_snapshot()
        _, result = reopen(self, dirpath, snap)
        self.assertEqual(result.entries, model.after(50))
        self.assertEqual(result.entries[0].Index, 51)

    def test_open_reads_from_the_segment_holding_the_index(self) -> None:
        """open locks only the segment holding the snapshot index and later ones."""
        dirpath, _, snap = self._wal_with_snapshot()
        names = [os.path.basename(p) for p in segment_paths(dirpath)]
        starts = [parse_wal_name(n)[1] for n in names]
        first = max(i for i, start in enumerate(starts) if start <= snap.index)
        self.assertGreater(first, 0)
        wal, _ = reopen(self, dirpath, snap)
        held = [os.path.basename(s.path) for s in wal._segments]
        self.assertEqual(held, names[first:])

    def test_term_mismatch_is_refused(self) -> None:
        """A snapshot record at the index with another term raises WALSnapshotMismatchError."""
        dirpath, _, _ = self._wal_with_snapshot()
        wal = WAL.open(dirpath, WALSnapshot(50, 9), TINY_SEGMENT_BYTES)
        self.addCleanup(wal.close)
        e = self.assertRaises(WALSnapshotMismatchError, wal.read_all)
        self.assertIn("wal: snapshot mismatch", str(e))

    def test_missing_snapshot_record_is_refused(self) -> None:
        """A snapshot index with no record in the WAL raises WALSnapshotMismatchError."""
        dirpath, _, _ = self._wal_with_snapshot()
        before = dir_digests(dirpath)
        wal = WAL.open(dirpath, WALSnapshot(55, 1), TINY_SEGMENT_BYTES)
        self.addCleanup(wal.close)
        e = self.assertRaises(WALSnapshotMismatchError, wal.read_all)
        self.assertIn("wal: snapshot not found", str(e))
        self.assertEqual(dir_digests(dirpath), before)

    def test_valid_snapshots_lists_committed_records(self) -> None:
        """valid_snapshots lists {0,0} and every record at or below the last commit."""
        dirpath, _, snap = self._wal_with_snapshot()
        self.assertEqual(valid_snapshots(dirpath), [WALSnapshot(0, 0), snap])

    def test_valid_snapshots_drops_uncommitted_records(self) -> None:
        """A snapshot record above the last hard state's commit is not valid (etcd 3.4.23)."""
        dirpath, wal = new_wal(self)
        wal.save(hard_state(1, 0, 2), make_entries(1, 5, 1), must_sync=True)
        wal.save_snapshot(WALSnapshot(2, 1))
        wal.save_snapshot(WALSnapshot(4, 1))
        self.assertEqual(valid_snapshots(dirpath), [WALSnapshot(0, 0), WALSnapshot(2, 1)])

    def test_save_snapshot_moves_last_index(self) -> None:
        """A snapshot record past the last entry becomes last_index, naming the next cut."""
        dirpath, wal = new_wal(self)
        wal.save(hard_state(1), make_entries(1, 3, 1), must_sync=True)
        wal.save_snapshot(WALSnapshot(100, 2))
        self.assertEqual(wal.last_index, 100)
        rng = random.Random(8)
        while len(segment_paths(dirpath)) < 2:
            wal.save(hard_state(2), make_entries(wal.last_index + 1, 3, 2, rng), True)
        self.assertGreater(parse_wal_name(os.path.basename(wal.path))[1], 101)


class ReleaseTests(SynchronousTestCase):
    """release_before unlocks and purges only segments replay no longer needs."""

    def _segments(self, count: int) -> tuple[str, WAL, ModelLog]:
        rng = random.Random(9)
        dirpath, wal = new_wal(self)
        model = ModelLog()
        while len(segment_paths(dirpath)) < count:
            fill(wal, model, rng, 1)
        return dirpath, wal, model

    def test_keeps_the_segment_holding_the_index(self) -> None:
        """Segments before the one holding `index` go; it and later ones stay."""
        dirpath, wal, model = self._segments(6)
        names = [os.path.basename(p) for p in segment_paths(dirpath)]
        holder = 3
        index = parse_wal_name(names[holder])[1] + 1
        removed = wal.release_before(index, max_wals=1)
        self.assertEqual([os.path.basename(p) for p in removed], names[:holder])
        self.assertEqual([os.path.basename(p) for p in segment_paths(dirpath)], names[holder:])

    def test_max_wals_bounds_what_is_removed(self) -> None:
        """With max_wals, only the oldest removable segments beyond the limit go; 0 keeps all."""
        dirpath, wal, _ = self._segments(6)
        names = [os.path.basename(p) for p in segment_paths(dirpath)]
        index = parse_wal_name(names[4])[1]
        self.assertEqual(wal.release_before(index, max_wals=0), [])
        removed = wal.release_before(index, max_wals=4)
        self.assertEqual([os.path.basename(p) for p in removed], names[:2])
        self.assertEqual(wal.release_before(index, max_wals=4), [])

    def test_release_unlocks_old_segments(self) -> None:
        """Released segments can be locked by another opener; kept ones cannot."""
        dirpath, wal, _ = self._segments(4)
        paths = segment_paths(dirpath)
        wal.release_before(parse_wal_name(os.path.basename(paths[2]))[1], max_wals=0)
        for path, locked in zip(paths, (False, False, True, True)):
            fd = os.open(path, os.O_RDWR)
            try:
                if locked:
                    self.assertRaises(BlockingIOError, fcntl.flock, fd,
                                      fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)

    def test_released_wal_replays_from_snapshot(self) -> None:
        """After a snapshot and a release, a reopen at that snapshot replays the rest."""
        dirpath, wal, model = self._segments(5)
        snap = WALSnapshot(model.last_index - 2, 1)
        wal.save_snapshot(snap)
        fill(wal, model, random.Random(10), 5)
        self.assertTrue(wal.release_before(snap.index, max_wals=1))
        wal.close()
        _, result = reopen(self, dirpath, snap)
        self.assertEqual(result.entries, model.after(snap.index))
        self.assertRaises(WALNotFoundError, WAL.open, dirpath, WALSnapshot(0, 0))


class LockTests(SynchronousTestCase):
    """Segments are flock'ed by the one WAL that has them open."""

    def test_second_opener_is_refused(self) -> None:
        """A second open of a WAL in use raises WALError naming the lock; after close it opens."""
        dirpath, wal = new_wal(self)
        e = self.assertRaises(WALError, WAL.open, dirpath, WALSnapshot(0, 0))
        self.assertIn("locked by another process", str(e))
        wal.close()
        reopen(self, dirpath)

    def test_missing_directory_is_not_found(self) -> None:
        """Opening a directory with no segment raises WALNotFoundError; wal_exists says no."""
        empty = self.mktemp()
        os.makedirs(empty)
        self.assertFalse(wal_exists(empty))
        self.assertFalse(wal_exists(os.path.join(empty, "nope")))
        self.assertRaises(WALNotFoundError, WAL.open, empty, WALSnapshot(0, 0))
        self.assertRaises(WALNotFoundError, WAL.open, os.path.join(empty, "nope"),
                          WALSnapshot(0, 0))
        self.assertRaises(WALNotFoundError, valid_snapshots, empty)


class EtcdWALTests(SynchronousTestCase):
    """A WAL written by the real etcd 3.4.23 (testdata/etcd-wal)."""

    def test_reads_etcds_wal(self) -> None:
        """etcd's 16 entries, last hard state and metadata replay from its snapshot {0,0}."""
        wal_dir, _ = copy_fixture(self.mktemp())
        wal, result = reopen(self, wal_dir, segment_bytes=SEGMENT_BYTES)
        self.assertEqual([e.Index for e in result.entries], list(range(1, 17)))
        self.assertEqual([e.Term for e in result.entries], [1] + [2] * 15)
        self.assertEqual(result.entries[0].Type, raft_pb2.EntryConfChange)
        meta = etcdserver_pb2.Metadata.FromString(result.metadata)
        self.assertEqual(result.hard_state, hard_state(2, meta.NodeID, 16))
        self.assertEqual(wal.last_index, 16)

    def test_reads_etcds_wal_from_a_snapshot(self) -> None:
        """Opened at etcd's snapshot {12, 2}, replay returns entries 13..16."""
        wal_dir, _ = copy_fixture(self.mktemp())
        _, result = reopen(self, wal_dir, WALSnapshot(12, 2), SEGMENT_BYTES)
        self.assertEqual([e.Index for e in result.entries], [13, 14, 15, 16])

    def test_valid_snapshots_of_etcds_wal(self) -> None:
        """etcd's WAL lists snapshot records {0,0}, {6,2} and {12,2}."""
        wal_dir, _ = copy_fixture(self.mktemp())
        self.assertEqual(valid_snapshots(wal_dir),
                         [WALSnapshot(0, 0), WALSnapshot(6, 2), WALSnapshot(12, 2)])

    def test_appends_to_etcds_wal(self) -> None:
        """Entries appended to etcd's segment chain onto its crc and replay after its own."""
        wal_dir, _ = copy_fixture(self.mktemp())
        wal, result = reopen(self, wal_dir, WALSnapshot(12, 2), SEGMENT_BYTES)
        wal.save(hard_state(3, 0, 17), make_entries(17, 2, 3), must_sync=True)
        wal.close()
        _, again = reopen(self, wal_dir, WALSnapshot(12, 2), SEGMENT_BYTES)
        self.assertEqual([e.Index for e in again.entries], [13, 14, 15, 16, 17, 18])
        self.assertEqual(again.hard_state, hard_state(3, 0, 17))
