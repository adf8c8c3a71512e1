"""The member's leases (`etcdd/server/leases.py` LeaseHost) and the Lease service
(`etcdd/api/lease.py`) with a fake member and peer transport on a Clock, against etcd 3.4
`etcdserver/server.go` (revoke loop, Promote on the leader's entry, Demote),
`v3_server.go` (LeaseRenew forwarding, LeaseTimeToLive), `lease/leasehttp` (a follower's
renewals answered by the leader) and `v3rpc/lease.go` (keep-alive TTL 0, TimeToLive -1).

Leases reach the store through a real EntryApplier and the lessor through `applied()`,
as the member hands each applied batch over.
"""
from __future__ import annotations

import math
import random
import struct
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from etcdd.api.kv import HeaderFiller
from etcdd.api.lease import KeepAliveStream, LeaseService
from etcdd.api.router import CallContext, IServerStream, IStreamHandler, Router
from etcdd.api.rpctypes import GrpcError, Status, status_for
from etcdd.proto import raft_internal_pb2 as ipb, raft_pb2, rpc_pb2 as pb
from etcdd.server.apply import Applier
from etcdd.server.cluster import ClusterState
from etcdd.server.entries import EntryApplier
from etcdd.server.errors import (LeaseNotFoundError, RequestTimeoutError,
                                 TimeoutWaitAppliedIndexError)
from etcdd.server.leases import REVOKE_TICK_SECONDS, LeaseHost, min_lease_ttl_seconds
from etcdd.server.member import Identity
from tests.unit.stores import open_store

ME, OTHER = 0x1111, 0x2222
IDENTITY = Identity(cluster_id=0xC1, member_id=ME, name="m1")
TERM = 4
REQUEST_TIMEOUT = 5.0
ELECTION_TIMEOUT = 1.0
NOT_FOUND = GrpcError(Status.NOT_FOUND, "etcdserver: requested lease not found")
_ID = struct.Struct(">q")
CTX = CallContext(path="/etcdserverpb.Lease/LeaseKeepAlive")


class FakeMember:
    """Leadership the test sets, and proposals it answers by firing their Deferreds."""

    def __init__(self) -> None:
        self.identity = IDENTITY
        self.term = TERM
        self.is_leader = False
        self.leader = 0
        self.proposals: list[tuple[str, Any, Deferred]] = []
        self.behind = False
        self.apply_waiters: list[Deferred] = []

    def propose(self, kind: str, request: Any) -> Deferred:
        d: Deferred = Deferred()
        self.proposals.append((kind, request, d))
        return d

    def wait_applied(self) -> Deferred:
        """Fires at once unless the test holds applies back (`behind`)."""
        if not self.behind:
            return succeed(None)
        d: Deferred = Deferred()
        self.apply_waiters.append(d)
        return d

    def catch_up(self, error: Exception | None = None) -> None:
        waiters, self.apply_waiters, self.behind = self.apply_waiters, [], False
        for d in waiters:
            if error is None:
                d.callback(None)
            else:
                d.errback(Failure(error))

    def lead(self) -> None:
        self.is_leader, self.leader = True, ME

    def follow(self, leader: int) -> None:
        self.is_leader, self.leader = False, leader

    def taken(self) -> list[tuple[str, Any]]:
        """Proposals made since the last call, as (kind, request)."""
        out = [(kind, req) for kind, req, _ in self.proposals]
        self.proposals = []
        return out


