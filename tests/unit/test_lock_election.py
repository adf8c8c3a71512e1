"""The v3lock and v3election services (`etcdd/api/lock.py`, `election.py`) over a stateful
in-memory `ILocalClient`: etcd 3.4 mutex.go/election.go behaviour (keys, txns, waiting
in create-revision order, cancellation clean-up) and the exact wire errors."""
from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from etcdd.api.concurrency import (ILocalClient, IWatchHandle, KeyWatch, owner_key,
                                   prefix_end)
from etcdd.api.election import ElectionService
from etcdd.api.lock import LockService
from etcdd.api.router import (CallContext, IServerStream, IStreamHandler, Router, StreamMethod,
                              UnaryMethod)
from etcdd.api.rpctypes import GrpcError, Status, status_for
from etcdd.proto import kv_pb2, rpc_pb2 as pb
from etcdd.proto import v3election_pb2 as epb
from etcdd.proto import v3lock_pb2 as lockpb
from tests.unit.watch_fakes import FakeStream
from etcdd.server.errors import (ElectionNoLeaderError, ElectionNotLeaderError,
                                 LeaseNotFoundError, MissingLeaderKeyError)

CTX = CallContext(path="/v3lockpb.Lock/Lock")
PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE
LEASE_A, LEASE_B, LEASE_C = 0x694D71, 0x694D72, 0x694D73

_COMPARE = {pb.Compare.EQUAL: lambda a, b: a == b, pb.Compare.NOT_EQUAL: lambda a, b: a != b,
            pb.Compare.GREATER: lambda a, b: a > b, pb.Compare.LESS: lambda a, b: a < b}
_TARGET = {pb.Compare.VERSION: "version", pb.Compare.CREATE: "create_revision",
           pb.Compare.MOD: "mod_revision", pb.Compare.VALUE: "value",
           pb.Compare.LEASE: "lease"}


@implementer(IWatchHandle)
class FakeWatch:
    def __init__(self, client: FakeLocalClient, key: bytes, range_end: bytes,
                 on_events: Callable[[list[Any]], None]) -> None:
        self.client, self.key, self.range_end, self.on_events = client, key, range_end, on_events

    def matches(self, key: bytes) -> bool:
        return in_range(key, self.key, self.range_end)

    def cancel(self) -> None:
        if self in self.client.watches:
            self.client.watches.remove(self)


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    if not end:
        return key == start
    return key >= start and (end == b"\x00" or key < end)


