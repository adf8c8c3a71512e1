"""The write-ahead log: segment files, append + fsync, replay, torn-tail cut, segment release.

Shell (file IO; runs on the member's disk thread, never the reactor). Matches etcd 3.4
`wal/wal.go` and `wal/util.go` on disk, so etcd's tools read what we write and we read
what etcd wrote; `wal/record.py` is the frame core underneath.

A WAL directory holds segments named ``%016x-%016x.wal`` % (seq, index of the first entry
expected in it), each preallocated to `SEGMENT_BYTES`::

    0000000000000000-0000000000000000.wal   crc(0) metadata snapshot{0,0} entry... state...
    0000000000000001-0000000000000412.wal   crc(prev) metadata state(last) entry 0x412...

Replay opens at the snapshot chosen at boot: the last segment whose index <= snapshot index
and every later one (etcd selectWALFiles). A torn tail in the last segment is zeroed;
damage before it refuses the open (`WALCorruptError`, naming the file and offset) and
leaves every file as it was.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError, Message
from twisted.logger import Logger

from etcdd.proto import raft_pb2, record_pb2
from etcdd.wal.record import (
    CRC, ENTRY, METADATA, SNAPSHOT, STATE, Decoder, Record, TornTail, WALRecordError,
    encode_records, entry_record, snapshot_record, state_record)

SEGMENT_BYTES = 64 * 1000 * 1000                  # etcd wal.go SegmentSizeBytes
_FILE_MODE = 0o600                                # etcd fileutil.PrivateFileMode
_DIR_MODE = 0o700                                 # etcd fileutil.PrivateDirMode
_WAL_NAME = re.compile(r"([0-9a-f]{16})-([0-9a-f]{16})\.wal")
_TMP_SEGMENT = "0.tmp"                            # etcd file_pipeline.go "%d.tmp"
_log = Logger(namespace="etcdd.wal.wal")
_M = TypeVar("_M", bound=Message)


class WALError(Exception):
    """A WAL that cannot be opened, read or written as asked."""


class WALCorruptError(WALError):
    """Damage before the tail of the WAL: the member must not start.

    `path` and `offset` name the segment file and the byte where the bad frame starts.
    """

    def __init__(self, message: str, path: str, offset: int) -> None:
        super().__init__(f"{message}: {path} at offset {offset}")
        self.path = path
        self.offset = offset


class WALSnapshotMismatchError(WALError):
    """The WAL's snapshot record disagrees with the snapshot the member booted from."""


class WALNotFoundError(WALError):
    """No segment file, or none that covers the requested snapshot index."""


@dataclass(frozen=True, slots=True)
class WALSnapshot:
    """A snapshot marker record: raft index and term (walpb.Snapshot)."""

    index: int
    term: int


@dataclass(slots=True)
class ReplayResult:
    """What `WAL.read_all` recovered: metadata, last hard state, entries after the snapshot.

    `entries` are consecutive from snapshot index + 1; a later record at an index replaced
    the earlier one and everything after it (raft log truncation).
    """

    metadata: bytes
    hard_state: raft_pb2.HardState
    entries: list[raft_pb2.Entry]


@dataclass(slots=True)
class _Segment:
    """One open, flock'ed segment file."""

    path: str
    seq: int
    index: int
    fd: int


def wal_name(seq: int, index: int) -> str:
    """Return etcd's segment file name for (sequence number, first entry index)."""
    return f"{seq:016x}-{index:016x}.wal"


def parse_wal_name(name: str) -> tuple[int, int] | None:
    """Return (seq, index) from a segment file name, or None if it is not one."""
    match = _WAL_NAME.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1), 16), int(match.group(2), 16)


def wal_exists(dirpath: str) -> bool:
    """Say whether `dirpath` holds any ``*.wal`` file (etcd wal.Exist)."""
    try:
        return any(name.endswith(".wal") for name in os.listdir(dirpath))
    except FileNotFoundError:
        return False


def _segment_names(dirpath: str) -> list[tuple[str, int, int]]:
    """Return (name, seq, index) of each segment in `dirpath`, oldest first.

    Raises WALNotFoundError if there is none (etcd ErrFileNotFound).
    """
    try:
        listing = os.listdir(dirpath)
    except FileNotFoundError:
        raise WALNotFoundError(f"wal: file not found: {dirpath} does not exist") from None
    found = []
    for name in listing:
        parsed = parse_wal_name(name)
        if parsed is not None:
            found.append((name, *parsed))
        elif not name.endswith(".tmp"):
            _log.warn("ignored file {name} in WAL directory {dir}", name=name, dir=dirpath)
    if not found:
        raise WALNotFoundError(f"wal: file not found: no segment in {dirpath}")
    return sorted(found)


