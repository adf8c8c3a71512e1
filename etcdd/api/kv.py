"""The v3 KV service: Range, Put, DeleteRange, Txn, Compact.

Shell-free glue: decodes nothing itself (the transport parses), validates as etcd 3.4
`etcdserver/api/v3rpc/key.go` does, calls the member, fills the response header as
`v3rpc/header.go` does.
"""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from etcdd.api.router import CallContext, Router
from etcdd.proto import rpc_pb2 as pb
from etcdd.server import validate
from etcdd.server.quota import NO_QUOTA, QuotaGuard


class HeaderFiller:
    """etcd's v3rpc header.go: cluster_id, member_id, raft_term always; revision only
    when the applier left it 0."""

    def __init__(self, member: Any, store: Any) -> None:
        self._member = member
        self._store = store
        self._cluster_id = member.identity.cluster_id
        self._member_id = member.identity.member_id

    def fill(self, resp: Any) -> Any:
        self.fill_without_revision(resp)
        if resp.header.revision == 0:
            resp.header.revision = self._store.current_revision()
        return resp

    def raft_term(self) -> int:
        return self._member.term

    def fill_identity(self, header: Any) -> None:
        """Set a ResponseHeader's cluster and member IDs."""
        header.cluster_id = self._cluster_id
        header.member_id = self._member_id

    def fill_without_revision(self, resp: Any) -> Any:
        header = resp.header
        header.cluster_id = self._cluster_id
        header.member_id = self._member_id
        header.raft_term = self._member.term
        return resp


def _then(result: Any, fn: Any) -> Any:
    """`fn(result)`, now for a ready answer or later for a Deferred one."""
    if isinstance(result, Deferred):
        return result.addCallback(fn)
    return fn(result)


def is_read_only(req: Any) -> bool:
    """Whether a TxnRequest only reads (then it is served without raft)."""
    return all(op.WhichOneof("request") == "request_range"
               for op in (*req.success, *req.failure))


class KVService:
    """Handlers for /etcdserverpb.KV/*."""

    def __init__(self, member: Any, header: HeaderFiller, max_txn_ops: int,
                 quota: QuotaGuard | None = None) -> None:
        self._member = member
        self._fill = header.fill
        self._max_txn_ops = max_txn_ops
        self._quota = quota or NO_QUOTA

    def register(self, router: Router) -> None:
        router.add_unary("/etcdserverpb.KV/Range", pb.RangeRequest, self.range)
        router.add_unary("/etcdserverpb.KV/Put", pb.PutRequest, self.put)
        router.add_unary("/etcdserverpb.KV/DeleteRange", pb.DeleteRangeRequest,
                         self.delete_range)
        router.add_unary("/etcdserverpb.KV/Txn", pb.TxnRequest, self.txn)
        router.add_unary("/etcdserverpb.KV/Compact", pb.CompactionRequest, self.compact)

    def range(self, req: Any, context: CallContext) -> Any:
        validate.check_range(req)
        return _then(self._member.range(req), self._fill)

    def put(self, req: Any, context: CallContext) -> Any:
        # etcd 3.4 v3rpc/quota.go: the quota is checked before the request is validated
        refused = self._quota.check_put(req)
        if refused is not None:
            return refused
        validate.check_put(req)
        return self._member.propose("put", req).addCallback(self._fill)

    def delete_range(self, req: Any, context: CallContext) -> Any:
        validate.check_delete(req)
        return self._member.propose("delete_range", req).addCallback(self._fill)

    def txn(self, req: Any, context: CallContext) -> Any:
        refused = self._quota.check_txn(req)
        if refused is not None:
            return refused
        validate.check_txn(req, self._max_txn_ops)
        validate.check_txn_intervals(req)
        if is_read_only(req):
            return _then(self._member.read_txn(req), self._fill)
        return self._member.propose("txn", req).addCallback(self._fill)

    def compact(self, req: Any, context: CallContext) -> Any:
        return self._member.compact(req).addCallback(self._fill)
