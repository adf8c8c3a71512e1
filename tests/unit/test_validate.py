"""Request validation before proposing (`etcdd/server/validate.py`) against etcd 3.4
`etcdserver/api/v3rpc/key.go`: checkPutRequest, checkTxnRequest and checkIntervals.

The tables port etcd 3.4 `integration/v3_grpc_test.go` (TestV3TxnTooManyOps,
TestV3TxnDuplicateKeys, TestV3PutIgnoreValue, TestV3PutIgnoreLease) as facts.
"""
from __future__ import annotations

from typing import Any, Sequence

from twisted.trial.unittest import SynchronousTestCase

from etcdd.proto import rpc_pb2 as pb
from etcdd.server import validate
from etcdd.server.errors import (DuplicateKeyError, EmptyKeyError, KeyNotFoundError,
                                 LeaseProvidedError, TooManyOpsError, ValueProvidedError)


def put_op(key: bytes, value: bytes = b"v") -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))


def del_op(key: bytes, range_end: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key,
                                                                   range_end=range_end))


def range_op(key: bytes, range_end: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key, range_end=range_end))


def txn_op(success: Sequence[Any] = (), failure: Sequence[Any] = (),
           compare: Sequence[Any] = ()) -> pb.RequestOp:
    return pb.RequestOp(request_txn=pb.TxnRequest(compare=list(compare), success=list(success),
                                                  failure=list(failure)))


def cmp(key: bytes) -> pb.Compare:
    return pb.Compare(key=key, target=pb.Compare.CREATE, result=pb.Compare.GREATER)


class SingleRequestTests(SynchronousTestCase):

    def test_range_without_key_is_refused(self) -> None:
        """A Range with an empty key is refused with EmptyKeyError."""
        self.assertRaises(EmptyKeyError, validate.check_range, pb.RangeRequest(range_end=b"z"))

    def test_range_with_key_passes(self) -> None:
        """A Range naming a key passes."""
        validate.check_range(pb.RangeRequest(key=b"a", range_end=b"\x00"))

    def test_delete_without_key_is_refused(self) -> None:
        """A DeleteRange with an empty key is refused with EmptyKeyError."""
        self.assertRaises(EmptyKeyError, validate.check_delete,
                          pb.DeleteRangeRequest(range_end=b"\x00"))

    def test_put_without_key_is_refused(self) -> None:
        """A Put with an empty key is refused with EmptyKeyError."""
        self.assertRaises(EmptyKeyError, validate.check_put, pb.PutRequest(value=b"v"))

    def test_put_empty_key_is_checked_before_the_flags(self) -> None:
        """An empty key is reported before ignore_value/ignore_lease conflicts."""
        req = pb.PutRequest(value=b"v", ignore_value=True, lease=7, ignore_lease=True)
        self.assertRaises(EmptyKeyError, validate.check_put, req)

    def test_ignore_value_with_a_value_is_refused(self) -> None:
        """ignore_value together with a non-empty value is refused with ValueProvidedError."""
        req = pb.PutRequest(key=b"foo", value=b"bar", ignore_value=True)
        self.assertRaises(ValueProvidedError, validate.check_put, req)

    def test_ignore_value_without_a_value_passes(self) -> None:
        """ignore_value with an empty value passes validation (the applier checks the key)."""
        validate.check_put(pb.PutRequest(key=b"foo", ignore_value=True, lease=5))

    def test_ignore_lease_with_a_lease_is_refused(self) -> None:
        """ignore_lease together with a non-zero lease is refused with LeaseProvidedError."""
        req = pb.PutRequest(key=b"foo", value=b"bar", lease=7, ignore_lease=True)
        self.assertRaises(LeaseProvidedError, validate.check_put, req)

    def test_ignore_lease_without_a_lease_passes(self) -> None:
        """ignore_lease with lease 0 passes validation, whatever the value."""
        validate.check_put(pb.PutRequest(key=b"foo", value=b"bar", ignore_lease=True))

    def test_value_provided_is_checked_before_lease_provided(self) -> None:
        """With both conflicts, ValueProvidedError wins, as checkPutRequest orders them."""
        req = pb.PutRequest(key=b"k", value=b"v", ignore_value=True, lease=1, ignore_lease=True)
        self.assertRaises(ValueProvidedError, validate.check_put, req)


