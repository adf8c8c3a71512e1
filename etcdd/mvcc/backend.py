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
"""
from __future__ import annotations

import os
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


class Backend:
    """An open LMDB environment and its named databases (`dbs[name]`).

    Invariant: every name in `DB_NAMES` exists once the constructor returns."""

    def __init__(self, path: str, map_size: int = DEFAULT_MAP_SIZE,
                 max_readers: int = 256, metasync: bool = False) -> None:
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, mode=0o700, exist_ok=True)
        created = not os.path.exists(path)
        self.env = lmdb.open(path, subdir=False, map_size=map_size, max_dbs=32,
                             max_readers=max_readers, sync=True, metasync=metasync, lock=True,
                             readahead=False)
        self.env.reader_check()   # free reader slots a crashed process left behind
        if self.env.max_key_size() < 511:
            raise RuntimeError(f"LMDB max key size {self.env.max_key_size()} < 511")
        with self.env.begin(write=True) as txn:
            self.dbs: dict[bytes, Any] = {
                name: self.env.open_db(name, txn=txn, dupsort=name in DUPSORT_NAMES)
                for name in DB_NAMES}
        if created:
            # The new file's directory entry must survive a crash too (STYLE.md §6).
            fd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._closed = False

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
            with self.env.begin() as txn:
                seen = inspect(txn)
                self.env.copyfd(fd, compact=True, txn=txn)
            os.fsync(fd)
        finally:
            os.close(fd)
        return seen

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


def _pages(stat: dict[str, int]) -> int:
    return stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
