"""The member's leases: the lessor core driven by raft, expiry on the leader, renewals.

Shell. etcd 3.4 `etcdserver/v3_server.go` (LeaseGrant, LeaseRevoke, LeaseRenew,
LeaseTimeToLive, LeaseLeases), `server.go` (the revoke loop, `Promote` when a leader's
first entry applies, `Demote` when leadership is lost) and `lease/leasehttp` (a
follower forwards renewals and TTL queries to the leader; here over the peer transport's
call stream, methods `lease_renew` and `lease_ttl`).

* Grant, revoke and checkpoint go through raft; `applied(ops)` mirrors what the disk
  thread wrote (`server/entries.py`) into the lessor, on every member.
* Only the leader's lessor keeps expiries. Every `REVOKE_TICK_SECONDS` it proposes a
  `LeaseRevoke` for each expired lease (the revocation deletes the keys in one revision
  when it applies) and, with `--experimental-enable-lease-checkpoint`, the due checkpoints.
* A new leader promotes its lessor once the empty entry of its term is applied, so every
  lease gets its remaining TTL plus an election timeout; nothing expires early.
"""
from __future__ import annotations

import random
import struct
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from etcdd.api.rpctypes import GrpcError, Status
from etcdd.lease import backend as lease_store
from etcdd.lease.lessor import (LeaseExpiredError, Lessor, NotPrimaryError)
from etcdd.proto import rpc_pb2 as pb
from etcdd.server import errors

REVOKE_TICK_SECONDS = 0.5            # etcd lessor runLoop: every 500 ms
RENEW_RETRY_SECONDS = 0.05           # etcd LeaseRenew: throttle between forwarding tries
_ID = struct.Struct(">q")
_NOT_PRIMARY = "etcdd: not the primary lessor"