class TxnOpsTests(SynchronousTestCase):
    """TestV3TxnTooManyOps with maxTxnOps = 128: 129 of any kind is too many."""

    MAX = 128

    def test_too_many_compares(self) -> None:
        """A txn with max_txn_ops + 1 compares is refused with TooManyOpsError."""
        req = pb.TxnRequest(compare=[cmp(b"key-%d" % i) for i in range(self.MAX + 1)])
        self.assertRaises(TooManyOpsError, validate.check_txn, req, self.MAX)

    def test_too_many_success_ops(self) -> None:
        """A txn with max_txn_ops + 1 success ops is refused with TooManyOpsError."""
        req = pb.TxnRequest(success=[put_op(b"key-%d" % i) for i in range(self.MAX + 1)])
        self.assertRaises(TooManyOpsError, validate.check_txn, req, self.MAX)

    def test_too_many_failure_ops(self) -> None:
        """A txn with max_txn_ops + 1 failure ops is refused with TooManyOpsError."""
        req = pb.TxnRequest(failure=[put_op(b"key-%d" % i) for i in range(self.MAX + 1)])
        self.assertRaises(TooManyOpsError, validate.check_txn, req, self.MAX)

    def test_too_many_nested_txns(self) -> None:
        """max_txn_ops + 1 nested txns of one put each are too many."""
        req = pb.TxnRequest(success=[txn_op([put_op(b"key-%d" % i)])
                                     for i in range(self.MAX + 1)])
        self.assertRaises(TooManyOpsError, validate.check_txn, req, self.MAX)

    def test_exactly_max_ops_in_every_list_passes(self) -> None:
        """max_txn_ops compares, success ops and failure ops together pass: the limit is
        on the longest list, not their sum."""
        req = pb.TxnRequest(compare=[cmp(b"c-%d" % i) for i in range(self.MAX)],
                            success=[put_op(b"s-%d" % i) for i in range(self.MAX)],
                            failure=[put_op(b"f-%d" % i) for i in range(self.MAX)])
        validate.check_txn(req, self.MAX)

    def test_nested_txn_gets_the_remaining_budget(self) -> None:
        """A nested txn may use max_txn_ops minus its parent's longest list, no more."""
        inner_ok = txn_op([put_op(b"a"), put_op(b"b")])
        validate.check_txn(pb.TxnRequest(success=[put_op(b"x"), inner_ok]), 4)
        inner_big = txn_op([put_op(b"a"), put_op(b"b"), put_op(b"c")])
        self.assertRaises(TooManyOpsError, validate.check_txn,
                          pb.TxnRequest(success=[put_op(b"x"), inner_big]), 4)

    def test_parent_compares_count_against_the_nested_budget(self) -> None:
        """The parent's compare list, when longest, sets the budget its nested txns get."""
        inner = txn_op([put_op(b"a"), put_op(b"b")])
        req = pb.TxnRequest(compare=[cmp(b"c1"), cmp(b"c2"), cmp(b"c3")], success=[inner])
        self.assertRaises(TooManyOpsError, validate.check_txn, req, 4)
        req = pb.TxnRequest(compare=[cmp(b"c1"), cmp(b"c2")], success=[inner])
        validate.check_txn(req, 4)

    def test_budget_shrinks_at_every_level(self) -> None:
        """Each nesting level subtracts its own longest list from what deeper levels get."""
        deepest = txn_op([put_op(b"a"), put_op(b"b")])
        middle = txn_op([deepest, put_op(b"m")])               # uses 2, leaves 6 - 2 - 2 = 2
        validate.check_txn(pb.TxnRequest(success=[middle, put_op(b"t")]), 6)
        middle = txn_op([deepest, put_op(b"m"), put_op(b"n")])  # uses 3, leaves 1
        self.assertRaises(TooManyOpsError, validate.check_txn,
                          pb.TxnRequest(success=[middle, put_op(b"t")]), 6)

    def test_too_many_ops_is_checked_before_empty_compare_keys(self) -> None:
        """An over-long txn is refused with TooManyOpsError even if a compare has no key."""
        req = pb.TxnRequest(compare=[pb.Compare()] * 3)
        self.assertRaises(TooManyOpsError, validate.check_txn, req, 2)

    def test_compare_without_key_is_refused(self) -> None:
        """A compare with an empty key is refused with EmptyKeyError."""
        req = pb.TxnRequest(compare=[cmp(b"a"), pb.Compare(range_end=b"z")])
        self.assertRaises(EmptyKeyError, validate.check_txn, req, 128)

    def test_ops_are_checked_in_both_branches(self) -> None:
        """Each op of success and failure is checked as its single request would be."""
        cases = [
            (pb.TxnRequest(success=[range_op(b"")]), EmptyKeyError),
            (pb.TxnRequest(failure=[del_op(b"")]), EmptyKeyError),
            (pb.TxnRequest(failure=[pb.RequestOp(request_put=pb.PutRequest(
                key=b"k", value=b"v", ignore_value=True))]), ValueProvidedError),
            (pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(
                key=b"k", lease=3, ignore_lease=True))]), LeaseProvidedError),
            (pb.TxnRequest(success=[txn_op(failure=[put_op(b"")])]), EmptyKeyError),
        ]
        for req, error in cases:
            self.assertRaises(error, validate.check_txn, req, 128)

    def test_empty_request_op_is_key_not_found(self) -> None:
        """An empty RequestOp, at any depth and in either branch, is refused with
        KeyNotFoundError, as etcd's checkRequestOp default case."""
        for req in (pb.TxnRequest(success=[pb.RequestOp()]),
                    pb.TxnRequest(failure=[put_op(b"a"), pb.RequestOp()]),
                    pb.TxnRequest(success=[txn_op([pb.RequestOp()])])):
            self.assertRaises(KeyNotFoundError, validate.check_txn, req, 128)

    def test_empty_txn_passes(self) -> None:
        """A txn with no compares and no ops passes."""
        validate.check_txn(pb.TxnRequest(), 128)