class FakeTransport:
    """The peer transport's `call`, answered by the test."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, bytes, float, Deferred]] = []

    def call(self, member_id: int, method: str, payload: bytes,
             timeout_seconds: float) -> Deferred:
        d: Deferred = Deferred()
        self.calls.append((member_id, method, payload, timeout_seconds, d))
        return d

    def answer(self, result: Any) -> None:
        """Fire the oldest unanswered call with `result` (bytes, or an exception)."""
        _, _, _, _, d = self.calls.pop(0)
        if isinstance(result, BaseException):
            d.errback(result)
        else:
            d.callback(result)


@implementer(IServerStream)
class FakeStream:
    """A server stream that records responses and how it was finished."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.finished = False
        self.finishes: list[BaseException | None] = []
        self.writable = True
        self.waiting: list[Callable[[], None]] = []

    def send(self, message: Any) -> None:
        if self.finished:
            raise AssertionError("send after finish")
        self.sent.append(message)

    def finish(self, error: BaseException | None = None) -> None:
        self.finished = True
        self.finishes.append(error)

    def is_writable(self) -> bool:
        return self.writable

    def on_writable(self, callback: Callable[[], None]) -> None:
        if self.writable:
            callback()
        else:
            self.waiting.append(callback)

    def drain(self) -> None:
        """The client read: writable again, waiting callbacks run."""
        self.writable = True
        waiting, self.waiting = self.waiting, []
        for callback in waiting:
            callback()


class LeaseHostTestCase(SynchronousTestCase):
    """A store, an EntryApplier, a LeaseHost (started) on a Clock, a fake member."""

    CHECKPOINTING = False

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = open_store(self)
        self.entries = EntryApplier(self.store, ClusterState(self.store.backend.dbs),
                                    Applier(), min_lease_ttl_seconds=1)
        self.index = 0
        self.member = FakeMember()
        self.transport = FakeTransport()
        self.host = LeaseHost(self.member, self.store, self.clock, min_ttl_seconds=1,
                              election_timeout_seconds=ELECTION_TIMEOUT,
                              request_timeout_seconds=REQUEST_TIMEOUT,
                              checkpointing=self.CHECKPOINTING, run_read=maybeDeferred,
                              rand=random.Random(5))
        self.host.transport = self.transport
        self.host.start()
        self.addCleanup(self.host.stop)
        self.header = HeaderFiller(self.member, self.store)

    def commit(self, kind: str, req: Any) -> Any:
        """Apply one request as a committed entry and mirror its lease ops; its answer."""
        self.index += 1
        ir = ipb.InternalRaftRequest(header=ipb.RequestHeader(ID=self.index))
        getattr(ir, kind).CopyFrom(req)
        batch = self.entries.apply([raft_pb2.Entry(Index=self.index, Term=TERM,
                                                   Data=ir.SerializeToString())])
        self.host.applied(batch.lease_ops)
        return batch.results[0][1]

    def grant(self, lease_id: int, ttl: int) -> None:
        self.commit("lease_grant", pb.LeaseGrantRequest(ID=lease_id, TTL=ttl))

    def become_leader(self) -> None:
        """Lead and apply this term's empty entry (etcd promotes the lessor then)."""
        self.member.lead()
        self.host.leader_entry_applied()

    def advance_to(self, t: float) -> None:
        self.clock.advance(t - self.clock.seconds())

    @staticmethod
    def revoke_of(lease_id: int) -> tuple[str, Any]:
        return "lease_revoke", pb.LeaseRevokeRequest(ID=lease_id)


