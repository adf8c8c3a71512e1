"""Damage before the WAL's tail refuses the open, names file and offset, and changes nothing."""
from __future__ import annotations

import os
import random

from twisted.trial.unittest import SynchronousTestCase

from etcdd.proto import raft_pb2
from etcdd.wal.record import ENTRY, METADATA as METADATA_TYPE, STATE, Record, encode_records
from etcdd.wal.wal import (
    WAL, WALCorruptError, WALNotFoundError, WALSnapshot, valid_snapshots, wal_name)

from tests.unit.test_wal import (
    METADATA, TINY_SEGMENT_BYTES, ModelLog, dir_digests, fill, frame_of, make_entries,
    new_wal, records_of, reopen, segment_paths)


def patch(path: str, offset: int, data: bytes) -> None:
    """Overwrite bytes of a file in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def flip(path: str, offset: int) -> None:
    """Flip the low bit of one byte."""
    with open(path, "rb") as f:
        f.seek(offset)
        byte = f.read(1)[0]
    patch(path, offset, bytes([byte ^ 0x01]))


class CorruptionTests(SynchronousTestCase):
    """Each kind of damage raises WALCorruptError naming the file and frame offset."""

    def setUp(self) -> None:
        rng = random.Random(11)
        self.dirpath, wal = new_wal(self)
        self.model = ModelLog()
        while len(segment_paths(self.dirpath)) < 3:
            fill(wal, self.model, rng, 1)
        fill(wal, self.model, rng, 3)
        wal.close()
        self.segments = segment_paths(self.dirpath)

    def assert_refused(self, path: str, offset: int,
                       snap: WALSnapshot = WALSnapshot(0, 0)) -> WALCorruptError:
        """Replay fails at (path, offset), and no file in the directory changed."""
        before = dir_digests(self.dirpath)
        wal = WAL.open(self.dirpath, snap, TINY_SEGMENT_BYTES)
        try:
            e = self.assertRaises(WALCorruptError, wal.read_all)
        finally:
            wal.close()
        self.assertEqual((e.path, e.offset), (path, offset))
        self.assertIn(f"{path} at offset {offset}", str(e))
        self.assertEqual(dir_digests(self.dirpath), before)
        return e

    def middle_entry(self, path: str) -> Record:
        """An entry record in the middle of a segment with data to damage."""
        entries = [r for r in records_of(path) if r.type == ENTRY and len(r.data) > 40]
        return entries[len(entries) // 2]

    def test_flipped_byte_in_a_middle_record_of_the_tail(self) -> None:
        """A flipped data byte in a record followed by others in the last segment is a crc mismatch."""
        tail = self.segments[-1]
        rec = self.middle_entry(tail)
        flip(tail, rec.offset + 8 + len(frame_of(tail, rec)) // 2)
        e = self.assert_refused(tail, rec.offset)
        self.assertIn("wal: crc mismatch", str(e))

    def test_flipped_byte_in_an_earlier_segment(self) -> None:
        """Damage in a segment before the last is corruption, never a torn tail."""
        first = self.segments[0]
        rec = self.middle_entry(first)
        flip(first, rec.offset + 20)
        self.assert_refused(first, rec.offset)

    def test_last_record_of_an_earlier_segment(self) -> None:
        """A segment's final record damaged is corruption when another segment follows."""
        middle = self.segments[1]
        rec = records_of(middle)[-1]
        flip(middle, rec.offset + len(frame_of(middle, rec)) - 9)
        self.assert_refused(middle, rec.offset)

    def test_bad_crc_field(self) -> None:
        """A record whose stored crc is wrong but whose data is intact is refused."""
        first = self.segments[0]
        rec = self.middle_entry(first)
        frame = frame_of(first, rec)
        crc_at = frame.index(b"\x10", 8 + 2) + 1          # field 2 varint follows its tag
        flip(first, rec.offset + crc_at)
        e = self.assert_refused(first, rec.offset)
        self.assertIn("crc mismatch", str(e))

    def test_lying_length_word(self) -> None:
        """A length word that claims more bytes than the record has is refused at that frame."""
        for path in (self.segments[0], self.segments[-1]):
            rec = self.middle_entry(path)
            word = int.from_bytes(frame_of(path, rec)[:8], "little")
            patch(path, rec.offset, (word + 16).to_bytes(8, "little"))
            self.assert_refused(path, rec.offset)
            patch(path, rec.offset, word.to_bytes(8, "little"))

    def test_length_word_past_the_end_of_an_earlier_segment(self) -> None:
        """A length word running past the end of a segment that is not the last is refused."""
        first = self.segments[0]
        rec = records_of(first)[-1]
        patch(first, rec.offset, (4000).to_bytes(8, "little"))
        e = self.assert_refused(first, rec.offset)
        self.assertIn("truncated frame", str(e))

    def test_oversize_length_word(self) -> None:
        """A length word of 10 MiB or more is refused before any read."""
        tail = self.segments[-1]
        rec = self.middle_entry(tail)
        patch(tail, rec.offset, (10 << 20).to_bytes(8, "little"))
        e = self.assert_refused(tail, rec.offset)
        self.assertIn("max entry size limit exceeded", str(e))

    def test_garbage_segment(self) -> None:
        """A segment of random bytes after valid ones is refused at its first byte."""
        tail = self.segments[-1]
        seq = len(self.segments)
        garbage = os.path.join(self.dirpath, wal_name(seq, self.model.last_index + 1))
        with open(garbage, "wb") as f:
            f.write(random.Random(12).randbytes(4096))
        self.assert_refused(garbage, 0)
        os.remove(garbage)
        with open(tail, "r+b") as f:
            size = os.path.getsize(tail)
            f.seek(0)
            f.write(random.Random(13).randbytes(size))
        self.assert_refused(tail, 0)

    def test_unparsable_entry(self) -> None:
        """A record whose entry data is not a raftpb.Entry (with a valid crc) is refused."""
        self._replace_tail([(ENTRY, b"\xff\xff\xff")], "unparsable Entry")

    def test_unknown_record_type(self) -> None:
        """A record of a type etcd does not know is refused."""
        self._replace_tail([(9, b"x")], "unexpected block type 9")

    def test_conflicting_metadata(self) -> None:
        """A segment whose metadata differs from the first one's is refused."""
        self._replace_tail([(METADATA_TYPE, b"other")], "conflicting metadata")

    def test_gap_in_entries(self) -> None:
        """An entry record more than one past the last is refused (etcd ErrSliceOutOfRange)."""
        entry = make_entries(self.model.last_index + 5, 1, 1)[0]
        self._replace_tail([(ENTRY, entry.SerializeToString())], "slice bounds out of range")

    def _replace_tail(self, records: list[tuple[int, bytes]], message: str) -> None:
        """Append `records` (with a valid crc chain) to the tail and expect a refusal."""
        wal, _ = reopen(self, self.dirpath)
        last = wal._offset
        wal._append(records)
        wal._append([(STATE, raft_pb2.HardState(term=1).SerializeToString())])
        wal.close()
        e = self.assert_refused(self.segments[-1], last)
        self.assertIn(message, str(e))

    def test_failed_replay_releases_locks(self) -> None:
        """After a refused replay and close, the segments can be opened again at once."""
        tail = self.segments[-1]
        rec = self.middle_entry(tail)
        flip(tail, rec.offset + 20)
        self.assert_refused(tail, rec.offset)
        flip(tail, rec.offset + 20)
        _, result = reopen(self, self.dirpath)
        self.assertEqual(result.entries, self.model.after(0))

    def test_valid_snapshots_refuses_corruption(self) -> None:
        """valid_snapshots raises WALCorruptError too, without changing any file."""
        first = self.segments[0]
        rec = self.middle_entry(first)
        flip(first, rec.offset + 20)
        before = dir_digests(self.dirpath)
        e = self.assertRaises(WALCorruptError, valid_snapshots, self.dirpath)
        self.assertEqual((e.path, e.offset), (first, rec.offset))
        self.assertEqual(dir_digests(self.dirpath), before)

    def test_missing_middle_segment(self) -> None:
        """A gap in the segment sequence is refused as WALNotFoundError at open."""
        os.remove(self.segments[1])
        before = dir_digests(self.dirpath)
        self.assertRaises(WALNotFoundError, WAL.open, self.dirpath, WALSnapshot(0, 0))
        self.assertEqual(dir_digests(self.dirpath), before)


