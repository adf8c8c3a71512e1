"""Raft snapshot files: `member/snap/%016x-%016x.snap` (term, index), CRC'd and fsync'd.

Shell (file IO; runs on the member's disk thread). Byte-compatible with etcd 3.4
`etcdserver/api/snap/snapshotter.go`: a file holds a marshaled `snappb.snapshot{crc, data}`
where `data` is the marshaled `raftpb.Snapshot` and `crc` its CRC-32C. At boot the newest
file that checks and that the WAL has a snapshot record for is used; a corrupt one is
renamed ``<name>.broken`` and skipped; one without a WAL record (written just before a
crash, etcd storage.go SaveSnap) is ignored.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from crc32c import crc32c
from google.protobuf.message import DecodeError
from twisted.logger import Logger

from etcdd.proto import raft_pb2, snap_pb2
from etcdd.wal.wal import WALSnapshot, fsync_dir

SNAP_SUFFIX = ".snap"
_TMP_PREFIX = "tmp"                 # etcd server.go removes snap/tmp* at start
_FILE_MODE = 0o600


class SnapError(Exception):
    """A snapshot file that cannot be read; etcd's message and the file's path."""


class NoSnapshotError(SnapError):
    """etcd ErrNoSnapshot, "snap: no available snapshot": no file to load.

    `Snapshotter.load_newest_available` returns None instead of raising it; `load_newest`
    raises it for callers (tools) that require a snapshot.
    """


def snap_name(term: int, index: int) -> str:
    """Return etcd's snapshot file name for (term, index)."""
    return f"{term:016x}-{index:016x}{SNAP_SUFFIX}"


def encode_snap(snapshot: raft_pb2.Snapshot) -> bytes:
    """Return the file bytes for `snapshot`: snappb.snapshot{crc32c(data), data}."""
    data = snapshot.SerializeToString()
    return snap_pb2.snapshot(crc=crc32c(data), data=data).SerializeToString()


def decode_snap(content: bytes, path: str) -> raft_pb2.Snapshot:
    """Check and parse a snapshot file's bytes (etcd snap.Read).

    Raises SnapError with etcd's message: "snap: empty snapshot", "snap: crc mismatch", or
    an unparsable envelope or snapshot.
    """
    if not content:
        raise SnapError(f"snap: empty snapshot: {path}")
    envelope = snap_pb2.snapshot()
    try:
        envelope.ParseFromString(content)
    except DecodeError as e:
        raise SnapError(f"snap: unparsable snapshot file {path}: {e}") from e
    if not envelope.data or not envelope.crc:
        raise SnapError(f"snap: empty snapshot: {path}")
    if crc32c(envelope.data) != envelope.crc:
        raise SnapError(f"snap: crc mismatch: {path}")
    try:
        return raft_pb2.Snapshot.FromString(envelope.data)
    except DecodeError as e:
        raise SnapError(f"snap: unparsable raftpb.Snapshot in {path}: {e}") from e


def read_snap(path: str) -> raft_pb2.Snapshot:
    """Read and check one snapshot file; raises SnapError or OSError."""
    with open(path, "rb") as f:
        return decode_snap(f.read(), path)


class Snapshotter:
    """The `.snap` files of one snap directory.

    Invariant: a ``*.snap`` file appears only whole and fsync'd (write to a temp file,
    fsync, rename, fsync the directory).
    """

    _log = Logger()

    def __init__(self, dirpath: str) -> None:
        self.dir = dirpath

    def save(self, snapshot: raft_pb2.Snapshot) -> None:
        """Write `snapshot` durably as ``<term>-<index>.snap``; an empty one (index 0) is skipped.

        As etcd SaveSnap. Write this before the WAL's snapshot record.
        """
        if snapshot.metadata.index == 0:
            return
        name = snap_name(snapshot.metadata.term, snapshot.metadata.index)
        tmp = os.path.join(self.dir, f"{_TMP_PREFIX}.{name[:-len(SNAP_SUFFIX)]}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
        try:
            view = memoryview(encode_snap(snapshot))
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.remove(tmp)
            raise
        os.close(fd)
        os.rename(tmp, os.path.join(self.dir, name))
        fsync_dir(self.dir)

    def _snap_names(self) -> list[str]:
        """Every ``*.snap`` name in the directory, newest (greatest name) first."""
        return sorted((n for n in os.listdir(self.dir) if n.endswith(SNAP_SUFFIX)),
                      reverse=True)

    def _load(self, name: str) -> raft_pb2.Snapshot | None:
        """Read one file; a bad one is renamed ``.broken`` and gives None (etcd loadSnap)."""
        path = os.path.join(self.dir, name)
        try:
            return read_snap(path)
        except (SnapError, OSError) as e:
            self._log.warn("failed to read snap file {path}: {error}", path=path, error=e)
            try:
                os.rename(path, path + ".broken")
            except OSError as rename_error:
                self._log.warn("cannot rename broken snap file {path}: {error}",
                               path=path, error=rename_error)
            return None

    def load_newest_available(
            self, wal_snaps: Sequence[WALSnapshot]) -> raft_pb2.Snapshot | None:
        """Return the newest snapshot that checks and has a WAL record, or None.

        `wal_snaps` come from `wal.valid_snapshots`. Files newer than every record (orphans
        of a crash between the .snap and the WAL record) are skipped, not renamed.
        """
        wanted = {(s.index, s.term) for s in wal_snaps}
        for name in self._snap_names():
            snapshot = self._load(name)
            if snapshot is not None and (snapshot.metadata.index,
                                         snapshot.metadata.term) in wanted:
                return snapshot
        return None

    def load_newest(self) -> raft_pb2.Snapshot:
        """Return the newest snapshot that checks; raises NoSnapshotError (etcd Load)."""
        for name in self._snap_names():
            snapshot = self._load(name)
            if snapshot is not None:
                return snapshot
        raise NoSnapshotError(f"snap: no available snapshot in {self.dir}")

    def purge(self, max_snapshots: int = 5) -> list[str]:
        """Remove all but the newest `max_snapshots` ``.snap`` files (0 keeps all); return them."""
        if max_snapshots <= 0:
            return []
        removed = []
        for name in self._snap_names()[max_snapshots:]:
            path = os.path.join(self.dir, name)
            os.remove(path)
            removed.append(path)
            self._log.info("purged snap file {path}", path=path)
        return removed

    def db_path(self, index: int) -> str:
        """Where a backend received from the leader for snapshot `index` is kept (etcd DBFilePath)."""
        return os.path.join(self.dir, f"{index:016x}.snap.db")

    def cleanup_tmp(self) -> None:
        """Remove temp files a crash left behind (etcd removes snap/tmp* at start)."""
        for name in os.listdir(self.dir):
            path = os.path.join(self.dir, name)
            if name.startswith(_TMP_PREFIX) and not os.path.isdir(path):
                self._log.info("removing leftover temp file {path}", path=path)
                os.remove(path)
