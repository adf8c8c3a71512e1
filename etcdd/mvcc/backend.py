"""The LMDB environment behind a member: `member/snap/db`.

Shell. One environment, opened with `subdir=False`: `<path>` is the data file itself
(as etcd's bbolt `member/snap/db` is one file) and LMDB keeps its reader table in
`<path>-lock`. Named databases (etcd 3.4 `mvcc/backend` buckets, plus our `index`):

    key        revision key (17/18 bytes, `mvcc/revision.py`) -> marshaled mvccpb.KeyValue
    index      user key -> every revision on disk, dupsort, newest first (`mvcc/keyindex.py`)
    live       user key -> revision key of its current record; deleted keys absent
    meta       consistent_index, term (8-byte big-endian), currentRev (8-byte big-endian),
               scheduledCompactRev, finishedCompactRev (17-byte revision keys, as etcd)
    lease      lease ID (8-byte big-endian) -> marshaled leasepb.Lease (ID, TTL, RemainingTTL)
    leaseKeys  lease ID -> the `index` keys of the live keys attached to it, dupsort
    auth, authUsers, authRoles, members, members_removed, cluster, alarm
               (created empty for the rooms that fill them)

Durability: the WAL is the durability point (issue 3): commits flush the data pages
(`sync=True`) but not the meta page (`metasync=False`), so a system crash may undo the last
commits, which the WAL replays (the consistent index says where to resume). `sync()`
flushes everything, before WAL segments are released after a snapshot. Writes come from one thread only (the disk thread);
reads run on any thread in their own read transactions (`lock=True`; py-lmdb opens with
MDB_NOTLS, so a thread may hold read transactions beside its write transaction). LMDB
readers never wait for the writer. `map_size` is only address space: the file grows
with the data. A write that would pass it fails with `lmdb.MapFullError`; keep the quota
(`--quota-backend-bytes`) well below it.

Defragmentation (etcd 3.4 `backend.Defrag`): LMDB reuses free pages but never shrinks its
file, so `compact_copy` writes a compacted copy of the committed state to a temp file
beside the data file (`tmp-defrag-*.db`: the snapshot dir's `tmp*` files are removed at
start) and `swap_in` renames it over the data file and reopens. `env` is then a new
object and `dbs` holds new handles, updated in place: hold the dict, never a handle or
the env, across transactions. In a member, reads off the reactor thread go through its
thread pool, which an online defrag holds back around the swap (`server/defrag.py`).
`defrag_offline` does both for a stopped member's file and refuses one a process has
open (LMDB's lock file says so).
"""
from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import lmdb

T = TypeVar("T")
DEFAULT_MAP_SIZE = 8 << 30
DB_NAMES: tuple[bytes, ...] = (
    b"alarm", b"auth", b"authRoles", b"authUsers", b"cluster", b"index", b"key", b"lease",
    b"leaseKeys", b"live", b"members", b"members_removed", b"meta",
)
DUPSORT_NAMES = frozenset({b"index", b"leaseKeys"})
# LMDB's fixed page overhead: the two meta pages.
_META_PAGES = 2
DEFRAG_TMP_PREFIX = "tmp-defrag-"
# realpath -> Backends open on it in this process (an fcntl probe cannot see our own locks)
_open_paths: dict[str, int] = {}


class BackendInUseError(Exception):
    """A process has the backend file open: offline work must not touch it."""


@dataclass(frozen=True, slots=True)
class DefragStats:
    """Sizes around one defragmentation (bytes; `in_use` as `size_in_use_bytes`)."""
    path: str
    size_before: int
    in_use_before: int
    size_after: int
    in_use_after: int


