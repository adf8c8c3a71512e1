"""Leases applied on the disk thread (`etcdd/server/entries.py` EntryApplier, the lease
bookkeeping of `etcdd/mvcc/store.py` and `etcdd/lease/backend.py`) on a real KVStore,
against etcd 3.4 `etcdserver/apply.go` (LeaseGrant, LeaseRevoke, LeaseCheckpoint, Put's
lease check) and `lease/lessor.go` (Grant's minimum TTL and refusals, Revoke deleting
the sorted keys in one txn).

Every request travels as a committed raft entry through `EntryApplier.apply`, as the
member applies it; a seeded random sequence is checked against a dict model and the
`leaseKeys` invariant after every batch.
"""
from __future__ import annotations

import random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from etcdd.lease import backend as lease_store
from etcdd.lease.lessor import MAX_LEASE_TTL_SECONDS
from etcdd.mvcc.keyindex import SHORT_KEY_MAX, index_key
from etcdd.proto import raft_internal_pb2 as ipb, raft_pb2, rpc_pb2 as pb
from etcdd.server.apply import Applier
from etcdd.server.cluster import ClusterState
from etcdd.server.entries import AppliedBatch, EntryApplier
from etcdd.server.errors import (KeyNotFoundError, LeaseExistsError, LeaseNotFoundError,
                                 LeaseTTLTooLargeError)
from tests.unit.stores import open_store

MIN_TTL = 5
LONG_A = b"b" + b"L" * SHORT_KEY_MAX + b"1"     # stored under a hashed index key
LONG_B = b"b" + b"L" * SHORT_KEY_MAX + b"2"


def put_op(key: bytes, value: bytes = b"v", lease: int = 0) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease))


def del_op(key: bytes, range_end: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key,
                                                                   range_end=range_end))


class LeaseApplyTestCase(SynchronousTestCase):
    """A fresh store and an EntryApplier; requests go in as committed raft entries."""

    def setUp(self) -> None:
        self.store = open_store(self)
        self.dbs = self.store.backend.dbs
        self.entries = EntryApplier(self.store, ClusterState(self.dbs), Applier(),
                                    min_lease_ttl_seconds=MIN_TTL)
        self.index = 0

    # -- applying -------------------------------------------------------------------------

    def apply(self, *requests: tuple[str, Any]) -> AppliedBatch:
        """Apply `(kind, request)` pairs as consecutive entries in one batch."""
        entries = []
        for kind, req in requests:
            self.index += 1
            ir = ipb.InternalRaftRequest(header=ipb.RequestHeader(ID=self.index))
            getattr(ir, kind).CopyFrom(req)
            entries.append(raft_pb2.Entry(Index=self.index, Term=2,
                                          Type=raft_pb2.EntryNormal,
                                          Data=ir.SerializeToString()))
        return self.entries.apply(entries)

    def one(self, kind: str, req: Any) -> tuple[Any, AppliedBatch]:
        batch = self.apply((kind, req))
        [(_, result)] = batch.results
        return result, batch

    def grant(self, lease_id: int, ttl: int = 10) -> Any:
        return self.one("lease_grant", pb.LeaseGrantRequest(ID=lease_id, TTL=ttl))[0]

    def revoke(self, lease_id: int) -> tuple[Any, AppliedBatch]:
        return self.one("lease_revoke", pb.LeaseRevokeRequest(ID=lease_id))

    def put(self, key: bytes, value: bytes = b"v", lease: int = 0, **kw: Any) -> Any:
        return self.one("put", pb.PutRequest(key=key, value=value, lease=lease, **kw))[0]

    def delete(self, key: bytes, range_end: bytes = b"") -> Any:
        return self.one("delete_range", pb.DeleteRangeRequest(key=key, range_end=range_end))[0]

    # -- reading back -----------------------------------------------------------------------

    def live(self) -> dict[bytes, Any]:
        return {kv.key: kv for kv in self.store.range(b"\x00", b"\x00").kvs}

    def lease_keys(self) -> dict[int, list[bytes]]:
        """The `leaseKeys` database: lease ID -> attached index keys (sorted)."""
        out: dict[int, list[bytes]] = {}
        with self.store.backend.begin_read() as txn:
            for k, ik in txn.cursor(self.dbs[b"leaseKeys"]).iternext():
                out.setdefault(int.from_bytes(k, "big", signed=True), []).append(ik)
        return {lease_id: sorted(iks) for lease_id, iks in out.items()}

    def rows(self) -> dict[int, tuple[int, int]]:
        with self.store.backend.begin_read() as txn:
            return {i: (ttl, rem) for i, ttl, rem in lease_store.rows(txn, self.dbs)}

    def assert_invariant(self, msg: str = "") -> None:
        """lease/backend.py: each live key naming lease L has one `leaseKeys` entry under
        L, no other entries exist, and every such L is granted."""
        want: dict[int, list[bytes]] = {}
        for key, kv in self.live().items():
            if kv.lease:
                want.setdefault(kv.lease, []).append(index_key(key))
        self.assertEqual(self.lease_keys(), {i: sorted(iks) for i, iks in want.items()}, msg)
        self.assertLessEqual(set(want), set(self.rows()), msg)


