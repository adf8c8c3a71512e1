"""The backend quota (`etcdd/server/quota.py`) against etcd 3.4 `etcdserver/quota.go` and
`v3rpc/quota.go`, and the services that check it (`api/kv.py`, `api/lease.py`) and list
alarms (`api/maintenance.py` Alarm and Status) on a real single Member.

The backend size is a number the test sets; time is a Clock.
"""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from etcdd.api.kv import HeaderFiller, KVService
from etcdd.api.lease import LeaseService
from etcdd.api.maintenance import MaintenanceService
from etcdd.api.router import CallContext
from etcdd.api.rpctypes import Status, status_for
from etcdd.mvcc.errors import DatabaseSpaceExceededError
from etcdd.proto import rpc_pb2 as pb
from etcdd.server.errors import EmptyKeyError, RequestTimeoutError
from etcdd.server.quota import (MAX_WAITING, SIZE_REFRESH_SECONDS, UNLIMITED_MAP_BYTES,
                                QuotaGuard, backend_map_bytes, put_cost, txn_cost)
from tests.unit.members import IDENTITY, SingleMember
from tests.unit.stores import open_store

ME = IDENTITY.member_id
CTX = CallContext(path="/etcdserverpb.KV/Put")
MiB = 1 << 20


def put_op(key: bytes, value: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))


def del_op(key: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))


class FakeAlarms:
    """The one question the guard asks an AlarmSet."""

    def __init__(self) -> None:
        self.active: set[tuple[int, int]] = set()

    def has(self, member_id: int, alarm: int) -> bool:
        return (member_id, alarm) in self.active


class CostTests(SynchronousTestCase):

    def test_put_cost(self) -> None:
        """A put costs 256 + len(key) + len(value) (etcd kvOverhead)."""
        self.assertEqual(put_cost(pb.PutRequest(key=b"abc", value=b"x" * 1000)), 1259)

    def test_txn_cost_is_the_costlier_branch(self) -> None:
        """A txn costs the larger branch's puts; reads and deletes cost nothing; a nested
        txn's puts count (etcd 3.4 counts only top-level puts)."""
        self.assertEqual(txn_cost(pb.TxnRequest(success=[put_op(b"a"), put_op(b"b", b"xy")],
                                                failure=[put_op(b"c")])), 257 + 259)
        self.assertEqual(txn_cost(pb.TxnRequest(success=[del_op(b"a")],
                                                failure=[put_op(b"cc")])), 258)
        self.assertEqual(txn_cost(pb.TxnRequest(success=[del_op(b"a")])), 0)
        nested = pb.RequestOp(request_txn=pb.TxnRequest(failure=[put_op(b"n")]))
        self.assertEqual(txn_cost(pb.TxnRequest(success=[nested, put_op(b"a")])), 514)

    def test_map_size_leaves_room_past_the_quota(self) -> None:
        """The LMDB map holds twice the quota plus every write in flight, never less than
        the minimum; without a quota it is the large unlimited map."""
        self.assertEqual(backend_map_bytes(2 << 30, MiB, 5000, 8 << 30), (4 << 30) + 5000 * MiB)
        self.assertEqual(backend_map_bytes(16 * MiB, MiB, 10, 8 << 30), 8 << 30)
        self.assertEqual(backend_map_bytes(None, MiB, 5000, 8 << 30), UNLIMITED_MAP_BYTES)


