"""The applier: what a committed KV request does to the store, and what it answers.

Core (works on the read views and write txns `mvcc/store.py` hands it; no IO of its own).
Matches etcd 3.4 `etcdserver/apply.go` (applierV3backend Range/Put/DeleteRange/Txn/Compaction):
the same sorting, filtering, limit and `more` rules, the same compare semantics, the same
header revisions, including nested txn responses carrying only `revision`.
"""
from __future__ import annotations

from typing import Any, Callable

from etcdd.proto import rpc_pb2 as pb
from etcdd.server.errors import KeyNotFoundError, LeaseNotFoundError
from etcdd.mvcc.errors import CompactedError, FutureRevError

_SORT_KEYS: dict[int, Callable[[Any], Any]] = {
    pb.RangeRequest.KEY: lambda kv: kv.key,
    pb.RangeRequest.VERSION: lambda kv: kv.version,
    pb.RangeRequest.CREATE: lambda kv: kv.create_revision,
    pb.RangeRequest.MOD: lambda kv: kv.mod_revision,
    pb.RangeRequest.VALUE: lambda kv: kv.value,
}

_COMPARE_FIELDS = {
    pb.Compare.VERSION: ("version", "version"),
    pb.Compare.CREATE: ("create_revision", "create_revision"),
    pb.Compare.MOD: ("mod_revision", "mod_revision"),
    pb.Compare.VALUE: ("value", "value"),
    pb.Compare.LEASE: ("lease", "lease"),
}

_RESULTS: dict[int, Callable[[int], bool]] = {
    pb.Compare.EQUAL: lambda c: c == 0,
    pb.Compare.NOT_EQUAL: lambda c: c != 0,
    pb.Compare.GREATER: lambda c: c > 0,
    pb.Compare.LESS: lambda c: c < 0,
}


class LeaseLookup:
    """Which leases exist: by default, those the write txn's batch sees granted
    (`WriteTxn.lease_exists`), so every member decides alike at the same index."""

    def exists_in(self, view: Any, lease_id: int) -> bool:
        return view.lease_exists(lease_id)