class ExpiryTests(LeaseHostTestCase):

    def test_not_primary_until_the_leader_entry_applies(self) -> None:
        """Leading is not enough: expiries start only when this term's empty entry applies,
        with the TTL counted from then plus an election timeout."""
        self.grant(7, 2)
        self.member.lead()
        self.advance_to(10)
        self.assertFalse(self.host.lessor.is_primary)
        self.assertEqual(self.member.taken(), [])
        self.host.leader_entry_applied()
        self.assertTrue(self.host.lessor.is_primary)
        self.advance_to(12.5)
        self.assertEqual(self.member.taken(), [])
        self.advance_to(13)
        self.assertEqual(self.member.taken(), [self.revoke_of(7)])

    def test_leader_entry_on_a_follower_does_not_promote(self) -> None:
        """A follower applying a leader's empty entry stays non-primary and never proposes."""
        self.grant(7, 1)
        self.member.follow(OTHER)
        self.host.leader_entry_applied()
        self.advance_to(60)
        self.assertFalse(self.host.lessor.is_primary)
        self.assertEqual(self.member.taken(), [])

    def test_expired_lease_is_proposed_once_then_after_3_seconds(self) -> None:
        """An expired lease's revoke is proposed once; if it has not applied 3 s later
        it is proposed again (etcd expiredLeaseRetryInterval)."""
        self.grant(7, 2)
        self.become_leader()                      # expiry 0 + 1 + 2
        self.advance_to(3)
        self.assertEqual(self.member.taken(), [self.revoke_of(7)])
        self.advance_to(5.5)
        self.assertEqual(self.member.taken(), [])
        self.advance_to(6)
        self.assertEqual(self.member.taken(), [self.revoke_of(7)])

    def test_revoked_lease_is_not_proposed_again(self) -> None:
        """Once the revoke applies the lease is gone from the lessor: no retry."""
        self.grant(7, 2)
        self.commit("put", pb.PutRequest(key=b"k", lease=7))
        self.become_leader()
        self.advance_to(3)
        [(kind, req, d)] = self.member.proposals
        self.member.proposals = []
        d.callback(self.commit(kind, req))
        self.assertEqual(self.store.range(b"k").kvs, [])
        self.advance_to(20)
        self.assertEqual(self.member.taken(), [])
        self.assertIsNone(self.host.lessor.lookup(7))

    def test_failed_revoke_proposal_is_retried(self) -> None:
        """A revoke proposal that fails (say, leadership moved) is retried 3 s later."""
        self.grant(7, 2)
        self.become_leader()
        self.advance_to(3)
        self.member.proposals.pop()[2].errback(RequestTimeoutError())
        self.advance_to(6)
        self.assertEqual(self.member.taken(), [self.revoke_of(7)])

    def test_lost_leadership_demotes(self) -> None:
        """Losing leadership stops expiries; leading again counts the TTL from the new
        promotion plus an election timeout, so nothing expires early."""
        self.grant(7, 10)
        self.become_leader()
        self.advance_to(8)
        self.member.follow(OTHER)
        self.host.lost_leadership()
        self.assertFalse(self.host.lessor.is_primary)
        self.advance_to(30)
        self.assertEqual(self.member.taken(), [])
        self.become_leader()                     # expiry 30 + 1 + 10
        self.advance_to(40.5)
        self.assertEqual(self.member.taken(), [])
        self.advance_to(41)
        self.assertEqual(self.member.taken(), [self.revoke_of(7)])

    def test_tick_demotes_when_the_member_no_longer_leads(self) -> None:
        """A primary lessor whose member stopped leading is demoted at the next tick."""
        self.grant(7, 2)
        self.become_leader()
        self.member.follow(OTHER)
        self.advance_to(REVOKE_TICK_SECONDS)
        self.assertFalse(self.host.lessor.is_primary)
        self.advance_to(10)
        self.assertEqual(self.member.taken(), [])

    def test_stop_cancels_the_tick(self) -> None:
        """stop() leaves no delayed call behind."""
        self.host.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class CheckpointTests(LeaseHostTestCase):

    CHECKPOINTING = True

    def test_checkpoints_are_proposed_when_due(self) -> None:
        """With checkpointing, a lease longer than the 300 s interval gets its remaining
        TTL proposed every interval, and a renew proposes clearing it."""
        self.grant(7, 1000)
        self.become_leader()                      # expiry 1001
        self.advance_to(300)
        want = pb.LeaseCheckpointRequest(checkpoints=[pb.LeaseCheckpoint(ID=7,
                                                                         remaining_TTL=701)])
        self.assertEqual(self.member.taken(), [("lease_checkpoint", want)])
        self.commit("lease_checkpoint", want)
        self.assertEqual(self.successResultOf(self.host.renew(7)), 1000)
        self.advance_to(300.5)
        clear = pb.LeaseCheckpointRequest(checkpoints=[pb.LeaseCheckpoint(ID=7)])
        self.assertEqual(self.member.taken(), [("lease_checkpoint", clear)])