class GrantTests(LeaseApplyTestCase):

    def test_grant_writes_the_row_and_answers(self) -> None:
        """A grant writes the lease row, answers ID, TTL and the current revision, and
        hands the lessor its grant; the store revision does not move."""
        result, batch = self.one("lease_grant", pb.LeaseGrantRequest(ID=7, TTL=10))
        want = pb.LeaseGrantResponse(ID=7, TTL=10)
        want.header.revision = 1
        self.assertEqual(result, want)
        self.assertEqual(self.rows(), {7: (10, 0)})
        self.assertEqual(batch.lease_ops, [("grant", 7, 10)])
        self.assertEqual((batch.changes, self.store.current_revision()), ([], 1))

    def test_grant_raises_ttl_to_the_minimum(self) -> None:
        """A TTL below the minimum is raised to it (etcd lessor.Grant minLeaseTTL)."""
        result, batch = self.one("lease_grant", pb.LeaseGrantRequest(ID=7, TTL=2))
        self.assertEqual(result.TTL, MIN_TTL)
        self.assertEqual(self.rows(), {7: (MIN_TTL, 0)})
        self.assertEqual(batch.lease_ops, [("grant", 7, MIN_TTL)])

    def test_grant_of_an_existing_id_is_refused(self) -> None:
        """Granting an ID in use answers LeaseExistsError and changes nothing."""
        self.grant(7, 10)
        result, batch = self.one("lease_grant", pb.LeaseGrantRequest(ID=7, TTL=60))
        self.assertIsInstance(result, LeaseExistsError)
        self.assertEqual((self.rows(), batch.lease_ops), ({7: (10, 0)}, []))

    def test_grant_over_the_maximum_ttl_is_refused(self) -> None:
        """A TTL over MaxLeaseTTL answers LeaseTTLTooLargeError; the maximum itself is
        granted."""
        result, batch = self.one("lease_grant",
                                 pb.LeaseGrantRequest(ID=7, TTL=MAX_LEASE_TTL_SECONDS + 1))
        self.assertIsInstance(result, LeaseTTLTooLargeError)
        self.assertEqual((self.rows(), batch.lease_ops), ({}, []))
        self.assertEqual(self.grant(8, MAX_LEASE_TTL_SECONDS).TTL, MAX_LEASE_TTL_SECONDS)

    def test_leader_entry_is_reported(self) -> None:
        """A new leader's empty entry is flagged for the lessor's promotion."""
        self.index += 1
        batch = self.entries.apply([raft_pb2.Entry(Index=self.index, Term=3,
                                                   Type=raft_pb2.EntryNormal)])
        self.assertTrue(batch.leader_entry)
        self.assertFalse(self.apply(("lease_grant", pb.LeaseGrantRequest(ID=1, TTL=9)))
                         .leader_entry)