@implementer(ILocalClient)
class FakeLocalClient:
    """A dict of live keys and a list of committed revisions, one member's view.

    Writes apply at call time and notify watches at once (as the applier does); the
    answers arrive on the next clock turn (`pump()`), as from the real member.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.revision = 1
        self.compact_revision = 0
        self.kvs: dict[bytes, kv_pb2.KeyValue] = {}
        self.history: list[tuple[int, list[kv_pb2.Event]]] = []
        self.leases: set[int] = {LEASE_A, LEASE_B, LEASE_C}
        self.next_lease = 0x7000
        self.watches: list[FakeWatch] = []
        self.fail_reads: Exception | None = None
        self.hold: set[str] = set()                 # these ops' answers wait in `held`
        self.held: list[Callable[[], None]] = []

    # ILocalClient

    def header(self) -> pb.ResponseHeader:
        return pb.ResponseHeader(cluster_id=11, member_id=22, revision=self.revision,
                                 raft_term=3)

    def range(self, req: pb.RangeRequest) -> Deferred:
        if self.fail_reads is not None:
            return self._later(fail(self.fail_reads))
        return self._answer(self._range(req), "range")

    def put(self, req: pb.PutRequest) -> Deferred:
        return self._write(lambda w: w.put(req), "put")

    def delete_range(self, req: pb.DeleteRangeRequest) -> Deferred:
        def apply(w: _Writes) -> pb.DeleteRangeResponse:
            return pb.DeleteRangeResponse(deleted=w.delete(req.key, req.range_end))
        return self._write(apply, "delete_range")

    def txn(self, req: pb.TxnRequest) -> Deferred:
        def apply(w: _Writes) -> pb.TxnResponse:
            succeeded = all(self._holds(c) for c in req.compare)
            resp = pb.TxnResponse(succeeded=succeeded)
            for op in (req.success if succeeded else req.failure):
                kind = op.WhichOneof("request")
                if kind == "request_range":
                    resp.responses.add(response_range=self._range(op.request_range))
                elif kind == "request_put":
                    resp.responses.add(response_put=w.put(op.request_put))
                else:
                    deleted = w.delete(op.request_delete_range.key,
                                       op.request_delete_range.range_end)
                    resp.responses.add(
                        response_delete_range=pb.DeleteRangeResponse(deleted=deleted))
            return resp
        return self._write(apply, "txn")

    def lease_grant(self, req: pb.LeaseGrantRequest) -> Deferred:
        lease_id = req.ID or self.next_lease
        self.next_lease += 1
        self.leases.add(lease_id)
        return self._answer(pb.LeaseGrantResponse(header=self.header(), ID=lease_id,
                                                  TTL=req.TTL))

    def watch(self, key: bytes, range_end: bytes, start_rev: int,
              on_events: Callable[[list[Any]], None],
              on_compacted: Callable[[int], None]) -> FakeWatch:
        handle = FakeWatch(self, key, range_end, on_events)
        if start_rev and start_rev < self.compact_revision:
            on_compacted(self.compact_revision)
            return handle
        self.watches.append(handle)
        for rev, events in self.history:
            if rev >= start_rev and handle in self.watches:
                mine = [e for e in events if handle.matches(e.kv.key)]
                if mine:
                    on_events(mine)
        return handle

    # test controls

    def revoke(self, lease_id: int) -> None:
        """Revoke a lease: its keys go in one revision, as the lessor's revoke does."""
        self.leases.discard(lease_id)
        keys = [k for k, kv in self.kvs.items() if kv.lease == lease_id]
        writes = _Writes(self)
        for key in keys:
            writes.delete(key, b"")
        writes.commit()

    def compact(self, revision: int) -> None:
        self.compact_revision = revision
        self.history = [(r, e) for r, e in self.history if r > revision]

    # internals

    def _answer(self, resp: Any, op: str = "") -> Deferred:
        d: Deferred = Deferred()
        if op in self.hold:
            self.held.append(lambda: d.callback(resp))
            return d

        def fire() -> None:
            if not d.called:
                d.callback(resp)
        self.clock.callLater(0, fire)
        return d

    def _later(self, result: Deferred) -> Deferred:
        d: Deferred = Deferred()
        self.clock.callLater(0, lambda: result.chainDeferred(d))
        return d

    def _write(self, apply: Callable[[_Writes], Any], op: str) -> Deferred:
        writes = _Writes(self)
        try:
            resp = apply(writes)
        except Exception as e:
            return self._later(fail(e))
        writes.commit()
        resp.header.CopyFrom(self.header())
        return self._answer(resp, op)

    def _holds(self, cmp: pb.Compare) -> bool:
        kv = self.kvs.get(cmp.key, kv_pb2.KeyValue())
        field = _TARGET[cmp.target]
        return _COMPARE[cmp.result](getattr(kv, field), getattr(cmp, field))

    def _range(self, req: pb.RangeRequest) -> pb.RangeResponse:
        kvs = [kv for k, kv in self.kvs.items() if in_range(k, req.key, req.range_end)
               and not (req.max_create_revision and kv.create_revision > req.max_create_revision)]
        if req.sort_target == pb.RangeRequest.CREATE:
            kvs.sort(key=lambda kv: kv.create_revision,
                     reverse=req.sort_order == pb.RangeRequest.DESCEND)
        else:
            kvs.sort(key=lambda kv: kv.key)
        count = len(kvs)
        if req.limit:
            kvs = kvs[:req.limit]
        return pb.RangeResponse(header=self.header(), kvs=kvs, count=count,
                                more=len(kvs) < count)