class RenewTests(LeaseHostTestCase):

    def test_renew_on_the_leader(self) -> None:
        """The leader renews at once: the answer is the TTL and the expiry moves."""
        self.grant(7, 10)
        self.become_leader()                      # expiry 11
        self.advance_to(5)
        self.assertEqual(self.successResultOf(self.host.renew(7)), 10)
        self.advance_to(14.5)
        self.assertEqual(self.member.taken(), [])
        self.advance_to(15)
        self.assertEqual(self.member.taken(), [self.revoke_of(7)])
        self.assertEqual(self.transport.calls, [])

    def test_renew_of_an_unknown_or_expired_lease_on_the_leader(self) -> None:
        """An unknown lease, or one whose expiry passed, fails with LeaseNotFoundError."""
        self.grant(7, 2)
        self.become_leader()
        self.failureResultOf(self.host.renew(99), LeaseNotFoundError)
        self.advance_to(3.2)
        self.failureResultOf(self.host.renew(7), LeaseNotFoundError)

    def test_renew_on_a_follower_is_forwarded_to_the_leader(self) -> None:
        """A follower forwards the renewal to the leader with the request timeout and
        answers the leader's TTL."""
        self.grant(7, 10)
        self.member.follow(OTHER)
        d = self.host.renew(7)
        self.assertNoResult(d)
        [(to, method, payload, timeout, _)] = self.transport.calls
        self.assertEqual((to, method, payload, timeout),
                         (OTHER, "lease_renew", _ID.pack(7), REQUEST_TIMEOUT))
        self.transport.answer(_ID.pack(10))
        self.assertEqual(self.successResultOf(d), 10)

    def test_forwarding_retries_a_leader_that_cannot_renew_yet(self) -> None:
        """A leader not yet primary answers UNAVAILABLE; the follower asks again shortly,
        with the time left."""
        self.member.follow(OTHER)
        d = self.host.renew(7)
        self.transport.answer(GrpcError(Status.UNAVAILABLE, "etcdd: not the primary lessor"))
        self.assertEqual(self.transport.calls, [])
        self.clock.advance(0.05)
        [(to, method, _, timeout, _)] = self.transport.calls
        self.assertEqual((to, method), (OTHER, "lease_renew"))
        self.assertAlmostEqual(timeout, REQUEST_TIMEOUT - 0.05)
        self.transport.answer(_ID.pack(30))
        self.assertEqual(self.successResultOf(d), 30)

    def test_renew_without_a_leader_times_out(self) -> None:
        """With no leader known the renewal is retried until the request timeout, then
        fails with RequestTimeoutError; a leader showing up in time is used."""
        self.member.follow(0)
        d = self.host.renew(7)
        self.advance_to(4.9)
        self.assertNoResult(d)
        self.assertEqual(self.transport.calls, [])
        self.advance_to(5.01)
        self.failureResultOf(d, RequestTimeoutError)
        d2 = self.host.renew(7)
        self.advance_to(6)
        self.member.follow(OTHER)
        self.advance_to(6.1)
        self.assertEqual([c[1] for c in self.transport.calls], ["lease_renew"])
        self.transport.answer(_ID.pack(9))
        self.assertEqual(self.successResultOf(d2), 9)

    def test_renew_on_an_unpromoted_leader_waits_for_promotion(self) -> None:
        """A leader whose lessor is not primary yet retries locally until it is."""
        self.grant(7, 10)
        self.member.lead()
        d = self.host.renew(7)
        self.clock.advance(0.5)
        self.assertNoResult(d)
        self.host.leader_entry_applied()
        self.clock.advance(0.05)
        self.assertEqual(self.successResultOf(d), 10)
        self.assertEqual(self.transport.calls, [])