class QuotaGuardTests(SynchronousTestCase):
    """A guard with a quota of 1 MiB over a settable size and a recording proposer."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.size = 0
        self.size_reads = 0
        self.alarms = FakeAlarms()
        self.proposed: list[tuple[str, Any, Deferred]] = []
        self.guard = QuotaGuard(MiB, self.read_size, self.alarms, ME, self.propose, self.clock)

    def read_size(self) -> int:
        self.size_reads += 1
        return self.size

    def propose(self, kind: str, req: Any) -> Deferred:
        d: Deferred = Deferred()
        self.proposed.append((kind, req, d))
        return d

    def test_fits_below_the_quota(self) -> None:
        """A write fits while size + cost stays below the quota; at the quota it does not."""
        self.size = MiB - 300
        self.assertIsNone(self.guard.check(299))
        self.assertIsNotNone(self.guard.check(300))

    def test_refusal_raises_the_alarm_once_then_fails(self) -> None:
        """Refused writes wait for one ACTIVATE{me, NOSPACE} proposal and fail with
        `database space exceeded` once it is applied."""
        self.size = MiB
        refused = [self.guard.check_put(pb.PutRequest(key=b"k")),
                   self.guard.check_lease_grant(pb.LeaseGrantRequest(TTL=5))]
        [(kind, req, d)] = self.proposed
        self.assertEqual((kind, req), ("alarm", pb.AlarmRequest(
            action=pb.AlarmRequest.ACTIVATE, memberID=ME, alarm=pb.NOSPACE)))
        for r in refused:
            self.assertNoResult(r)
        self.alarms.active.add((ME, pb.NOSPACE))
        d.callback(pb.AlarmResponse())
        for r in refused:
            self.failureResultOf(r, DatabaseSpaceExceededError)
        self.assertFalse(self.guard.raising)

    def test_no_proposal_while_my_alarm_is_active(self) -> None:
        """With this member's NOSPACE alarm active a refusal fails at once, unproposed;
        another member's alarm does not count."""
        self.size = MiB
        self.alarms.active.add((ME + 1, pb.NOSPACE))
        self.assertNoResult(self.guard.check(1))
        self.assertEqual(len(self.proposed), 1)
        self.alarms.active.add((ME, pb.NOSPACE))
        self.failureResultOf(self.guard.check(1), DatabaseSpaceExceededError)
        self.assertEqual(len(self.proposed), 1)

    def test_failed_activation_still_refuses_and_retries_later(self) -> None:
        """When the activation fails (a timeout) the waiting write fails with `database
        space exceeded` all the same, and the next refusal proposes again."""
        self.size = MiB
        refused = self.guard.check(1)
        self.proposed[0][2].errback(RequestTimeoutError())
        self.failureResultOf(refused, DatabaseSpaceExceededError)
        self.assertNoResult(self.guard.check(1))
        self.assertEqual(len(self.proposed), 2)

    def test_waiting_writes_are_bounded(self) -> None:
        """Past MAX_WAITING writes waiting for the activation, refusals fail at once."""
        self.size = MiB
        waiting = [self.guard.check(1) for _ in range(MAX_WAITING)]
        self.failureResultOf(self.guard.check(1), DatabaseSpaceExceededError)
        self.proposed[0][2].callback(pb.AlarmResponse())
        for d in waiting:
            self.failureResultOf(d, DatabaseSpaceExceededError)

    def test_size_is_read_at_most_once_per_refresh_interval(self) -> None:
        """The backend file's size is read again only once SIZE_REFRESH_SECONDS passed."""
        for _ in range(3):
            self.guard.check(1)
        self.assertEqual(self.size_reads, 1)
        self.size = MiB
        self.assertIsNone(self.guard.check(1))
        self.clock.advance(SIZE_REFRESH_SECONDS)
        self.assertIsNotNone(self.guard.check(1))
        self.assertEqual(self.size_reads, 2)

    def test_free_requests_and_no_quota_never_read_the_size(self) -> None:
        """A write of cost 0 (a txn without puts) and any write without a quota pass
        without a look at the backend."""
        self.assertIsNone(self.guard.check_txn(pb.TxnRequest(success=[del_op(b"k")])))
        unlimited = QuotaGuard(None, self.read_size, self.alarms, ME, self.propose, self.clock)
        self.assertIsNone(unlimited.check_put(pb.PutRequest(key=b"k", value=b"v" * MiB)))
        self.assertIsNone(unlimited.check_txn(pb.TxnRequest(success=[put_op(b"k")])))
        self.assertEqual((self.size_reads, self.proposed), (0, []))