class Applier:
    """Applies KV requests. `view` arguments offer `range(...)`; `txn` arguments are
    `mvcc/store.py` write txns (`range`, `put`, `delete_range`, `begin_rev`, `changed`,
    `lease_exists`)."""

    def __init__(self, leases: LeaseLookup | None = None) -> None:
        self._leases = leases or LeaseLookup()

    # -- Range -------------------------------------------------------------------------

    def range(self, view: Any, r: Any, view_rev: int | None = None) -> Any:
        """RangeResponse for `r` read from `view`; header.revision is the view's revision."""
        limit = r.limit
        if (r.sort_order != pb.RangeRequest.NONE or r.min_mod_revision or r.max_mod_revision
                or r.min_create_revision or r.max_create_revision):
            limit = 0
        if limit > 0:
            limit += 1
        rr = view.range(r.key, r.range_end, rev=max(r.revision, 0), limit=limit,
                        count_only=r.count_only)
        kvs = rr.kvs
        if r.max_mod_revision:
            kvs = [kv for kv in kvs if kv.mod_revision <= r.max_mod_revision]
        if r.min_mod_revision:
            kvs = [kv for kv in kvs if kv.mod_revision >= r.min_mod_revision]
        if r.max_create_revision:
            kvs = [kv for kv in kvs if kv.create_revision <= r.max_create_revision]
        if r.min_create_revision:
            kvs = [kv for kv in kvs if kv.create_revision >= r.min_create_revision]
        order = r.sort_order
        if r.sort_target != pb.RangeRequest.KEY and order == pb.RangeRequest.NONE:
            order = pb.RangeRequest.ASCEND
        if order != pb.RangeRequest.NONE:
            # NB: Go's sort.Sort is not stable; etcd's ties come out in an order we
            # cannot promise to copy. Stable sort keeps key order for ties.
            kvs = sorted(kvs, key=_SORT_KEYS[r.sort_target],
                         reverse=order == pb.RangeRequest.DESCEND)
        resp = pb.RangeResponse()
        if r.limit > 0 and len(kvs) > r.limit:
            kvs = kvs[:r.limit]
            resp.more = True
        resp.header.revision = view_rev if view_rev is not None else rr.rev
        resp.count = rr.count
        if kvs:
            resp.kvs.extend(kvs)
            if r.keys_only:
                for kv in resp.kvs:
                    kv.ClearField("value")
        return resp

    # -- writes -------------------------------------------------------------------------

    def put(self, txn: Any, p: Any) -> Any:
        resp = pb.PutResponse()
        value, lease = p.value, p.lease
        prev = None
        if p.ignore_value or p.ignore_lease or p.prev_kv:
            found = txn.range(p.key, b"").kvs
            prev = found[0] if found else None
        if (p.ignore_value or p.ignore_lease) and prev is None:
            raise KeyNotFoundError()
        if p.ignore_value:
            value = prev.value
        if p.ignore_lease:
            lease = prev.lease
        if p.prev_kv and prev is not None:
            resp.prev_kv.CopyFrom(prev)
        txn.put(p.key, value, lease)
        resp.header.revision = txn.begin_rev + 1
        return resp

    def delete_range(self, txn: Any, d: Any) -> Any:
        resp = pb.DeleteRangeResponse()
        deleted = txn.delete_range(d.key, d.range_end)
        if d.prev_kv and deleted:
            resp.prev_kvs.extend(deleted)
        resp.deleted = len(deleted)
        resp.header.revision = txn.begin_rev + 1 if (deleted or txn.changed) else txn.begin_rev
        return resp

    def check_put(self, view: Any, p: Any) -> None:
        """Refusals of a put, checked before anything is written (no partial txns)."""
        if p.ignore_value or p.ignore_lease:
            if not view.range(p.key, b"").kvs:
                raise KeyNotFoundError()
        if p.lease != 0 and not self._leases.exists_in(view, p.lease):
            raise LeaseNotFoundError()

    # -- Txn -----------------------------------------------------------------------------

    def txn(self, txn: Any, rt: Any, is_write: bool = True) -> Any:
        """TxnResponse for `rt` applied on `txn` (a write txn, or a read view for
        read-only txns, which must also offer `begin_rev`)."""
        path = self._compare_to_path(txn, rt)
        if is_write:
            self._check_requests(txn, rt, path, self._check_put_op)
        self._check_requests(txn, rt, path, self._check_range_op)
        resp = pb.TxnResponse()
        self._apply_txn(txn, rt, path, resp)
        resp.header.revision = txn.begin_rev + 1 if txn.changed else txn.begin_rev
        return resp

    def _compare_to_path(self, view: Any, rt: Any) -> list[bool]:
        ok = all(self._compare(view, c) for c in rt.compare)
        path = [ok]
        for op in (rt.success if ok else rt.failure):
            if op.WhichOneof("request") == "request_txn":
                path.extend(self._compare_to_path(view, op.request_txn))
        return path

    def _compare(self, view: Any, c: Any) -> bool:
        try:
            kvs = view.range(c.key, c.range_end).kvs
        except (CompactedError, FutureRevError):
            return False
        if not kvs:
            if c.target == pb.Compare.VALUE:
                return False
            return self._compare_kv(c, None)
        return all(self._compare_kv(c, kv) for kv in kvs)

    @staticmethod
    def _compare_kv(c: Any, kv: Any) -> bool:
        kv_field, union_field = _COMPARE_FIELDS[c.target]
        is_bytes = c.target == pb.Compare.VALUE
        zero: Any = b"" if is_bytes else 0
        have = getattr(kv, kv_field) if kv is not None else zero
        want = getattr(c, union_field) if c.WhichOneof("target_union") == union_field else zero
        check = _RESULTS.get(c.result)
        if check is None:
            return True
        return check((have > want) - (have < want))

    def _check_requests(self, view: Any, rt: Any, path: list[bool],
                        check: Callable[[Any, Any], None]) -> int:
        count = 0
        ops = rt.success if path[0] else rt.failure
        for op in ops:
            if op.WhichOneof("request") == "request_txn":
                n = self._check_requests(view, op.request_txn, path[1:], check)
                count += n + 1
                path = path[n + 1:]
                continue
            check(view, op)
        return count

    def _check_put_op(self, view: Any, op: Any) -> None:
        if op.WhichOneof("request") == "request_put":
            self.check_put(view, op.request_put)

    @staticmethod
    def _check_range_op(view: Any, op: Any) -> None:
        if op.WhichOneof("request") != "request_range":
            return
        rev = op.request_range.revision
        if rev == 0:
            return
        if rev > view.current_rev:
            raise FutureRevError()
        if rev < view.compact_rev:
            raise CompactedError()

    def _apply_txn(self, txn: Any, rt: Any, path: list[bool], resp: Any) -> int:
        resp.succeeded = path[0]
        count = 0
        for op in (rt.success if path[0] else rt.failure):
            kind = op.WhichOneof("request")
            out = resp.responses.add()
            if kind == "request_range":
                rev = txn.begin_rev + 1 if txn.changed else txn.begin_rev
                out.response_range.CopyFrom(self.range(txn, op.request_range, view_rev=rev))
            elif kind == "request_put":
                out.response_put.CopyFrom(self.put(txn, op.request_put))
            elif kind == "request_delete_range":
                out.response_delete_range.CopyFrom(
                    self.delete_range(txn, op.request_delete_range))
            elif kind == "request_txn":
                sub = out.response_txn
                sub.header.SetInParent()   # NB: etcd leaves a nested txn's header empty
                n = self._apply_txn(txn, op.request_txn, path[1:], sub)
                count += n + 1
                path = path[n + 1:]
        return count