class FirstSegmentTests(SynchronousTestCase):
    """Damage to a lone segment."""

    def test_garbage_only_segment(self) -> None:
        """A directory whose only segment is garbage is refused at offset 0."""
        dirpath = self.mktemp()
        os.makedirs(dirpath)
        path = os.path.join(dirpath, wal_name(0, 0))
        with open(path, "wb") as f:
            f.write(random.Random(14).randbytes(8192))
        before = dir_digests(dirpath)
        wal = WAL.open(dirpath, WALSnapshot(0, 0))
        self.addCleanup(wal.close)
        e = self.assertRaises(WALCorruptError, wal.read_all)
        self.assertEqual((e.path, e.offset), (path, 0))
        self.assertEqual(dir_digests(dirpath), before)

    def test_wrong_crc_record_in_a_later_segment(self) -> None:
        """A segment whose CRC record disagrees with the previous segment's chain is refused."""
        dirpath, wal = new_wal(self)
        wal.save(raft_pb2.HardState(term=1), make_entries(1, 3, 1), must_sync=True)
        wal.close()
        data, _ = encode_records([(4, b""), (METADATA_TYPE, METADATA)], 0x1234)
        path = os.path.join(dirpath, wal_name(1, 4))
        with open(path, "wb") as f:
            f.write(data)
        wal = WAL.open(dirpath, WALSnapshot(0, 0))
        self.addCleanup(wal.close)
        e = self.assertRaises(WALCorruptError, wal.read_all)
        self.assertEqual((e.path, e.offset), (path, 0))

