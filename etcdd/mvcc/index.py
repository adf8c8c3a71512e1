"""Reading the on-disk key index inside one LMDB transaction.

Shell (LMDB cursors). The encodings and rules are `mvcc/keyindex.py`'s. Matches etcd 3.4
`mvcc/index.go` `treeIndex` `Get`/`Range`/`Revisions`: a key is live at `rev` when its
newest revision at or below `rev` exists and is not a tombstone.

Two databases answer:

* `live` (index key -> revision key of its current record; deleted keys absent): reads
  at the current revision, and the writes' look-ups. A walk is one cursor step per live
  key, so a count over `n` keys is `n` plain steps and never visits deleted keys.
* `index` (index key -> every revision on disk, dupsort, newest first): reads at an older
  revision, compaction and hashing. A walk is one cursor step per key, plus one
  `set_range_dup` seek per key changed after the read revision.

Both return `(user key, revision key)` pairs in user-key order; keys longer than
`SHORT_KEY_MAX` are sorted by full key within their prefix group (`_scan_group`).
"""
from __future__ import annotations

import sys
from typing import Any, Callable

from etcdd.mvcc.keyindex import (LIVE_VALUE_LEN, LONG_INDEX_KEY_LEN, SHORT_KEY_MAX,
                                 index_probe, record_key, rev_key_of)

ALL = sys.maxsize

Found = list[tuple[bytes, bytes]]


