"""The v3 KV service (`etcdd/api/kv.py`) on a real Member and KVStore: response headers
as etcd 3.4 `v3rpc/header.go` fills them, read-only txns served without a proposal, and
`v3rpc/key.go` validation before anything is proposed."""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from etcdd.api.kv import HeaderFiller, KVService
from etcdd.api.router import CallContext, Router, UnaryMethod
from etcdd.proto import rpc_pb2 as pb
from etcdd.server.errors import (DuplicateKeyError, EmptyKeyError, KeyNotFoundError,
                                 LeaseProvidedError, TooManyOpsError, ValueProvidedError)
from tests.unit.members import IDENTITY, SingleMember
from tests.unit.stores import open_store

CLUSTER_ID, MEMBER_ID = IDENTITY.cluster_id, IDENTITY.member_id
CTX = CallContext(path="/etcdserverpb.KV/Txn")


def put_op(key: bytes, value: bytes = b"v") -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))


def range_op(key: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key))


class KVServiceTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.store = open_store(self)
        self.single = SingleMember(self, self.store).start()
        self.clock = self.single.clock
        self.member = self.single.member
        self.kv = KVService(self.member, HeaderFiller(self.member, self.store), max_txn_ops=4)

    def answer(self, d: Any) -> Any:
        """Let the member apply this turn's proposals (or finish its ReadIndex round) and
        return the answer."""
        if not isinstance(d, Deferred):
            return d
        self.assertNoResult(d)
        self.single.settle()
        return self.successResultOf(d)

    def put(self, key: bytes, value: bytes = b"v") -> Any:
        return self.answer(self.kv.put(pb.PutRequest(key=key, value=value), CTX))

    def assert_header(self, resp: Any, revision: int) -> None:
        self.assertEqual(resp.header, pb.ResponseHeader(
            cluster_id=CLUSTER_ID, member_id=MEMBER_ID, raft_term=2, revision=revision))

    def assert_nothing_proposed(self) -> None:
        self.single.settle()
        self.assertEqual(self.member.committed_index, 4)

    def test_register_routes_the_five_kv_methods(self) -> None:
        """register() adds etcd's five KV paths as unary methods with their request types."""
        router = Router()
        self.kv.register(router)
        want = {"Range": pb.RangeRequest, "Put": pb.PutRequest,
                "DeleteRange": pb.DeleteRangeRequest, "Txn": pb.TxnRequest,
                "Compact": pb.CompactionRequest}
        self.assertEqual(router.paths(), sorted("/etcdserverpb.KV/" + m for m in want))
        for name, request_type in want.items():
            method = router.lookup("/etcdserverpb.KV/" + name)
            self.assertIsInstance(method, UnaryMethod)
            self.assertIs(method.request_type, request_type)

    def test_put_header(self) -> None:
        """A put is answered after its batch with cluster, member, term and its revision."""
        self.assert_header(self.put(b"foo"), 2)
        self.assertEqual(self.member.committed_index, 5)

    def test_range_header(self) -> None:
        """A range is answered with the full header and the current revision (a
        serializable one at once, a linearizable one after its ReadIndex round)."""
        self.put(b"foo")
        resp = self.answer(self.kv.range(pb.RangeRequest(key=b"foo"), CTX))
        self.assert_header(resp, 2)
        self.assertEqual(resp.kvs[0].key, b"foo")
        self.assert_header(self.answer(self.kv.range(pb.RangeRequest(key=b"nope"), CTX)), 2)
        local = self.kv.range(pb.RangeRequest(key=b"foo", serializable=True), CTX)
        self.assertNotIsInstance(local, Deferred)
        self.assert_header(local, 2)
        self.assertEqual(self.member.committed_index, 5)

    def test_header_on_a_fresh_store(self) -> None:
        """Before any write the header revision is the fresh store's revision 1."""
        self.assert_header(self.answer(self.kv.range(pb.RangeRequest(key=b"foo"), CTX)), 1)
        resp = self.answer(self.kv.delete_range(pb.DeleteRangeRequest(key=b"foo"), CTX))
        self.assert_header(resp, 1)
        self.assertEqual(resp.deleted, 0)

    def test_delete_range_header(self) -> None:
        """A delete is answered with the full header and the revision it wrote."""
        self.put(b"foo")
        resp = self.answer(self.kv.delete_range(pb.DeleteRangeRequest(key=b"foo"), CTX))
        self.assert_header(resp, 3)
        self.assertEqual(resp.deleted, 1)

    def test_write_txn_is_proposed(self) -> None:
        """A txn with a write is proposed and answered with its new revision."""
        resp = self.answer(self.kv.txn(pb.TxnRequest(success=[put_op(b"a")]), CTX))
        self.assert_header(resp, 2)
        self.assertEqual(self.member.committed_index, 5)

    def test_read_only_txn_is_served_without_a_proposal(self) -> None:
        """A txn of ranges only is answered from the store after a ReadIndex round,
        taking no index."""
        self.put(b"foo", b"bar")
        req = pb.TxnRequest(compare=[pb.Compare(key=b"foo", target=pb.Compare.VALUE,
                                                result=pb.Compare.EQUAL, value=b"bar")],
                            success=[range_op(b"foo")], failure=[range_op(b"nope")])
        resp = self.answer(self.kv.txn(req, CTX))
        self.assert_header(resp, 2)
        self.assertTrue(resp.succeeded)
        self.assertEqual(resp.responses[0].response_range.kvs[0].value, b"bar")
        self.assertEqual(self.member.committed_index, 5)

    def test_txn_with_a_nested_txn_is_not_read_only(self) -> None:
        """A txn holding a nested txn is proposed even if it only reads, as etcd's
        isTxnReadonly looks at the top-level ops only."""
        req = pb.TxnRequest(success=[pb.RequestOp(request_txn=pb.TxnRequest(
            success=[range_op(b"foo")]))])
        d = self.kv.txn(req, CTX)
        self.assert_header(self.answer(d), 1)
        self.assertEqual(self.member.committed_index, 5)

    def test_compact_header(self) -> None:
        """A compaction is answered with the full header and the current revision."""
        self.put(b"foo")
        self.put(b"foo")
        resp = self.answer(self.kv.compact(pb.CompactionRequest(revision=2, physical=True),
                                           CTX))
        self.assert_header(resp, 3)
        self.assertEqual(self.store.compact_revision(), 2)

    def test_validation_errors_are_raised_before_proposing(self) -> None:
        """Requests etcd's key.go refuses raise at once and propose nothing."""
        dup = pb.TxnRequest(success=[put_op(b"a"), put_op(b"a")])
        cases = [
            (self.kv.range, pb.RangeRequest(), EmptyKeyError),
            (self.kv.put, pb.PutRequest(value=b"v"), EmptyKeyError),
            (self.kv.put, pb.PutRequest(key=b"k", value=b"v", ignore_value=True),
             ValueProvidedError),
            (self.kv.put, pb.PutRequest(key=b"k", lease=1, ignore_lease=True),
             LeaseProvidedError),
            (self.kv.delete_range, pb.DeleteRangeRequest(range_end=b"z"), EmptyKeyError),
            (self.kv.txn, pb.TxnRequest(success=[put_op(b"k%d" % i) for i in range(5)]),
             TooManyOpsError),
            (self.kv.txn, pb.TxnRequest(compare=[pb.Compare()]), EmptyKeyError),
            (self.kv.txn, pb.TxnRequest(success=[pb.RequestOp()]), KeyNotFoundError),
            (self.kv.txn, dup, DuplicateKeyError),
            (self.kv.txn, pb.TxnRequest(success=[range_op(b"")]), EmptyKeyError),
        ]
        for handler, req, error in cases:
            self.assertRaises(error, handler, req, CTX)
        self.assert_nothing_proposed()

    def test_too_many_ops_is_checked_before_duplicate_keys(self) -> None:
        """An over-long txn writing one key twice is refused as too many ops, as etcd
        checks the txn before its intervals."""
        req = pb.TxnRequest(success=[put_op(b"a")] * 5)
        self.assertRaises(TooManyOpsError, self.kv.txn, req, CTX)
        self.assert_nothing_proposed()

    def test_apply_refusal_fails_the_call(self) -> None:
        """A request that passes validation but is refused when applied fails its call."""
        d = self.kv.put(pb.PutRequest(key=b"missing", ignore_value=True), CTX)
        self.single.settle()
        self.failureResultOf(d, KeyNotFoundError)
        self.assertEqual(self.member.committed_index, 5)