def _search_index(segments: Sequence[tuple[str, int, int]], index: int) -> int | None:
    """Return the position of the last segment whose first index is <= `index` (searchIndex)."""
    return max((i for i, (_, _, first) in enumerate(segments) if first <= index), default=None)


def _is_valid_seq(segments: Sequence[tuple[str, int, int]]) -> bool:
    """Say whether the segments' sequence numbers are consecutive (etcd isValidSeq)."""
    return all(b[1] == a[1] + 1 for a, b in zip(segments, segments[1:]))


def fsync_dir(dirpath: str) -> None:
    """Make renames and creations in `dirpath` durable."""
    fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(fd: int, path: str) -> None:
    """Take a non-blocking exclusive flock on a segment (etcd fileutil.TryLockFile)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise WALError(f"wal: {path} is locked by another process") from None


def _preallocate(fd: int, size_bytes: int) -> None:
    """Reserve `size_bytes` of blocks and extend the file to them (etcd Preallocate extend)."""
    if size_bytes > 0:
        os.posix_fallocate(fd, 0, size_bytes)


def _zero_to_end(fd: int, offset: int) -> None:
    """Zero the file from `offset` to its end, keeping its size and blocks (etcd ZeroToEnd)."""
    size = os.fstat(fd).st_size
    if size > offset:
        os.ftruncate(fd, offset)
        os.posix_fallocate(fd, offset, size - offset)
    os.fsync(fd)


def _entry_data(entry: raft_pb2.Entry) -> bytes:
    """Marshal an entry as etcd does; an entry with all three scalars set needs no copy."""
    if entry.HasField("Index") and entry.HasField("Term") and entry.HasField("Type"):
        return entry.SerializeToString()
    return entry_record(entry)[1]


def _is_empty_hard_state(hard_state: raft_pb2.HardState) -> bool:
    """etcd raft.IsEmptyHardState: no term, vote or commit."""
    return not (hard_state.term or hard_state.vote or hard_state.commit)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    """Write `data` at `offset`, one pwrite unless the kernel writes short."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(f"wal: short write at offset {offset}")
        view, offset = view[written:], offset + written


@contextmanager
def _mapped(paths: Sequence[str]) -> Iterator[list[mmap.mmap | bytes]]:
    """Map each file read-only (an empty file maps to b""); unmap on exit.

    NB: each map comes from its own read-only descriptor, never a locked one: mmap dups
    the descriptor it is given, and a map that outlives `close()` (a traceback still
    viewing it) would otherwise keep the segment's flock.
    """
    maps: list[mmap.mmap | bytes] = []
    try:
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                maps.append(mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else b"")
            finally:
                os.close(fd)
        yield maps
    finally:
        for m in maps:
            if isinstance(m, mmap.mmap):
                try:
                    m.close()
                except BufferError:
                    pass                    # a traceback still views it; GC unmaps it


def _decode(paths: Sequence[str]) -> Iterator[Record | TornTail]:
    """Yield every record of the segments in order, then a TornTail if the data ends in one.

    Raises WALCorruptError naming the file and offset for damage before the tail.
    """
    with _mapped(paths) as maps:
        decoder = Decoder(maps)
        try:
            yield from decoder
        except WALRecordError as e:
            raise WALCorruptError(e.reason, paths[e.segment], e.offset) from e
        finally:
            del decoder


def _unmarshal(message_type: type[_M], rec: Record, paths: Sequence[str]) -> _M:
    """Parse a record's data as `message_type`; unparsable data is corruption."""
    try:
        return message_type.FromString(rec.data)
    except DecodeError as e:
        raise WALCorruptError(f"wal: unparsable {message_type.__name__} record ({e})",
                              paths[rec.segment], rec.offset) from e


def valid_snapshots(dirpath: str) -> list[WALSnapshot]:
    """Return the snapshot records of the whole WAL, oldest first, for picking a .snap at boot.

    As etcd ValidSnapshotEntries: read without locks from the first segment, stop at a torn
    tail, and keep only snapshots at or below the last hard state's commit (the first
    {0,0} always qualifies). Raises WALNotFoundError, WALCorruptError.
    """
    paths = [os.path.join(dirpath, name) for name, _, _ in _segment_names(dirpath)]
    snaps, commit = [], 0
    with closing(_decode(paths)) as decoded:
        for item in decoded:
            if isinstance(item, TornTail):
                break
            if item.type == SNAPSHOT:
                snap = _unmarshal(record_pb2.Snapshot, item, paths)
                snaps.append(WALSnapshot(snap.index, snap.term))
            elif item.type == STATE:
                commit = _unmarshal(raft_pb2.HardState, item, paths).commit
    return [s for s in snaps if s.index <= commit]