class HandleCallTests(LeaseHostTestCase):

    def setUp(self) -> None:
        super().setUp()
        self.grant(7, 10)
        self.commit("put", pb.PutRequest(key=b"b", lease=7))
        self.commit("put", pb.PutRequest(key=b"a", lease=7))

    def test_leader_answers_forwarded_renewals(self) -> None:
        """lease_renew from a peer renews on the leader and answers the TTL; an unknown
        lease raises the error a follower hears as NOT_FOUND."""
        self.become_leader()
        self.assertEqual(self.successResultOf(self.host.handle_call(
            OTHER, "lease_renew", _ID.pack(7))), _ID.pack(10))
        f = self.failureResultOf(self.host.handle_call(OTHER, "lease_renew", _ID.pack(99)),
                                 LeaseNotFoundError)
        self.assertEqual(status_for(f.value), (NOT_FOUND.code, NOT_FOUND.message))

    def test_leader_answers_forwarded_time_to_live(self) -> None:
        """lease_ttl answers the serialized TimeToLive response, keys sorted."""
        self.become_leader()
        self.advance_to(2.5)
        req = pb.LeaseTimeToLiveRequest(ID=7, keys=True)
        raw = self.successResultOf(self.host.handle_call(OTHER, "lease_ttl",
                                                         req.SerializeToString()))
        self.assertEqual(pb.LeaseTimeToLiveResponse.FromString(raw),
                         pb.LeaseTimeToLiveResponse(ID=7, TTL=8, grantedTTL=10,
                                                    keys=[b"a", b"b"]))

    def test_non_leader_refuses_forwarded_calls(self) -> None:
        """A member that is not the primary leader refuses with UNAVAILABLE; an unknown
        method is UNIMPLEMENTED."""
        self.member.follow(OTHER)
        for method, payload in (("lease_renew", _ID.pack(7)),
                                ("lease_ttl", pb.LeaseTimeToLiveRequest(ID=7)
                                 .SerializeToString())):
            f = self.failureResultOf(self.host.handle_call(OTHER, method, payload), GrpcError)
            self.assertEqual(f.value.code, Status.UNAVAILABLE, method)
        self.member.lead()                       # leads, not promoted yet
        f = self.failureResultOf(self.host.handle_call(
            OTHER, "lease_ttl", pb.LeaseTimeToLiveRequest(ID=7).SerializeToString()),
            GrpcError)
        self.assertEqual(f.value.code, Status.UNAVAILABLE)
        with self.assertRaises(GrpcError) as cm:
            self.host.handle_call(OTHER, "lease_frobnicate", b"")
        self.assertEqual(cm.exception.code, Status.UNIMPLEMENTED)


class HostQueryTests(LeaseHostTestCase):

    def test_grant_proposes_with_a_chosen_or_random_id(self) -> None:
        """grant() proposes the client's ID, or a random positive one for ID 0."""
        self.host.grant(pb.LeaseGrantRequest(ID=5, TTL=30))
        self.host.grant(pb.LeaseGrantRequest(TTL=30))
        (k1, r1), (k2, r2) = self.member.taken()
        self.assertEqual((k1, r1), ("lease_grant", pb.LeaseGrantRequest(ID=5, TTL=30)))
        self.assertEqual((k2, r2.TTL), ("lease_grant", 30))
        self.assertGreater(r2.ID, 0)

    def test_reload_reads_leases_from_the_store(self) -> None:
        """reload() replaces the lessor's leases with the committed rows."""
        self.grant(7, 10)
        self.grant(8, 20)
        other = LeaseHost(self.member, self.store, self.clock, min_ttl_seconds=1,
                          election_timeout_seconds=1, request_timeout_seconds=5)
        self.assertEqual([(lease.id, lease.ttl_seconds) for lease in other.lessor.leases()],
                         [(7, 10), (8, 20)])
        self.assertEqual(other.lessor.lookup(7).expiry, math.inf)

    def test_leases_are_listed_by_expiry(self) -> None:
        """leases() lists every lease, soonest expiry first."""
        self.grant(9, 30)
        self.grant(7, 50)
        self.grant(8, 10)
        self.become_leader()
        self.assertEqual(self.host.leases(), [8, 9, 7])

    def test_min_lease_ttl_is_one_and_a_half_election_timeouts(self) -> None:
        """etcd minTTL: 1.5 election timeouts in whole ticks, rounded up to seconds."""
        self.assertEqual([min_lease_ttl_seconds(10, 100), min_lease_ttl_seconds(5, 100),
                          min_lease_ttl_seconds(10, 1000), min_lease_ttl_seconds(3, 500)],
                         [2, 1, 15, 2])


