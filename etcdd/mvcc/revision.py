"""Revisions and their byte form: the keys of the `key` database.

Core (pure). Byte-compatible with etcd 3.4 `mvcc/revision.go` and `mvcc/kvstore.go`: a
revision is `(main, sub)`; `main` is the store revision of the txn that wrote it, `sub`
the position of the change inside that txn. Its key is 17 bytes, `main` big-endian,
`b"_"`, `sub` big-endian; a tombstone (delete) appends the mark `b"t"` (18 bytes).
Byte order equals revision order, so the `key` database is a log in revision order::

    rev_to_bytes(5, 1)                  == b"\\0\\0\\0\\0\\0\\0\\0\\x05_\\0\\0\\0\\0\\0\\0\\0\\x01"
    rev_to_bytes(5, 1, tombstone=True)  == the same + b"t"
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

REV_BYTES_LEN = 17
MARKED_REV_BYTES_LEN = 18
TOMBSTONE_MARK = b"t"

_REV = struct.Struct(">QcQ")
_MAIN = struct.Struct(">Q")
_MAX_INT64 = (1 << 63) - 1


@dataclass(frozen=True, slots=True, order=True)
class Revision:
    """One change's place in history; ordering is etcd's `GreaterThan` (main, then sub).

    `tombstone` marks a deletion; it does not take part in ordering or equality of the
    place (etcd's `revision` has no mark; the mark lives only in the key bytes)."""
    main: int
    sub: int = 0
    tombstone: bool = False

    def to_bytes(self) -> bytes:
        return rev_to_bytes(self.main, self.sub, self.tombstone)


def rev_to_bytes(main: int, sub: int = 0, tombstone: bool = False) -> bytes:
    """The `key` database key of revision `(main, sub)`, with the tombstone mark if asked.

    Raises ValueError for a negative or over-int64 revision (a broken invariant)."""
    if not (0 <= main <= _MAX_INT64 and 0 <= sub <= _MAX_INT64):
        raise ValueError(f"revision out of range: main={main} sub={sub}")
    b = _REV.pack(main, b"_", sub)
    return b + TOMBSTONE_MARK if tombstone else b


def bytes_to_rev(b: bytes) -> Revision:
    """The revision a `key` database key names.

    Raises ValueError when `b` is neither 17 bytes nor 18 bytes ending in the mark."""
    n = len(b)
    if n == REV_BYTES_LEN:
        tombstone = False
    elif n == MARKED_REV_BYTES_LEN and b[17:] == TOMBSTONE_MARK:
        tombstone = True
    else:
        raise ValueError(f"not a revision key: {bytes(b)!r}")
    if b[8:9] != b"_":
        raise ValueError(f"not a revision key: {bytes(b)!r}")
    main, _, sub = _REV.unpack_from(b)
    return Revision(main, sub, tombstone)


def main_of(b: bytes) -> int:
    """The main revision of a 17/18-byte revision key, without checking its shape."""
    return _MAIN.unpack_from(b)[0]


def is_tombstone(b: bytes) -> bool:
    """Whether a revision key carries the tombstone mark (etcd's `isTombstone`)."""
    return len(b) == MARKED_REV_BYTES_LEN and b[17:] == TOMBSTONE_MARK


def main_rev_bytes(main: int) -> bytes:
    """The smallest revision key with this main revision: `(main, 0)`, unmarked.

    The meta database stores `scheduledCompactRev` and `finishedCompactRev` in this
    form, as etcd 3.4 does (`revToBytes(revision{main: rev})`)."""
    return rev_to_bytes(main, 0)