class Backend:
    """An open LMDB environment and its named databases (`dbs[name]`).

    Invariant: `dbs` holds a handle of the current `env` for every name in `DB_NAMES`.
    `swap_in` replaces `env` and updates `dbs` in place, so callers keep the dict (or the
    Backend), never a handle or `env`, beyond one transaction."""

    def __init__(self, path: str, map_size: int = DEFAULT_MAP_SIZE,
                 max_readers: int = 256, metasync: bool = False) -> None:
        self.path = path
        self._options = {"map_size": map_size, "max_readers": max_readers,
                         "metasync": metasync}
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, mode=0o700, exist_ok=True)
        created = not os.path.exists(path)
        self.dbs: dict[bytes, Any] = {}
        self.env = self._open()
        self._closed = False
        self._real_path = os.path.realpath(path)
        _open_paths[self._real_path] = _open_paths.get(self._real_path, 0) + 1
        if created:
            # The new file's directory entry must survive a crash too (STYLE.md §6).
            _fsync_dir(parent)

    def _open(self) -> Any:
        """Open the environment at `path` and put its handles in `dbs` (in place)."""
        env = lmdb.open(self.path, subdir=False, max_dbs=32, sync=True, lock=True,
                        readahead=False, **self._options)
        try:
            env.reader_check()   # free reader slots a crashed process left behind
            if env.max_key_size() < 511:
                raise RuntimeError(f"LMDB max key size {env.max_key_size()} < 511")
            with env.begin(write=True) as txn:
                self.dbs.update({name: env.open_db(name, txn=txn, dupsort=name in DUPSORT_NAMES)
                                 for name in DB_NAMES})
        except BaseException:
            env.close()
            raise
        return env

    def begin_read(self) -> Any:
        """A read transaction over the committed state (use it on one thread, then abort)."""
        return self.env.begin(write=False)

    def begin_write(self) -> Any:
        """The write transaction (disk thread only; one at a time)."""
        return self.env.begin(write=True)

    def size_bytes(self) -> int:
        """The data file's size, as etcd's `dbSize` reports bbolt's file size."""
        return os.stat(self.path).st_size

    def size_in_use_bytes(self) -> int:
        """Bytes of pages holding data (file size minus free pages), etcd's `dbSizeInUse`."""
        with self.env.begin() as txn:
            pages = _META_PAGES + _pages(self.env.stat())
            for db in self.dbs.values():
                pages += _pages(txn.stat(db))
        return pages * self.env.stat()["psize"]

    def total_entries(self) -> int:
        """Entries over every database (etcd's snapshot status counts every bucket's keys)."""
        with self.env.begin() as txn:
            return sum(txn.stat(db)["entries"] for db in self.dbs.values())

    def sync(self) -> None:
        """Flush every committed page, the meta page included (disk thread)."""
        self.env.sync(True)

    def copy_to(self, path: str, inspect: Callable[[Any], T]) -> T:
        """Write a consistent, compacted copy of the environment to the new file `path`,
        taken from one read transaction while writers go on (never a file copy of a live
        environment); returns `inspect(txn)` of that same transaction, which describes
        what was copied. Runs off the reactor; O(data)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            return self._copy_into(fd, inspect)
        finally:
            os.close(fd)

    def _copy_into(self, fd: int, inspect: Callable[[Any], T]) -> T:
        with self.env.begin() as txn:
            seen = inspect(txn)
            self.env.copyfd(fd, compact=True, txn=txn)
        os.fsync(fd)
        return seen

    def compact_copy(self) -> str:
        """Write a compacted copy of the committed state to a new temp file beside the
        data file, fsync'd, and return its path (for `swap_in`, or remove it). O(data).

        Run it with writes held (the disk thread): a commit after the copy's read
        transaction would be missing from the copy. Raises OSError or lmdb.Error (disk
        full...), leaving no temp file."""
        fd, temp = tempfile.mkstemp(prefix=DEFRAG_TMP_PREFIX, suffix=".db",
                                    dir=os.path.dirname(os.path.abspath(self.path)))
        try:
            try:
                self._copy_into(fd, lambda txn: None)
            finally:
                os.close(fd)
        except BaseException:
            _remove(temp)
            raise
        return temp

    def swap_in(self, temp: str) -> None:
        """Make `temp` (from `compact_copy`) the data file and reopen: `env` is replaced
        and `dbs` takes the new handles in place (the old ones are dead).

        No transaction may be open on any thread, and none may start until this returns.
        A failed rename leaves the old file open and raises; a failure after it (the
        directory fsync, reopening) leaves the backend closed and raises: a durability
        failure, the member must stop (STYLE.md §6.4)."""
        os.rename(temp, self.path)      # the open env keeps the old inode until closed
        self._closed = True
        parent = os.path.dirname(os.path.abspath(self.path))
        try:
            _fsync_dir(parent)
        finally:
            self.env.close()
        self.env = self._open()
        self._closed = False

    def defrag(self) -> DefragStats:
        """`compact_copy` then `swap_in`, with no other user of the backend (offline)."""
        before, in_use_before = self.size_bytes(), self.size_in_use_bytes()
        self.swap_in(self.compact_copy())
        return DefragStats(self.path, before, in_use_before, self.size_bytes(),
                           self.size_in_use_bytes())

    def load_from(self, path: str) -> None:
        """Replace every database's content with the content of the LMDB file `path` (a
        snapshot from the leader), in one write transaction, then flush (disk thread only).
        Readers see the old state or the new one, never a mix. Raises ValueError if
        `path` is not an etcdd backend."""
        source = lmdb.open(path, subdir=False, readonly=True, lock=False, max_dbs=32)
        try:
            with source.begin() as src:
                sources = {}
                for name in DB_NAMES:
                    try:
                        sources[name] = source.open_db(name, txn=src, create=False,
                                                       dupsort=name in DUPSORT_NAMES)
                    except lmdb.NotFoundError:
                        raise ValueError(f"{path} has no {name.decode()} database") from None
                with self.env.begin(write=True) as txn:
                    for name, db in self.dbs.items():
                        txn.drop(db, delete=False)
                        items = src.cursor(sources[name]).iternext(keys=True, values=True)
                        txn.cursor(db).putmulti(items, dupdata=name in DUPSORT_NAMES,
                                                append=name not in DUPSORT_NAMES)
        finally:
            source.close()
        self.sync()

    def close(self) -> None:
        """Close the environment; safe to call twice. No transaction may be open."""
        if not self._closed:
            self._closed = True
            self.env.close()
        if self._real_path in _open_paths:
            _open_paths[self._real_path] -= 1
            if not _open_paths[self._real_path]:
                del _open_paths[self._real_path]
            self._real_path = ""


def ensure_not_in_use(path: str) -> None:
    """Raise BackendInUseError if a Backend in this process or another process has the
    LMDB file `path` open. Every opener holds a read lock on byte 0 of `<path>-lock`
    (LMDB `mdb_env_excl_lock`); a write lock on it is refused while one does."""
    real = os.path.realpath(path)
    if _open_paths.get(real):
        raise BackendInUseError(f"{path} is open in this process")
    # NB: only now may we open the lock file: closing any descriptor of it drops every
    # fcntl lock this process holds on it, an open environment's included.
    try:
        fd = os.open(f"{path}-lock", os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0, os.SEEK_SET)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        raise BackendInUseError(f"{path} is in use by another process (is the member "
                                "running?)") from None
    finally:
        os.close(fd)


def defrag_offline(path: str) -> DefragStats:
    """Defragment the backend file `path` of a stopped member.

    Raises BackendInUseError if a process has it open, FileNotFoundError if it does not
    exist, lmdb.Error if it is not an LMDB file (it is not written to then)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, "no backend file", path)
    ensure_not_in_use(path)
    # NB: a read-only, lock-free open first: a foreign file is refused without a
    # `-lock` file left beside it.
    lmdb.open(path, subdir=False, readonly=True, lock=False, max_dbs=32).close()
    backend = Backend(path)
    try:
        return backend.defrag()
    finally:
        backend.close()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _pages(stat: dict[str, int]) -> int:
    return stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
