"""Snapshot files (etcdd/wal/snap.py) against etcd 3.4's snapshotter."""
from __future__ import annotations

import os

from crc32c import crc32c
from twisted.trial.unittest import SynchronousTestCase

from etcdd.proto import raft_pb2, snap_pb2
from etcdd.wal.snap import (
    NoSnapshotError, SnapError, Snapshotter, decode_snap, encode_snap, read_snap, snap_name)
from etcdd.wal.wal import WALSnapshot, valid_snapshots

from tests.unit.test_wal import FIXTURE, copy_fixture


def snapshot(index: int, term: int, data: bytes = b"v2 store") -> raft_pb2.Snapshot:
    """A raft snapshot at (index, term) with voters 1, 2, 3."""
    return raft_pb2.Snapshot(data=data, metadata=raft_pb2.SnapshotMetadata(
        index=index, term=term, conf_state=raft_pb2.ConfState(voters=[1, 2, 3])))


class SnapshotterTests(SynchronousTestCase):
    """Save, load, skip and purge .snap files."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.snapshotter = Snapshotter(self.dir)

    def test_save_writes_etcds_file(self) -> None:
        """save writes <term>-<index>.snap holding snappb{crc32c(data), data} and no temp file."""
        snap = snapshot(0x1234, 5)
        self.snapshotter.save(snap)
        self.assertEqual(os.listdir(self.dir), ["0000000000000005-0000000000001234.snap"])
        with open(os.path.join(self.dir, snap_name(5, 0x1234)), "rb") as f:
            envelope = snap_pb2.snapshot.FromString(f.read())
        self.assertEqual(envelope.data, snap.SerializeToString())
        self.assertEqual(envelope.crc, crc32c(envelope.data))

    def test_round_trip(self) -> None:
        """A saved snapshot loads back equal when the WAL has its record."""
        snap = snapshot(10, 2)
        self.snapshotter.save(snap)
        got = self.snapshotter.load_newest_available([WALSnapshot(0, 0), WALSnapshot(10, 2)])
        self.assertEqual(got, snap)

    def test_empty_snapshot_is_not_saved(self) -> None:
        """A snapshot at index 0 writes nothing (etcd IsEmptySnap)."""
        self.snapshotter.save(raft_pb2.Snapshot())
        self.assertEqual(os.listdir(self.dir), [])

    def test_newest_with_a_wal_record_wins(self) -> None:
        """The newest file whose (index, term) the WAL lists is chosen; a newer orphan is left alone."""
        for index in (5, 10, 15, 20):
            self.snapshotter.save(snapshot(index, 2))
        wal_snaps = [WALSnapshot(0, 0), WALSnapshot(5, 2), WALSnapshot(10, 2), WALSnapshot(15, 2)]
        self.assertEqual(self.snapshotter.load_newest_available(wal_snaps).metadata.index, 15)
        self.assertIn(snap_name(2, 20), os.listdir(self.dir))

    def test_term_must_match_too(self) -> None:
        """A file whose index is listed with another term is not chosen."""
        self.snapshotter.save(snapshot(5, 2))
        self.snapshotter.save(snapshot(10, 3))
        got = self.snapshotter.load_newest_available([WALSnapshot(5, 2), WALSnapshot(10, 2)])
        self.assertEqual(got.metadata.index, 5)

    def test_corrupt_file_is_renamed_broken_and_skipped(self) -> None:
        """A file failing its crc is renamed .broken and the next older one is loaded."""
        self.snapshotter.save(snapshot(5, 2))
        self.snapshotter.save(snapshot(10, 2))
        path = os.path.join(self.dir, snap_name(2, 10))
        with open(path, "r+b") as f:
            f.seek(-3, os.SEEK_END)
            f.write(b"\xff")
        wal_snaps = [WALSnapshot(5, 2), WALSnapshot(10, 2)]
        self.assertEqual(self.snapshotter.load_newest_available(wal_snaps).metadata.index, 5)
        self.assertEqual(sorted(os.listdir(self.dir)),
                         [snap_name(2, 5), snap_name(2, 10) + ".broken"])

    def test_empty_and_garbage_files_are_broken(self) -> None:
        """An empty file and an unparsable one are both renamed .broken; None is returned."""
        open(os.path.join(self.dir, snap_name(1, 1)), "wb").close()
        with open(os.path.join(self.dir, snap_name(1, 2)), "wb") as f:
            f.write(b"\xff\xff\xff\xff")
        self.assertIsNone(self.snapshotter.load_newest_available([WALSnapshot(1, 1),
                                                                  WALSnapshot(2, 1)]))
        self.assertEqual(sorted(os.listdir(self.dir)),
                         [snap_name(1, 1) + ".broken", snap_name(1, 2) + ".broken"])

    def test_no_snapshot(self) -> None:
        """With no .snap file, load_newest_available is None and load_newest raises."""
        self.assertIsNone(self.snapshotter.load_newest_available([WALSnapshot(0, 0)]))
        self.assertRaises(NoSnapshotError, self.snapshotter.load_newest)

    def test_load_newest_ignores_the_wal(self) -> None:
        """load_newest (etcd Load) returns the newest file that checks, record or not."""
        self.snapshotter.save(snapshot(5, 2))
        self.snapshotter.save(snapshot(9, 2))
        self.assertEqual(self.snapshotter.load_newest().metadata.index, 9)

    def test_purge_keeps_the_newest(self) -> None:
        """purge removes all but the newest N .snap files and leaves other files alone."""
        for index in range(1, 8):
            self.snapshotter.save(snapshot(index, 1))
        others = ["db", snap_name(1, 0) + ".broken", "0000000000000003.snap.db"]
        for name in others:
            open(os.path.join(self.dir, name), "wb").close()
        removed = self.snapshotter.purge(3)
        self.assertEqual(sorted(os.path.basename(p) for p in removed),
                         [snap_name(1, i) for i in range(1, 5)])
        self.assertEqual(sorted(os.listdir(self.dir)),
                         sorted(others + [snap_name(1, i) for i in range(5, 8)]))
        self.assertEqual(self.snapshotter.purge(0), [])

    def test_db_path(self) -> None:
        """db_path names the backend received for a snapshot <index %016x>.snap.db."""
        self.assertEqual(self.snapshotter.db_path(0x2a),
                         os.path.join(self.dir, "000000000000002a.snap.db"))

    def test_cleanup_tmp(self) -> None:
        """cleanup_tmp removes tmp* files and keeps everything else."""
        self.snapshotter.save(snapshot(1, 1))
        for name in ("tmp.0000000000000001-0000000000000002", "tmp123", "db"):
            open(os.path.join(self.dir, name), "wb").close()
        self.snapshotter.cleanup_tmp()
        self.assertEqual(sorted(os.listdir(self.dir)), sorted(["db", snap_name(1, 1)]))

    def test_decode_errors_use_etcds_messages(self) -> None:
        """decode_snap raises SnapError with etcd's empty-snapshot and crc-mismatch messages."""
        e = self.assertRaises(SnapError, decode_snap, b"", "p")
        self.assertIn("snap: empty snapshot", str(e))
        good = encode_snap(snapshot(1, 1))
        bad = snap_pb2.snapshot.FromString(good)
        bad.crc ^= 1
        e = self.assertRaises(SnapError, decode_snap, bad.SerializeToString(), "p")
        self.assertIn("snap: crc mismatch", str(e))


class EtcdSnapTests(SynchronousTestCase):
    """Snapshot files written by the real etcd 3.4.23 (testdata/etcd-wal/snap)."""

    def test_reads_and_reencodes_etcds_files(self) -> None:
        """etcd's .snap files decode and re-encode byte for byte."""
        for name in sorted(os.listdir(FIXTURE / "snap")):
            path = str(FIXTURE / "snap" / name)
            snap = read_snap(path)
            self.assertEqual(snap_name(snap.metadata.term, snap.metadata.index), name)
            self.assertEqual(list(snap.metadata.conf_state.voters), [0xBDAE9BBC11DD390D])
            with open(path, "rb") as f:
                self.assertEqual(encode_snap(snap), f.read())

    def test_boots_from_etcds_newest_snapshot(self) -> None:
        """valid_snapshots + load_newest_available pick etcd's snapshot at index 12."""
        wal_dir, snap_dir = copy_fixture(self.mktemp())
        got = Snapshotter(snap_dir).load_newest_available(valid_snapshots(wal_dir))
        self.assertEqual((got.metadata.index, got.metadata.term), (12, 2))
        self.assertIn(b'"/0/members"', got.data)
