"""The v3 Lease service: LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive, LeaseLeases.

Shell glue over `server/leases.py`. Matches etcd 3.4 `etcdserver/api/v3rpc/lease.go`:
a keep-alive for an unknown lease answers TTL 0 and the stream goes on; a TimeToLive for
an unknown lease answers TTL -1; other errors end the call with etcd's status.
"""
from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure
from zope.interface import implementer

from etcdd.api.kv import HeaderFiller
from etcdd.api.router import CallContext, IServerStream, IStreamHandler, Router
from etcdd.api.rpctypes import GrpcError, Status
from etcdd.proto import rpc_pb2 as pb
from etcdd.server.errors import LeaseNotFoundError
from etcdd.server.quota import NO_QUOTA, QuotaGuard

# Renewals in flight per keep-alive stream (a follower's wait on the leader), and leases
# waiting while the client does not read our answers; past either the stream is ended
# rather than buffering a client that sends without reading.
MAX_RENEWALS_IN_FLIGHT = 10_000
MAX_PARKED_LEASES = 100_000
TOO_MANY_RENEWALS = "etcdd: too many keep-alives in flight on this stream"


class LeaseService:
    """Handlers for /etcdserverpb.Lease/*."""

    def __init__(self, leases: Any, header: HeaderFiller,
                 quota: QuotaGuard | None = None) -> None:
        self._leases = leases
        self._header = header
        self._quota = quota or NO_QUOTA

    def register(self, router: Router) -> None:
        add = router.add_unary
        add("/etcdserverpb.Lease/LeaseGrant", pb.LeaseGrantRequest, self.grant)
        add("/etcdserverpb.Lease/LeaseRevoke", pb.LeaseRevokeRequest, self.revoke)
        add("/etcdserverpb.Lease/LeaseTimeToLive", pb.LeaseTimeToLiveRequest, self.time_to_live)
        add("/etcdserverpb.Lease/LeaseLeases", pb.LeaseLeasesRequest, self.leases)
        router.add_stream("/etcdserverpb.Lease/LeaseKeepAlive", pb.LeaseKeepAliveRequest,
                          self.keep_alive)

    def grant(self, req: Any, context: CallContext) -> Any:
        refused = self._quota.check_lease_grant(req)      # etcd 3.4 v3rpc/quota.go
        if refused is not None:
            return refused
        return self._leases.grant(req).addCallback(self._header.fill)

    def revoke(self, req: Any, context: CallContext) -> Any:
        return self._leases.revoke(req).addCallback(self._header.fill)

    def time_to_live(self, req: Any, context: CallContext) -> Any:
        def not_found(failure: Failure) -> Any:
            failure.trap(LeaseNotFoundError)
            return pb.LeaseTimeToLiveResponse(ID=req.ID, TTL=-1)
        d = self._leases.time_to_live(req).addErrback(not_found)
        return d.addCallback(self._fill_fresh)

    def _fill_fresh(self, resp: Any) -> Any:
        resp.ClearField("header")       # a forwarded answer carries the leader's header
        return self._header.fill(resp)

    def leases(self, req: Any, context: CallContext) -> Any:
        resp = pb.LeaseLeasesResponse()
        for lease_id in self._leases.leases():
            resp.leases.add(ID=lease_id)
        return self._header.fill(resp)

    def keep_alive(self, context: CallContext, stream: IServerStream) -> IStreamHandler:
        return KeepAliveStream(self._leases, self._header, stream)


@implementer(IStreamHandler)
class KeepAliveStream:
    """One LeaseKeepAlive call: each request renews its lease and answers once renewed.

    Invariant: while the client does not read (the stream is not writable) nothing more
    is queued for it; requests meanwhile park their lease ID, once per lease."""

    def __init__(self, leases: Any, header: HeaderFiller, stream: IServerStream) -> None:
        self._leases = leases
        self._header = header
        self._stream = stream
        self._in_flight = 0
        self._done = False
        self._eof = False
        # Leases asked for while the client was not reading our answers: renewed once
        # each when the stream drains (repeats of one lease collapse into one renewal).
        self._parked: dict[int, None] = {}
        self._waiting = False

    def message_received(self, request: Any) -> None:
        if self._done:
            return
        if self._parked or not self._stream.is_writable():
            self._park(request.ID)
            return
        self._renew(request.ID)

    def _park(self, lease_id: int) -> None:
        if lease_id not in self._parked and len(self._parked) >= MAX_PARKED_LEASES:
            self._give_up()
            return
        self._parked[lease_id] = None
        if not self._waiting:
            self._waiting = True
            self._stream.on_writable(self._writable)

    def _writable(self) -> None:
        self._waiting = False
        while self._parked and not self._done:
            if not self._stream.is_writable():
                self._waiting = True
                self._stream.on_writable(self._writable)
                return
            lease_id = next(iter(self._parked))
            del self._parked[lease_id]
            self._renew(lease_id)
        self._maybe_end()

    def _give_up(self) -> None:
        self._done = True
        self._stream.finish(GrpcError(Status.RESOURCE_EXHAUSTED, TOO_MANY_RENEWALS))

    def _renew(self, lease_id: int) -> None:
        if self._in_flight >= MAX_RENEWALS_IN_FLIGHT:
            self._give_up()
            return
        resp = pb.LeaseKeepAliveResponse(ID=lease_id)
        self._header.fill(resp)          # etcd fills the header before renewing
        self._in_flight += 1
        self._leases.renew(lease_id).addCallbacks(self._renewed, self._failed,
                                                  callbackArgs=(resp,), errbackArgs=(resp,))

    def _renewed(self, ttl: int, resp: Any) -> None:
        self._in_flight -= 1
        if not self._done:
            resp.TTL = ttl
            self._stream.send(resp)
            self._maybe_end()

    def _failed(self, failure: Failure, resp: Any) -> None:
        self._in_flight -= 1
        if self._done:
            return
        if failure.check(LeaseNotFoundError):
            resp.TTL = 0
            self._stream.send(resp)
            self._maybe_end()
            return
        self._done = True
        self._stream.finish(failure.value)

    def end_of_input(self) -> None:
        """etcd's receive loop returns nil at EOF: the call ends OK once answered."""
        self._eof = True
        self._maybe_end()

    def _maybe_end(self) -> None:
        if self._eof and self._in_flight == 0 and not self._parked and not self._done:
            self._done = True
            self._stream.finish()

    def cancelled(self) -> None:
        self._done = True
