"""Alarms (`etcdd/server/alarms.py`) and the alarm-aware applier (`etcdd/server/entries.py`)
on a real KVStore, against etcd 3.4 `etcdserver/api/v3alarm/alarms.go`, `apply.go`
(`Alarm`, `applierV3Capped`) and `corrupt.go` (`applierV3Corrupt`).

Every request travels as a committed raft entry through `EntryApplier.apply`, as the member
applies it; the alarm rows are read back from the `alarm` database.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from etcdd.mvcc.backend import Backend
from etcdd.mvcc.errors import DatabaseSpaceExceededError
from etcdd.mvcc.store import KVStore
from etcdd.proto import raft_internal_pb2 as ipb, raft_pb2, rpc_pb2 as pb
from etcdd.server.alarms import (ACTIVATE, CORRUPT, DEACTIVATE, GET, NONE, NOSPACE, AlarmSet,
                                 CorruptError, alarm_text)
from etcdd.server.apply import Applier
from etcdd.server.cluster import ClusterState
from etcdd.server.entries import AppliedBatch, EntryApplier
from tests.unit.stores import new_store_path, open_store
from tests.unit.test_layering import FORBIDDEN, imported_names

ME, PEER = 0xBDAE9BBC11DD390D, 0x18748AE2860FDE72


def alarm(action: int, member_id: int = ME, kind: int = NOSPACE) -> pb.AlarmRequest:
    return pb.AlarmRequest(action=action, memberID=member_id, alarm=kind)


def members(*pairs: tuple[int, int]) -> list[pb.AlarmMember]:
    return [pb.AlarmMember(memberID=m, alarm=a) for m, a in pairs]


def put_op(key: bytes, value: bytes = b"v") -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))


def del_op(key: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))


def txn(*ops: pb.RequestOp, failure: tuple[pb.RequestOp, ...] = ()) -> pb.TxnRequest:
    return pb.TxnRequest(success=list(ops), failure=list(failure))


class AlarmApplyTestCase(SynchronousTestCase):
    """A fresh store and an EntryApplier; requests go in as committed raft entries."""

    def setUp(self) -> None:
        self.path = new_store_path(self)
        self.store = open_store(self, self.path)
        self.entries = self.new_applier(self.store)
        self.index = 0

    @staticmethod
    def new_applier(store: KVStore) -> EntryApplier:
        return EntryApplier(store, ClusterState(store.backend.dbs), Applier())

    def apply(self, *requests: tuple[str, Any]) -> AppliedBatch:
        """Apply `(kind, request)` pairs as consecutive entries in one batch."""
        entries = []
        for kind, req in requests:
            self.index += 1
            ir = ipb.InternalRaftRequest(header=ipb.RequestHeader(ID=self.index))
            getattr(ir, kind).CopyFrom(req)
            entries.append(raft_pb2.Entry(Index=self.index, Term=2, Type=raft_pb2.EntryNormal,
                                          Data=ir.SerializeToString()))
        return self.entries.apply(entries)

    def one(self, kind: str, req: Any) -> Any:
        [(_, result)] = self.apply((kind, req)).results
        return result

    def rows(self, store: KVStore | None = None) -> list[pb.AlarmMember]:
        """The `alarm` database: each key parsed as an AlarmMember (values are empty)."""
        store = store or self.store
        with store.backend.begin_read() as txn:
            items = list(txn.cursor(store.backend.dbs[b"alarm"]).iternext())
        self.assertEqual({v for _, v in items} - {b""}, set())
        return [pb.AlarmMember.FromString(k) for k, _ in items]


class AlarmSetTests(AlarmApplyTestCase):

    def test_activate_writes_a_row_and_answers_the_alarm(self) -> None:
        """ACTIVATE stores the marshaled AlarmMember as a key with an empty value and
        answers it, with no header (as etcd's applier)."""
        resp = self.one("alarm", alarm(ACTIVATE))
        self.assertEqual(resp, pb.AlarmResponse(alarms=members((ME, NOSPACE))))
        self.assertFalse(resp.HasField("header"))
        self.assertEqual(self.rows(), members((ME, NOSPACE)))
        self.assertTrue(self.entries.alarms.capped)
        self.assertFalse(self.entries.alarms.corrupt)

    def test_activating_twice_answers_it_again(self) -> None:
        """A second ACTIVATE of the same (member, type) answers it and adds nothing."""
        self.one("alarm", alarm(ACTIVATE))
        self.assertEqual(self.one("alarm", alarm(ACTIVATE)).alarms, members((ME, NOSPACE)))
        self.assertEqual(self.rows(), members((ME, NOSPACE)))

    def test_get_filters_by_type_and_none_means_all(self) -> None:
        """GET of a type lists that type's alarms; GET of NONE lists every alarm, by member."""
        self.apply(("alarm", alarm(ACTIVATE, PEER)), ("alarm", alarm(ACTIVATE, ME, CORRUPT)),
                   ("alarm", alarm(ACTIVATE, ME)))
        self.assertEqual(self.one("alarm", alarm(GET, 0, NONE)).alarms,
                         members((PEER, NOSPACE), (ME, NOSPACE), (ME, CORRUPT)))
        self.assertEqual(self.one("alarm", alarm(GET, 0, CORRUPT)).alarms,
                         members((ME, CORRUPT)))
        self.assertEqual(self.entries.alarms.get(NOSPACE), members((PEER, NOSPACE),
                                                                   (ME, NOSPACE)))

    def test_deactivate_removes_and_answers_the_alarm(self) -> None:
        """DEACTIVATE removes the row and answers the alarm; the applier is uncapped once
        no NOSPACE alarm is left."""
        self.apply(("alarm", alarm(ACTIVATE)), ("alarm", alarm(ACTIVATE, PEER)))
        self.assertEqual(self.one("alarm", alarm(DEACTIVATE)).alarms, members((ME, NOSPACE)))
        self.assertEqual(self.rows(), members((PEER, NOSPACE)))
        self.assertTrue(self.entries.alarms.capped)
        self.one("alarm", alarm(DEACTIVATE, PEER))
        self.assertEqual(self.rows(), [])
        self.assertFalse(self.entries.alarms.capped)

    def test_deactivate_of_an_inactive_alarm_answers_nothing(self) -> None:
        """DEACTIVATE of an alarm that is not active (another type, another member, or
        NONE, as `etcdctl alarm disarm` never sends) answers no alarms and changes nothing."""
        self.one("alarm", alarm(ACTIVATE))
        for req in (alarm(DEACTIVATE, ME, CORRUPT), alarm(DEACTIVATE, PEER),
                    alarm(DEACTIVATE, 0, NONE)):
            self.assertEqual(self.one("alarm", req), pb.AlarmResponse())
        self.assertEqual(self.rows(), members((ME, NOSPACE)))

    def test_unknown_action_answers_nothing(self) -> None:
        """An action etcd does not know answers an empty AlarmResponse."""
        self.one("alarm", alarm(ACTIVATE))
        self.assertEqual(self.one("alarm", pb.AlarmRequest(action=7, memberID=ME)),
                         pb.AlarmResponse())

    def test_alarms_survive_a_restart(self) -> None:
        """An applier on the reopened backend loads the alarms and is capped at once."""
        self.apply(("alarm", alarm(ACTIVATE)), ("alarm", alarm(ACTIVATE, PEER, CORRUPT)))
        self.store.backend.close()
        reopened = self.new_applier(KVStore(Backend(self.path)))
        self.addCleanup(reopened._store.backend.close)
        self.assertEqual(reopened.alarms.get(),
                         members((PEER, CORRUPT), (ME, NOSPACE)))
        self.assertTrue(reopened.alarms.capped and reopened.alarms.corrupt)

    def test_installing_a_snapshot_reloads_the_alarms(self) -> None:
        """A member installing a leader's snapshot takes the alarms in it, and loses the
        ones the snapshot does not have."""
        self.one("alarm", alarm(ACTIVATE))
        other = open_store(self)
        follower = self.new_applier(other)
        ir = ipb.InternalRaftRequest(header=ipb.RequestHeader(ID=1),
                                     alarm=alarm(ACTIVATE, PEER, CORRUPT))
        follower.apply([raft_pb2.Entry(Index=1, Term=2, Data=ir.SerializeToString())])
        self.assertTrue(follower.alarms.corrupt)
        snap = self.mktemp()
        os.makedirs(os.path.dirname(snap), exist_ok=True)
        self.store.backend.copy_to(snap, lambda txn: None)
        follower.install_snapshot(raft_pb2.Snapshot(), snap)
        self.assertEqual(follower.alarms.get(), members((ME, NOSPACE)))
        self.assertTrue(follower.alarms.capped)
        self.assertFalse(follower.alarms.corrupt)


class CappedApplyTests(AlarmApplyTestCase):
    """While NOSPACE is active: etcd 3.4 `applierV3Capped`."""

    def setUp(self) -> None:
        super().setUp()
        self.one("put", pb.PutRequest(key=b"a", value=b"1"))
        self.one("lease_grant", pb.LeaseGrantRequest(ID=7, TTL=60))
        self.one("alarm", alarm(ACTIVATE))

    def assert_refused(self, kind: str, req: Any) -> None:
        rev = self.store.current_revision()
        self.assertIsInstance(self.one(kind, req), DatabaseSpaceExceededError)
        self.assertEqual(self.store.current_revision(), rev)

    def test_puts_and_lease_grants_are_refused(self) -> None:
        """Put, a Txn that puts in either branch (or in a nested Txn) and LeaseGrant
        answer `database space exceeded` and write nothing."""
        self.assert_refused("put", pb.PutRequest(key=b"b"))
        self.assert_refused("txn", txn(put_op(b"b")))
        self.assert_refused("txn", txn(del_op(b"a"), failure=(put_op(b"b"),)))
        nested = pb.RequestOp(request_txn=txn(put_op(b"b")))
        self.assert_refused("txn", txn(nested))
        self.assert_refused("lease_grant", pb.LeaseGrantRequest(ID=8, TTL=60))
        self.assertEqual([kv.key for kv in self.store.range(b"\x00", b"\x00").kvs], [b"a"])

    def test_refused_in_the_batch_that_raises_it(self) -> None:
        """A put committed after the activation in the same batch is already refused."""
        self.one("alarm", alarm(DEACTIVATE))
        batch = self.apply(("put", pb.PutRequest(key=b"b")), ("alarm", alarm(ACTIVATE)),
                           ("put", pb.PutRequest(key=b"c")))
        results = [r for _, r in batch.results]
        self.assertIsInstance(results[0], pb.PutResponse)
        self.assertIsInstance(results[2], DatabaseSpaceExceededError)

    def test_reads_deletes_compaction_and_revocation_go_on(self) -> None:
        """DeleteRange, a Txn without puts, Compaction, LeaseRevoke and LeaseCheckpoint
        are applied as usual."""
        self.assertEqual(self.one("txn", txn(del_op(b"zz"))).header.revision, 2)
        self.assertEqual(self.one("delete_range", pb.DeleteRangeRequest(key=b"a")).deleted, 1)
        batch = self.apply(("compaction", pb.CompactionRequest(revision=3)))
        self.assertTrue(batch.compaction_scheduled)
        self.assertIsInstance(self.one("lease_revoke", pb.LeaseRevokeRequest(ID=7)),
                              pb.LeaseRevokeResponse)
        cp = pb.LeaseCheckpointRequest(checkpoints=[pb.LeaseCheckpoint(ID=9,
                                                                       remaining_TTL=5)])
        self.assertIsInstance(self.one("lease_checkpoint", cp), pb.LeaseCheckpointResponse)

    def test_disarm_lifts_the_cap(self) -> None:
        """Once the last NOSPACE alarm is deactivated, puts are applied again."""
        self.one("alarm", alarm(DEACTIVATE))
        self.assertEqual(self.one("put", pb.PutRequest(key=b"b")).header.revision, 3)


class CorruptApplyTests(AlarmApplyTestCase):
    """While CORRUPT is active: etcd 3.4 `applierV3Corrupt`."""

    def setUp(self) -> None:
        super().setUp()
        self.one("put", pb.PutRequest(key=b"a", value=b"1"))
        self.one("lease_grant", pb.LeaseGrantRequest(ID=7, TTL=60))
        self.one("alarm", alarm(ACTIVATE, PEER, CORRUPT))

    def test_every_kv_write_is_refused(self) -> None:
        """Put, DeleteRange, Txn (even one that only deletes), Compaction, LeaseGrant and
        LeaseRevoke answer `etcdserver: corrupt cluster` and change nothing."""
        refused = [("put", pb.PutRequest(key=b"b")),
                   ("delete_range", pb.DeleteRangeRequest(key=b"a")),
                   ("txn", txn(del_op(b"a"))),
                   ("compaction", pb.CompactionRequest(revision=2)),
                   ("lease_grant", pb.LeaseGrantRequest(ID=8, TTL=60)),
                   ("lease_revoke", pb.LeaseRevokeRequest(ID=7))]
        for kind, req in refused:
            batch = self.apply((kind, req))
            [(_, result)] = batch.results
            self.assertIsInstance(result, CorruptError, kind)
            self.assertEqual(str(result), "etcdserver: corrupt cluster")
            self.assertFalse(batch.compaction_scheduled)
        self.assertEqual(self.store.current_revision(), 2)

    def test_corrupt_comes_before_nospace(self) -> None:
        """With both alarms active the corrupt refusals hold (a delete stays refused)."""
        self.one("alarm", alarm(ACTIVATE))
        self.assertIsInstance(self.one("delete_range", pb.DeleteRangeRequest(key=b"a")),
                              CorruptError)
        self.assertIsInstance(self.one("put", pb.PutRequest(key=b"b")), CorruptError)
        self.one("alarm", alarm(DEACTIVATE, PEER, CORRUPT))
        self.assertEqual(self.one("delete_range", pb.DeleteRangeRequest(key=b"a")).deleted, 1)
        self.assertIsInstance(self.one("put", pb.PutRequest(key=b"b")),
                              DatabaseSpaceExceededError)


class AlarmTextTests(SynchronousTestCase):

    def test_text_as_etcd_prints_it(self) -> None:
        """gogo's compact text, as `etcdctl alarm list` and Status errors show it (taken
        from etcd 3.4.23): zero fields left out, each field followed by a space."""
        self.assertEqual(alarm_text(pb.AlarmMember(memberID=13668033151171901709,
                                                   alarm=NOSPACE)),
                         "memberID:13668033151171901709 alarm:NOSPACE ")
        self.assertEqual(alarm_text(pb.AlarmMember(memberID=5, alarm=CORRUPT)),
                         "memberID:5 alarm:CORRUPT ")
        self.assertEqual(alarm_text(pb.AlarmMember(memberID=5)), "memberID:5 ")
        self.assertEqual(alarm_text(pb.AlarmMember(alarm=9)), "alarm:9 ")


class AlarmSetCoreTests(SynchronousTestCase):

    def test_refusals_table(self) -> None:
        """Which request kinds each alarm refuses at apply time, and with what."""
        alarms = AlarmSet({b"alarm": None})
        alarms._set(frozenset({(ME, NOSPACE)}))
        kinds = {"put": pb.PutRequest(), "delete_range": pb.DeleteRangeRequest(),
                 "txn": txn(put_op(b"k")), "compaction": pb.CompactionRequest(),
                 "lease_grant": pb.LeaseGrantRequest(), "lease_revoke": pb.LeaseRevokeRequest(),
                 "lease_checkpoint": pb.LeaseCheckpointRequest(), "alarm": pb.AlarmRequest()}
        refused = {k: type(alarms.refusal(k, r)).__name__ for k, r in kinds.items()
                   if alarms.refusal(k, r) is not None}
        self.assertEqual(refused, {"put": "DatabaseSpaceExceededError",
                                   "txn": "DatabaseSpaceExceededError",
                                   "lease_grant": "DatabaseSpaceExceededError"})
        self.assertIsNone(alarms.refusal("txn", txn(del_op(b"k"))))
        alarms._set(frozenset({(ME, CORRUPT)}))
        refused = {k for k, r in kinds.items() if alarms.refusal(k, r) is not None}
        self.assertEqual(refused, {"put", "delete_range", "txn", "compaction", "lease_grant",
                                   "lease_revoke"})
        alarms._set(frozenset())
        self.assertFalse(alarms.restricted)

    def test_cores_are_pure(self) -> None:
        """alarms.py and quota.py import no reactor, threads, clock, files, sockets or LMDB."""
        root = Path(__file__).resolve().parents[2]
        for name in ("etcdd/server/alarms.py", "etcdd/server/quota.py"):
            imported = imported_names((root / name).read_text())
            self.assertEqual([n for n in imported if n in FORBIDDEN], [], name)
