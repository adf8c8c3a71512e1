"""Applying committed raft entries to the store, on the disk thread.

Shell (LMDB write transactions). etcd 3.4 `etcdserver/server.go apply` and
`applyEntryNormal`: every entry of one Ready is applied in one LMDB write transaction,
which also records the consistent index (the index of the last applied entry) and its
term, so after a crash the WAL replay skips what the backend already holds. Entry kinds:

    EntryConfChange                 membership (server/cluster.py), and handed back to raft
    EntryNormal, empty              a new leader's first entry: nothing to apply
    EntryNormal, v2 Request         etcd's publish / cluster version / QGET (`data[0] == 0x08`)
    EntryNormal, InternalRaftRequest   put, delete_range, txn, compaction, lease_grant,
                                    lease_revoke, lease_checkpoint, alarm (header.ID answers)

While an alarm is active (server/alarms.py) the writes it refuses answer its error and
change nothing (etcd 3.4 `applierV3Capped`, `applierV3Corrupt`).

A refused request (mvcc or request errors) is that request's answer; it still takes its
index. Any other failure aborts the whole transaction and is a durability failure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

from twisted.logger import Logger

from etcdd.mvcc.errors import MVCCError
from etcdd.proto import etcdserver_pb2, raft_internal_pb2, raft_pb2, rpc_pb2 as pb
from etcdd.server.alarms import AlarmSet
from etcdd.server.apply import Applier
from etcdd.server.cluster import ClusterState
from etcdd.lease import backend as lease_store
from etcdd.lease.lessor import MAX_LEASE_TTL_SECONDS
from etcdd.server.errors import (LeaseExistsError, LeaseNotFoundError, LeaseTTLTooLargeError,
                                 ServerError)

_V2_TAG = 0x08       # a v2 Request starts with its ID (field 1, varint); v3 never sets it
_WRITE_KINDS = ("put", "delete_range", "txn", "compaction", "lease_grant", "lease_revoke",
                "lease_checkpoint", "alarm")


@dataclass(slots=True)
class AppliedBatch:
    """What applying one Ready's committed entries did (built on the disk thread).

    `changes` holds, per etcd txn that wrote, `(revision, records, prevs)`: the records it
    wrote (a tombstone holds only its key) and the live record each replaced (or None), for
    the watchers. `lease_ops` are the lessor calls to mirror on the reactor, in order:
    `("grant", id, ttl)`, `("revoke", id)`, `("checkpoint", id, remaining_ttl)`.
    `leader_entry` says a new leader's empty entry was applied (etcd promotes the lessor
    then)."""
    last_index: int
    last_term: int = 0
    results: list[tuple[int, Any]] = field(default_factory=list)   # (request ID, answer)
    conf_changes: list[raft_pb2.ConfChange] = field(default_factory=list)
    compaction_scheduled: bool = False
    changes: list[tuple[int, list, list]] = field(default_factory=list)
    lease_ops: list[tuple] = field(default_factory=list)
    leader_entry: bool = False


class EntryApplier:
    """Invariant: `consistent_index` equals the store's recorded consistent index after
    every `apply()` and `install_snapshot()` (this thread is the only writer)."""

    _log = Logger()

    def __init__(self, store: Any, cluster: ClusterState, applier: Applier,
                 min_lease_ttl_seconds: int = 1, alarms: AlarmSet | None = None) -> None:
        self._store = store
        self._dbs = store.backend.dbs
        if alarms is None:
            alarms = AlarmSet(self._dbs)
            with store.backend.begin_read() as txn:
                alarms.load(txn)
        self.alarms = alarms
        self._cluster = cluster
        self._applier = applier
        self._min_lease_ttl = min_lease_ttl_seconds
        self.consistent_index = store.consistent_index()
        self._apply_kind: dict[str, Callable[[Any, Any, AppliedBatch], Any]] = {
            "put": partial(self._in_txn, self._checked_put),
            "delete_range": partial(self._in_txn, applier.delete_range),
            "txn": partial(self._in_txn, applier.txn),
            "compaction": self._apply_compaction,
            "lease_grant": self._apply_lease_grant,
            "lease_revoke": self._apply_lease_revoke,
            "lease_checkpoint": self._apply_lease_checkpoint,
            "alarm": self._apply_alarm,
        }

    def apply(self, entries: list) -> AppliedBatch:
        """Apply committed entries in one LMDB transaction; entries at or below the
        consistent index were applied before a restart and are skipped (their conf
        changes are still handed back, raft needs them again)."""
        batch = self._store.write_batch()
        out = AppliedBatch(last_index=entries[-1].Index, last_term=entries[-1].Term)
        ci = self.consistent_index
        try:
            for e in entries:
                if e.Type == raft_pb2.EntryConfChange:
                    self._apply_conf_change(batch, e, e.Index > ci, out)
                elif not e.Data:
                    out.leader_entry = True
                elif e.Index > ci:
                    self._apply_normal(batch, e.Data, out)
            last = entries[-1]
            if last.Index > ci:
                batch.set_consistent_index(last.Index, last.Term)
            batch.commit()
        except BaseException:
            batch.abort()
            raise
        self.consistent_index = max(ci, entries[-1].Index)
        return out

    def install_snapshot(self, snapshot: raft_pb2.Snapshot, db_path: str) -> None:
        """Replace the backend's content with the leader's snapshot at `db_path`."""
        self._log.info("applying snapshot at index {index}...", index=snapshot.metadata.index)
        self._store.backend.load_from(db_path)
        with self._store.backend.begin_read() as txn:
            self._cluster.load(txn)
            self.alarms.load(txn)
        self.consistent_index = self._store.consistent_index()

    def _apply_conf_change(self, batch: Any, entry: Any, new: bool, out: AppliedBatch) -> None:
        """Validate and record a membership change (etcd `applyConfChange`). Raft gets a
        no-op (node 0) for a refused one, now and when it is replayed after a restart; the
        proposer hears the refusal, or the members after the change."""
        cc = raft_pb2.ConfChange.FromString(entry.Data)
        txn = batch.raw_txn
        if new:
            refused = self._cluster.apply_conf_change(txn, cc, entry.Index)
            out.results.append((cc.id, refused if refused is not None
                                else self._cluster.sorted_members()))
        else:
            refused = self._cluster.was_refused(txn, entry.Index)
        if refused:
            cc.node_id = 0
        out.conf_changes.append(cc)

    def _apply_normal(self, batch: Any, data: bytes, out: AppliedBatch) -> None:
        if data[0] == _V2_TAG:
            r = etcdserver_pb2.Request.FromString(data)
            self._cluster.apply_v2(batch.raw_txn, r.Method, r.Path, r.Val)
            out.results.append((r.ID, None))
            return
        ir = raft_internal_pb2.InternalRaftRequest.FromString(data)
        for kind in _WRITE_KINDS:
            if ir.HasField(kind):
                req = getattr(ir, kind)
                try:
                    if self.alarms.restricted:
                        refusal = self.alarms.refusal(kind, req)
                        if refusal is not None:
                            raise refusal
                    result = self._apply_kind[kind](batch, req, out)
                except (ServerError, MVCCError) as e:
                    result = e
                if kind == "compaction" and not isinstance(result, BaseException):
                    out.compaction_scheduled = True
                out.results.append((ir.header.ID, result))
                return
        out.results.append((ir.header.ID, None))

    def _in_txn(self, apply: Callable[[Any, Any], Any], batch: Any, req: Any,
                out: AppliedBatch) -> Any:
        """Apply one request as one etcd txn of the batch (ended even when refused)."""
        txn = batch.txn()
        try:
            return apply(txn, req)
        finally:
            rev = txn.end()
            if txn.changes:
                out.changes.append((rev, txn.changes, txn.prevs))

    def _checked_put(self, txn: Any, req: Any) -> Any:
        self._applier.check_put(txn, req)
        return self._applier.put(txn, req)

    def _apply_compaction(self, batch: Any, req: Any, out: AppliedBatch) -> Any:
        batch.schedule_compaction(req.revision)
        resp = pb.CompactionResponse()
        resp.header.revision = batch.current_revision()
        return resp

    def _apply_alarm(self, batch: Any, req: Any, out: AppliedBatch) -> Any:
        return self.alarms.apply(batch.raw_txn, req)

    # -- leases (etcd 3.4 apply.go LeaseGrant/LeaseRevoke/LeaseCheckpoint, lessor.go) -----

    def _apply_lease_grant(self, batch: Any, req: Any, out: AppliedBatch) -> Any:
        """Raises LeaseTTLTooLargeError, LeaseExistsError (nothing written then)."""
        if req.TTL > MAX_LEASE_TTL_SECONDS:
            raise LeaseTTLTooLargeError()
        txn = batch.raw_txn
        if lease_store.exists(txn, self._dbs, req.ID):
            raise LeaseExistsError()
        ttl = max(req.TTL, self._min_lease_ttl)
        lease_store.put_row(txn, self._dbs, req.ID, ttl)
        out.lease_ops.append(("grant", req.ID, ttl))
        resp = pb.LeaseGrantResponse(ID=req.ID, TTL=ttl)
        resp.header.revision = batch.current_revision()
        return resp

    def _apply_lease_revoke(self, batch: Any, req: Any, out: AppliedBatch) -> Any:
        """Delete the lease's keys in one etcd txn (one revision), sorted, then the lease.
        Raises LeaseNotFoundError."""
        txn = batch.raw_txn
        if not lease_store.exists(txn, self._dbs, req.ID):
            raise LeaseNotFoundError()
        keys = lease_store.attached_keys(txn, self._dbs, req.ID)
        if keys:
            self._in_txn(_delete_keys, batch, keys, out)
        lease_store.delete_lease(txn, self._dbs, req.ID)
        out.lease_ops.append(("revoke", req.ID))
        resp = pb.LeaseRevokeResponse()
        resp.header.revision = batch.current_revision()
        return resp

    def _apply_lease_checkpoint(self, batch: Any, req: Any, out: AppliedBatch) -> Any:
        txn = batch.raw_txn
        for cp in req.checkpoints:
            row = lease_store.get_row(txn, self._dbs, cp.ID)
            if row is not None:
                lease_store.put_row(txn, self._dbs, cp.ID, row.TTL, cp.remaining_TTL)
                out.lease_ops.append(("checkpoint", cp.ID, cp.remaining_TTL))
        resp = pb.LeaseCheckpointResponse()
        resp.header.revision = batch.current_revision()
        return resp


def _delete_keys(txn: Any, keys: list[bytes]) -> None:
    for key in keys:
        txn.delete_range(key)