class KeepAliveTests(LeaseHostTestCase):

    def setUp(self) -> None:
        super().setUp()
        self.service = LeaseService(self.host, self.header)
        self.router = Router()
        self.service.register(self.router)
        self.grant(7, 10)

    def keep_alive(self) -> tuple[KeepAliveStream, FakeStream]:
        fake = FakeStream()
        handler = self.router.lookup("/etcdserverpb.Lease/LeaseKeepAlive").handler(CTX, fake)
        verifyObject(IStreamHandler, handler)
        return handler, fake

    def want(self, lease_id: int, ttl: int, rev: int = 1) -> pb.LeaseKeepAliveResponse:
        resp = pb.LeaseKeepAliveResponse(ID=lease_id, TTL=ttl)
        resp.header.CopyFrom(pb.ResponseHeader(cluster_id=IDENTITY.cluster_id, member_id=ME,
                                               raft_term=TERM, revision=rev))
        return resp

    def test_unknown_lease_answers_ttl_zero_and_the_stream_goes_on(self) -> None:
        """A keep-alive for an unknown lease answers TTL 0; the next one is renewed."""
        self.become_leader()
        handler, fake = self.keep_alive()
        handler.message_received(pb.LeaseKeepAliveRequest(ID=99))
        handler.message_received(pb.LeaseKeepAliveRequest(ID=7))
        self.assertEqual(fake.sent, [self.want(99, 0), self.want(7, 10)])
        self.assertFalse(fake.finished)

    def test_a_client_that_does_not_read_gets_nothing_more_queued(self) -> None:
        """While the stream is not writable requests only park their lease, once per
        lease; when it drains each parked lease is renewed and answered once."""
        self.become_leader()
        self.grant(8, 20)
        handler, fake = self.keep_alive()
        fake.writable = False
        for lease_id in (7, 8, 7, 7, 8):
            handler.message_received(pb.LeaseKeepAliveRequest(ID=lease_id))
        self.assertEqual(fake.sent, [])
        self.assertEqual(len(fake.waiting), 1)
        fake.drain()
        self.assertEqual([(r.ID, r.TTL) for r in fake.sent], [(7, 10), (8, 20)])
        handler.end_of_input()
        self.assertEqual(fake.finishes, [None])

    def test_end_of_input_finishes_once_renewals_are_answered(self) -> None:
        """After the client half-closes, the call ends OK once every forwarded renewal
        is answered, and only once."""
        self.member.follow(OTHER)
        handler, fake = self.keep_alive()
        handler.message_received(pb.LeaseKeepAliveRequest(ID=7))
        handler.message_received(pb.LeaseKeepAliveRequest(ID=7))
        handler.end_of_input()
        self.assertEqual((fake.sent, fake.finishes), ([], []))
        self.transport.answer(_ID.pack(10))
        self.assertEqual((len(fake.sent), fake.finishes), (1, []))
        self.transport.answer(_ID.pack(10))
        self.assertEqual((len(fake.sent), fake.finishes), (2, [None]))
        handler.end_of_input()
        self.assertEqual(fake.finishes, [None])

    def test_end_of_input_with_nothing_in_flight_finishes_at_once(self) -> None:
        """A half-close with no renewal pending ends the call OK at once."""
        handler, fake = self.keep_alive()
        handler.end_of_input()
        self.assertEqual(fake.finishes, [None])

    def test_header_is_taken_before_the_renewal(self) -> None:
        """The response header's revision is the one when the request arrived (etcd fills
        the header before renewing)."""
        self.member.follow(OTHER)
        handler, fake = self.keep_alive()
        handler.message_received(pb.LeaseKeepAliveRequest(ID=7))
        self.commit("put", pb.PutRequest(key=b"x"))
        self.transport.answer(_ID.pack(10))
        self.assertEqual(fake.sent, [self.want(7, 10, rev=1)])

    def test_follower_keep_alive_of_an_unknown_lease_answers_ttl_zero(self) -> None:
        """On a follower, a lease the leader does not know answers TTL 0 and the stream
        goes on, as on the leader (etcd leasehttp maps 404 to ErrLeaseNotFound)."""
        self.member.follow(OTHER)
        handler, fake = self.keep_alive()
        handler.message_received(pb.LeaseKeepAliveRequest(ID=99))
        self.transport.answer(NOT_FOUND)
        self.assertEqual((fake.sent, fake.finishes), ([self.want(99, 0)], []))

    def test_other_failures_end_the_call_with_their_error(self) -> None:
        """A renewal that times out ends the call with that error."""
        self.member.follow(0)
        handler, fake = self.keep_alive()
        handler.message_received(pb.LeaseKeepAliveRequest(ID=7))
        self.advance_to(REQUEST_TIMEOUT + 0.1)
        self.assertEqual(len(fake.finishes), 1)
        self.assertIsInstance(fake.finishes[0], RequestTimeoutError)
        handler.message_received(pb.LeaseKeepAliveRequest(ID=7))
        self.assertEqual((fake.sent, len(fake.finishes)), ([], 1))

    def test_cancelled_stream_sends_nothing_more(self) -> None:
        """After cancelled(), answers still in flight are dropped."""
        self.member.follow(OTHER)
        handler, fake = self.keep_alive()
        handler.message_received(pb.LeaseKeepAliveRequest(ID=7))
        handler.cancelled()
        self.transport.answer(_ID.pack(10))
        self.assertEqual((fake.sent, fake.finishes), ([], []))