class _Writes:
    """The writes of one request: one new revision for all of them."""

    def __init__(self, client: FakeLocalClient) -> None:
        self.client = client
        self.rev = client.revision + 1
        self.events: list[kv_pb2.Event] = []

    def put(self, req: pb.PutRequest) -> pb.PutResponse:
        c = self.client
        if req.lease and req.lease not in c.leases:
            raise LeaseNotFoundError()
        old = c.kvs.get(req.key)
        kv = kv_pb2.KeyValue(key=req.key, value=req.value, lease=req.lease,
                             mod_revision=self.rev,
                             create_revision=old.create_revision if old else self.rev,
                             version=old.version + 1 if old else 1)
        c.kvs[req.key] = kv
        self.events.append(kv_pb2.Event(type=PUT, kv=kv))
        return pb.PutResponse()

    def delete(self, key: bytes, range_end: bytes) -> int:
        c = self.client
        keys = sorted(k for k in c.kvs if in_range(k, key, range_end))
        for k in keys:
            del c.kvs[k]
            self.events.append(kv_pb2.Event(type=DELETE,
                                             kv=kv_pb2.KeyValue(key=k, mod_revision=self.rev)))
        return len(keys)

    def commit(self) -> None:
        c = self.client
        if not self.events:
            return
        c.revision = self.rev
        c.history.append((self.rev, self.events))
        for watch in list(c.watches):
            mine = [e for e in self.events if watch.matches(e.kv.key)]
            if mine and watch in c.watches:
                watch.on_events(mine)


class _ServiceTestCase(SynchronousTestCase):

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = FakeLocalClient(self.clock)
        self.router = Router()
        LockService(self.client).register(self.router)
        ElectionService(self.client).register(self.router)

    def call(self, path: str, req: Any) -> Deferred:
        method = self.router.lookup(path)
        assert isinstance(method, UnaryMethod)
        return method.handler(req, CallContext(path=path))

    def pump(self) -> None:
        """Let every answer in flight arrive (and the ones those calls make)."""
        while self.clock.getDelayedCalls():
            self.clock.advance(0)

    def answer(self, d: Deferred) -> Any:
        self.pump()
        return self.successResultOf(d)

    def assert_wire_error(self, d: Deferred, message: str) -> None:
        """`d` failed as etcd's v3lock/v3election do: code Unknown, etcd's message."""
        self.pump()
        error = self.failureResultOf(d, GrpcError).value
        self.assertEqual((error.code, error.message), (Status.UNKNOWN, message))

    def key_of(self, key: bytes) -> kv_pb2.KeyValue | None:
        return self.client.kvs.get(key)

    def put(self, key: bytes, value: bytes = b"v") -> None:
        self.answer(self.client.put(pb.PutRequest(key=key, value=value)))


class FakeClientTests(_ServiceTestCase):

    def test_fake_provides_the_interfaces(self) -> None:
        """The fake client, its watch handles and the fake stream satisfy the interfaces."""
        verifyObject(ILocalClient, self.client)
        verifyObject(IWatchHandle, self.client.watch(b"k", b"", 0, lambda e: None,
                                                     lambda r: None))
        verifyObject(IServerStream, FakeStream())

    def test_prefix_end(self) -> None:
        """prefix_end increments the last byte below 0xff, as clientv3 GetPrefixRangeEnd."""
        self.assertEqual(prefix_end(b"lock/"), b"lock0")
        self.assertEqual(prefix_end(b"a\xff"), b"b")
        self.assertEqual(prefix_end(b"\xff\xff"), b"\x00")

    def test_owner_key_is_lease_in_hex(self) -> None:
        """The session key is the prefix plus the lease ID in lower-case hex (Go's %x)."""
        self.assertEqual(owner_key(b"l/", 0x694D71), b"l/694d71")

    def test_key_watch_stopped_during_replay_cancels_its_handle(self) -> None:
        """A KeyWatch whose callback stops it while history replays leaves no watch."""
        self.put(b"k")
        self.put(b"k")
        seen: list[int] = []

        def on_events(events: list[Any]) -> bool:
            seen.append(events[0].kv.mod_revision)
            return True
        watch = KeyWatch(self.client, b"k", 1, on_events, lambda r: None)
        self.assertEqual((seen, watch.stopped, self.client.watches), ([2], True, []))