class AttachTests(LeaseApplyTestCase):

    def setUp(self) -> None:
        super().setUp()
        self.grant(7)
        self.grant(8)

    def test_put_with_a_lease_attaches_the_key(self) -> None:
        """A put with a lease records it on the key and under the lease in leaseKeys."""
        self.put(b"a", lease=7)
        self.put(LONG_A, lease=7)
        self.assertEqual(self.live()[b"a"].lease, 7)
        self.assertEqual(self.lease_keys(), {7: sorted([b"a", index_key(LONG_A)])})
        self.assert_invariant()

    def test_put_without_a_lease_detaches(self) -> None:
        """Overwriting a leased key without a lease detaches it; revoking then keeps it."""
        self.put(b"a", lease=7)
        self.put(b"a", b"w")
        self.assertEqual(self.lease_keys(), {})
        self.revoke(7)
        self.assertEqual(self.live()[b"a"].value, b"w")

    def test_put_with_another_lease_moves_the_key(self) -> None:
        """A put naming another lease moves the attachment; revoking the old lease keeps
        the key, revoking the new one deletes it."""
        self.put(b"a", lease=7)
        self.put(b"a", lease=8)
        self.assertEqual(self.lease_keys(), {8: [b"a"]})
        rev = self.store.current_revision()
        result, batch = self.revoke(7)
        self.assertEqual((result.header.revision, batch.changes), (rev, []))
        self.assertIn(b"a", self.live())
        self.revoke(8)
        self.assertNotIn(b"a", self.live())

    def test_put_with_ignore_lease_keeps_the_attachment(self) -> None:
        """ignore_lease keeps the key's lease and its leaseKeys entry."""
        self.put(b"a", lease=7)
        self.put(b"a", b"w", ignore_lease=True)
        self.assertEqual((self.live()[b"a"].lease, self.lease_keys()), (7, {7: [b"a"]}))

    def test_delete_detaches(self) -> None:
        """Deleting leased keys, singly or by range, removes their leaseKeys entries."""
        for key in (b"a", b"b", b"c", LONG_A):
            self.put(key, lease=7)
        self.delete(b"a")
        self.assertEqual(self.lease_keys(), {7: sorted([b"b", b"c", index_key(LONG_A)])})
        self.delete(b"b", b"c")
        self.assertEqual(self.lease_keys(), {7: [b"c"]})
        self.delete(b"\x00", b"\x00")
        self.assertEqual(self.lease_keys(), {})

    def test_put_with_an_unknown_lease_is_refused(self) -> None:
        """A put naming a lease never granted answers LeaseNotFoundError and writes
        nothing; in a txn the whole txn is refused."""
        rev = self.store.current_revision()
        self.assertIsInstance(self.put(b"a", lease=99), LeaseNotFoundError)
        txn = pb.TxnRequest(success=[put_op(b"b", lease=7), put_op(b"c", lease=99)])
        result, batch = self.one("txn", txn)
        self.assertIsInstance(result, LeaseNotFoundError)
        self.assertEqual((self.store.current_revision(), self.live(), batch.changes),
                         (rev, {}, []))
        self.assertEqual(self.lease_keys(), {})

    def test_grant_and_revoke_are_seen_by_later_entries_of_the_batch(self) -> None:
        """Within one batch a put after a grant may use the lease, and a put after its
        revoke may not."""
        batch = self.apply(("lease_grant", pb.LeaseGrantRequest(ID=9, TTL=10)),
                           ("put", pb.PutRequest(key=b"a", lease=9)),
                           ("lease_revoke", pb.LeaseRevokeRequest(ID=9)),
                           ("put", pb.PutRequest(key=b"b", lease=9)))
        results = [r for _, r in batch.results]
        self.assertIsInstance(results[1], pb.PutResponse)
        self.assertIsInstance(results[3], LeaseNotFoundError)
        self.assertEqual(self.live(), {})
        self.assertEqual(batch.lease_ops, [("grant", 9, 10), ("revoke", 9)])
        self.assert_invariant()