def min_lease_ttl_seconds(election_ticks: int, heartbeat_ms: int) -> int:
    """etcd 3.4 `minTTL`: 1.5 election timeouts in whole ticks, rounded up to seconds."""
    ms = (3 * election_ticks) // 2 * heartbeat_ms
    return -(-ms // 1000)


class LeaseHost:
    """Invariant: the lessor holds exactly the leases in the `lease` database as applied
    so far on this member; it is primary only while this member leads."""

    _log = Logger()

    def __init__(self, member: Any, store: Any, reactor: IReactorTime, *,
                 min_ttl_seconds: int, election_timeout_seconds: float,
                 request_timeout_seconds: float, checkpointing: bool = False,
                 checkpoint_interval_seconds: float = 300.0,
                 run_read: Any = None, rand: random.Random | None = None) -> None:
        self._member = member
        self._store = store
        self._reactor = reactor
        self._extend = election_timeout_seconds
        self._timeout = request_timeout_seconds
        self._checkpointing = checkpointing
        self._run_read = run_read
        self._rand = rand or random.SystemRandom()
        self.lessor = Lessor(reactor, min_ttl_seconds=min_ttl_seconds,
                             checkpoint_interval_seconds=checkpoint_interval_seconds)
        self._ticker: Any = None
        self._stopped = False
        self.transport: Any = None            # the PeerTransport, attached by the service
        self.reload()

    def reload(self) -> None:
        """Read every lease from the committed store (start, snapshot install)."""
        backend = self._store.backend
        with backend.begin_read() as txn:
            self.lessor.restore(lease_store.rows(txn, backend.dbs))

    def start(self) -> None:
        self._ticker = self._reactor.callLater(REVOKE_TICK_SECONDS, self._tick)

    def stop(self) -> None:
        self._stopped = True
        if self._ticker is not None and self._ticker.active():
            self._ticker.cancel()

    # -- raft side -----------------------------------------------------------------------

    def applied(self, ops: list[tuple]) -> None:
        """Mirror the lease changes of an applied batch into the lessor."""
        lessor = self.lessor
        for op in ops:
            kind = op[0]
            if kind == "grant":
                if not lessor.exists(op[1]):
                    lessor.grant(op[1], op[2])
            elif kind == "revoke":
                if lessor.exists(op[1]):
                    lessor.revoke(op[1])
            else:
                lessor.checkpoint(op[1], op[2])

    def leader_entry_applied(self) -> None:
        """etcd `applyEntryNormal`: the leader's empty entry promotes its lessor."""
        if self._member.is_leader:
            self.lessor.promote(extend_seconds=self._extend)

    def lost_leadership(self) -> None:
        if self.lessor.is_primary:
            self.lessor.demote()

    def _tick(self) -> None:
        self._ticker = self._reactor.callLater(REVOKE_TICK_SECONDS, self._tick)
        lessor = self.lessor
        if not lessor.is_primary:
            return
        if not self._member.is_leader:
            lessor.demote()
            return
        for lease_id in lessor.take_expired():
            d = self._member.propose("lease_revoke", pb.LeaseRevokeRequest(ID=lease_id))
            d.addErrback(self._revoke_failed, lease_id)
        if self._checkpointing:
            checkpoints = lessor.take_checkpoints()
            if checkpoints:
                req = pb.LeaseCheckpointRequest(checkpoints=[
                    pb.LeaseCheckpoint(ID=i, remaining_TTL=ttl) for i, ttl in checkpoints])
                self._member.propose("lease_checkpoint", req).addErrback(
                    lambda f: self._log.info("lease checkpoint failed: {e}",
                                             e=f.getErrorMessage()))

    def _revoke_failed(self, failure: Failure, lease_id: int) -> None:
        if not failure.check(errors.LeaseNotFoundError):
            self._log.info("failed to revoke expired lease {id:x}: {e}", id=lease_id,
                           e=failure.getErrorMessage())

    # -- client requests -----------------------------------------------------------------

    def grant(self, req: Any) -> Deferred:
        """LeaseGrant through raft; an ID of 0 gets a random positive one (etcd picks from
        its request ID generator)."""
        lease_id = req.ID
        while lease_id == 0:
            lease_id = self._rand.getrandbits(63)
        return self._member.propose("lease_grant", pb.LeaseGrantRequest(TTL=req.TTL, ID=lease_id))

    def revoke(self, req: Any) -> Deferred:
        return self._member.propose("lease_revoke", pb.LeaseRevokeRequest(ID=req.ID))

    def leases(self) -> list[int]:
        """Every lease ID, by expiry then ID (etcd sorts `Leases()` by expiry)."""
        return [lease.id for lease in sorted(self.lessor.leases(),
                                             key=lambda lease: (lease.expiry, lease.id))]

    def renew(self, lease_id: int) -> Deferred:
        """LeaseKeepAlive: the leader renews; a follower forwards to the leader until the
        request timeout. Fires with the TTL; fails with LeaseNotFoundError, or
        RequestTimeoutError when no leader answered in time."""
        deadline = self._reactor.seconds() + self._timeout
        return self._renew(lease_id, deadline)

    def _renew(self, lease_id: int, deadline: float) -> Deferred:
        if self._member.is_leader:
            # etcd 3.4: the leader first applies what it has committed, so a lease just
            # granted through another member is known here.
            d = self._member.wait_applied()

            def renewed(_: Any) -> Any:
                try:
                    return self.renew_local(lease_id)
                except NotPrimaryError:
                    return self._retry_renew(lease_id, deadline)
            return d.addCallback(renewed)
        lead = self._member.leader
        me = self._member.identity.member_id
        if not lead or lead == me or self.transport is None:
            return self._retry_renew(lease_id, deadline)
        d = self.transport.call(lead, "lease_renew", _ID.pack(lease_id),
                                max(0.1, deadline - self._reactor.seconds()))

        def answered(raw: bytes) -> int:
            return _ID.unpack(raw)[0]

        def failed(failure: Failure) -> Any:
            if _is_not_found(failure):
                raise errors.LeaseNotFoundError()
            return self._retry_renew(lease_id, deadline)
        return d.addCallbacks(answered, failed)

    def _retry_renew(self, lease_id: int, deadline: float) -> Deferred:
        return self._retry_later(deadline, lambda: self._renew(lease_id, deadline))

    def _retry_later(self, deadline: float, attempt: Callable[[], Deferred]) -> Deferred:
        """`attempt()` again after `RENEW_RETRY_SECONDS` (etcd throttles its forwarding
        loop the same way); RequestTimeoutError once `deadline` would pass."""
        if self._stopped:
            return fail(errors.StoppedError())
        if self._reactor.seconds() + RENEW_RETRY_SECONDS >= deadline:
            return fail(errors.RequestTimeoutError())
        d: Deferred = Deferred()
        self._reactor.callLater(RENEW_RETRY_SECONDS, lambda: attempt().chainDeferred(d))
        return d

    def renew_local(self, lease_id: int) -> int:
        """Renew on this member's lessor. Raises NotPrimaryError, LeaseNotFoundError."""
        if not self._member.is_leader:
            raise NotPrimaryError(lease_id)
        try:
            return self.lessor.renew(lease_id)
        except LeaseExpiredError:
            raise errors.LeaseNotFoundError() from None

    def time_to_live(self, req: Any) -> Deferred:
        """LeaseTimeToLive, answered by the leader (forwarded there from a follower). A
        leader whose lessor is not promoted yet answers once it is, within the request
        timeout; with no leader it fails with NoLeaderError."""
        return self._time_to_live(req, self._reactor.seconds() + self._timeout)

    def _time_to_live(self, req: Any, deadline: float) -> Deferred:
        if self._member.is_leader:
            if self.lessor.is_primary:
                return self._member.wait_applied().addCallback(
                    lambda _: self.time_to_live_local(req))
            return self._retry_later(deadline, lambda: self._time_to_live(req, deadline))
        lead = self._member.leader
        if not lead or self.transport is None:
            return fail(errors.NoLeaderError())
        d = self.transport.call(lead, "lease_ttl", req.SerializeToString(), self._timeout)

        def failed(failure: Failure) -> Any:
            if _is_not_found(failure):
                raise errors.LeaseNotFoundError()
            return failure
        return d.addCallbacks(pb.LeaseTimeToLiveResponse.FromString, failed)

    def time_to_live_local(self, req: Any) -> Deferred:
        """Raises (as a failed Deferred) LeaseNotFoundError."""
        lease = self.lessor.lookup(req.ID)
        if lease is None:
            return fail(errors.LeaseNotFoundError())
        granted, remaining = self.lessor.time_to_live(req.ID)
        resp = pb.LeaseTimeToLiveResponse(ID=req.ID, TTL=remaining, grantedTTL=granted)
        if not req.keys:
            return succeed(resp)
        backend = self._store.backend

        def read_keys() -> list[bytes]:
            with backend.begin_read() as txn:
                return lease_store.attached_keys(txn, backend.dbs, req.ID)

        def with_keys(keys: list[bytes]) -> Any:
            resp.keys.extend(keys)
            return resp
        return self._run_read(read_keys).addCallback(with_keys)

    # -- calls forwarded by followers ------------------------------------------------------

    def handle_call(self, from_id: int, method: str, payload: bytes) -> Any:
        if method == "lease_renew":
            lease_id = _ID.unpack(payload)[0]

            def renew(_: Any) -> bytes:
                try:
                    return _ID.pack(self.renew_local(lease_id))
                except NotPrimaryError:
                    raise GrpcError(Status.UNAVAILABLE, _NOT_PRIMARY) from None
            return self._leader_applied().addCallback(renew)
        if method == "lease_ttl":
            req = pb.LeaseTimeToLiveRequest.FromString(payload)

            def answer(_: Any) -> Any:
                if not (self._member.is_leader and self.lessor.is_primary):
                    raise GrpcError(Status.UNAVAILABLE, _NOT_PRIMARY)
                return self.time_to_live_local(req).addCallback(
                    lambda r: r.SerializeToString())
            return self._leader_applied().addCallback(answer)
        raise GrpcError(Status.UNIMPLEMENTED, f"unknown peer method {method}")

    def _leader_applied(self) -> Deferred:
        """On the leader, wait for what it committed to be applied (etcd's
        `waitAppliedIndex`); elsewhere fire at once (the caller refuses)."""
        if self._member.is_leader:
            return self._member.wait_applied()
        return succeed(None)


def _is_not_found(failure: Failure) -> bool:
    """Whether a forwarded call failed with the leader's `requested lease not found`."""
    return bool(failure.check(GrpcError)) and failure.value.code == Status.NOT_FOUND