class LockTests(_ServiceTestCase):

    def lock(self, lease: int, name: bytes = b"mylock") -> Deferred:
        return self.call("/v3lockpb.Lock/Lock", lockpb.LockRequest(name=name, lease=lease))

    def unlock(self, key: bytes) -> Any:
        return self.answer(self.call("/v3lockpb.Lock/Unlock", lockpb.UnlockRequest(key=key)))

    def test_register_routes_lock_and_unlock(self) -> None:
        """register() adds etcd's Lock and Unlock paths as unary methods."""
        for name, request_type in (("Lock", lockpb.LockRequest),
                                   ("Unlock", lockpb.UnlockRequest)):
            method = self.router.lookup("/v3lockpb.Lock/" + name)
            self.assertIsInstance(method, UnaryMethod)
            self.assertIs(method.request_type, request_type)

    def test_lock_acquired_at_once(self) -> None:
        """An uncontended Lock answers with `<name>/<lease %x>`, written with the lease."""
        resp = self.answer(self.lock(LEASE_A))
        self.assertEqual(resp.key, b"mylock/694d71")
        self.assertEqual(resp.header, self.client.header())
        kv = self.key_of(b"mylock/694d71")
        self.assertEqual((kv.value, kv.lease, kv.create_revision), (b"", LEASE_A, 2))

    def test_second_lock_waits_until_unlock(self) -> None:
        """A second Lock waits while the first holds the lock and gets it on Unlock."""
        first = self.answer(self.lock(LEASE_A))
        second = self.lock(LEASE_B)
        self.pump()
        self.assertNoResult(second)
        unlocked = self.unlock(first.key)
        resp = self.answer(second)
        self.assertEqual(resp.key, b"mylock/694d72")
        self.assertEqual(resp.header.revision, unlocked.header.revision)
        self.assertEqual(self.client.watches, [])

    def test_waiter_gets_lock_when_holder_lease_is_revoked(self) -> None:
        """A waiter gets the lock when the holder's key goes with its lease."""
        self.answer(self.lock(LEASE_A))
        second = self.lock(LEASE_B)
        self.pump()
        self.client.revoke(LEASE_A)
        self.assertEqual(self.answer(second).key, b"mylock/694d72")

    def test_three_waiters_in_create_revision_order(self) -> None:
        """Waiters get the lock in the order their keys were created."""
        a = self.answer(self.lock(LEASE_A))
        b, c = self.lock(LEASE_B), self.lock(LEASE_C)
        self.pump()
        self.unlock(a.key)
        b_resp = self.answer(b)
        self.assertNoResult(c)
        self.unlock(b_resp.key)
        self.assertEqual(self.answer(c).key, b"mylock/694d73")

    def test_waiter_whose_predecessor_leaves_still_waits_for_holder(self) -> None:
        """A waiter whose predecessor gives up waits on for the holder, not past it."""
        self.answer(self.lock(LEASE_A))
        self.lock(LEASE_B)
        c = self.lock(LEASE_C)
        self.pump()
        self.answer(self.client.delete_range(pb.DeleteRangeRequest(key=b"mylock/694d72")))
        self.assertNoResult(c)
        self.client.revoke(LEASE_A)
        self.assertEqual(self.answer(c).key, b"mylock/694d73")

    def test_cancelling_a_waiting_lock_deletes_its_key_and_lets_the_next_in(self) -> None:
        """Cancelling a waiting Lock stops its watch and deletes its key; the next
        waiter then gets the lock when the holder unlocks."""
        a = self.answer(self.lock(LEASE_A))
        b, c = self.lock(LEASE_B), self.lock(LEASE_C)
        self.pump()
        b.cancel()
        self.failureResultOf(b, CancelledError)
        self.pump()
        self.assertIsNone(self.key_of(b"mylock/694d72"))
        self.assertNoResult(c)
        self.unlock(a.key)
        self.assertEqual(self.answer(c).key, b"mylock/694d73")
        self.assertEqual(self.client.watches, [])

    def test_cancel_while_txn_in_flight_deletes_key_when_it_answers(self) -> None:
        """A Lock cancelled before its txn answered deletes the key the txn wrote."""
        self.answer(self.lock(LEASE_A))
        b = self.lock(LEASE_B)
        self.assertIsNotNone(self.key_of(b"mylock/694d72"))   # applied, answer pending
        b.cancel()
        self.pump()
        self.failureResultOf(b, CancelledError)
        self.assertIsNone(self.key_of(b"mylock/694d72"))
        self.assertEqual((self.client.watches, self.clock.getDelayedCalls()), ([], []))

    def test_lock_again_with_the_same_lease_reuses_the_key(self) -> None:
        """A second Lock through the holder's lease answers at once with the same key."""
        first = self.answer(self.lock(LEASE_A))
        again = self.answer(self.lock(LEASE_A))
        self.assertEqual(again.key, first.key)
        self.assertEqual(self.key_of(first.key).version, 1)

    def test_lock_with_unknown_lease(self) -> None:
        """A Lock through an unknown lease fails as etcd's does: Unknown, lease not found."""
        self.assert_wire_error(self.lock(0x999), "etcdserver: requested lease not found")
        self.assertEqual(self.client.kvs, {})

    def test_lock_without_lease_uses_a_60s_session_lease(self) -> None:
        """A Lock with lease 0 writes its key with a fresh 60 s lease (session.go)."""
        resp = self.answer(self.lock(0))
        kv = self.key_of(resp.key)
        self.assertEqual(resp.key, b"mylock/" + format(kv.lease, "x").encode())
        self.assertIn(kv.lease, self.client.leases)

    def test_unlock_deletes_the_key(self) -> None:
        """Unlock deletes the key and answers with the delete's header."""
        resp = self.answer(self.lock(LEASE_A))
        unlocked = self.unlock(resp.key)
        self.assertEqual(unlocked.header, self.client.header())
        self.assertEqual(self.client.kvs, {})

    def test_compaction_while_waiting_fails_and_releases(self) -> None:
        """A waiter whose watch start is compacted away fails with etcd's compacted
        message (code Unknown) and deletes its key, as mutex.go does."""
        self.answer(self.lock(LEASE_A))
        self.client.hold = {"range"}
        b = self.lock(LEASE_B)
        self.pump()                       # B's txn answered; its read waits in `held`
        self.client.hold = set()
        self.put(b"other")
        self.put(b"other")
        self.client.compact(self.client.revision)
        self.client.held.pop()()
        self.assert_wire_error(b, "etcdserver: mvcc: required revision has been compacted")
        self.assertIsNone(self.key_of(b"mylock/694d72"))

    def test_locks_of_different_names_do_not_wait_for_each_other(self) -> None:
        """Only keys under the lock's own `<name>/` prefix are waited for."""
        self.answer(self.lock(LEASE_A, b"one"))
        self.assertEqual(self.answer(self.lock(LEASE_B, b"two")).key, b"two/694d72")