# TestV3TxnDuplicateKeys' requests.
PUT = put_op(b"abc", b"def")
DEL_KEY = del_op(b"abc")
DEL_IN_RANGE = del_op(b"a", b"b")
DEL_OUT_OF_RANGE = del_op(b"abb", b"abc")
TXN_DEL = txn_op([DEL_IN_RANGE])
TXN_DEL_TWO_SIDE = txn_op([DEL_IN_RANGE], [DEL_IN_RANGE])
TXN_PUT = txn_op([PUT])
TXN_PUT_TWO_SIDE = txn_op([PUT], [PUT])


class IntervalTests(SynchronousTestCase):

    def assert_duplicate(self, success: list[Any]) -> None:
        self.assertRaises(DuplicateKeyError, validate.check_txn_intervals,
                          pb.TxnRequest(success=success))

    def assert_allowed(self, success: list[Any]) -> None:
        validate.check_txn_intervals(pb.TxnRequest(success=success))

    def test_etcd_duplicate_key_table(self) -> None:
        """Every case of etcd's TestV3TxnDuplicateKeys gets etcd's answer."""
        table = [
            ([PUT, PUT], DuplicateKeyError),
            ([PUT, DEL_KEY], DuplicateKeyError),
            ([PUT, DEL_IN_RANGE], DuplicateKeyError),
            # Then(Put(a), Then(Del(a)))
            ([PUT, TXN_DEL], DuplicateKeyError),
            # Then(Del(a), Then(Put(a)))
            ([DEL_IN_RANGE, TXN_PUT], DuplicateKeyError),
            # Then((Then(Put(a)), Else(Put(a))), (Then(Put(a)), Else(Put(a))))
            ([TXN_PUT_TWO_SIDE, TXN_PUT_TWO_SIDE], DuplicateKeyError),
            # Then(Del(x), (Then(Put(a)), Else(Put(a))))
            ([DEL_OUT_OF_RANGE, TXN_PUT_TWO_SIDE], None),
            # Then(Then(Del(a)), (Then(Del(a)), Else(Del(a))))
            ([TXN_DEL, TXN_DEL_TWO_SIDE], None),
            ([DEL_KEY, DEL_IN_RANGE, DEL_KEY, DEL_IN_RANGE], None),
            ([PUT, DEL_OUT_OF_RANGE], None),
        ]
        for i, (success, error) in enumerate(table):
            try:
                validate.check_txn_intervals(pb.TxnRequest(success=success))
            except DuplicateKeyError:
                got: type[Exception] | None = DuplicateKeyError
            else:
                got = None
            self.assertEqual(got, error, f"case #{i}")

    def test_same_key_in_then_and_else_of_a_nested_txn_is_allowed(self) -> None:
        """A nested txn may put one key in both branches: only one branch runs."""
        self.assert_allowed([TXN_PUT_TWO_SIDE])

    def test_else_put_of_a_key_an_earlier_sibling_put_is_refused(self) -> None:
        """A nested else-branch put of a key an earlier nested txn puts is a duplicate."""
        self.assert_duplicate([TXN_PUT, txn_op(failure=[PUT])])

    def test_put_and_covering_delete_range_are_refused(self) -> None:
        """A put and a delete-range [a, b) covering its key in one branch are duplicates."""
        self.assert_duplicate([DEL_IN_RANGE, PUT])
        self.assert_duplicate([put_op(b"a"), DEL_IN_RANGE])

    def test_delete_range_end_is_exclusive(self) -> None:
        """A delete-range [a, b) does not cover the key b itself."""
        self.assert_allowed([put_op(b"b"), DEL_IN_RANGE])

    def test_delete_with_nul_range_end_covers_nothing(self) -> None:
        """A delete with range_end b"\\x00" ("every key from") conflicts with no put, as
        etcd's affine interval [key, "\\x00") is empty."""
        # NB: etcd 3.4 checkIntervals builds NewStringAffineInterval(key, "\x00"), and only
        # "" is +infinity there, so "from key" deletes never collide with a put.
        self.assert_allowed([put_op(b"abc"), del_op(b"a", b"\x00")])
        self.assert_allowed([del_op(b"abc", b"\x00"), put_op(b"abc")])
        self.assert_allowed([put_op(b"abc"), txn_op([del_op(b"a", b"\x00")])])

    def test_ranges_do_not_count_as_writes(self) -> None:
        """A range over a key written in the same branch is no duplicate."""
        self.assert_allowed([PUT, range_op(b"abc"), range_op(b"a", b"b")])

    def test_deep_nested_put_under_a_top_level_delete_is_refused(self) -> None:
        """A put two txns deep collides with a delete at the top level covering it."""
        self.assert_duplicate([DEL_IN_RANGE, txn_op([txn_op([PUT])])])

    def test_nested_delete_then_later_sibling_put_is_refused(self) -> None:
        """A nested txn's deletes collide with the puts of later nested siblings."""
        self.assert_duplicate([TXN_DEL, TXN_PUT])

    def test_nested_put_then_later_sibling_delete_is_allowed(self) -> None:
        """A nested txn's puts are checked only against earlier siblings' deletes."""
        # NB: etcd 3.4 checkIntervals unions a nested txn's deletes after checking its
        # puts, so the order of sibling txns matters; we copy it.
        self.assert_allowed([TXN_PUT, TXN_DEL])

    def test_failure_branch_is_checked(self) -> None:
        """The failure branch is checked for duplicates like the success branch."""
        self.assertRaises(DuplicateKeyError, validate.check_txn_intervals,
                          pb.TxnRequest(failure=[PUT, PUT]))

    def test_branches_of_the_top_level_txn_are_independent(self) -> None:
        """A key put in the top-level success branch may be put again in its failure."""
        validate.check_txn_intervals(pb.TxnRequest(success=[PUT],
                                                   failure=[PUT, DEL_OUT_OF_RANGE]))
