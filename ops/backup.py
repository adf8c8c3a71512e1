"""`etcdd-ops backup`: a consistent offline copy of a stopped member's data dir. A shell.

Modelled on `etcdctl backup` (flags `--data-dir`, `--wal-dir`, `--backup-dir`,
`--backup-wal-dir`), but for v3 data and without its rewrite of the IDs: the copy is the
same member, so `etcdd` started on it with the same flags (only `--data-dir` differs)
carries on where the member stopped, and its `member/snap/db` is restorable with
`etcdd-ops snapshot restore --skip-hash-check` into a new cluster.

- A running member is refused. It holds a flock on its WAL segments (`wal/wal.py`) and a
  shared lock on LMDB's lock file `member/snap/db-lock` (LMDB's "am I the only one"
  lock), so both are tried: every segment is flock'ed first and kept locked until the
  copy ends (a member started meanwhile stops at its WAL), then LMDB's lock is tried
  (`mvcc/backend.py ensure_not_in_use`).
- The database is copied with compaction from one LMDB read transaction
  (`Backend.copy_to`), the WAL segments, `.snap` files, snapshot databases received from
  a leader (`<index>.snap.db`) and `member/identity` byte for byte; every file and
  directory is fsync'd.
- The copy is built in temp dirs beside the targets and renamed into place, so a failed
  backup leaves nothing at the targets.
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import struct
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import lmdb

from etcdd.mvcc.backend import Backend, BackendInUseError, ensure_not_in_use
from etcdd.mvcc.store import CONSISTENT_INDEX, CURRENT_REV
from etcdd.urls import go_quote
from etcdd.wal.snap import SNAP_SUFFIX
from etcdd.wal.wal import fsync_dir, parse_wal_name
from ops.progress import Progress, human_bytes
from ops.restore import (RestoreError, SnapshotError, StagedDir, check_etcdd_backend,
                         copy_bytes, wal_inside)

_U64 = struct.Struct(">Q")


class BackupError(Exception):
    """The backup cannot be made (member running, no data dir, target exists)."""


@dataclass(frozen=True, slots=True)
class BackupResult:
    backup_dir: str
    backup_wal_dir: str
    name: str
    member_id: int
    cluster_id: int
    revision: int
    consistent_index: int
    db_bytes: int
    wal_segments: int
    snap_files: int
    total_bytes: int


@dataclass(frozen=True, slots=True)
class _Source:
    """What is copied: the member dir, its WAL dir, the files to copy byte for byte."""
    member_dir: str
    wal_dir: str
    wal_names: tuple[str, ...]
    snap_names: tuple[str, ...]
    identity: dict[str, str]


def _inspect_source(data_dir: str, wal_dir: str) -> _Source:
    """Check that `data_dir` holds an etcdd member and list its files; raises BackupError."""
    member_dir = os.path.join(data_dir, "member")
    wal_dir = wal_dir or os.path.join(member_dir, "wal")
    try:
        with open(os.path.join(member_dir, "identity"), "rb") as f:
            identity = json.loads(f.read())
        wal_names = sorted(n for n in os.listdir(wal_dir) if parse_wal_name(n) is not None)
        snap_names = sorted(n for n in os.listdir(os.path.join(member_dir, "snap"))
                            if n.endswith((SNAP_SUFFIX, ".snap.db")) and not n.startswith("tmp"))
    except (OSError, ValueError) as e:
        raise BackupError(f"{data_dir} is not an etcdd data dir: {e}") from None
    if not wal_names:
        raise BackupError(f"{data_dir} is not an etcdd data dir: no WAL segment in {wal_dir}")
    if not os.path.isfile(os.path.join(member_dir, "snap", "db")):
        raise BackupError(f"database file ({member_dir}/snap/db) of the backend is missing")
    return _Source(member_dir, wal_dir, tuple(wal_names), tuple(snap_names), identity)


@contextmanager
def member_stopped(src: _Source) -> Iterator[None]:
    """Hold every WAL segment's flock while the body runs; raises BackupError if the
    member runs (a segment or LMDB's lock file is held by another process)."""
    fds: list[int] = []
    try:
        for name in src.wal_names:
            path = os.path.join(src.wal_dir, name)
            fds.append(os.open(path, os.O_RDONLY))
            try:
                fcntl.flock(fds[-1], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BackupError(f"the member is running ({path} is locked); stop it "
                                  "before a backup") from None
        db = os.path.join(src.member_dir, "snap", "db")
        try:
            ensure_not_in_use(db)
        except BackendInUseError:
            raise BackupError(f"the member is running (its database {db} is open in "
                              "another process); stop it before a backup") from None
        yield
    finally:
        for fd in fds:
            os.close(fd)


def _copy_db(db: str, dst: str, bar: Progress) -> tuple[int, int]:
    """Compacted copy of the backend `db` to `dst` from one read txn; returns its
    (consistent index, revision)."""
    check_etcdd_backend(db, db, "restore")
    size = os.path.getsize(db)
    backend = Backend(db)
    try:
        meta = backend.dbs[b"meta"]

        def inspect(txn: Any) -> tuple[int, int]:
            ci = txn.get(CONSISTENT_INDEX, db=meta)
            rev = txn.get(CURRENT_REV, db=meta)
            return (_U64.unpack(ci)[0] if ci else 0, _U64.unpack(rev)[0] if rev else 1)
        marks = backend.copy_to(dst, inspect)
    finally:
        backend.close()
    bar.update(size)
    return marks


def _copy_file(src: str, dst: str, bar: Progress) -> int:
    """Copy one file, fsync'd, to the new file `dst`; returns its size."""
    with open(src, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            copy_bytes(f, fd, size, bar)
            os.fsync(fd)
        finally:
            os.close(fd)
    return size


def _refuse_targets(data_dir: str, backup_dir: str, backup_wal_dir: str) -> None:
    for flag, path in (("backup-dir", backup_dir), ("backup-wal-dir", backup_wal_dir)):
        if path and os.path.exists(path):
            raise BackupError(f"{flag} {go_quote(path)} exists")
        if path and os.path.commonpath([os.path.abspath(data_dir),
                                        os.path.abspath(path)]) == os.path.abspath(data_dir):
            raise BackupError(f"{flag} {go_quote(path)} is inside the data dir")


def backup(data_dir: str, backup_dir: str, wal_dir: str = "", backup_wal_dir: str = "",
           stream: TextIO | None = None) -> BackupResult:
    """Copy the stopped member in `data_dir` (WAL in `wal_dir`, default inside it) to
    `backup_dir` (WAL to `backup_wal_dir`, default inside it).

    Raises BackupError, SnapshotError (not an etcdd database), OSError or lmdb.Error;
    on failure nothing is left at the targets. `stream` gets the progress bar."""
    _refuse_targets(data_dir, backup_dir, backup_wal_dir)
    try:
        inner = wal_inside(backup_dir, backup_wal_dir)
    except RestoreError as e:
        raise BackupError(str(e).replace("wal-dir", "backup-wal-dir")) from None
    src = _inspect_source(data_dir, wal_dir)
    with member_stopped(src):
        staged = [StagedDir(backup_dir)]
        try:
            if inner is None:
                staged.append(StagedDir(backup_wal_dir))
            wal_target = staged[1].path if inner is None else os.path.join(staged[0].path, inner)
            result = _write_copy(src, staged[0].path, wal_target, len(staged) > 1, stream)
            for s in reversed(staged):
                s.publish()
        except BaseException:
            for s in staged:
                s.discard()
            raise
    return dataclasses.replace(result, backup_dir=backup_dir, backup_wal_dir=(
        backup_wal_dir or os.path.join(backup_dir, "member", "wal")))


def _write_copy(src: _Source, data_dir: str, wal_dir: str, separate_wal: bool,
                stream: TextIO | None) -> BackupResult:
    """Write the copy into the (staged) `data_dir` and `wal_dir`; fsync every file and dir."""
    member_dir = os.path.join(data_dir, "member")
    snap_dir = os.path.join(member_dir, "snap")
    os.mkdir(member_dir, 0o700)
    os.mkdir(snap_dir, 0o700)
    if not separate_wal and os.path.exists(wal_dir):
        raise BackupError("backup-wal-dir would mix the WAL with the member's other files")
    os.makedirs(wal_dir, 0o700, exist_ok=True)
    src_snap = os.path.join(src.member_dir, "snap")
    files = [(os.path.join(src.member_dir, "identity"), os.path.join(member_dir, "identity"))]
    files += [(os.path.join(src_snap, n), os.path.join(snap_dir, n)) for n in src.snap_names]
    files += [(os.path.join(src.wal_dir, n), os.path.join(wal_dir, n)) for n in src.wal_names]
    db = os.path.join(src_snap, "db")
    total = os.path.getsize(db) + sum(os.path.getsize(s) for s, _ in files)
    with Progress(total, f"backing up {os.path.dirname(src.member_dir)}", stream) as bar:
        consistent_index, revision = _copy_db(db, os.path.join(snap_dir, "db"), bar)
        copied = sum(_copy_file(s, d, bar) for s, d in files)
    for d in (snap_dir, wal_dir, member_dir):
        fsync_dir(d)
    db_bytes = os.path.getsize(os.path.join(snap_dir, "db"))
    ident = src.identity
    return BackupResult(data_dir, wal_dir, ident.get("name", ""),
                        int(ident.get("member_id", "0"), 16),
                        int(ident.get("cluster_id", "0"), 16), revision, consistent_index,
                        db_bytes, len(src.wal_names), len(src.snap_names), db_bytes + copied)


def describe(result: BackupResult) -> str:
    """The one-line report."""
    return (f"backed up member {result.member_id:x} ({result.name}) of cluster "
            f"{result.cluster_id:x} at revision {result.revision} (consistent index "
            f"{result.consistent_index}) to {result.backup_dir}: db "
            f"{human_bytes(result.db_bytes)}, {result.wal_segments} WAL segments, "
            f"{result.snap_files} snapshot files")


def main(argv: Sequence[str] | None = None) -> int:
    """`etcdd-ops backup --data-dir SRC [--backup-dir] DST`; 1 with `Error: ...` on failure."""
    p = argparse.ArgumentParser(prog="etcdd-ops backup",
                                description="a consistent copy of a stopped member's data dir")
    p.add_argument("--data-dir", required=True, help="Path to the etcd data dir")
    p.add_argument("--wal-dir", default="", help="Path to the etcd wal dir")
    p.add_argument("--backup-dir", default="", help="Path to the backup dir")
    p.add_argument("--backup-wal-dir", default="", help="Path to the backup wal dir")
    p.add_argument("dest", nargs="?", default="", help="the backup dir (or --backup-dir)")
    p.add_argument("-w", "--write-out", choices=("simple", "json"), default="simple")
    args = p.parse_args(list(argv) if argv is not None else None)
    target = args.backup_dir or args.dest
    if not target or (args.backup_dir and args.dest and args.backup_dir != args.dest):
        p.error("give the backup dir once, as DEST or --backup-dir")
    try:
        result = backup(args.data_dir, target, args.wal_dir, args.backup_wal_dir)
    except (BackupError, SnapshotError, OSError, lmdb.Error) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(result), separators=(",", ":")) if args.write_out == "json"
          else describe(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