class RevokeTests(LeaseApplyTestCase):

    def test_revoke_deletes_every_key_in_one_revision_in_key_order(self) -> None:
        """A revoke deletes its keys in one revision, sub revisions in sorted key order,
        removes the lease row and leaseKeys, and answers the new revision."""
        self.grant(7)
        for key in (b"c", LONG_A, b"a", b"b"):
            self.put(key, b"v-" + key[:2], lease=7)
        self.put(b"x")
        before = self.live()
        result, batch = self.revoke(7)
        rev = self.store.current_revision()
        self.assertEqual(rev, 7)
        self.assertEqual(result.header.revision, rev)
        order = [b"a", b"b", LONG_A, b"c"]
        [(changed_rev, records, prevs)] = batch.changes
        self.assertEqual(changed_rev, rev)
        self.assertEqual([r.key for r in records], order)
        self.assertEqual(list(prevs), [before[k] for k in order])
        for sub, key in enumerate(order):
            last = self.store.history(key)[-1]
            self.assertEqual((last.main, last.sub, last.tombstone), (rev, sub, True), key)
        self.assertEqual(list(self.live()), [b"x"])
        self.assertEqual((self.rows(), self.lease_keys()), ({}, {}))
        self.assertEqual(batch.lease_ops, [("revoke", 7)])

    def test_revoke_of_a_lease_without_keys_keeps_the_revision(self) -> None:
        """Revoking a lease with no keys removes it without a new revision."""
        self.grant(7)
        result, batch = self.revoke(7)
        self.assertEqual((result.header.revision, batch.changes, self.rows()), (1, [], {}))
        self.assertEqual(batch.lease_ops, [("revoke", 7)])

    def test_revoke_of_an_unknown_lease_is_refused(self) -> None:
        """Revoking a lease that does not exist answers LeaseNotFoundError."""
        result, batch = self.revoke(7)
        self.assertIsInstance(result, LeaseNotFoundError)
        self.assertEqual((batch.lease_ops, batch.changes), ([], []))


class CheckpointTests(LeaseApplyTestCase):

    def test_checkpoint_updates_remaining_ttl(self) -> None:
        """A checkpoint stores each known lease's remaining TTL; unknown IDs are skipped."""
        self.grant(7, 100)
        self.grant(8, 100)
        req = pb.LeaseCheckpointRequest(checkpoints=[
            pb.LeaseCheckpoint(ID=7, remaining_TTL=40), pb.LeaseCheckpoint(ID=99,
                                                                           remaining_TTL=3)])
        result, batch = self.one("lease_checkpoint", req)
        self.assertIsInstance(result, pb.LeaseCheckpointResponse)
        self.assertEqual(self.rows(), {7: (100, 40), 8: (100, 0)})
        self.assertEqual(batch.lease_ops, [("checkpoint", 7, 40)])
        self.one("lease_checkpoint", pb.LeaseCheckpointRequest(checkpoints=[
            pb.LeaseCheckpoint(ID=7, remaining_TTL=0)]))
        self.assertEqual(self.rows()[7], (100, 0))


class LeaseModel:
    """Brute force: live keys as (value, lease), leases as (ttl, remaining), the revision."""

    def __init__(self) -> None:
        self.live: dict[bytes, tuple[bytes, int]] = {}
        self.leases: dict[int, tuple[int, int]] = {}
        self.rev = 1

    def grant(self, req: Any) -> type | None:
        if req.ID in self.leases:
            return LeaseExistsError
        self.leases[req.ID] = (max(req.TTL, MIN_TTL), 0)
        return None

    def revoke(self, req: Any) -> type | None:
        if req.ID not in self.leases:
            return LeaseNotFoundError
        del self.leases[req.ID]
        doomed = [k for k, (_, lease) in self.live.items() if lease == req.ID]
        for k in doomed:
            del self.live[k]
        self.rev += bool(doomed)
        return None

    def checkpoint(self, req: Any) -> None:
        for cp in req.checkpoints:
            if cp.ID in self.leases:
                self.leases[cp.ID] = (self.leases[cp.ID][0], cp.remaining_TTL)

    def check_put(self, p: Any) -> type | None:
        if p.ignore_lease and p.key not in self.live:
            return KeyNotFoundError
        if p.lease and p.lease not in self.leases:
            return LeaseNotFoundError
        return None

    def write_put(self, p: Any) -> None:
        lease = self.live[p.key][1] if p.ignore_lease else p.lease
        self.live[p.key] = (p.value, lease)

    def write_delete(self, d: Any) -> bool:
        doomed = [k for k in self.live if in_range(k, d.key, d.range_end)]
        for k in doomed:
            del self.live[k]
        return bool(doomed)

    def put(self, p: Any) -> type | None:
        error = self.check_put(p)
        if error is None:
            self.write_put(p)
            self.rev += 1
        return error

    def delete_range(self, d: Any) -> None:
        self.rev += self.write_delete(d)

    def txn(self, t: Any) -> type | None:
        for op in t.success:
            if op.HasField("request_put"):
                error = self.check_put(op.request_put)
                if error is not None:
                    return error
        changed = False
        for op in t.success:
            if op.HasField("request_put"):
                self.write_put(op.request_put)
                changed = True
            else:
                changed |= self.write_delete(op.request_delete_range)
        self.rev += changed
        return None


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    if not end:
        return key == start
    return key >= start and (end == b"\x00" or key < end)