class _Replay:
    """Folds records into a ReplayResult (etcd wal.go ReadAll's switch on record type).

    Invariant: `entries[i].Index == start.index + 1 + i`.
    """

    def __init__(self, start: WALSnapshot, paths: Sequence[str]) -> None:
        self.start = start
        self.paths = paths
        self.metadata: bytes | None = None
        self.hard_state = raft_pb2.HardState()
        self.entries: list[raft_pb2.Entry] = []
        self.last_index = 0
        self.matched = False
        self._on_record = {ENTRY: self._entry, STATE: self._state, METADATA: self._metadata,
                           SNAPSHOT: self._snapshot, CRC: self._crc}

    def feed(self, rec: Record) -> None:
        """Apply one record; raises WALCorruptError or WALSnapshotMismatchError."""
        handler = self._on_record.get(rec.type)
        if handler is None:
            raise WALCorruptError(f"wal: unexpected block type {rec.type}",
                                  self.paths[rec.segment], rec.offset)
        handler(rec)

    def _entry(self, rec: Record) -> None:
        """An entry at index i truncates the log after i - 1, then extends it.

        NB: etcd ReadAll ignores entries at or below the snapshot index, so an entry above
        it that a later overwrite removed (written at 11, log cut back to 6, refilled to 10,
        snapshot at 10) would replay as if current; here such a record empties the list.
        """
        entry = _unmarshal(raft_pb2.Entry, rec, self.paths)
        index = entry.Index
        entries = self.entries
        if index > self.start.index:
            up = index - self.start.index - 1
            if up > len(entries):
                raise WALCorruptError(
                    f"wal: slice bounds out of range: entry {index} after entry "
                    f"{self.start.index + len(entries)}", self.paths[rec.segment], rec.offset)
            if up < len(entries):
                del entries[up:]           # raft overwrote the log from `index` on
            entries.append(entry)
        elif entries:
            entries.clear()
        self.last_index = index

    def _state(self, rec: Record) -> None:
        self.hard_state = _unmarshal(raft_pb2.HardState, rec, self.paths)

    def _metadata(self, rec: Record) -> None:
        if self.metadata is not None and self.metadata != rec.data:
            raise WALCorruptError("wal: conflicting metadata found",
                                  self.paths[rec.segment], rec.offset)
        self.metadata = rec.data

    def _snapshot(self, rec: Record) -> None:
        snap = _unmarshal(record_pb2.Snapshot, rec, self.paths)
        if snap.index == self.start.index:
            if snap.term != self.start.term:
                raise WALSnapshotMismatchError(
                    f"wal: snapshot mismatch: WAL has index {snap.index} at term {snap.term}, "
                    f"expected term {self.start.term} ({self.paths[rec.segment]} at offset "
                    f"{rec.offset})")
            self.matched = True

    def _crc(self, rec: Record) -> None:
        """The decoder already checked the chain."""


