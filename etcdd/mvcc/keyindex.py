"""The key index on disk: how user keys and their revisions are encoded, and the rules that
say which revisions a compaction drops and which a hash keeps.

Core (pure). The shell (`mvcc/index.py`, `mvcc/store.py`) keeps the index in the LMDB
database `index` (dupsort): one entry per user key, whose duplicate values are every
revision of that key still on disk. It matches etcd 3.4's in-memory `mvcc/key_index.go`
`keyIndex`, rebuilt on every etcd start; ours is durable, so a restart rebuilds nothing.

A key's history reads as etcd's generations: a delete ends a generation with a tombstone,
the next put starts a new one::

    put@2, put@4, delete@6, put@8       ->  generations [2, 4, 6(t)], [8]
    compact(5)                          ->  keeps       [4, 6(t)], [8]
    compact(6)                          ->  keeps       [8]
    put@2, delete@3; compact(3)         ->  the key is gone from the index

Encodings:

* index value: the revision's `key` database key (17 bytes, 18 with the tombstone mark)
  with every byte complemented, so LMDB's ascending duplicate order is *newest first*:
  the first duplicate is the key's current revision, and the newest revision at or
  below `rev` is the first duplicate >= `index_probe(rev)` (one `set_range_dup`).
  `index_value(rk).translate(...)` is its own inverse: `rev_key_of(index_value(rk)) == rk`.
* index key: the user key itself when it is at most `SHORT_KEY_MAX` bytes. LMDB keys
  hold at most 511 bytes and etcd's keys may be longer, so a longer key is stored as its
  first `SHORT_KEY_MAX` bytes followed by its SHA-256 (exactly `LONG_INDEX_KEY_LEN`
  bytes). Byte order of index keys equals user-key order except inside one group of
  long keys sharing their first `SHORT_KEY_MAX` bytes; range walks sort such a group by
  the full keys, which they read from the `key` records.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

from etcdd.mvcc.revision import (MARKED_REV_BYTES_LEN, REV_BYTES_LEN, Revision,
                                 bytes_to_rev, rev_to_bytes)

SHORT_KEY_MAX = 479
LONG_INDEX_KEY_LEN = SHORT_KEY_MAX + 32
LIVE_VALUE_LEN = REV_BYTES_LEN
TOMBSTONE_VALUE_LEN = MARKED_REV_BYTES_LEN

_INVERT = bytes(255 - i for i in range(256))


def index_key(key: bytes) -> bytes:
    """The `index` database key of user key `key` (see the module docstring)."""
    if len(key) <= SHORT_KEY_MAX:
        return key
    return key[:SHORT_KEY_MAX] + hashlib.sha256(key).digest()


def is_long_index_key(ik: bytes) -> bool:
    """Whether an index key stands for a user key longer than `SHORT_KEY_MAX` bytes."""
    return len(ik) == LONG_INDEX_KEY_LEN


def index_value(rev_key: bytes) -> bytes:
    """The index value of a revision key (complemented bytes: newest sorts first)."""
    return rev_key.translate(_INVERT)


def rev_key_of(value: bytes) -> bytes:
    """The `key` database key an index value points at."""
    return value.translate(_INVERT)


def index_value_of(main: int, sub: int, tombstone: bool = False) -> bytes:
    """The index value of revision `(main, sub)`."""
    return rev_to_bytes(main, sub, tombstone).translate(_INVERT)


def index_probe(at_rev: int) -> bytes:
    """The smallest index value whose revision has `main <= at_rev`.

    `set_range_dup(ik, index_probe(r))` lands on the key's newest revision at or below
    `r`; a first duplicate `v` is itself at or below `r` exactly when `v >= probe`."""
    return (rev_to_bytes(at_rev, 0)[:9] + b"\xff" * 8).translate(_INVERT)


def is_tombstone_value(value: bytes) -> bool:
    """Whether an index value is a deletion (its key is not live from that revision)."""
    return len(value) == TOMBSTONE_VALUE_LEN


def revision_of_value(value: bytes) -> Revision:
    """The revision an index value names."""
    return bytes_to_rev(rev_key_of(value))


def compaction_drops(at_or_below: Sequence[bytes]) -> list[bytes]:
    """Which of a key's revisions at or below a compaction revision go, oldest first.

    `at_or_below` are the key's index values with `main <= rev`, newest first. etcd 3.4
    `keyIndex.compact` keeps the newest of them unless it is a tombstone, in which case
    the whole generation goes. Oldest first, so a compaction interrupted half way through
    a key still leaves its newest revision (and tombstone) for the next step to judge::

        [6(t), 4, 2]  ->  [2, 4, 6(t)]        (delete@6 ended the generation)
        [4, 2]        ->  [2]                 (4 is the key's value at the compaction)
    """
    if not at_or_below:
        return []
    if is_tombstone_value(at_or_below[0]):
        return list(reversed(at_or_below))
    return list(reversed(at_or_below[1:]))


def record_key(record: bytes) -> bytes:
    """The user key inside a marshaled `mvccpb.KeyValue` (field 1, always first).

    etcd's gogo marshaling and upb both write fields in number order, and every record
    (a tombstone's too) has a non-empty key, so the key is the first field.
    Raises ValueError when the record does not start with field 1."""
    if not record or record[0] != 0x0A:
        raise ValueError("record does not start with its key")
    n, shift, i = 0, 0, 1
    while True:
        b = record[i]
        n |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            break
        shift += 7
    return bytes(record[i:i + n])


def generations(history: Iterable[Revision]) -> list[list[Revision]]:
    """Split a key's revisions, oldest first, into etcd's generations (tombstone ends one)."""
    gens: list[list[Revision]] = [[]]
    for rev in history:
        gens[-1].append(rev)
        if rev.tombstone:
            gens.append([])
    return [g for g in gens if g]


def format_generations(history: Iterable[Revision]) -> str:
    """A key's history as the docstrings draw it: `[2, 4, 6(t)], [8]`; subs show as
    `main.sub` when non-zero."""
    def one(r: Revision) -> str:
        s = str(r.main) if r.sub == 0 else f"{r.main}.{r.sub}"
        return s + "(t)" if r.tombstone else s
    return ", ".join("[" + ", ".join(one(r) for r in g) + "]" for g in generations(history))