class TimeToLiveServiceTests(LeaseHostTestCase):

    def setUp(self) -> None:
        super().setUp()
        self.service = LeaseService(self.host, self.header)
        self.grant(7, 10)
        self.commit("put", pb.PutRequest(key=b"k", lease=7))

    def header_at(self, rev: int) -> pb.ResponseHeader:
        return pb.ResponseHeader(cluster_id=IDENTITY.cluster_id, member_id=ME,
                                 raft_term=TERM, revision=rev)

    def test_unknown_lease_answers_ttl_minus_one(self) -> None:
        """TimeToLive of an unknown lease answers TTL -1 with a full header."""
        self.become_leader()
        resp = self.successResultOf(self.service.time_to_live(
            pb.LeaseTimeToLiveRequest(ID=99), CTX))
        self.assertEqual(resp, pb.LeaseTimeToLiveResponse(header=self.header_at(2), ID=99,
                                                          TTL=-1))

    def test_known_lease_answers_remaining_granted_and_keys(self) -> None:
        """TimeToLive on the leader answers the remaining and granted TTL and the keys."""
        self.become_leader()
        self.advance_to(4)
        resp = self.successResultOf(self.service.time_to_live(
            pb.LeaseTimeToLiveRequest(ID=7, keys=True), CTX))
        self.assertEqual(resp, pb.LeaseTimeToLiveResponse(
            header=self.header_at(2), ID=7, TTL=7, grantedTTL=10, keys=[b"k"]))

    def test_follower_forwards_time_to_live_and_uses_its_own_header(self) -> None:
        """A follower asks the leader and answers with its own header."""
        self.member.follow(OTHER)
        d = self.service.time_to_live(pb.LeaseTimeToLiveRequest(ID=7), CTX)
        [(to, method, payload, _, _)] = self.transport.calls
        self.assertEqual((to, method, pb.LeaseTimeToLiveRequest.FromString(payload)),
                         (OTHER, "lease_ttl", pb.LeaseTimeToLiveRequest(ID=7)))
        leader_resp = pb.LeaseTimeToLiveResponse(ID=7, TTL=6, grantedTTL=10)
        leader_resp.header.member_id = OTHER
        self.transport.answer(leader_resp.SerializeToString())
        self.assertEqual(self.successResultOf(d), pb.LeaseTimeToLiveResponse(
            header=self.header_at(2), ID=7, TTL=6, grantedTTL=10))

    def test_follower_time_to_live_of_an_unknown_lease_answers_ttl_minus_one(self) -> None:
        """On a follower, a lease the leader does not know answers TTL -1, as on the leader
        (etcd leasehttp maps 404 to ErrLeaseNotFound)."""
        self.member.follow(OTHER)
        d = self.service.time_to_live(pb.LeaseTimeToLiveRequest(ID=99), CTX)
        self.transport.answer(NOT_FOUND)
        self.assertEqual(self.successResultOf(d), pb.LeaseTimeToLiveResponse(
            header=self.header_at(2), ID=99, TTL=-1))

    def test_follower_without_a_leader_fails(self) -> None:
        """With no leader known TimeToLive fails with the no-leader error."""
        self.member.follow(0)
        f = self.failureResultOf(self.service.time_to_live(pb.LeaseTimeToLiveRequest(ID=7),
                                                           CTX))
        self.assertEqual(status_for(f.value), (Status.UNAVAILABLE, "etcdserver: no leader"))


