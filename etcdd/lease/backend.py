"""Leases on disk: the `lease` and `leaseKeys` databases of the member's LMDB environment.

Shell (LMDB transactions handed in by the caller). etcd 3.4 keeps `leasepb.Lease` rows
in its `lease` bucket and rebuilds which keys each lease holds by scanning every key at
start (`lessor.initAndRecover`); etcdd keeps that relation on disk as well, in
`leaseKeys` (lease ID -> the `index` key of each attached live key, dupsort), written in
the same transaction as the key's record. So a restart reads leases, not keys, and a
revocation applied on the disk thread finds the keys to delete without asking the
reactor's lessor.

    lease      8-byte big-endian ID -> leasepb.Lease{ID, TTL, RemainingTTL}
    leaseKeys  8-byte big-endian ID -> index keys (`mvcc/keyindex.index_key`)

Invariant: a live key whose record names lease L has exactly one `leaseKeys` entry,
under L; no other entries exist (tests/unit/test_lease_backend.py checks it).
"""
from __future__ import annotations

import struct
from typing import Any

from etcdd.proto.kv_pb2 import KeyValue
from etcdd.proto.lease_pb2 import Lease as LeaseRow

_ID = struct.Struct(">q")


def lease_key(lease_id: int) -> bytes:
    """The `lease`/`leaseKeys` key of a lease ID (etcd's `int64ToBytes`, big-endian)."""
    return _ID.pack(lease_id)


def exists(txn: Any, dbs: dict[bytes, Any], lease_id: int) -> bool:
    """Whether the lease is granted, as committed in (or written by) `txn`."""
    return txn.get(lease_key(lease_id), db=dbs[b"lease"]) is not None


def put_row(txn: Any, dbs: dict[bytes, Any], lease_id: int, ttl: int,
            remaining_ttl: int = 0) -> None:
    """Write (or overwrite) a lease's row."""
    row = LeaseRow(ID=lease_id, TTL=ttl, RemainingTTL=remaining_ttl)
    txn.put(lease_key(lease_id), row.SerializeToString(), db=dbs[b"lease"])


def get_row(txn: Any, dbs: dict[bytes, Any], lease_id: int) -> LeaseRow | None:
    raw = txn.get(lease_key(lease_id), db=dbs[b"lease"])
    return None if raw is None else LeaseRow.FromString(raw)


def delete_lease(txn: Any, dbs: dict[bytes, Any], lease_id: int) -> None:
    """Remove a lease's row and every attachment left under it."""
    k = lease_key(lease_id)
    txn.delete(k, db=dbs[b"lease"])
    txn.delete(k, db=dbs[b"leaseKeys"])       # every duplicate of the key


def attach(txn: Any, dbs: dict[bytes, Any], lease_id: int, index_key: bytes) -> None:
    txn.put(lease_key(lease_id), index_key, db=dbs[b"leaseKeys"], dupdata=True)


def detach(txn: Any, dbs: dict[bytes, Any], lease_id: int, index_key: bytes) -> None:
    txn.delete(lease_key(lease_id), index_key, db=dbs[b"leaseKeys"])


def attached_keys(txn: Any, dbs: dict[bytes, Any], lease_id: int) -> list[bytes]:
    """The user keys attached to the lease, sorted (etcd sorts them before revoking, so
    every member deletes them with the same sub revisions)."""
    cur = txn.cursor(dbs[b"leaseKeys"])
    if not cur.set_key(lease_key(lease_id)):
        return []
    live, records = dbs[b"live"], dbs[b"key"]
    keys = []
    for ik in cur.iternext_dup():
        rk = txn.get(ik, db=live)
        if rk is not None:
            keys.append(KeyValue.FromString(txn.get(rk, db=records)).key)
    keys.sort()
    return keys


def rows(txn: Any, dbs: dict[bytes, Any]) -> list[tuple[int, int, int]]:
    """Every lease as `(id, ttl, remaining_ttl)`, for `Lessor.restore`."""
    out = []
    for _, raw in txn.cursor(dbs[b"lease"]).iternext():
        row = LeaseRow.FromString(raw)
        out.append((row.ID, row.TTL, row.RemainingTTL))
    return out