class RandomLeaseTests(LeaseApplyTestCase):
    """Seeded random grants, revokes, checkpoints, puts, deletes and txns in random
    batches: the store equals the model and the leaseKeys invariant holds throughout."""

    KEYS = [b"a", b"b", b"c", b"d", b"e", LONG_A, LONG_B]
    IDS = [1, 2, 3, 4, 5]

    def random_request(self, rand: random.Random, model: LeaseModel) -> tuple[str, Any]:
        roll = rand.random()
        if roll < 0.15:
            return "lease_grant", pb.LeaseGrantRequest(ID=rand.choice(self.IDS),
                                                       TTL=rand.randint(1, 20))
        if roll < 0.21:
            return "lease_revoke", pb.LeaseRevokeRequest(ID=rand.choice(self.IDS))
        if roll < 0.25:
            return "lease_checkpoint", pb.LeaseCheckpointRequest(checkpoints=[
                pb.LeaseCheckpoint(ID=rand.choice(self.IDS), remaining_TTL=rand.randint(0, 9))])
        if roll < 0.6:
            return "put", self.random_put(rand, rand.choice(self.KEYS))
        if roll < 0.75:
            lo, hi = sorted(rand.sample(self.KEYS, 2))
            key, end = rand.choice([(lo, b""), (lo, hi), (lo, b"\x00")])
            return "delete_range", pb.DeleteRangeRequest(key=key, range_end=end)
        keys = rand.sample(self.KEYS, rand.randint(1, 4))
        ops = [pb.RequestOp(request_put=self.random_put(rand, k)) for k in keys[1:]]
        if rand.random() < 0.5:
            ops.append(del_op(keys[0]))
        return "txn", pb.TxnRequest(success=ops)

    def random_put(self, rand: random.Random, key: bytes) -> pb.PutRequest:
        if rand.random() < 0.15:
            return pb.PutRequest(key=key, value=b"i%d" % rand.randrange(99), ignore_lease=True)
        lease = rand.choice([0, 0, 77] + self.IDS * 3)
        return pb.PutRequest(key=key, value=b"%d" % rand.randrange(99), lease=lease)

    def expected(self, model: LeaseModel, kind: str, req: Any) -> type | None:
        return {"lease_grant": model.grant, "lease_revoke": model.revoke,
                "lease_checkpoint": model.checkpoint, "put": model.put,
                "delete_range": model.delete_range, "txn": model.txn}[kind](req)

    def run_sequence(self, seed: int) -> None:
        rand = random.Random(seed)
        model = LeaseModel()
        for step in range(80):
            requests = [self.random_request(rand, model) for _ in range(rand.randint(1, 4))]
            errors = [self.expected(model, kind, req) for kind, req in requests]
            batch = self.apply(*requests)
            msg = f"seed={seed} step={step} {[k for k, _ in requests]}"
            got = [type(r) if isinstance(r, Exception) else None for _, r in batch.results]
            self.assertEqual(got, errors, msg)
            self.assertEqual({k: (kv.value, kv.lease) for k, kv in self.live().items()},
                             model.live, msg)
            self.assertEqual(self.rows(), model.leases, msg)
            self.assertEqual(self.store.current_revision(), model.rev, msg)
            self.assert_invariant(msg)

    def test_random_sequences_keep_the_invariant(self) -> None:
        """Random lease and key traffic keeps store, rows and leaseKeys equal to the model."""
        for seed in range(8):
            self.setUp()                 # a fresh store for each seed
            self.run_sequence(seed)