class WaitAppliedTests(LeaseHostTestCase):
    """etcd 3.4 `waitAppliedIndex`: the leader applies what it committed before it
    renews or answers a TTL query, so a lease granted through another member is known."""

    def test_renew_on_the_leader_waits_for_applied_entries(self) -> None:
        """A renewal on a leader that is behind on applying answers only once caught up."""
        self.become_leader()
        self.grant(7, 10)
        self.member.behind = True
        d = self.host.renew(7)
        self.assertNoResult(d)
        self.member.catch_up()
        self.assertEqual(self.successResultOf(d), 10)

    def test_renew_fails_when_applying_takes_too_long(self) -> None:
        """The wait's timeout reaches the client as etcd's error."""
        self.become_leader()
        self.grant(7, 10)
        self.member.behind = True
        d = self.host.renew(7)
        self.member.catch_up(TimeoutWaitAppliedIndexError())
        f = self.failureResultOf(d, TimeoutWaitAppliedIndexError)
        self.assertEqual(status_for(f.value), (
            Status.UNAVAILABLE,
            "etcdserver: request timed out, waiting for the applied index took too long"))

    def test_forwarded_renew_waits_too(self) -> None:
        """A renewal forwarded by a follower waits on the leader as well."""
        self.become_leader()
        self.grant(7, 10)
        self.member.behind = True
        d = maybeDeferred(self.host.handle_call, OTHER, "lease_renew", _ID.pack(7))
        self.assertNoResult(d)
        self.member.catch_up()
        self.assertEqual(_ID.unpack(self.successResultOf(d))[0], 10)

    def test_time_to_live_on_a_leader_not_yet_promoted_waits_for_promotion(self) -> None:
        """A TTL query reaching a new leader before its lessor is promoted is answered
        once it is, not refused."""
        self.grant(7, 10)
        self.member.lead()
        d = self.host.time_to_live(pb.LeaseTimeToLiveRequest(ID=7))
        self.assertNoResult(d)
        self.host.leader_entry_applied()
        self.clock.advance(0.05)
        self.assertEqual(self.successResultOf(d).grantedTTL, 10)