class ServiceQuotaTests(SynchronousTestCase):
    """KV, Lease and Maintenance on a real single member with a 1 MiB quota."""

    def setUp(self) -> None:
        self.store = open_store(self)
        self.single = SingleMember(self, self.store).start()
        self.member = self.single.member
        self.size = 0
        header = HeaderFiller(self.member, self.store)
        quota = QuotaGuard(MiB, lambda: self.size, self.member.alarms, ME,
                           self.member.propose, self.single.clock)
        self.kv = KVService(self.member, header, 128, quota)
        self.lease = LeaseService(None, header, quota)
        self.maintenance = MaintenanceService(self.member, self.store, self.store.backend,
                                              header, self.single.cluster)

    def answer(self, d: Any) -> Any:
        """Let the member apply what this call proposed; the result or the Failure."""
        if not isinstance(d, Deferred):
            return d
        self.single.settle()
        self.single.clock.advance(SIZE_REFRESH_SECONDS)
        results: list[Any] = []
        d.addBoth(results.append)
        [result] = results
        return result

    def put(self, key: bytes = b"k", value: bytes = b"v") -> Any:
        return self.answer(self.kv.put(pb.PutRequest(key=key, value=value), CTX))

    def alarm(self, action: int, **kw: Any) -> Any:
        return self.answer(self.maintenance.alarm(pb.AlarmRequest(action=action, **kw), CTX))

    def assert_no_space(self, result: Any) -> None:
        self.assertEqual(status_for(result.value), (
            Status.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded"))

    def test_over_quota_raises_the_alarm_everywhere_it_shows(self) -> None:
        """A put over the quota fails with etcd's ResourceExhausted; the NOSPACE alarm is
        then listed by Alarm GET and in Status errors (etcd's text), and lease grants
        fail too."""
        self.size = MiB - 300
        self.assertEqual(self.put().header.revision, 2)
        self.assert_no_space(self.put(value=b"x" * 100))
        mine = pb.AlarmMember(memberID=ME, alarm=pb.NOSPACE)
        self.assertEqual(self.alarm(pb.AlarmRequest.GET), pb.AlarmResponse(alarms=[mine]))
        status = self.answer(self.maintenance.status(pb.StatusRequest(), CTX))
        self.assertEqual(list(status.errors), [f"memberID:{ME} alarm:NOSPACE "])
        self.size = MiB
        self.assert_no_space(self.answer(self.lease.grant(pb.LeaseGrantRequest(TTL=5), CTX)))

    def test_the_cap_holds_below_the_quota_until_disarmed(self) -> None:
        """After defrag brought the size down, puts stay refused by the capped applier
        until the alarm is deactivated (which answers the alarm it removed)."""
        self.size = MiB
        self.assert_no_space(self.put())
        self.size = 0
        self.assert_no_space(self.put())
        txn = pb.TxnRequest(success=[del_op(b"k")])
        self.assertTrue(self.answer(self.kv.txn(txn, CTX)).succeeded)
        removed = self.alarm(pb.AlarmRequest.DEACTIVATE, memberID=ME, alarm=pb.NOSPACE)
        self.assertEqual(list(removed.alarms), [pb.AlarmMember(memberID=ME, alarm=pb.NOSPACE)])
        self.assertEqual(self.put().header.revision, 2)
        self.assertEqual(self.alarm(pb.AlarmRequest.GET).alarms, [])

    def test_quota_is_checked_before_validation(self) -> None:
        """As etcd's quotaKVServer, an over-quota put is refused for space even when it
        would fail validation; under the quota validation answers."""
        self.size = MiB
        self.assert_no_space(self.answer(self.kv.put(pb.PutRequest(), CTX)))
        self.size = 0
        self.single.clock.advance(SIZE_REFRESH_SECONDS)
        self.assertRaises(EmptyKeyError, self.kv.put, pb.PutRequest(), CTX)

    def test_status_without_alarms(self) -> None:
        """With no alarm active Status lists no errors."""
        self.assertEqual(list(self.answer(self.maintenance.status(pb.StatusRequest(),
                                                                  CTX)).errors), [])