class WAL:
    """An open write-ahead log: replay once, then append.

    Invariants: after `read_all` (or `create`), `_offset` is the end of the last valid
    frame in the tail segment and `_crc` the running CRC-32C there; every held segment is
    flock'ed; `last_index` is the index of the last entry written or replayed (or of a
    later snapshot record saved, as etcd's `enti`).
    """

    def __init__(self, dirpath: str, segments: list[_Segment], segment_bytes: int,
                 start: WALSnapshot | None) -> None:
        self._dir = dirpath
        self._segments = segments
        self._segment_bytes = segment_bytes
        self._start = start                 # None once ready to append
        self._metadata = b""
        self._state_record: tuple[int, bytes] | None = None   # the last hard state saved
        self._crc = 0
        self._offset = 0
        self._closed = False
        self._failed = False
        self.last_index = 0

    @property
    def path(self) -> str:
        """The tail segment's path."""
        return self._segments[-1].path

    @classmethod
    def create(cls, dirpath: str, metadata: bytes,
               segment_bytes: int = SEGMENT_BYTES) -> WAL:
        """Create a WAL holding crc(0), `metadata` and snapshot{0,0}, ready to append.

        As etcd Create: built in ``<dirpath>.tmp`` and renamed into place, so a crash leaves
        either no WAL or a whole one. Raises WALError if `dirpath` already holds a WAL.
        """
        if wal_exists(dirpath):
            raise WALError(f"wal: {dirpath} already holds a WAL")
        tmpdir = os.path.normpath(dirpath) + ".tmp"
        if os.path.exists(tmpdir):
            shutil.rmtree(tmpdir)
        os.makedirs(tmpdir, mode=_DIR_MODE)
        name = wal_name(0, 0)
        fd = os.open(os.path.join(tmpdir, name), os.O_RDWR | os.O_CREAT, _FILE_MODE)
        try:
            _lock(fd, os.path.join(tmpdir, name))
            _preallocate(fd, segment_bytes)
            wal = cls(dirpath, [_Segment(os.path.join(dirpath, name), 0, 0, fd)],
                      segment_bytes, None)
            wal._metadata = metadata
            wal._append([(CRC, b""), (METADATA, metadata), snapshot_record(0, 0)])
            os.fdatasync(fd)
            if os.path.exists(dirpath):
                shutil.rmtree(dirpath)      # as etcd renameWAL: a dir with no *.wal in it
            os.rename(tmpdir, dirpath)
            fsync_dir(os.path.dirname(os.path.abspath(dirpath)))
        except BaseException:
            os.close(fd)
            raise
        return wal

    @classmethod
    def open(cls, dirpath: str, snap: WALSnapshot,
             segment_bytes: int = SEGMENT_BYTES) -> WAL:
        """Open and flock the segments from the one holding `snap.index` on; call `read_all` next.

        Raises WALNotFoundError (no segment covers the index, or a gap in the sequence),
        WALError (a segment is locked by another process) or OSError.
        """
        names = _segment_names(dirpath)
        first = _search_index(names, snap.index)
        if first is None or not _is_valid_seq(names[first:]):
            raise WALNotFoundError(
                f"wal: file not found: no valid segment sequence for index {snap.index} "
                f"in {dirpath}")
        segments: list[_Segment] = []
        try:
            for name, seq, index in names[first:]:
                path = os.path.join(dirpath, name)
                segments.append(_Segment(path, seq, index, os.open(path, os.O_RDWR)))
                _lock(segments[-1].fd, path)
        except BaseException:
            for segment in segments:
                os.close(segment.fd)
            raise
        return cls(dirpath, segments, segment_bytes, snap)

    def read_all(self) -> ReplayResult:
        """Replay the opened segments and position the WAL to append after the last record.

        Call once, right after `open`. Raises WALCorruptError (damage before the tail,
        conflicting metadata, a gap in the entries), WALSnapshotMismatchError (the snapshot
        record has another term, or is missing when `snap.index > 0`). Only after every
        check passes is a torn tail zeroed and fsync'd, so a failed read changes no file.
        """
        if self._start is None:
            raise WALError("wal: read_all is called once, right after open")
        paths = [segment.path for segment in self._segments]
        replay = _Replay(self._start, paths)
        tail: TornTail | None = None
        end: Record | None = None
        with closing(_decode(paths)) as decoded:
            for item in decoded:
                if isinstance(item, TornTail):
                    tail = item
                else:
                    replay.feed(item)
                    end = item
        if self._start.index > 0 and not replay.matched:
            raise WALSnapshotMismatchError(
                f"wal: snapshot not found: no record of snapshot index {self._start.index} "
                f"term {self._start.term} in {self._dir}")
        self._offset = tail.offset if tail is not None else self._end_of(end)
        self._cut_tail(tail)
        self._crc = end.crc if end is not None else 0
        self._start = None
        self._metadata = replay.metadata or b""
        if not _is_empty_hard_state(replay.hard_state):
            self._state_record = state_record(replay.hard_state)
        self.last_index = replay.last_index
        return ReplayResult(self._metadata, replay.hard_state, replay.entries)

    def _end_of(self, last: Record | None) -> int:
        """Offset just past `last`, the final record, when the tail segment ends at EOF."""
        if last is None or last.segment != len(self._segments) - 1:
            return 0                         # NB: the tail segment is empty
        return os.fstat(self._segments[-1].fd).st_size

    def _cut_tail(self, tail: TornTail | None) -> None:
        """Zero the tail segment after the last valid frame (etcd ReadAll ZeroToEnd)."""
        if tail is not None and tail.reason != "zero length word":
            _log.warn("cutting torn WAL tail in {path} at offset {offset} ({reason})",
                      path=self.path, offset=tail.offset, reason=tail.reason)
        _zero_to_end(self._segments[-1].fd, self._offset)

    def save(self, hard_state: raft_pb2.HardState | None, entries: Sequence[raft_pb2.Entry],
             must_sync: bool) -> None:
        """Append entries then the hard state in one write; cut a segment when it is full.

        An empty hard state is not written (etcd saveState); with no entries either, nothing
        happens. fdatasync when `must_sync` (a cut always syncs). Any OSError propagates:
        the caller stops the member, never retrying an fsync.
        """
        records = [(ENTRY, _entry_data(entry)) for entry in entries]
        state = (None if hard_state is None or _is_empty_hard_state(hard_state)
                 else state_record(hard_state))
        if state is not None:
            records.append(state)
        if not records:
            return
        self._append(records)
        if entries:
            self.last_index = entries[-1].Index
        if state is not None:
            self._state_record = state
        if self._offset >= self._segment_bytes:
            self._cut()
        elif must_sync:
            self.sync()

    def save_snapshot(self, snap: WALSnapshot) -> None:
        """Append a snapshot marker record and fdatasync (etcd SaveSnapshot).

        Write the .snap file first: a marker must never lack its snapshot file.
        """
        self._append([snapshot_record(snap.index, snap.term)])
        self.last_index = max(self.last_index, snap.index)
        self.sync()

    def sync(self) -> None:
        """fdatasync the tail segment; an error marks the WAL failed and propagates."""
        try:
            os.fdatasync(self._segments[-1].fd)
        except OSError:
            self._failed = True
            raise

    def _append(self, records: list[tuple[int, bytes]]) -> None:
        """Frame `records` after the running crc and write them at the tail offset."""
        if self._start is not None or self._closed:
            raise WALError("wal: append before read_all or after close")
        data, crc = encode_records(records, self._crc)
        try:
            _write_all(self._segments[-1].fd, data, self._offset)
        except OSError:
            self._failed = True
            raise
        self._offset += len(data)
        self._crc = crc

    def _cut(self) -> None:
        """Close the full tail and start segment seq+1 at last_index+1 (etcd cut).

        The old tail is truncated to its used length and synced; the new one is built as
        a preallocated temp file holding crc(prev), metadata and the last hard state,
        synced, then renamed into place and the directory synced.
        """
        old = self._segments[-1]
        os.ftruncate(old.fd, self._offset)
        self.sync()
        seq, index = old.seq + 1, self.last_index + 1
        tmp = os.path.join(self._dir, _TMP_SEGMENT)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
        path = os.path.join(self._dir, wal_name(seq, index))
        try:
            _lock(fd, tmp)
            _preallocate(fd, self._segment_bytes)
            self._segments.append(_Segment(path, seq, index, fd))
        except BaseException:
            os.close(fd)
            raise
        self._offset = 0
        header = [(CRC, b""), (METADATA, self._metadata)]
        if self._state_record is not None:
            header.append(self._state_record)
        self._append(header)
        self.sync()
        os.rename(tmp, path)
        fsync_dir(self._dir)
        _log.info("created a new WAL segment {path}", path=path)

    def release_before(self, index: int, max_wals: int = 5) -> list[str]:
        """Unlock segments replay no longer needs and purge the oldest; return removed paths.

        The segment holding `index` (the last whose first index is <= `index`) and every
        later one are kept and stay locked; earlier ones are unlocked (etcd ReleaseLockTo)
        and removed oldest first while the directory holds more than `max_wals` segments
        (etcd purgeFile; 0 keeps them all). Call with the index of a snapshot that is
        durable in the .snap file, the WAL marker and the backend.
        """
        keep = max((i for i, s in enumerate(self._segments) if s.index <= index), default=0)
        for segment in self._segments[:keep]:
            os.close(segment.fd)
        del self._segments[:keep]
        if max_wals <= 0:
            return []
        names = _segment_names(self._dir)
        needed = _search_index(names, index) or 0
        removed = []
        for name, _, _ in names[:max(0, min(needed, len(names) - max_wals))]:
            path = os.path.join(self._dir, name)
            os.remove(path)
            removed.append(path)
            _log.info("purged WAL segment {path}", path=path)
        return removed

    def close(self) -> None:
        """fdatasync the tail (unless a write or sync failed), close every segment, unlock.

        Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._start is None and not self._failed:
                os.fdatasync(self._segments[-1].fd)
        finally:
            for segment in self._segments:
                os.close(segment.fd)
