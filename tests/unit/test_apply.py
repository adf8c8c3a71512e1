"""The applier (`etcdd/server/apply.py`) on a real KVStore against etcd 3.4
`etcdserver/apply.go`: Range's sort/filter/limit/more/count rules, Put and DeleteRange
answers, Txn compares, paths and header revisions.

Tables port etcd 3.4 `integration/v3_grpc_test.go` (TestV3TxnRangeCompare,
TestV3TxnNestedPath, TestV3TxnRevision, TestV3DeleteRange, TestV3PutIgnoreValue,
TestV3PutIgnoreLease, TestV3PutMissingLease, TestV3TxnInvalidRange) as facts.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Sequence

from twisted.trial.unittest import SynchronousTestCase

from etcdd.mvcc.errors import CompactedError, FutureRevError
from etcdd.proto import rpc_pb2 as pb
from etcdd.server.apply import Applier, LeaseLookup
from etcdd.server.errors import KeyNotFoundError, LeaseNotFoundError
from tests.unit.stores import open_store

R = pb.RangeRequest


def put_op(key: bytes, value: bytes = b"v", **kw: Any) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, **kw))


def del_op(key: bytes, range_end: bytes = b"", **kw: Any) -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key,
                                                                   range_end=range_end, **kw))


def range_op(key: bytes, range_end: bytes = b"", **kw: Any) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key, range_end=range_end, **kw))


def txn_op(success: Sequence[Any] = (), failure: Sequence[Any] = (),
           compare: Sequence[Any] = ()) -> pb.RequestOp:
    return pb.RequestOp(request_txn=pb.TxnRequest(compare=list(compare), success=list(success),
                                                  failure=list(failure)))


def cmp(key: bytes, target: int, result: int, range_end: bytes = b"", **union: Any
        ) -> pb.Compare:
    return pb.Compare(key=key, range_end=range_end, target=target, result=result, **union)


class AllLeases(LeaseLookup):
    """A lease lookup under which every lease exists."""

    def exists_in(self, view: Any, lease_id: int) -> bool:
        return True


class ApplyTestCase(SynchronousTestCase):
    """A fresh store in a temp dir and helpers applying requests in one batch each."""

    def setUp(self) -> None:
        self.store = open_store(self)
        self.applier = Applier()

    def write(self, fn: Callable[[Any], Any]) -> Any:
        """Run `fn(txn)` in one write txn of one batch; commit, or abort if it raises."""
        batch = self.store.write_batch()
        txn = batch.txn()
        try:
            result = fn(txn)
            txn.end()
        except BaseException:
            batch.abort()
            raise
        batch.commit()
        return result

    def put(self, key: bytes, value: bytes = b"v", **kw: Any) -> Any:
        req = pb.PutRequest(key=key, value=value, **kw)
        return self.write(lambda txn: self.applier.put(txn, req))

    def delete(self, key: bytes, range_end: bytes = b"", **kw: Any) -> Any:
        req = pb.DeleteRangeRequest(key=key, range_end=range_end, **kw)
        return self.write(lambda txn: self.applier.delete_range(txn, req))

    def txn(self, req: Any) -> Any:
        return self.write(lambda txn: self.applier.txn(txn, req))

    def range(self, req: Any) -> Any:
        return self.applier.range(self.store, req)

    def compact(self, rev: int) -> None:
        with self.store.write_batch() as batch:
            batch.schedule_compaction(rev)
        while not self.store.compact_step():
            pass

    @staticmethod
    def keys(resp: Any) -> list[bytes]:
        return [kv.key for kv in resp.kvs]


class RangeTests(ApplyTestCase):
    """Four keys, so each sort target orders them differently:

        rev 2 put a=q   rev 3 put b=y   rev 4 put c=x   rev 5 put a=z   rev 6 put d=w

        key  create  mod  version  value
        a    2       5    2        z
        b    3       3    1        y
        c    4       4    1        x
        d    6       6    1        w
    """

    def setUp(self) -> None:
        super().setUp()
        for key, value in [(b"a", b"q"), (b"b", b"y"), (b"c", b"x"), (b"a", b"z"),
                           (b"d", b"w")]:
            self.put(key, value)

    def all(self, **kw: Any) -> Any:
        return self.range(R(key=b"a", range_end=b"\x00", **kw))

    def test_plain_range_is_key_order_with_current_header(self) -> None:
        """A range answers its keys ascending, count = keys, header revision = current."""
        resp = self.all()
        self.assertEqual(self.keys(resp), [b"a", b"b", b"c", b"d"])
        self.assertEqual((resp.count, resp.more, resp.header.revision), (4, False, 6))
        a = resp.kvs[0]
        self.assertEqual((a.create_revision, a.mod_revision, a.version, a.value),
                         (2, 5, 2, b"z"))

    def test_sort_targets_and_orders(self) -> None:
        """Each sort target orders by its field, ascending or descending."""
        cases = [
            (R.KEY, R.ASCEND, [b"a", b"b", b"c", b"d"]),
            (R.KEY, R.DESCEND, [b"d", b"c", b"b", b"a"]),
            (R.CREATE, R.DESCEND, [b"d", b"c", b"b", b"a"]),
            (R.MOD, R.ASCEND, [b"b", b"c", b"a", b"d"]),
            (R.MOD, R.DESCEND, [b"d", b"a", b"c", b"b"]),
            (R.VALUE, R.ASCEND, [b"d", b"c", b"b", b"a"]),
            (R.VALUE, R.DESCEND, [b"a", b"b", b"c", b"d"]),
        ]
        for target, order, want in cases:
            self.assertEqual(self.keys(self.all(sort_target=target, sort_order=order)), want,
                             f"target={target} order={order}")

    def test_version_sort_keeps_key_order_for_ties(self) -> None:
        """Sorting by version puts the twice-written key last, ties in key order (ours:
        Go's unstable sort promises no tie order)."""
        resp = self.all(sort_target=R.VERSION, sort_order=R.ASCEND)
        self.assertEqual(self.keys(resp), [b"b", b"c", b"d", b"a"])

    def test_non_key_target_with_order_none_sorts_ascending(self) -> None:
        """A sort target other than KEY with order NONE sorts ascending by that target."""
        self.assertEqual(self.keys(self.all(sort_target=R.MOD)), [b"b", b"c", b"a", b"d"])
        self.assertEqual(self.keys(self.all(sort_target=R.VALUE)), [b"d", b"c", b"b", b"a"])

    def test_limit_sets_more_and_count_ignores_it(self) -> None:
        """limit truncates the kvs and sets `more`; `count` is every key in range."""
        resp = self.all(limit=2)
        self.assertEqual(self.keys(resp), [b"a", b"b"])
        self.assertEqual((resp.count, resp.more), (4, True))
        for limit in (4, 5):
            resp = self.all(limit=limit)
            self.assertEqual((len(resp.kvs), resp.count, resp.more), (4, 4, False))

    def test_limit_applies_after_sorting(self) -> None:
        """With a sort, limit keeps the first kvs of the sorted whole, not of key order."""
        resp = self.all(sort_target=R.MOD, sort_order=R.DESCEND, limit=2)
        self.assertEqual(self.keys(resp), [b"d", b"a"])
        self.assertEqual((resp.count, resp.more), (4, True))

    def test_revision_filters(self) -> None:
        """min/max mod and create revision filters keep the kvs inside their bounds."""
        cases = [
            ({"min_mod_revision": 4}, [b"a", b"c", b"d"]),
            ({"max_mod_revision": 4}, [b"b", b"c"]),
            ({"min_create_revision": 3}, [b"b", b"c", b"d"]),
            ({"max_create_revision": 3}, [b"a", b"b"]),
            ({"min_mod_revision": 4, "max_create_revision": 4}, [b"a", b"c"]),
        ]
        for filters, want in cases:
            resp = self.all(**filters)
            self.assertEqual(self.keys(resp), want, filters)
            self.assertEqual(resp.count, 4, "count ignores the filters")

    def test_more_is_computed_after_filters(self) -> None:
        """`more` says whether the filtered kvs exceeded the limit, not the unfiltered."""
        resp = self.all(min_mod_revision=5, limit=2)
        self.assertEqual(self.keys(resp), [b"a", b"d"])
        self.assertEqual((resp.count, resp.more), (4, False))
        resp = self.all(min_mod_revision=4, limit=2)
        self.assertEqual(self.keys(resp), [b"a", b"c"])
        self.assertEqual((resp.count, resp.more), (4, True))

    def test_count_only(self) -> None:
        """count_only answers the count with no kvs and no `more`."""
        resp = self.all(count_only=True, limit=1)
        self.assertEqual((list(resp.kvs), resp.count, resp.more), ([], 4, False))

    def test_keys_only(self) -> None:
        """keys_only drops the values and keeps every other field."""
        resp = self.all(keys_only=True)
        self.assertEqual(self.keys(resp), [b"a", b"b", b"c", b"d"])
        self.assertEqual([kv.value for kv in resp.kvs], [b""] * 4)
        self.assertEqual((resp.kvs[0].mod_revision, resp.kvs[0].version), (5, 2))

    def test_single_key_and_prefix(self) -> None:
        """An empty range_end reads one key; [key, range_end) reads a half-open range."""
        self.assertEqual(self.keys(self.range(R(key=b"c"))), [b"c"])
        self.assertEqual(self.range(R(key=b"cc")).count, 0)
        self.assertEqual(self.keys(self.range(R(key=b"b", range_end=b"d"))), [b"b", b"c"])

    def test_historical_read_reports_current_revision(self) -> None:
        """A read at an older revision sees that revision's data; the header says current."""
        resp = self.all(revision=4)
        self.assertEqual(self.keys(resp), [b"a", b"b", b"c"])
        self.assertEqual((resp.kvs[0].value, resp.kvs[0].version), (b"q", 1))
        self.assertEqual((resp.count, resp.header.revision), (3, 6))

    def test_future_and_compacted_revisions_are_refused(self) -> None:
        """A read past the current revision or below the compact revision is refused."""
        self.assertRaises(FutureRevError, self.all, revision=7)
        self.compact(4)
        self.assertRaises(CompactedError, self.all, revision=3)
        self.assertEqual(self.keys(self.all(revision=4)), [b"a", b"b", b"c"])


class PutTests(ApplyTestCase):

    def test_put_answers_the_new_revision(self) -> None:
        """A put's header revision is the revision it wrote, without prev_kv unless asked."""
        resp = self.put(b"foo", b"bar")
        self.assertEqual(resp.header.revision, 2)
        self.assertFalse(resp.HasField("prev_kv"))
        resp = self.put(b"foo", b"baz")
        self.assertEqual(resp.header.revision, 3)
        self.assertFalse(resp.HasField("prev_kv"))

    def test_prev_kv(self) -> None:
        """prev_kv returns the key's previous KeyValue, and nothing for a new key."""
        resp = self.put(b"foo", b"bar", prev_kv=True)
        self.assertFalse(resp.HasField("prev_kv"))
        resp = self.put(b"foo", b"baz", prev_kv=True)
        self.assertEqual((resp.prev_kv.key, resp.prev_kv.value, resp.prev_kv.mod_revision),
                         (b"foo", b"bar", 2))

    def test_ignore_value_keeps_the_value_and_takes_the_lease(self) -> None:
        """ignore_value rewrites the key with its old value and the request's lease."""
        self.put(b"foo", b"bar", lease=7)
        resp = self.put(b"foo", ignore_value=True)
        self.assertFalse(resp.HasField("prev_kv"))
        kv = self.range(R(key=b"foo")).kvs[0]
        self.assertEqual((kv.value, kv.lease, kv.version, kv.mod_revision), (b"bar", 0, 2, 3))

    def test_ignore_lease_keeps_the_lease_and_takes_the_value(self) -> None:
        """ignore_lease rewrites the key with its old lease and the request's value."""
        self.put(b"zoo", b"bar", lease=7)
        self.put(b"zoo", b"bar1", ignore_lease=True)
        kv = self.range(R(key=b"zoo")).kvs[0]
        self.assertEqual((kv.value, kv.lease), (b"bar1", 7))

    def test_ignore_flags_on_a_missing_key_are_refused(self) -> None:
        """ignore_value or ignore_lease on a missing key is refused and writes nothing."""
        for flags in ({"ignore_value": True}, {"ignore_lease": True}):
            self.assertRaises(KeyNotFoundError, self.put, b"foo", b"", **flags)
        self.assertEqual(self.store.current_revision(), 1)

    def test_check_put_refuses_what_put_would(self) -> None:
        """check_put refuses ignore_* on a missing key and any lease the lookup lacks."""
        self.assertRaises(KeyNotFoundError, self.applier.check_put, self.store,
                          pb.PutRequest(key=b"foo", ignore_value=True))
        self.assertRaises(LeaseNotFoundError, self.applier.check_put, self.store,
                          pb.PutRequest(key=b"foo", value=b"v", lease=123456))
        self.applier.check_put(self.store, pb.PutRequest(key=b"foo", value=b"v"))
        Applier(AllLeases()).check_put(self.store, pb.PutRequest(key=b"foo", lease=5))

    def test_check_put_accepts_ignore_flags_on_a_live_key(self) -> None:
        """check_put passes ignore_value/ignore_lease once the key exists."""
        self.put(b"foo")
        self.applier.check_put(self.store, pb.PutRequest(key=b"foo", ignore_value=True))
        self.applier.check_put(self.store, pb.PutRequest(key=b"foo", ignore_lease=True))


class DeleteRangeTests(ApplyTestCase):

    def test_etcd_delete_range_table(self) -> None:
        """Every case of etcd's TestV3DeleteRange deletes what etcd deletes."""
        table = [
            (b"foo/", b"fop", [b"foo", b"fop"], 1),       # delete middle
            (b"foo/", b"foo/", [b"foo", b"foo/abc", b"fop"], 0),   # no delete
            (b"fo", b"fop", [b"fop"], 2),                 # delete first
            (b"foo/", b"fos", [b"foo"], 2),               # delete tail
            (b"foo/abc", b"", [b"foo", b"fop"], 1),       # delete exact
        ]
        for i, (begin, end, want, deleted) in enumerate(table):
            self.delete(b"\x00", b"\x00")
            for key in (b"foo", b"foo/abc", b"fop"):
                self.put(key, b"")
            resp = self.delete(begin, end, prev_kv=True)
            self.assertEqual(resp.deleted, deleted, f"case #{i}")
            self.assertEqual(len(resp.prev_kvs), deleted, f"case #{i}")
            rresp = self.range(R(key=b"\x00", range_end=b"\xff"))
            self.assertEqual(self.keys(rresp), want, f"case #{i}")
            self.assertEqual(resp.header.revision, rresp.header.revision, f"case #{i}")

    def test_delete_answers_prev_kvs_and_new_revision(self) -> None:
        """A delete answers the count, the previous kvs when asked, and its new revision."""
        self.put(b"a", b"1")
        self.put(b"b", b"2")
        resp = self.delete(b"a", b"c", prev_kv=True)
        self.assertEqual((resp.deleted, resp.header.revision), (2, 4))
        self.assertEqual([(kv.key, kv.value) for kv in resp.prev_kvs],
                         [(b"a", b"1"), (b"b", b"2")])

    def test_delete_without_prev_kv_answers_no_kvs(self) -> None:
        """Without prev_kv a delete answers no previous kvs."""
        self.put(b"a")
        resp = self.delete(b"a")
        self.assertEqual((resp.deleted, list(resp.prev_kvs)), (1, []))

    def test_delete_of_nothing_keeps_the_revision(self) -> None:
        """A delete that matches no key answers 0 and the unchanged revision."""
        self.put(b"a")
        resp = self.delete(b"x", prev_kv=True)
        self.assertEqual((resp.deleted, list(resp.prev_kvs), resp.header.revision), (0, [], 2))
        self.assertEqual(self.store.current_revision(), 2)

    def test_delete_of_nothing_after_a_write_in_the_same_txn(self) -> None:
        """In a txn that already wrote, a delete of nothing answers the txn's new revision."""
        def both(txn: Any) -> Any:
            self.applier.put(txn, pb.PutRequest(key=b"a", value=b"v"))
            return self.applier.delete_range(txn, pb.DeleteRangeRequest(key=b"x"))
        resp = self.write(both)
        self.assertEqual((resp.deleted, resp.header.revision), (0, 2))


class CompareTests(ApplyTestCase):
    """foo: create 2, mod 3, version 2, value "bar", lease 7 (the current revision is 3)."""

    def setUp(self) -> None:
        super().setUp()
        self.put(b"foo", b"baa")
        self.put(b"foo", b"bar", lease=7)

    def succeeded(self, *compares: Any) -> bool:
        resp = self.txn(pb.TxnRequest(compare=list(compares)))
        return resp.succeeded

    def test_each_target_and_result(self) -> None:
        """Each target compares its own field with each result."""
        C = pb.Compare
        cases = [
            (C.VERSION, {"version": 2}, C.EQUAL, True),
            (C.VERSION, {"version": 1}, C.GREATER, True),
            (C.VERSION, {"version": 2}, C.LESS, False),
            (C.CREATE, {"create_revision": 2}, C.EQUAL, True),
            (C.CREATE, {"create_revision": 3}, C.LESS, True),
            (C.CREATE, {"create_revision": 2}, C.NOT_EQUAL, False),
            (C.MOD, {"mod_revision": 3}, C.EQUAL, True),
            (C.MOD, {"mod_revision": 2}, C.GREATER, True),
            (C.MOD, {"mod_revision": 3}, C.NOT_EQUAL, False),
            (C.VALUE, {"value": b"bar"}, C.EQUAL, True),
            (C.VALUE, {"value": b"baz"}, C.LESS, True),
            (C.VALUE, {"value": b"bar"}, C.GREATER, False),
            (C.VALUE, {"value": b"b"}, C.GREATER, True),
            (C.LEASE, {"lease": 7}, C.EQUAL, True),
            (C.LEASE, {"lease": 0}, C.GREATER, True),
            (C.LEASE, {"lease": 8}, C.NOT_EQUAL, True),
        ]
        for target, union, result, want in cases:
            self.assertEqual(self.succeeded(cmp(b"foo", target, result, **union)), want,
                             (target, union, result))

    def test_missing_key(self) -> None:
        """A missing key compares as a zero KeyValue, except that VALUE is always false."""
        C = pb.Compare
        cases = [
            (C.CREATE, {"create_revision": 0}, C.EQUAL, True),
            (C.VERSION, {"version": 0}, C.EQUAL, True),
            (C.MOD, {"mod_revision": 1}, C.LESS, True),
            (C.LEASE, {"lease": 0}, C.EQUAL, True),
            (C.CREATE, {"create_revision": 0}, C.GREATER, False),
            (C.VALUE, {"value": b""}, C.EQUAL, False),
            (C.VALUE, {"value": b"x"}, C.NOT_EQUAL, False),
            (C.VALUE, {"value": b"x"}, C.LESS, False),
        ]
        for target, union, result, want in cases:
            self.assertEqual(self.succeeded(cmp(b"nope", target, result, **union)), want,
                             (target, union, result))

    def test_unset_target_union_compares_with_zero(self) -> None:
        """A compare whose target_union names another field compares with the zero value."""
        C = pb.Compare
        self.assertTrue(self.succeeded(cmp(b"foo", C.VALUE, C.GREATER, create_revision=99)))
        self.assertTrue(self.succeeded(cmp(b"foo", C.MOD, C.GREATER)))
        self.assertFalse(self.succeeded(cmp(b"foo", C.MOD, C.EQUAL, value=b"3")))

    def test_all_compares_must_hold(self) -> None:
        """A txn succeeds only when every compare holds; an empty compare list holds."""
        C = pb.Compare
        true = cmp(b"foo", C.VERSION, C.EQUAL, version=2)
        false = cmp(b"foo", C.VERSION, C.EQUAL, version=3)
        self.assertTrue(self.succeeded(true, true))
        self.assertFalse(self.succeeded(true, false))
        self.assertFalse(self.succeeded(false, true))
        self.assertTrue(self.succeeded())


class RangeCompareTests(ApplyTestCase):
    """etcd's TestV3TxnRangeCompare: keys named by the revision that created them."""

    def setUp(self) -> None:
        super().setUp()
        for key in (b"/a/2", b"/a/3", b"/a/4", b"/f/5"):
            self.put(key, b"x")

    def test_etcd_range_compare_table(self) -> None:
        """Compares over a range hold only if they hold for every key in it."""
        C = pb.Compare
        table = [
            (b"/a/", b"\x00", C.CREATE, C.LESS, {"create_revision": 6}, True),
            (b"/a/", b"\x00", C.CREATE, C.LESS, {"create_revision": 5}, False),
            (b"/a/", b"/a0", C.CREATE, C.LESS, {"create_revision": 5}, True),
            (b"/a/", b"/a0", C.CREATE, C.LESS, {"create_revision": 4}, False),
            (b"/b/", b"/b0", C.VALUE, C.EQUAL, {"value": b"x"}, False),
            (b"/a/", b"/a0", C.LEASE, C.GREATER, {"lease": 0}, False),
            (b"/a/", b"/a0", C.LEASE, C.EQUAL, {"lease": 0}, True),
        ]
        for i, (key, end, target, result, union, want) in enumerate(table):
            resp = self.txn(pb.TxnRequest(compare=[cmp(key, target, result, end, **union)]))
            self.assertEqual(resp.succeeded, want, f"case #{i}")

    def test_empty_range_compares_as_a_missing_key(self) -> None:
        """A compare over a range holding no key compares a zero KeyValue."""
        C = pb.Compare
        resp = self.txn(pb.TxnRequest(compare=[
            cmp(b"/b/", C.CREATE, C.EQUAL, b"/b0", create_revision=0)]))
        self.assertTrue(resp.succeeded)


class TxnTests(ApplyTestCase):

    def setUp(self) -> None:
        super().setUp()
        self.put(b"abc", b"def")     # revision 2

    def test_txn_header_revision_moves_only_when_written(self) -> None:
        """etcd's TestV3TxnRevision: a read or an empty delete keeps the revision; a put
        moves it by one."""
        resp = self.txn(pb.TxnRequest(success=[range_op(b"abc")]))
        self.assertEqual(resp.header.revision, 2)
        resp = self.txn(pb.TxnRequest(success=[del_op(b"def")]))
        self.assertEqual(resp.header.revision, 2)
        resp = self.txn(pb.TxnRequest(success=[put_op(b"abc", b"123")]))
        self.assertEqual(resp.header.revision, 3)

    def test_every_write_of_a_txn_shares_one_revision(self) -> None:
        """All writes in a txn take the same main revision, answered by each op."""
        resp = self.txn(pb.TxnRequest(success=[put_op(b"x"), put_op(b"y"), del_op(b"abc")]))
        self.assertEqual(resp.header.revision, 3)
        self.assertEqual([r.response_put.header.revision for r in resp.responses[:2]], [3, 3])
        self.assertEqual(resp.responses[2].response_delete_range.header.revision, 3)
        self.assertEqual([kv.mod_revision for kv in self.range(
            R(key=b"x", range_end=b"z")).kvs], [3, 3])

    def test_branch_follows_the_compares(self) -> None:
        """The success ops run when the compares hold, the failure ops otherwise."""
        C = pb.Compare
        req = pb.TxnRequest(compare=[cmp(b"abc", C.VALUE, C.EQUAL, value=b"def")],
                            success=[put_op(b"then")], failure=[put_op(b"else")])
        resp = self.txn(req)
        self.assertTrue(resp.succeeded)
        self.assertEqual(len(resp.responses), 1)
        self.assertTrue(resp.responses[0].HasField("response_put"))
        req.compare[0].value = b"nope"
        resp = self.txn(req)
        self.assertFalse(resp.succeeded)
        self.assertEqual(self.keys(self.range(R(key=b"a", range_end=b"\x00"))),
                         [b"abc", b"else", b"then"])

    def test_range_in_txn_header(self) -> None:
        """A range inside a txn answers begin_rev, or begin_rev + 1 once the txn wrote,
        and sees the txn's own writes."""
        resp = self.txn(pb.TxnRequest(success=[range_op(b"abc"), put_op(b"abc", b"new"),
                                               range_op(b"abc")]))
        before, after = resp.responses[0].response_range, resp.responses[2].response_range
        self.assertEqual((before.header.revision, before.kvs[0].value), (2, b"def"))
        self.assertEqual((after.header.revision, after.kvs[0].value), (3, b"new"))

    def test_nested_txn_response_header_is_present_but_empty(self) -> None:
        """A nested txn's response carries a header with nothing in it; its ops' headers
        carry their revisions."""
        resp = self.txn(pb.TxnRequest(success=[txn_op([put_op(b"k"), range_op(b"k")])]))
        sub = resp.responses[0].response_txn
        self.assertTrue(sub.HasField("header"))
        self.assertEqual(sub.header, pb.ResponseHeader())
        self.assertTrue(sub.succeeded)
        self.assertEqual(sub.responses[0].response_put.header.revision, 3)
        self.assertEqual(sub.responses[1].response_range.header.revision, 3)
        self.assertEqual(resp.header.revision, 3)

    def test_nested_range_header_before_and_after_a_write(self) -> None:
        """A nested range answers begin_rev before the txn wrote, begin_rev + 1 after."""
        resp = self.txn(pb.TxnRequest(success=[
            txn_op([range_op(b"abc")]), put_op(b"x"), txn_op([range_op(b"abc")])]))
        first = resp.responses[0].response_txn.responses[0].response_range
        second = resp.responses[2].response_txn.responses[0].response_range
        self.assertEqual((first.header.revision, second.header.revision), (2, 3))

    def test_etcd_nested_path(self) -> None:
        """etcd's TestV3TxnNestedPath: ten nested txns each take the branch their
        compare chose, for several seeded random paths."""
        C = pb.Compare
        cmp_true = cmp(b"k", C.VERSION, C.EQUAL, version=0)
        cmp_false = cmp(b"k", C.VERSION, C.EQUAL, version=1)
        for seed in range(8):
            rnd = random.Random(seed)
            top = pb.TxnRequest()
            path = [rnd.randrange(2) == 0 for _ in range(10)]
            txn = top
            for then in path:
                op = txn.success.add() if then else txn.failure.add()
                txn.compare.append(cmp_true if then else cmp_false)
                op.request_txn.SetInParent()
                txn = op.request_txn
            resp = self.txn(top)
            for depth, then in enumerate(path):
                self.assertEqual(resp.succeeded, then, f"seed {seed} depth {depth}")
                resp = resp.responses[0].response_txn

    def test_nested_paths_with_siblings(self) -> None:
        """Sibling nested txns each follow their own compares, at every depth."""
        C = pb.Compare
        yes = cmp(b"abc", C.VERSION, C.EQUAL, version=1)
        no = cmp(b"abc", C.VERSION, C.EQUAL, version=5)
        inner = txn_op([put_op(b"i-then")], [put_op(b"i-else")], [no])
        req = pb.TxnRequest(compare=[yes], success=[
            txn_op([inner, put_op(b"a-then")], [put_op(b"a-else")], [yes]),
            txn_op([put_op(b"b-then")], [put_op(b"b-else")], [no]),
            txn_op([put_op(b"c-then")], [put_op(b"c-else")], [yes]),
        ])
        resp = self.txn(req)
        self.assertEqual([r.response_txn.succeeded for r in resp.responses],
                         [True, False, True])
        self.assertFalse(resp.responses[0].response_txn.responses[0].response_txn.succeeded)
        self.assertEqual(self.keys(self.range(R(key=b"a", range_end=b"z"))),
                         [b"a-then", b"abc", b"b-else", b"c-then", b"i-else"])

    def test_put_prev_kv_and_delete_prev_kvs_in_a_txn(self) -> None:
        """Puts and deletes in a txn answer prev_kv/prev_kvs as on their own."""
        resp = self.txn(pb.TxnRequest(success=[put_op(b"abc", b"x", prev_kv=True),
                                               del_op(b"zzz", prev_kv=True)]))
        self.assertEqual(resp.responses[0].response_put.prev_kv.value, b"def")
        dresp = resp.responses[1].response_delete_range
        self.assertEqual((dresp.deleted, list(dresp.prev_kvs), dresp.header.revision),
                         (0, [], 3))

    def test_ignore_value_on_missing_key_refuses_the_whole_txn(self) -> None:
        """An ignore_value put on a missing key in the chosen branch refuses the txn
        before any op of it is written."""
        req = pb.TxnRequest(success=[put_op(b"first"), put_op(b"foo", b"", ignore_value=True)])
        self.assertRaises(KeyNotFoundError, self.txn, req)
        nested = pb.TxnRequest(success=[put_op(b"first"),
                                        txn_op([put_op(b"foo", b"", ignore_lease=True)])])
        self.assertRaises(KeyNotFoundError, self.txn, nested)
        self.assertEqual(self.store.current_revision(), 2)
        self.assertEqual(self.range(R(key=b"first")).count, 0)

    def test_missing_lease_refuses_only_in_the_chosen_branch(self) -> None:
        """etcd's TestV3PutMissingLease: a put naming an unknown lease refuses the txn
        when its branch runs, and is ignored in the branch not taken."""
        bad = put_op(b"foo", b"v", lease=123456)
        C = pb.Compare
        false = cmp(b"bar", C.CREATE, C.GREATER)
        self.assertRaises(LeaseNotFoundError, self.txn, pb.TxnRequest(success=[bad]))
        self.assertRaises(LeaseNotFoundError, self.txn,
                          pb.TxnRequest(compare=[false], failure=[bad]))
        resp = self.txn(pb.TxnRequest(success=[range_op(b"bar")], failure=[bad]))
        self.assertTrue(resp.succeeded)
        self.assertEqual(self.range(R(key=b"foo")).count, 0)

    def test_ignore_value_in_a_txn(self) -> None:
        """An ignore_value put on a live key in a txn keeps the value and sets the lease."""
        self.applier = Applier(AllLeases())
        self.txn(pb.TxnRequest(success=[put_op(b"abc", b"", ignore_value=True, lease=9)]))
        kv = self.range(R(key=b"abc")).kvs[0]
        self.assertEqual((kv.value, kv.lease), (b"def", 9))

    def test_invalid_range_revisions_refuse_the_txn(self) -> None:
        """etcd's TestV3TxnInvalidRange: a range at a future or compacted revision refuses
        the whole txn, and its put is not applied."""
        self.put(b"foo", b"bar")
        self.put(b"foo", b"bar")
        self.compact(3)
        req = pb.TxnRequest(success=[put_op(b"foo", b"bar"), range_op(b"foo", revision=100)])
        self.assertRaises(FutureRevError, self.txn, req)
        req.success[1].request_range.revision = 1
        self.assertRaises(CompactedError, self.txn, req)
        self.assertEqual(self.store.current_revision(), 4)

    def test_range_at_begin_rev_plus_one_is_future(self) -> None:
        """A txn range may not name the revision its own writes will create."""
        req = pb.TxnRequest(success=[put_op(b"foo"), range_op(b"foo", revision=3)])
        self.assertRaises(FutureRevError, self.txn, req)

    def test_read_only_txn_on_a_read_view(self) -> None:
        """A read-only txn on a read view answers the view's revision and its ranges."""
        C = pb.Compare
        req = pb.TxnRequest(compare=[cmp(b"abc", C.VALUE, C.EQUAL, value=b"def")],
                            success=[range_op(b"abc"), range_op(b"a", b"\x00", count_only=True)])
        with self.store.read() as view:
            resp = self.applier.txn(view, req, is_write=False)
        self.assertTrue(resp.succeeded)
        self.assertEqual(resp.header.revision, 2)
        self.assertEqual(resp.responses[0].response_range.kvs[0].value, b"def")
        self.assertEqual(resp.responses[1].response_range.count, 1)
        self.assertEqual(resp.responses[1].response_range.header.revision, 2)

    def test_read_only_txn_refuses_a_future_range(self) -> None:
        """A read-only txn's range past the view's revision is refused."""
        req = pb.TxnRequest(success=[range_op(b"abc", revision=3)])
        with self.store.read() as view:
            self.assertRaises(FutureRevError, self.applier.txn, view, req, False)