class ElectionTests(_ServiceTestCase):

    def campaign(self, lease: int, value: bytes, name: bytes = b"elect") -> Deferred:
        return self.call("/v3electionpb.Election/Campaign",
                         epb.CampaignRequest(name=name, lease=lease, value=value))

    def proclaim(self, leader: epb.LeaderKey, value: bytes) -> Deferred:
        return self.call("/v3electionpb.Election/Proclaim",
                         epb.ProclaimRequest(leader=leader, value=value))

    def leader(self, name: bytes = b"elect") -> Deferred:
        return self.call("/v3electionpb.Election/Leader", epb.LeaderRequest(name=name))

    def resign(self, leader: epb.LeaderKey) -> Deferred:
        return self.call("/v3electionpb.Election/Resign", epb.ResignRequest(leader=leader))

    def observe(self, name: bytes = b"elect") -> tuple[FakeStream, Any]:
        method = self.router.lookup("/v3electionpb.Election/Observe")
        assert isinstance(method, StreamMethod)
        stream = FakeStream()
        handler = method.handler(CallContext(path="/v3electionpb.Election/Observe"), stream)
        verifyObject(IStreamHandler, handler)
        handler.message_received(epb.LeaderRequest(name=name))
        handler.end_of_input()
        self.pump()
        return stream, handler

    def values(self, stream: FakeStream) -> list[bytes]:
        return [resp.kv.value for resp in stream.sent]

    def test_register_routes_the_five_methods(self) -> None:
        """register() adds Campaign/Proclaim/Leader/Resign as unary and Observe as stream."""
        for name in ("Campaign", "Proclaim", "Leader", "Resign"):
            self.assertIsInstance(self.router.lookup("/v3electionpb.Election/" + name),
                                  UnaryMethod)
        self.assertIsInstance(self.router.lookup("/v3electionpb.Election/Observe"),
                              StreamMethod)

    def test_campaign_wins_at_once(self) -> None:
        """An uncontended Campaign answers with its LeaderKey and the txn's header."""
        resp = self.answer(self.campaign(LEASE_A, b"alpha"))
        self.assertEqual(resp.leader, epb.LeaderKey(name=b"elect", key=b"elect/694d71",
                                                    rev=2, lease=LEASE_A))
        self.assertEqual(resp.header.revision, 2)
        self.assertEqual(self.key_of(b"elect/694d71").value, b"alpha")

    def test_second_campaign_waits_until_resign(self) -> None:
        """A second candidate wins once the leader resigns, with its first txn's header."""
        first = self.answer(self.campaign(LEASE_A, b"alpha"))
        second = self.campaign(LEASE_B, b"beta")
        self.pump()
        self.assertNoResult(second)
        self.answer(self.resign(first.leader))
        self.assertIsNone(self.key_of(b"elect/694d71"))
        resp = self.answer(second)
        self.assertEqual((resp.leader.key, resp.leader.rev, resp.header.revision),
                         (b"elect/694d72", 3, 3))
        self.assertEqual(self.client.watches, [])

    def test_leader_is_the_first_created_key(self) -> None:
        """Leader answers with the key-value of the oldest candidate."""
        self.answer(self.campaign(LEASE_A, b"alpha"))
        self.campaign(LEASE_B, b"beta")
        resp = self.answer(self.leader())
        self.assertEqual((resp.kv.key, resp.kv.value), (b"elect/694d71", b"alpha"))
        self.assertEqual(resp.header, self.client.header())

    def test_leader_without_candidates(self) -> None:
        """Leader of an empty election fails with Unknown "election: no leader"."""
        self.assert_wire_error(self.leader(), "election: no leader")

    def test_proclaim_replaces_the_value(self) -> None:
        """The leader's Proclaim rewrites its key's value, keeping its create revision."""
        won = self.answer(self.campaign(LEASE_A, b"alpha"))
        resp = self.answer(self.proclaim(won.leader, b"alpha2"))
        kv = self.key_of(won.leader.key)
        self.assertEqual((kv.value, kv.create_revision, kv.lease), (b"alpha2", 2, LEASE_A))
        self.assertEqual(resp.header.revision, 3)

    def test_proclaim_after_resign_is_not_leader(self) -> None:
        """Proclaim by a leader whose key is gone fails with Unknown "election: not leader"."""
        won = self.answer(self.campaign(LEASE_A, b"alpha"))
        self.answer(self.resign(won.leader))
        self.assert_wire_error(self.proclaim(won.leader, b"x"), "election: not leader")
        self.assertEqual(self.client.kvs, {})

    def test_proclaim_with_a_recreated_key_is_not_leader(self) -> None:
        """Proclaim with a stale create revision fails even though the key exists."""
        won = self.answer(self.campaign(LEASE_A, b"alpha"))
        self.answer(self.resign(won.leader))
        self.answer(self.campaign(LEASE_A, b"again"))
        self.assert_wire_error(self.proclaim(won.leader, b"x"), "election: not leader")
        self.assertEqual(self.key_of(won.leader.key).value, b"again")

    def test_proclaim_and_resign_need_the_leader_field(self) -> None:
        """Proclaim and Resign without `leader` fail with etcd's ErrMissingLeaderKey."""
        for path, req in (("Proclaim", epb.ProclaimRequest(value=b"x")),
                          ("Resign", epb.ResignRequest())):
            self.assert_wire_error(self.call("/v3electionpb.Election/" + path, req),
                                   '"leader" field must be provided')

    def test_stale_resign_succeeds_without_deleting(self) -> None:
        """Resign by a stale LeaderKey answers OK and leaves the new key alone."""
        won = self.answer(self.campaign(LEASE_A, b"alpha"))
        self.answer(self.resign(won.leader))
        self.answer(self.campaign(LEASE_A, b"again"))
        resp = self.answer(self.resign(won.leader))
        self.assertEqual(resp.header, self.client.header())
        self.assertEqual(self.key_of(won.leader.key).value, b"again")

    def test_campaign_again_with_a_new_value_proclaims_it(self) -> None:
        """Campaigning again through the leader's lease proclaims the new value and
        keeps the original create revision."""
        first = self.answer(self.campaign(LEASE_A, b"alpha"))
        again = self.answer(self.campaign(LEASE_A, b"omega"))
        self.assertEqual(again.leader, first.leader)
        self.assertEqual(self.key_of(first.leader.key).value, b"omega")

    def test_cancelling_a_waiting_campaign_resigns(self) -> None:
        """A cancelled Campaign stops waiting and deletes its key."""
        self.answer(self.campaign(LEASE_A, b"alpha"))
        second = self.campaign(LEASE_B, b"beta")
        self.pump()
        second.cancel()
        self.failureResultOf(second, CancelledError)
        self.pump()
        self.assertIsNone(self.key_of(b"elect/694d72"))
        self.assertEqual((self.client.watches, self.clock.getDelayedCalls()), ([], []))

    def test_cancel_while_campaign_txn_in_flight_resigns_when_it_answers(self) -> None:
        """A Campaign cancelled before its txn answered deletes the key it wrote."""
        second = self.campaign(LEASE_B, b"beta")
        second.cancel()
        self.pump()
        self.failureResultOf(second, CancelledError)
        self.assertEqual(self.client.kvs, {})

    def test_campaign_with_unknown_lease(self) -> None:
        """A Campaign through an unknown lease fails with Unknown, lease not found."""
        self.assert_wire_error(self.campaign(0x999, b"v"),
                               "etcdserver: requested lease not found")

    def test_campaign_without_lease_uses_a_session_lease(self) -> None:
        """A Campaign with lease 0 answers with the fresh session lease in its LeaderKey."""
        resp = self.answer(self.campaign(0, b"v"))
        self.assertIn(resp.leader.lease, self.client.leases)
        self.assertEqual(self.key_of(resp.leader.key).lease, resp.leader.lease)

    def test_observe_streams_the_leader_and_each_change(self) -> None:
        """Observe sends the current leader, its value updates, and the next leader
        after a resign."""
        a = self.answer(self.campaign(LEASE_A, b"alpha"))
        b = self.campaign(LEASE_B, b"beta")
        stream, _ = self.observe()
        self.answer(self.proclaim(a.leader, b"alpha2"))
        self.answer(self.resign(a.leader))
        self.answer(b)
        self.assertEqual(self.values(stream), [b"alpha", b"alpha2", b"beta"])
        self.assertEqual([r.kv.key for r in stream.sent],
                         [b"elect/694d71", b"elect/694d71", b"elect/694d72"])
        self.assertFalse(stream.finished)

    def test_observe_waits_while_there_is_no_leader(self) -> None:
        """Observe of an empty election sends nothing until a candidate appears, then
        sends it with the header revision of its put."""
        stream, _ = self.observe()
        self.assertEqual(stream.sent, [])
        self.put(b"unrelated")
        self.answer(self.campaign(LEASE_A, b"alpha"))
        self.assertEqual(self.values(stream), [b"alpha"])
        self.assertEqual(stream.sent[0].header.revision, stream.sent[0].kv.mod_revision)
        self.answer(self.resign(epb.LeaderKey(key=b"elect/694d71", rev=3)))
        self.answer(self.campaign(LEASE_B, b"beta"))
        self.assertEqual(self.values(stream), [b"alpha", b"beta"])

    def test_observe_cancelled_leaves_no_watch(self) -> None:
        """A cancelled Observe stops its watch and sends nothing more."""
        a = self.answer(self.campaign(LEASE_A, b"alpha"))
        stream, handler = self.observe()
        handler.cancelled()
        self.assertEqual(self.client.watches, [])
        self.answer(self.proclaim(a.leader, b"alpha2"))
        self.assertEqual(self.values(stream), [b"alpha"])

    def test_observe_on_a_stream_that_is_not_writable_keeps_only_the_newest(self) -> None:
        """While the client does not read, Observe keeps just the newest leader value
        and waits for writability once; it sends that value when the stream drains."""
        a = self.answer(self.campaign(LEASE_A, b"alpha"))
        stream, _ = self.observe()
        stream.writable = False
        for i in range(100):
            self.answer(self.proclaim(a.leader, b"v%d" % i))
        self.assertEqual(self.values(stream), [b"alpha"])
        self.assertEqual(len(stream.callbacks), 1)
        stream.drain()
        self.assertEqual(self.values(stream), [b"alpha", b"v99"])
        self.answer(self.proclaim(a.leader, b"next"))
        self.assertEqual(self.values(stream), [b"alpha", b"v99", b"next"])

    def test_observe_ends_ok_when_a_read_fails(self) -> None:
        """A failed read ends Observe with OK, as etcd's observe closes its channel."""
        self.client.fail_reads = LeaseNotFoundError()
        stream, _ = self.observe()
        self.assertEqual((stream.finished, stream.error), (True, None))
        self.assertEqual(self.client.watches, [])

    def test_observe_ends_ok_when_its_watch_is_compacted(self) -> None:
        """Observe whose leader watch would start before the compaction ends with OK
        after sending the leader it read, as etcd's observe closes its channel."""
        a = self.answer(self.campaign(LEASE_A, b"alpha"))
        self.client.hold = {"range"}
        stream, _ = self.observe()
        self.client.hold = set()
        self.answer(self.proclaim(a.leader, b"alpha2"))
        self.answer(self.proclaim(a.leader, b"alpha3"))
        self.client.compact(self.client.revision)
        self.client.held.pop()()
        self.assertEqual(self.values(stream), [b"alpha"])
        self.assertEqual((stream.finished, stream.error, self.client.watches), (True, None, []))

    def test_cancel_during_the_proclaim_of_a_new_value_resigns(self) -> None:
        """A Campaign cancelled while proclaiming its new value deletes its key."""
        self.answer(self.campaign(LEASE_A, b"alpha"))
        self.client.hold = {"txn"}
        again = self.campaign(LEASE_A, b"omega")
        self.client.held.pop()()          # the txn answers: the Proclaim is in flight
        self.assertEqual(len(self.client.held), 1)
        again.cancel()                    # resigns at once: the txn told our revision
        held, self.client.hold = self.client.held, set()
        for answer in held:               # the Proclaim's answer, then the Resign's
            answer()
        self.pump()
        self.failureResultOf(again, CancelledError)
        self.assertEqual((self.client.kvs, self.client.watches), ({}, []))

    def test_observe_without_a_request_fails_as_grpc_go(self) -> None:
        """A client that half-closes without its request gets Unknown "EOF"."""
        method = self.router.lookup("/v3electionpb.Election/Observe")
        stream = FakeStream()
        method.handler(CallContext(path="/v3electionpb.Election/Observe"), stream).end_of_input()
        self.assertEqual(status_for(stream.error), (Status.UNKNOWN, "EOF"))


class WireErrorTests(SynchronousTestCase):

    def test_election_errors_travel_as_unknown_with_etcd_messages(self) -> None:
        """The election errors' rows give etcd 3.4's code (Unknown) and exact strings."""
        self.assertEqual(status_for(ElectionNotLeaderError()),
                         (Status.UNKNOWN, "election: not leader"))
        self.assertEqual(status_for(ElectionNoLeaderError()),
                         (Status.UNKNOWN, "election: no leader"))
        self.assertEqual(status_for(MissingLeaderKeyError()),
                         (Status.UNKNOWN, '"leader" field must be provided'))
