"""The MVCC key-value store on LMDB: the member's state machine.

Shell. Semantics of etcd 3.4 `mvcc/kvstore.go`, `kvstore_txn.go`, `kvstore_compaction.go`:

* A fresh store is at revision 1 (the first put gets 2); the compact revision starts at -1.
* Every write txn that changes something takes main revision `current + 1`; its changes
  take sub revisions 0, 1, 2, ... A txn that changes nothing leaves the revision alone.
* Put keeps a live key's `create_revision`, bumps its `version` and sets `mod_revision`;
  a put on a deleted or new key starts a generation (`create_revision` = the new
  revision, `version` 1). Delete writes a tombstone `(rev, sub)` + `b"t"` holding only the key.
* Range at `rev`: `rev <= 0` is now; `rev > current` raises FutureRevError; `rev <
  compact` raises CompactedError (`==` reads). `count` ignores `limit`; the header
  revision is always the current one.
* Compaction (`schedule_compaction` then `compact_step` until it returns True) keeps, for
  every key, its newest revision at or below the compaction revision unless that is a
  tombstone (then all of it at or below goes); newer revisions are untouched.

Data layout and threading: `mvcc/backend.py`; the key index: `mvcc/keyindex.py`.
Writes happen only in `WriteBatch`es and `compact_step` on the one disk thread; reads
(`range`, `read`, `hash_kv`, ...) run on any thread, each in its own LMDB read txn that
sees committed batches only. The store keeps no state shared between threads: current
and compact revisions live in `meta` and are read inside each transaction.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import crc32c
import lmdb
from twisted.logger import Logger

from etcdd.lease import backend as lease_store
from etcdd.mvcc.backend import Backend
from etcdd.mvcc.errors import CompactedError, DatabaseSpaceExceededError, FutureRevError
from etcdd.mvcc.index import ALL, IndexReader
from etcdd.mvcc.keyindex import (compaction_drops, index_key, index_probe, index_value,
                                 record_key, revision_of_value, rev_key_of)
from etcdd.mvcc.revision import Revision, main_of, main_rev_bytes, rev_to_bytes
from etcdd.proto.kv_pb2 import KeyValue

CONSISTENT_INDEX = b"consistent_index"
TERM = b"term"
CURRENT_REV = b"currentRev"
SCHEDULED_COMPACT_REV = b"scheduledCompactRev"
FINISHED_COMPACT_REV = b"finishedCompactRev"
_U64 = struct.Struct(">Q")
_REV = struct.Struct(">QcQ")


class StoreInvariantError(RuntimeError):
    """The store's data contradicts itself, or a caller broke the batch protocol.

    Not an MVCCError: it is never a per-request refusal; the member must stop."""


@dataclass(frozen=True, slots=True)
class RangeResult:
    """`kvs` ascending by key; `count` = keys in range at the read revision (ignores the
    limit); `rev` = the current revision (etcd reports it even for historical reads)."""
    kvs: list[Any]
    count: int
    rev: int


def _u64(raw: bytes | None, default: int) -> int:
    return default if raw is None else _U64.unpack(raw)[0]


def _read_marks(txn: Any, meta: Any) -> tuple[int, int, int]:
    """(current revision, compact revision, finished compact revision) as committed."""
    current = _u64(txn.get(CURRENT_REV, db=meta), 1)
    scheduled = txn.get(SCHEDULED_COMPACT_REV, db=meta)
    finished = txn.get(FINISHED_COMPACT_REV, db=meta)
    finished_rev = -1 if finished is None else main_of(finished)
    compact = max(-1 if scheduled is None else main_of(scheduled), finished_rev)
    return current, compact, finished_rev


class _View:
    """Range over one LMDB transaction (read or write)."""

    _txn: Any
    _key_db: Any
    _reader: IndexReader
    compact_rev: int

    def _range(self, key: bytes, range_end: bytes, rev: int, limit: int, count_only: bool,
               keys_only: bool, cur_rev: int) -> RangeResult:
        # etcd 3.4 kvstore_txn.go rangeKeys: future first, then compacted.
        if rev > cur_rev:
            raise FutureRevError()
        if rev <= 0:
            rev = cur_rev
        if rev < self.compact_rev:
            raise CompactedError()
        at_rev = None if rev == cur_rev else rev
        want = 0 if count_only else (limit if limit > 0 else ALL)
        if range_end == b"":
            rk = self._reader.live_at(index_key(key), at_rev)
            count, found = (0, []) if rk is None else (1, [(key, rk)][:want])
        else:
            end = None if range_end == b"\x00" else range_end
            count, found = self._reader.scan(key, end, at_rev, want)
        return RangeResult(self._records(found, keys_only), count, cur_rev)

    def _records(self, found: list[tuple[bytes, bytes]], keys_only: bool) -> list[Any]:
        get, db = self._txn.get, self._key_db
        kvs = []
        for _, rk in found:
            raw = get(rk, db=db)
            if raw is None:
                raise StoreInvariantError(f"index points at missing record {rk!r}")
            kv = KeyValue.FromString(raw)
            if keys_only:
                kv.ClearField("value")
            kvs.append(kv)
        return kvs


class ReadView(_View):
    """A consistent read of the committed store (etcd's `store.Read()` txn): every range
    sees the same revision. Use on one thread; `end()` (or `with`) releases it."""

    changed = False

    def __init__(self, backend: Backend) -> None:
        self._txn = backend.begin_read()
        dbs = backend.dbs
        self._key_db = dbs[b"key"]
        self._reader = IndexReader(self._txn, dbs)
        self.current_rev, self.compact_rev, _ = _read_marks(self._txn, dbs[b"meta"])
        self.begin_rev = self.current_rev

    def range(self, key: bytes, range_end: bytes = b"", rev: int = 0, limit: int = 0,
              count_only: bool = False, keys_only: bool = False) -> RangeResult:
        """As `KVStore.range`, at this view's revision."""
        return self._range(key, range_end, rev, limit, count_only, keys_only,
                           self.current_rev)

    @property
    def txn(self) -> Any:
        """The LMDB read transaction (for scans the view does not offer, e.g. history)."""
        return self._txn

    def end(self) -> None:
        self._txn.abort()

    def __enter__(self) -> "ReadView":
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()


class WriteTxn(_View):
    """One etcd-level write txn inside a batch (etcd's `storeTxnWrite`): every change
    shares main revision `begin_rev + 1`; `changes` lists them (tombstones hold only the
    key) and `prevs` what each replaced (the watch events' `prev_kv`). A key's lease
    attachment (`lease/backend.py`) moves with its record. Invariant: no other txn of the
    batch is open until `end()`."""

    def __init__(self, batch: "WriteBatch") -> None:
        self._batch = batch
        self._txn = batch._txn
        self._key_db = batch._key_db
        self._reader = batch._reader
        self.begin_rev = batch._current_rev
        self.compact_rev = batch._compact_rev
        self.changes: list[Any] = []
        self.prevs: list[Any] = []      # each change's previous live KeyValue, or None
        self._ended = False

    @property
    def changed(self) -> bool:
        """Whether this txn wrote anything (so it will take a new revision)."""
        return bool(self.changes)

    @property
    def current_rev(self) -> int:
        """etcd's `TxnWrite.Rev()`: the revision before this txn."""
        return self.begin_rev

    def range(self, key: bytes, range_end: bytes = b"", rev: int = 0, limit: int = 0,
              count_only: bool = False, keys_only: bool = False) -> RangeResult:
        """As `KVStore.range`, seeing this batch's and this txn's writes."""
        self._check_open()
        cur_rev = self.begin_rev + 1 if self.changes else self.begin_rev
        return self._range(key, range_end, rev, limit, count_only, keys_only, cur_rev)

    def put(self, key: bytes, value: bytes, lease: int = 0) -> Any:
        """Write `key`; returns its previous KeyValue, or None if it was not live."""
        self._check_open()
        batch = self._batch
        rev = self.begin_rev + 1
        ik = index_key(key)
        prev = None
        created, version = rev, 1
        prev_rk = self._txn.get(ik, db=batch._live_db)
        if prev_rk is not None:
            prev = KeyValue.FromString(self._txn.get(prev_rk, db=self._key_db))
            created, version = prev.create_revision, prev.version + 1
        kv = KeyValue(key=key, create_revision=created, mod_revision=rev, version=version,
                      value=value, lease=lease)
        old_lease = prev.lease if prev is not None else 0
        if old_lease != lease:
            self._move_lease(ik, old_lease, lease)
        self._write(ik, _REV.pack(rev, b"_", len(self.changes)), kv, False, prev)
        return prev

    def delete_range(self, key: bytes, range_end: bytes = b"") -> list[Any]:
        """Delete the live keys in the range; returns their previous KeyValues."""
        self._check_open()
        if range_end == b"":
            rk = self._reader.current(index_key(key))
            targets = [] if rk is None else [(key, rk)]
        else:
            end = None if range_end == b"\x00" else range_end
            targets = self._reader.scan(key, end, None)[1]
        rev = self.begin_rev + 1
        prevs = self._records(targets, False)
        for (k, _), prev in zip(targets, prevs):
            ik = index_key(k)
            if prev.lease:
                self._move_lease(ik, prev.lease, 0)
            rk = _REV.pack(rev, b"_", len(self.changes)) + b"t"
            self._write(ik, rk, KeyValue(key=k), True, prev)
        return prevs

    def lease_exists(self, lease_id: int) -> bool:
        """Whether the lease is granted (as this batch sees it)."""
        return lease_store.exists(self._txn, self._batch._dbs, lease_id)

    def _move_lease(self, ik: bytes, old: int, new: int) -> None:
        """Move a key's `leaseKeys` attachment from lease `old` to `new` (0: none)."""
        txn, dbs = self._txn, self._batch._dbs
        try:
            if old:
                lease_store.detach(txn, dbs, old, ik)
            if new:
                lease_store.attach(txn, dbs, new, ik)
        except lmdb.MapFullError as e:
            self._batch._broken = e
            raise DatabaseSpaceExceededError() from e

    def _write(self, ik: bytes, rk: bytes, kv: Any, tombstone: bool, prev: Any) -> None:
        """Record one change in `key`, `index` and `live` (three LMDB writes)."""
        txn, batch = self._txn, self._batch
        try:
            if not txn.put(rk, kv.SerializeToString(), db=self._key_db, append=True):
                raise StoreInvariantError(f"revision {rk!r} is not past the newest record")
            txn.put(ik, index_value(rk), db=batch._index_db)
            if not tombstone:
                txn.put(ik, rk, db=batch._live_db)
            elif not txn.delete(ik, db=batch._live_db):
                raise StoreInvariantError(f"deleting {kv.key!r}: not live")
        except lmdb.MapFullError as e:
            self._batch._broken = e
            raise DatabaseSpaceExceededError() from e
        self.changes.append(kv)
        self.prevs.append(prev)

    def end(self) -> int:
        """Close the txn; returns the store revision after it (bumped only if it wrote)."""
        if self._ended:
            raise StoreInvariantError("txn already ended")
        self._ended = True
        batch = self._batch
        batch._open = None
        if self.changes:
            batch._current_rev += 1
            batch._dirty = True
        return batch._current_rev

    def _check_open(self) -> None:
        if self._ended:
            raise StoreInvariantError("txn already ended")
        if self._batch._broken is not None:
            raise DatabaseSpaceExceededError()


class WriteBatch:
    """One LMDB write transaction holding any number of etcd txns (disk thread only).

    Nothing is visible to readers until `commit()` returns, and then all of it is, and is
    durable. Invariant: at most one `WriteTxn` open at a time; none open at commit."""

    def __init__(self, backend: Backend) -> None:
        dbs = self._dbs = backend.dbs
        self._txn = backend.begin_write()
        self._key_db, self._index_db, self._meta = dbs[b"key"], dbs[b"index"], dbs[b"meta"]
        self._live_db = dbs[b"live"]
        self._reader = IndexReader(self._txn, dbs)
        self._current_rev, self._compact_rev, _ = _read_marks(self._txn, self._meta)
        self._open: WriteTxn | None = None
        self._dirty = False
        self._broken: Exception | None = None
        self._done = False

    def txn(self) -> WriteTxn:
        """Begin the next etcd txn of this batch."""
        if self._open is not None or self._done:
            raise StoreInvariantError("a txn is still open, or the batch is finished")
        self._open = WriteTxn(self)
        return self._open

    def current_revision(self) -> int:
        return self._current_rev

    def compact_revision(self) -> int:
        return self._compact_rev

    @property
    def raw_txn(self) -> Any:
        """The LMDB write transaction, for the other rooms' databases (members, ...)."""
        return self._txn

    def set_consistent_index(self, index: int, term: int) -> None:
        """Record the raft index and term of the last entry this batch applies."""
        self._put_meta(CONSISTENT_INDEX, _U64.pack(index))
        self._put_meta(TERM, _U64.pack(term))

    def schedule_compaction(self, rev: int) -> None:
        """Make `rev` the compact revision (reads below it fail once committed) and leave
        the superseded records for `KVStore.compact_step`.

        Raises CompactedError if `rev <=` the compact revision, FutureRevError if `rev >`
        the current revision (etcd 3.4 `updateCompactRev`)."""
        if self._open is not None:
            raise StoreInvariantError("schedule_compaction inside an open txn")
        if rev <= self._compact_rev:
            raise CompactedError()
        if rev > self._current_rev:
            raise FutureRevError()
        self._put_meta(SCHEDULED_COMPACT_REV, main_rev_bytes(rev))
        self._compact_rev = rev

    def _put_meta(self, name: bytes, value: bytes) -> None:
        if self._broken is not None:
            raise DatabaseSpaceExceededError()
        try:
            self._txn.put(name, value, db=self._meta)
        except lmdb.MapFullError as e:
            self._broken = e
            raise DatabaseSpaceExceededError() from e

    def commit(self) -> None:
        """Commit durably. Raises StoreInvariantError with a txn open,
        DatabaseSpaceExceededError after a write hit the map size (nothing committed)."""
        if self._open is not None and self._broken is None:
            raise StoreInvariantError("commit with a txn still open")
        try:
            if self._dirty:
                self._put_meta(CURRENT_REV, _U64.pack(self._current_rev))
            if self._broken is not None:
                raise DatabaseSpaceExceededError()
        except DatabaseSpaceExceededError:
            self.abort()
            raise
        self._done = True
        self._txn.commit()

    def abort(self) -> None:
        """Drop everything this batch wrote; safe after commit or a failed commit."""
        self._done = True
        self._open = None
        self._txn.abort()

    def __enter__(self) -> "WriteBatch":
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class KVStore:
    """The store. Reads from any thread; `write_batch()` and `compact_step()` only from
    the disk thread. Opening is O(1): the key index is on disk (etcd rebuilds it)."""

    _log = Logger()

    def __init__(self, backend: Backend) -> None:
        """Open the store on `backend`: reads the meta marks and the newest record only.

        Raises StoreInvariantError if the newest record is past the recorded revision."""
        self._backend = backend
        self._dbs = backend.dbs
        with backend.begin_read() as txn:
            current, _, _ = _read_marks(txn, self._dbs[b"meta"])
            cur = txn.cursor(self._dbs[b"key"])
            if cur.last() and main_of(cur.key()) > current:
                raise StoreInvariantError(f"record {cur.key()!r} is past revision {current}")
        # Compaction progress (disk thread only): the target and the next index key to
        # visit. Not persisted: after a restart the walk starts over, which is idempotent.
        self._compact_target: int | None = None
        self._compact_next = b""

    @property
    def backend(self) -> Backend:
        return self._backend

    # -- reads (any thread) ------------------------------------------------------------

    def read(self) -> ReadView:
        """A consistent read view of the committed store; `end()` it when done."""
        return ReadView(self._backend)

    def range(self, key: bytes, range_end: bytes = b"", rev: int = 0, limit: int = 0,
              count_only: bool = False, keys_only: bool = False) -> RangeResult:
        """The keys in the range at `rev` (`range_end`: b"" one key, b"\\x00" every key
        >= `key`, else `[key, range_end)`); at most `limit` (0: all) kvs, ascending.

        Raises FutureRevError if `rev` > current, CompactedError if `rev` < compact."""
        with ReadView(self._backend) as view:
            return view.range(key, range_end, rev, limit, count_only, keys_only)

    def _meta(self) -> tuple[int, int, int]:
        with self._backend.begin_read() as txn:
            return _read_marks(txn, self._dbs[b"meta"])

    def current_revision(self) -> int:
        return self._meta()[0]

    def lease_exists(self, lease_id: int) -> bool:
        """Whether the lease is granted in the committed store."""
        with self._backend.begin_read() as txn:
            return lease_store.exists(txn, self._dbs, lease_id)

    def compact_revision(self) -> int:
        """The last scheduled compaction's revision (-1 if none): reads below it fail."""
        return self._meta()[1]

    def pending_compaction(self) -> bool:
        """Whether a scheduled compaction has records left to delete."""
        _, compact, finished = self._meta()
        return compact > finished

    def _meta_u64(self, name: bytes, default: int) -> int:
        with self._backend.begin_read() as txn:
            return _u64(txn.get(name, db=self._dbs[b"meta"]), default)

    def consistent_index(self) -> int:
        return self._meta_u64(CONSISTENT_INDEX, 0)

    def term(self) -> int:
        return self._meta_u64(TERM, 0)

    def key_count(self) -> int:
        """Live keys now (etcd's `etcd_debugging_mvcc_keys_total`); O(1)."""
        with self._backend.begin_read() as txn:
            return txn.stat(self._dbs[b"live"])["entries"]

    def history(self, key: bytes) -> list[Revision]:
        """Every revision of `key` still on disk, oldest first (tests, debugging)."""
        with self._backend.begin_read() as txn:
            reader = IndexReader(txn, self._dbs)
            return [revision_of_value(v) for v in reversed(reader.dups(index_key(key)))]

    def hash_kv(self, rev: int = 0, _physical: bool | None = None) -> tuple[int, int, int]:
        """(hash, compact revision, current revision) of the `key` database at `rev`,
        equal to etcd 3.4 `store.HashByRev` for the same history.

        CRC-32C over b"key" and each (revision key, record) with main revision <= `rev`;
        records at or below the compact revision count only if `rev`'s key index keeps
        them (a key's newest revision at `rev`, not a tombstone) -- unless no key is live
        at `rev`, where etcd keeps them all. So the hash does not change while a
        compaction's records are being deleted. O(records) on the calling thread.
        Raises CompactedError if 0 < rev <= compact, FutureRevError if rev > current."""
        with self._backend.begin_read() as txn:
            current, compact, finished = _read_marks(txn, self._dbs[b"meta"])
            if 0 < rev <= compact:
                raise CompactedError()
            if rev > 0 and rev > current:
                raise FutureRevError()
            if rev <= 0:
                rev = current
            reader = IndexReader(txn, self._dbs)
            keep_all = not (reader.live_count() if rev == current else reader.any_live(rev))
            h = _hash_key_db(txn, self._dbs[b"key"], reader, rev, compact, keep_all,
                             finished == compact if _physical is None else _physical)
        return h, compact, current

    def hash(self) -> int:
        """CRC-32C of every database in name order (name, then each key and value),
        skipping meta's consistent_index: etcd 3.4 `backend.Hash(DefaultIgnores)`."""
        h = 0
        with self._backend.begin_read() as txn:
            for name in sorted(self._dbs):
                h = crc32c.crc32c(name, h)
                for k, v in txn.cursor(self._dbs[name]).iternext():
                    if name == b"meta" and k == CONSISTENT_INDEX:
                        continue
                    h = crc32c.crc32c(v, crc32c.crc32c(k, h))
        return h

    def copy_to(self, path: str) -> tuple[int, int, list[tuple[bytes, bytes]]]:
        """A consistent copy of the backend in the new file `path` (`Backend.copy_to`);
        returns what the copy holds: its consistent index, term and `members` records.
        Off the reactor."""
        meta, members = self._dbs[b"meta"], self._dbs[b"members"]

        def inspect(txn: Any) -> tuple[int, int, list[tuple[bytes, bytes]]]:
            return (_u64(txn.get(CONSISTENT_INDEX, db=meta), 0),
                    _u64(txn.get(TERM, db=meta), 0),
                    list(txn.cursor(members).iternext()))
        return self._backend.copy_to(path, inspect)

    # -- writes (disk thread) ----------------------------------------------------------

    def write_batch(self) -> WriteBatch:
        """Begin a write batch (disk thread only)."""
        return WriteBatch(self._backend)

    def compact_step(self, batch_limit: int = 1000) -> bool:
        """Delete superseded records of the scheduled compaction in one write txn (disk
        thread only): at most `batch_limit` index keys visited plus records deleted.

        Returns True when nothing is left (then `finishedCompactRev` is recorded in the
        same txn as the last deletions, as etcd 3.4 `scheduleCompaction` does)."""
        dbs = self._dbs
        meta, key_db, index_db = dbs[b"meta"], dbs[b"key"], dbs[b"index"]
        with self._backend.begin_write() as txn:
            _, target, finished = _read_marks(txn, meta)
            if target <= finished:
                return True
            if self._compact_target != target:
                # NB: a newer compaction drops a superset of an older one: start over.
                self._compact_target, self._compact_next = target, b""
            done, self._compact_next = _compact_walk(txn, index_db, key_db, target,
                                                     self._compact_next, batch_limit)
            if done:
                txn.put(FINISHED_COMPACT_REV, main_rev_bytes(target), db=meta)
        if done:
            self._log.info("finished scheduled compaction at {rev}", rev=target)
            self._compact_target, self._compact_next = None, b""
        return done


def _compact_walk(txn: Any, index_db: Any, key_db: Any, target: int, start: bytes,
                  budget: int) -> tuple[bool, bytes]:
    """Walk index keys from `start` dropping revisions compaction(`target`) supersedes.

    Returns (finished, the index key to resume at)."""
    probe = index_probe(target)
    cur = txn.cursor(index_db)
    more = cur.set_range(start)
    while more:
        if budget <= 0:
            return False, cur.key()
        ik = cur.key()
        budget -= 1
        if cur.set_range_dup(ik, probe):
            drops = compaction_drops(list(cur.iternext_dup()))
            keep = max(budget, 1)        # NB: at least one drop per visit, or a limit of 1 never moves
            if len(drops) > keep:
                drops, resume = drops[:keep], True   # oldest first: safe to stop here
            else:
                resume = False
            for v in drops:
                txn.delete(ik, v, db=index_db)
                if not txn.delete(rev_key_of(v), db=key_db):
                    raise StoreInvariantError(f"compaction: no record {rev_key_of(v)!r}")
            budget -= len(drops)
            if resume:
                return False, ik
        more = cur.set_range(ik + b"\x00")
    return True, b""


def _hash_key_db(txn: Any, key_db: Any, reader: IndexReader, rev: int, compact: int,
                 keep_all: bool, physical: bool) -> int:
    """etcd 3.4 `HashByRev`'s loop. With the compaction physically finished (`physical`)
    the records at or below `compact` are exactly those compaction kept, and the only ones
    `rev` does not keep belong to keys changed in (compact, rev]; otherwise each such
    record is checked against the index."""
    upper = rev_to_bytes(rev + 1, 0)
    lower = rev_to_bytes(compact + 1, 0) if compact >= 0 else b""
    skip: set[bytes] | None = None
    if not keep_all and lower and physical:
        skip = _superseded_since(txn, key_db, reader, lower, upper, compact)
    h = crc32c.crc32c(b"key")
    crc = crc32c.crc32c
    for k, v in txn.cursor(key_db).iternext():
        if k >= upper:
            break
        if k < lower and not keep_all:
            if skip is not None:
                if k in skip:
                    continue
            elif not _kept_at(reader, k, v, rev):
                continue
        h = crc(v, crc(k, h))
    return h


def _superseded_since(txn: Any, key_db: Any, reader: IndexReader, lower: bytes,
                      upper: bytes, compact: int) -> set[bytes]:
    """Revision keys of the records kept at `compact` whose key changed in (compact, rev]."""
    cur = txn.cursor(key_db)
    changed: set[bytes] = set()
    if cur.set_range(lower):
        for k, v in cur.iternext():
            if k >= upper:
                break
            changed.add(record_key(v))
    skip = set()
    for key in changed:
        rk = reader.live_at(index_key(key), compact)
        if rk is not None:
            skip.add(rk)
    return skip


def _kept_at(reader: IndexReader, k: bytes, v: bytes, rev: int) -> bool:
    """Whether record (k, v) is its key's newest revision at `rev` and not a tombstone."""
    if len(k) != 17:
        return False
    return reader.live_at(index_key(record_key(v)), rev) == k
