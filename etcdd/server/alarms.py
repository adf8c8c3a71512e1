"""The cluster's alarms: which member raised which alarm, kept in the backend's `alarm` db.

Core (works in the LMDB transaction it is handed; no IO of its own). Wire- and
behaviour-compatible with etcd 3.4 `etcdserver/api/v3alarm/alarms.go` (the store) and
`etcdserver/apply.go` (`Alarm`, `applierV3Capped`) plus `etcdserver/corrupt.go`
(`applierV3Corrupt`):

    alarm db:  marshaled AlarmMember{memberID, alarm} -> b"" (one row per active alarm)

An AlarmRequest is applied through raft on every member, so every member holds the same
set at the same index:

    GET         the active alarms of that type (NONE: all of them)
    ACTIVATE    add (member, type) and answer it (also when it was active already)
    DEACTIVATE  remove (member, type) and answer it; nothing if it was not active

While NOSPACE is active the applier is "capped": Put, a Txn that puts and LeaseGrant are
refused with `mvcc: database space exceeded`; reads, deletes, compaction and lease
revocation go on. While CORRUPT is active Put, DeleteRange, Txn, Compaction, LeaseGrant
and LeaseRevoke are refused with `etcdserver: corrupt cluster`.

NB: etcd 3.4 swaps one applier for another on each activation, so raising NOSPACE while
CORRUPT is active un-refuses deletes, and disarming one alarm lifts the other's refusals
until a restart restores both. Here the refusals always follow the set: CORRUPT first,
then NOSPACE.
"""
from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from etcdd.mvcc.errors import DatabaseSpaceExceededError
from etcdd.proto import rpc_pb2 as pb
from etcdd.server.errors import CorruptError, ServerError
from etcdd.server.quota import txn_cost

NONE, NOSPACE, CORRUPT = pb.NONE, pb.NOSPACE, pb.CORRUPT
GET = pb.AlarmRequest.GET
ACTIVATE = pb.AlarmRequest.ACTIVATE
DEACTIVATE = pb.AlarmRequest.DEACTIVATE

# The InternalRaftRequest kinds each alarm refuses at apply time.
_CORRUPT_REFUSES = frozenset({"put", "delete_range", "txn", "compaction", "lease_grant",
                              "lease_revoke"})
_CAPPED_REFUSES = frozenset({"put", "lease_grant"})


def alarm_text(member: Any) -> str:
    """An AlarmMember in gogo-protobuf's compact text form, as etcd 3.4 lists it in
    Status `errors` and `etcdctl alarm list` prints it: zero fields are left out and every
    field ends in a space, e.g. ``memberID:13668033151171901709 alarm:NOSPACE ``."""
    parts = []
    if member.memberID:
        parts.append(f"memberID:{member.memberID} ")
    if member.alarm:
        parts.append(f"alarm:{_name(member.alarm)} ")
    return "".join(parts)


class AlarmSet:
    """The active alarms as `(member ID, alarm type)` pairs.

    Invariants: `active` equals the rows of the `alarm` db as of the last `load` or
    applied request; `capped`/`corrupt` say whether any NOSPACE/CORRUPT alarm is in it.
    `active` is replaced, never mutated, so the reactor reads it while the disk thread
    applies."""

    _log = Logger()

    def __init__(self, dbs: dict[bytes, Any]) -> None:
        # NB: the dict, not the handle: a defragmentation reopens the backend and
        # replaces the handles in place (mvcc/backend.py swap_in).
        self._dbs = dbs
        self.active: frozenset[tuple[int, int]] = frozenset()
        self.capped = False
        self.corrupt = False
        self.restricted = False       # capped or corrupt: the applier must ask `refusal`

    def load(self, txn: Any) -> None:
        """Read the active alarms from `txn` (at start, and after a snapshot is installed)."""
        active = set()
        for key in txn.cursor(self._dbs[b"alarm"]).iternext(values=False):
            m = pb.AlarmMember.FromString(key)
            active.add((m.memberID, m.alarm))
        self._set(frozenset(active))

    def _set(self, active: frozenset[tuple[int, int]]) -> None:
        self.active = active
        types = {alarm for _, alarm in active}
        self.capped = NOSPACE in types
        self.corrupt = CORRUPT in types
        self.restricted = self.capped or self.corrupt

    def has(self, member_id: int, alarm: int) -> bool:
        return (member_id, alarm) in self.active

    def get(self, alarm: int = NONE) -> list[Any]:
        """The active alarms of type `alarm` (NONE: every one), by member then type."""
        return [pb.AlarmMember(memberID=mid, alarm=kind) for mid, kind in sorted(self.active)
                if alarm == NONE or kind == alarm]

    # -- applying (disk thread) ----------------------------------------------------------

    def apply(self, txn: Any, req: Any) -> Any:
        """AlarmResponse for the committed AlarmRequest `req`, written in `txn`. Like
        etcd's, it carries no header; an unknown action answers nothing."""
        resp = pb.AlarmResponse()
        if req.action == GET:
            resp.alarms.extend(self.get(req.alarm))
        elif req.action == ACTIVATE:
            resp.alarms.append(self._activate(txn, req.memberID, req.alarm))
        elif req.action == DEACTIVATE:
            removed = self._deactivate(txn, req.memberID, req.alarm)
            if removed is not None:
                resp.alarms.append(removed)
        return resp

    def _activate(self, txn: Any, member_id: int, alarm: int) -> Any:
        m = pb.AlarmMember(memberID=member_id, alarm=alarm)
        if (member_id, alarm) in self.active:
            return m
        txn.put(m.SerializeToString(), b"", db=self._dbs[b"alarm"])
        first = not any(kind == alarm for _, kind in self.active)
        self._set(self.active | {(member_id, alarm)})
        if first:
            self._log.warn("alarm {alarm} raised by member {mid:x}",
                           alarm=_name(alarm), mid=member_id)
        return m

    def _deactivate(self, txn: Any, member_id: int, alarm: int) -> Any | None:
        if (member_id, alarm) not in self.active:
            return None
        m = pb.AlarmMember(memberID=member_id, alarm=alarm)
        txn.delete(m.SerializeToString(), db=self._dbs[b"alarm"])
        self._set(self.active - {(member_id, alarm)})
        if not any(kind == alarm for _, kind in self.active):
            self._log.warn("alarm {alarm} disarmed by member {mid:x}",
                           alarm=_name(alarm), mid=member_id)
        return m

    def refusal(self, kind: str, req: Any) -> ServerError | DatabaseSpaceExceededError | None:
        """Why the active alarms refuse the committed request `req` of InternalRaftRequest
        field `kind`, or None. Ask only while `restricted` (a set lookup per entry)."""
        if self.corrupt and kind in _CORRUPT_REFUSES:
            return CorruptError()
        if self.capped and (kind in _CAPPED_REFUSES or (kind == "txn" and txn_cost(req))):
            return DatabaseSpaceExceededError()
        return None


def _name(alarm: int) -> str:
    try:
        return pb.AlarmType.Name(alarm)
    except ValueError:
        return str(alarm)
