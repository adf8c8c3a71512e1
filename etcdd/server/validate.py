"""Request validation done before a request is proposed.

Core. Matches etcd 3.4 `etcdserver/api/v3rpc/key.go` (checkPutRequest, checkTxnRequest,
checkIntervals): the same checks, in the same order, with the same refusals.
"""
from __future__ import annotations

from typing import Any

from etcdd.server.errors import (DuplicateKeyError, EmptyKeyError, KeyNotFoundError,
                                 LeaseProvidedError, TooManyOpsError, ValueProvidedError)


def check_range(req: Any) -> None:
    if not req.key:
        raise EmptyKeyError()


def check_put(req: Any) -> None:
    if not req.key:
        raise EmptyKeyError()
    if req.ignore_value and req.value:
        raise ValueProvidedError()
    if req.ignore_lease and req.lease != 0:
        raise LeaseProvidedError()


def check_delete(req: Any) -> None:
    if not req.key:
        raise EmptyKeyError()


def check_txn(req: Any, max_txn_ops: int) -> None:
    """Raise the refusal etcd gives for `req`, checking nested txns recursively."""
    ops = max(len(req.compare), len(req.success), len(req.failure))
    if ops > max_txn_ops:
        raise TooManyOpsError()
    for compare in req.compare:
        if not compare.key:
            raise EmptyKeyError()
    for op in req.success:
        _check_op(op, max_txn_ops - ops)
    for op in req.failure:
        _check_op(op, max_txn_ops - ops)


def check_txn_intervals(req: Any) -> None:
    """etcd's checkIntervals on both branches: no key written twice in one branch."""
    _check_intervals(req.success)
    _check_intervals(req.failure)


_OP_CHECKS = {
    "request_range": check_range,
    "request_put": check_put,
    "request_delete_range": check_delete,
}


def _check_op(op: Any, max_txn_ops: int) -> None:
    kind = op.WhichOneof("request")
    if kind == "request_txn":
        check_txn(op.request_txn, max_txn_ops)
        return
    check = _OP_CHECKS.get(kind)
    if check is None:
        raise KeyNotFoundError()   # NB: etcd answers an empty RequestOp with "key not found"
    check(getattr(op, kind))


class _Intervals:
    """Half-open byte intervals [start, end); an empty end means +infinity, as etcd's
    `adt.StringAffineComparable` orders them (so a delete ending in b"\\0" covers nothing
    past its own start byte-wise, exactly like etcd)."""

    def __init__(self) -> None:
        self._items: list[tuple[bytes, bytes]] = []

    def add_point(self, key: bytes) -> None:
        self._items.append((key, key + b"\x00"))

    def add(self, start: bytes, end: bytes) -> None:
        self._items.append((start, end))

    def union(self, other: "_Intervals") -> None:
        self._items.extend(other._items)

    def contains(self, key: bytes) -> bool:
        for start, end in self._items:
            if _affine_le(start, key) and _affine_lt(key, end):
                return True
        return False


def _affine_lt(a: bytes, b: bytes) -> bool:
    if not b:
        return bool(a)
    if not a:
        return False
    return a < b


def _affine_le(a: bytes, b: bytes) -> bool:
    return not _affine_lt(b, a)


def _check_intervals(ops: Any) -> tuple[set[bytes], _Intervals]:
    dels = _Intervals()
    for op in ops:
        if op.WhichOneof("request") != "request_delete_range":
            continue
        d = op.request_delete_range
        if d.range_end:
            dels.add(d.key, d.range_end)
        else:
            dels.add_point(d.key)
    puts: set[bytes] = set()
    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        puts_then, dels_then = _check_intervals(op.request_txn.success)
        puts_else, dels_else = _check_intervals(op.request_txn.failure)
        for key in puts_then:
            if key in puts or dels.contains(key):
                raise DuplicateKeyError()
            puts.add(key)
        for key in puts_else:
            if key in puts and key not in puts_then:
                raise DuplicateKeyError()
            if dels.contains(key):
                raise DuplicateKeyError()
            puts.add(key)
        dels.union(dels_then)
        dels.union(dels_else)
    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        key = op.request_put.key
        if key in puts or dels.contains(key):
            raise DuplicateKeyError()
        puts.add(key)
    return puts, dels
