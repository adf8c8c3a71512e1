"""The backend quota (`--quota-backend-bytes`): what a write costs, and the check before
it is proposed.

Core (the backend size, the clock and the proposer are handed in). Matches etcd 3.4
`etcdserver/quota.go` and `etcdserver/api/v3rpc/quota.go`:

- A Put costs 256 + len(key) + len(value); a Txn the larger of its two branches' puts; a
  LeaseGrant 64; anything else nothing (and is never refused).
- A write is refused when backend size + cost >= quota, where the size is the backend
  file's (etcd's `Backend.Size()`). The refusing member then raises the NOSPACE alarm for
  itself through raft, and the request fails with `mvcc: database space exceeded` once
  that proposal is done (applied or failed), so a client that saw the error finds the
  alarm active. etcd proposes one activation per refused request; here one is in flight
  at a time and none once this member's alarm is active.
- 0 means the 2 GiB default (`Config.quota_bytes`), a negative quota none; above 8 GiB
  etcd warns.

NB: etcd 3.4 counts only a Txn's top-level puts, so a nested Txn that puts costs nothing
and passes both this check and the capped applier; here nested puts count.
"""
from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from etcdd.mvcc.errors import DatabaseSpaceExceededError
from etcdd.proto import rpc_pb2 as pb

KV_OVERHEAD_BYTES = 256         # etcd 3.4 quota.go kvOverhead
LEASE_OVERHEAD_BYTES = 64       # etcd 3.4 quota.go leaseOverhead
MAX_QUOTA_BYTES = 8 << 30       # etcd 3.4 quota.go MaxQuotaBytes (a warning, not a limit)
# The LMDB map without a quota: address space only, the file grows with the data.
UNLIMITED_MAP_BYTES = 64 << 30
# The backend file's size is read again at most this often (an fstat per write is 2-3 us).
SIZE_REFRESH_SECONDS = 0.01
# Requests refused while this member's alarm is being raised that wait for it; past
# this they are refused without waiting.
MAX_WAITING = 10_000


def put_cost(req: Any) -> int:
    """The quota charge of a PutRequest."""
    return KV_OVERHEAD_BYTES + len(req.key) + len(req.value)


def txn_cost(req: Any) -> int:
    """The quota charge of a TxnRequest: its costlier branch's puts (0 if it only reads
    and deletes)."""
    return max(_branch_cost(req.success), _branch_cost(req.failure))


def _branch_cost(ops: Any) -> int:
    cost = 0
    for op in ops:
        kind = op.WhichOneof("request")
        if kind == "request_put":
            cost += put_cost(op.request_put)
        elif kind == "request_txn":
            cost += txn_cost(op.request_txn)
    return cost


def backend_map_bytes(quota_bytes: int | None, largest_write_bytes: int,
                      writes_in_flight: int, minimum_bytes: int) -> int:
    """The LMDB map size for a quota, so a write never meets `MapFullError` before the
    quota refuses it: twice the quota (LMDB copies pages on write and cannot reuse pages
    a reader still sees, and deletes and compaction must go on past the quota), plus every
    write that may be in flight when the store crosses it (each passed the check before
    any was applied). E.g. the 2 GiB default with 1.5 MiB requests and 5000 proposals in
    flight gives 4 GiB + 7.3 GiB."""
    if quota_bytes is None:
        return max(minimum_bytes, UNLIMITED_MAP_BYTES)
    return max(minimum_bytes, 2 * quota_bytes + writes_in_flight * largest_write_bytes)


class NoQuota:
    """The checks of a service built without a quota (tests): every write fits."""

    def check_put(self, req: Any) -> None:
        return None

    def check_txn(self, req: Any) -> None:
        return None

    def check_lease_grant(self, req: Any) -> None:
        return None


NO_QUOTA = NoQuota()


class QuotaGuard:
    """The quota check of the KV and Lease services (etcd's `quotaAlarmer`).

    Invariants: at most one NOSPACE activation for this member is in flight
    (`raising`); at most `MAX_WAITING` refused requests wait for it."""

    _log = Logger()

    def __init__(self, quota_bytes: int | None, size_bytes: Callable[[], int], alarms: Any,
                 member_id: int, propose: Callable[[str, Any], Deferred],
                 clock: IReactorTime) -> None:
        self.quota_bytes = quota_bytes
        self._size_bytes = size_bytes
        self._alarms = alarms
        self._member_id = member_id
        self._propose = propose
        self._clock = clock
        self._size = 0
        self._measured_at = float("-inf")
        self.raising = False
        self._waiting: list[Deferred] = []
        if quota_bytes is None:
            self._log.info("disabled backend quota")
        elif quota_bytes > MAX_QUOTA_BYTES:
            self._log.warn("backend quota {quota} bytes exceeds the maximum recommended "
                           "{maximum} bytes", quota=quota_bytes, maximum=MAX_QUOTA_BYTES)
        else:
            self._log.info("enabled backend quota of {quota} bytes", quota=quota_bytes)

    def check_put(self, req: Any) -> Deferred | None:
        """None if the Put fits; else a Deferred that fails with
        DatabaseSpaceExceededError (after raising the alarm)."""
        return self.check(KV_OVERHEAD_BYTES + len(req.key) + len(req.value))

    def check_txn(self, req: Any) -> Deferred | None:
        """As `check_put`, for a Txn (one that only reads or deletes always fits)."""
        if self.quota_bytes is None:
            return None
        return self.check(txn_cost(req))

    def check_lease_grant(self, req: Any) -> Deferred | None:
        """As `check_put`, for a LeaseGrant."""
        return self.check(LEASE_OVERHEAD_BYTES)

    def check(self, cost: int) -> Deferred | None:
        """None if a write of `cost` bytes fits under the quota, else the refusal."""
        quota = self.quota_bytes
        if quota is None or cost == 0:
            return None
        size = self._backend_size()
        if size + cost < quota:
            return None
        return self._refuse(size, cost)

    def _backend_size(self) -> int:
        now = self._clock.seconds()
        if not 0 <= now - self._measured_at < SIZE_REFRESH_SECONDS:
            self._size = self._size_bytes()
            self._measured_at = now
        return self._size

    def _refuse(self, size: int, cost: int) -> Deferred:
        if self._alarms.has(self._member_id, pb.NOSPACE) or len(self._waiting) >= MAX_WAITING:
            return fail(DatabaseSpaceExceededError())
        d: Deferred = Deferred()
        self._waiting.append(d)
        if not self.raising:
            self.raising = True
            self._log.warn("backend size {size} + {cost} bytes reaches the quota of {quota} "
                           "bytes; raising the NOSPACE alarm", size=size, cost=cost,
                           quota=self.quota_bytes)
            req = pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=self._member_id,
                                  alarm=pb.NOSPACE)
            self._propose("alarm", req).addBoth(self._raised)
        return d

    def _raised(self, result: Any) -> None:
        """The activation is done (or failed: etcd ignores that too); refuse the waiters."""
        if isinstance(result, Failure):
            self._log.info("raising the NOSPACE alarm failed: {e}",
                           e=result.getErrorMessage())
        self.raising = False
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(Failure(DatabaseSpaceExceededError()))