class IndexReader:
    """Walks `live` and `index` of `txn` (a read or write transaction).

    Valid only while `txn` is; every method repositions its cursors first, so writes
    made in the same write transaction between calls are seen."""

    def __init__(self, txn: Any, dbs: dict[bytes, Any]) -> None:
        self._txn = txn
        self._key_db = dbs[b"key"]
        self._index_db = dbs[b"index"]
        self._live_db = dbs[b"live"]
        self._cur = txn.cursor(self._index_db)
        self._live = txn.cursor(self._live_db)
        self._aux: Any = None

    # -- one key -----------------------------------------------------------------------

    def current(self, ik: bytes) -> bytes | None:
        """The revision key of the key's current record, or None when it is not live."""
        return self._txn.get(ik, db=self._live_db)

    def at(self, ik: bytes, at_rev: int) -> bytes | None:
        """The key's newest index value with `main <= at_rev` (a tombstone too), or None."""
        cur = self._cur
        return cur.value() if cur.set_range_dup(ik, index_probe(at_rev)) else None

    def live_at(self, ik: bytes, at_rev: int | None) -> bytes | None:
        """The revision key of the key's record at `at_rev` (None: now), or None when the
        key does not exist then."""
        if at_rev is None:
            return self.current(ik)
        v = self.at(ik, at_rev)
        return rev_key_of(v) if v is not None and len(v) == LIVE_VALUE_LEN else None

    def dups(self, ik: bytes) -> list[bytes]:
        """All of a key's index values, newest first."""
        cur = self._cur
        if not cur.set_key(ik):
            return []
        return list(cur.iternext_dup())

    def live_count(self) -> int:
        """Keys live now (O(1))."""
        return self._txn.stat(self._live_db)["entries"]

    # -- ranges ------------------------------------------------------------------------

    def scan(self, start: bytes, end: bytes | None, at_rev: int | None,
             want: int = ALL) -> tuple[int, Found]:
        """Count the keys in `[start, end)` (`end` None: no bound) live at `at_rev` (None:
        now) and return the first `want` of them, ascending, as (user key, revision key)."""
        cur = self._live if at_rev is None else self._cur
        if not _seek(cur, start):
            return 0, []
        group_end = None if end is None else (end[:SHORT_KEY_MAX], len(end) > SHORT_KEY_MAX)
        if at_rev is None:
            return self._scan_live(start, end, group_end, want)
        return self._scan_index(start, end, group_end, at_rev, want)

    def _scan_live(self, start: bytes, end: bytes | None,
                   group_end: tuple[bytes, bool] | None, want: int) -> tuple[int, Found]:
        cur = self._live
        count = 0
        found: Found = []
        while True:
            at_group = False
            if len(found) < want:
                for ik, rk in cur.iternext():
                    if len(ik) == LONG_INDEX_KEY_LEN:
                        at_group = True
                        break
                    if end is not None and ik >= end:
                        return count, found
                    count += 1
                    found.append((ik, rk))
                    if len(found) >= want:
                        break
                else:
                    return count, found
                if not at_group:
                    if not cur.next():
                        return count, found
                    continue
            else:
                # The count walk: keys only, the cheapest step LMDB has.
                for ik in cur.iternext(values=False):
                    if len(ik) == LONG_INDEX_KEY_LEN:
                        break
                    if end is not None and ik >= end:
                        return count, found
                    count += 1
                else:
                    return count, found
            if group_end is not None and _group_past(cur.key()[:SHORT_KEY_MAX], group_end):
                return count, found
            n, more = self._scan_group(cur, start, end, _identity, found, want)
            count += n
            if not more:
                return count, found

    def _scan_index(self, start: bytes, end: bytes | None,
                    group_end: tuple[bytes, bool] | None, at_rev: int,
                    want: int) -> tuple[int, Found]:
        cur = self._cur
        probe = index_probe(at_rev)
        count = 0
        found: Found = []
        while True:
            at_group = False
            for ik, v in cur.iternext_nodup(values=True):
                if len(ik) == LONG_INDEX_KEY_LEN:
                    at_group = True
                    break
                if end is not None and ik >= end:
                    return count, found
                if v < probe:
                    # Changed after at_rev: find its revision then; keep the cursor on ik.
                    if cur.set_range_dup(ik, probe):
                        v = cur.value()
                    else:
                        cur.set_key(ik)
                        continue
                if len(v) == LIVE_VALUE_LEN:
                    count += 1
                    if len(found) < want:
                        found.append((ik, rev_key_of(v)))
            if not at_group:
                return count, found
            if group_end is not None and _group_past(cur.key()[:SHORT_KEY_MAX], group_end):
                return count, found

            def at(ik: bytes, v: bytes) -> bytes | None:
                if v < probe:
                    v = self._aux_at(ik, probe)
                if v is None or len(v) != LIVE_VALUE_LEN:
                    return None
                return rev_key_of(v)

            n, more = self._scan_group(cur, start, end, at, found, want)
            count += n
            if not more:
                return count, found

    def _scan_group(self, cur: Any, start: bytes, end: bytes | None,
                    resolve: Callable[[bytes, bytes], bytes | None], found: Found,
                    want: int) -> tuple[int, bool]:
        """Scan the group of long keys sharing the cursor key's prefix, in full-key order.

        `resolve(index key, cursor value)` gives the revision key to read (None: not
        live). Leaves the cursor on the first key after the group; returns (live keys in
        range, whether a key after the group exists)."""
        prefix = cur.key()[:SHORT_KEY_MAX]
        rows = []
        more = True
        while more:
            ik, v = cur.item()
            if len(ik) != LONG_INDEX_KEY_LEN or ik[:SHORT_KEY_MAX] != prefix:
                break
            rk = resolve(ik, v)
            if rk is not None:
                key = self.user_key(rk)
                if start <= key and (end is None or key < end):
                    rows.append((key, rk))
            more = _next_key(cur)
        rows.sort()
        for row in rows:
            if len(found) >= want:
                break
            found.append(row)
        return len(rows), more

    def any_live(self, at_rev: int) -> bool:
        """Whether any key is live at `at_rev` (stops at the first that is)."""
        cur = self._cur
        if not cur.first():
            return False
        probe = index_probe(at_rev)
        for ik, v in cur.iternext_nodup(values=True):
            if v < probe:
                if not cur.set_range_dup(ik, probe):
                    cur.set_key(ik)
                    continue
                v = cur.value()
            if len(v) == LIVE_VALUE_LEN:
                return True
        return False

    def user_key(self, rk: bytes) -> bytes:
        """The user key of the record at revision key `rk`."""
        record = self._txn.get(rk, db=self._key_db)
        if record is None:
            raise LookupError(f"index points at a missing record {rk!r}")
        return record_key(record)

    def _aux_at(self, ik: bytes, probe: bytes) -> bytes | None:
        if self._aux is None:
            self._aux = self._txn.cursor(self._index_db)
        aux = self._aux
        return aux.value() if aux.set_range_dup(ik, probe) else None


def _identity(ik: bytes, rk: bytes) -> bytes:
    return rk


def _seek(cur: Any, start: bytes) -> bool:
    """Position `cur` at the first index key whose user key may be >= start."""
    start_ik = start[:SHORT_KEY_MAX]
    if not cur.set_range(start_ik):
        return False
    if len(start) > SHORT_KEY_MAX and cur.key() == start_ik:
        return _next_key(cur)   # NB: the short key equal to a long start's prefix is < start
    return True


def _next_key(cur: Any) -> bool:
    """Move to the next key, skipping duplicates (`next_nodup` is `next` on a database
    without them)."""
    return cur.next_nodup()


def _group_past(prefix: bytes, group_end: tuple[bytes, bool]) -> bool:
    """Whether every long key with this prefix is >= end (`group_end` = (end's prefix,
    whether end itself is long)); if end is long and shares the prefix, some may not be."""
    end_prefix, end_is_long = group_end
    return prefix > end_prefix or (prefix == end_prefix and not end_is_long)
