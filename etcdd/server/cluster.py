"""The cluster's members as raft applied them, kept in the backend's `members` database.

Shell-side state (the writes run in the disk thread's LMDB transaction; no IO of its own).
etcd 3.4 `etcdserver/api/membership/cluster.go`: ConfChange entries add, remove, update and
promote members (their context is the member's JSON), the v2 publish entry
`PUT /0/members/<id>/attributes` sets a member's name and client URLs, and the leader's
`PUT /0/version` sets the cluster version. All of it is idempotent, so replaying the WAL
after a crash re-applies it safely.

    members db:          b"%x" % id -> {"id": .., "peerURLs": [..], "name": .., "clientURLs": [..],
                                        "isLearner": ..}
    members_removed db:  b"%x" % id -> b"removed"
    cluster db:          b"clusterVersion" -> b"3.4.0"
                         b"refusedConfChange/" + 8-byte index -> b"" (a conf change the
                         validation refused: replayed as a no-op, as it was applied)
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from etcdd.proto import raft_pb2
from etcdd.server.errors import (MemberExistsError, MemberNotFoundError, MemberNotLearnerError,
                                 PeerURLExistsError, ServerError, TooManyLearnersError)
from etcdd.server.membership import Member

CLUSTER_VERSION_KEY = b"clusterVersion"
REFUSED_PREFIX = b"refusedConfChange/"
ATTRIBUTES_PREFIX = "/0/members/"
VERSION_PATH = "/0/version"


def member_json(member: Member) -> bytes:
    """The ConfChange context etcd writes for a member (its JSON form)."""
    return json.dumps({"id": member.id, "peerURLs": list(member.peer_urls),
                       "name": member.name, "clientURLs": list(member.client_urls),
                       "isLearner": member.is_learner}, separators=(",", ":")).encode()


def member_from_json(raw: bytes, member_id: int | None = None) -> Member:
    """Parse a member's JSON (a ConfChange context or a `members` record)."""
    obj = json.loads(raw)
    return Member(id=member_id if member_id is not None else int(obj["id"]),
                  name=obj.get("name") or "",
                  peer_urls=tuple(sorted(obj.get("peerURLs") or ())),
                  client_urls=tuple(obj.get("clientURLs") or ()),
                  is_learner=bool(obj.get("isLearner")))


def members_json(members: Iterable[Member]) -> bytes:
    """A JSON list of members (what a joining member asks a peer for)."""
    return b"[" + b",".join(member_json(m) for m in members) + b"]"


def members_from_json(raw: bytes) -> list[Member]:
    """Parse `members_json`'s output."""
    return [member_from_json(json.dumps(obj).encode()) for obj in json.loads(raw)]


class ClusterState:
    """Members by ID, as of the last applied entry. `members` is replaced, never mutated,
    so the reactor may read it while the disk thread prepares the next version."""

    def __init__(self, dbs: dict[bytes, Any]) -> None:
        self._dbs = dbs     # NB: handles looked up per use: a defrag replaces them in place
        self.members: dict[int, Member] = {}
        self.removed: frozenset[int] = frozenset()
        self.version: str = ""

    @property
    def _members_db(self) -> Any:
        return self._dbs[b"members"]

    @property
    def _removed_db(self) -> Any:
        return self._dbs[b"members_removed"]

    @property
    def _cluster_db(self) -> Any:
        return self._dbs[b"cluster"]

    def load(self, txn: Any) -> None:
        """Read the members, removed IDs and cluster version from `txn`."""
        members = {}
        for key, value in txn.cursor(self._members_db).iternext():
            mid = int(key, 16)
            members[mid] = member_from_json(value, mid)
        self.members = members
        self.removed = frozenset(int(k, 16) for k in
                                 txn.cursor(self._removed_db).iternext(values=False))
        self.version = (txn.get(CLUSTER_VERSION_KEY, db=self._cluster_db) or b"").decode()

    def sorted_members(self) -> list[Member]:
        return [self.members[mid] for mid in sorted(self.members)]

    def validate(self, cc: raft_pb2.ConfChange) -> ServerError | None:
        """Why the committed `cc` must not change the membership, or None (etcd 3.4
        `ValidateConfigurationChange`; every member decides the same at the same index)."""
        mid, members = cc.node_id, self.members
        if mid in self.removed:
            return MemberNotFoundError()
        if cc.type in (raft_pb2.ConfChangeAddNode, raft_pb2.ConfChangeAddLearnerNode):
            ctx = _context(cc)
            if ctx.get("isPromote"):
                if mid not in members:
                    return MemberNotFoundError()
                return None if members[mid].is_learner else MemberNotLearnerError()
            if mid in members:
                return MemberExistsError()
            if _urls_in_use(members, ctx.get("peerURLs") or ()):
                return PeerURLExistsError()
            if ctx.get("isLearner") and sum(m.is_learner for m in members.values()) >= 1:
                return TooManyLearnersError()     # etcd 3.4 maxLearners = 1
            return None
        if cc.type == raft_pb2.ConfChangeRemoveNode:
            return None if mid in members else MemberNotFoundError()
        if cc.type == raft_pb2.ConfChangeUpdateNode:
            if mid not in members:
                return MemberNotFoundError()
            others = {i: m for i, m in members.items() if i != mid}
            if _urls_in_use(others, _context(cc).get("peerURLs") or ()):
                return PeerURLExistsError()
        return None

    def apply_conf_change(self, txn: Any, cc: raft_pb2.ConfChange,
                          index: int = 0) -> ServerError | None:
        """Record a committed ConfChange (disk thread); returns the reason it was refused
        (then nothing changes and its entry index is remembered, `was_refused`)."""
        refused = self.validate(cc)
        if refused is not None:
            txn.put(_refused_key(index), b"", db=self._cluster_db)
            return refused
        mid = cc.node_id
        members = dict(self.members)
        if cc.type in (raft_pb2.ConfChangeAddNode, raft_pb2.ConfChangeAddLearnerNode):
            learner = cc.type == raft_pb2.ConfChangeAddLearnerNode
            old = members.get(mid)
            if old is not None and old.is_learner and not learner:
                new = Member(old.id, old.name, old.peer_urls, old.client_urls, False)  # promote
            elif cc.context:
                new = member_from_json(cc.context, mid)
                new = Member(new.id, new.name, new.peer_urls, new.client_urls, learner)
            else:
                new = Member(mid, "", (), (), learner)
            members[mid] = new
        elif cc.type == raft_pb2.ConfChangeRemoveNode:
            members.pop(mid, None)
            txn.delete(b"%x" % mid, db=self._members_db)
            txn.put(b"%x" % mid, b"removed", db=self._removed_db)
            self.removed = self.removed | {mid}
            self.members = members
            return None
        elif cc.type == raft_pb2.ConfChangeUpdateNode and mid in members and cc.context:
            old, upd = members[mid], member_from_json(cc.context, mid)
            members[mid] = Member(mid, old.name, upd.peer_urls, old.client_urls, old.is_learner)
        else:
            return None
        txn.put(b"%x" % mid, member_json(members[mid]), db=self._members_db)
        self.members = members
        return None

    def was_refused(self, txn: Any, index: int) -> bool:
        """Whether the conf change at entry `index` was refused when first applied, so a
        replay after a restart hands raft the same no-op."""
        return txn.get(_refused_key(index), db=self._cluster_db) is not None

    def apply_v2(self, txn: Any, method: str, path: str, value: str) -> None:
        """Apply the two v2 store writes etcd 3.4 proposes (disk thread)."""
        if method != "PUT":       # QGET (/health's quorum read) changes nothing
            return
        if path == VERSION_PATH:
            self.version = value
            txn.put(CLUSTER_VERSION_KEY, value.encode(), db=self._cluster_db)
            return
        if path.startswith(ATTRIBUTES_PREFIX) and path.endswith("/attributes"):
            mid = int(path[len(ATTRIBUTES_PREFIX):-len("/attributes")], 16)
            old = self.members.get(mid)
            if old is None:
                return
            attrs = json.loads(value)
            new = Member(mid, attrs.get("name") or "", old.peer_urls,
                         tuple(attrs.get("clientURLs") or ()), old.is_learner)
            members = dict(self.members)
            members[mid] = new
            txn.put(b"%x" % mid, member_json(new), db=self._members_db)
            self.members = members


def _context(cc: raft_pb2.ConfChange) -> dict[str, Any]:
    """The JSON context of a conf change (etcd's Member / ConfigChangeContext), {} if none."""
    if not cc.context:
        return {}
    try:
        obj = json.loads(cc.context)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _urls_in_use(members: dict[int, Member], urls: Any) -> bool:
    used = {u for m in members.values() for u in m.peer_urls}
    return any(u in used for u in urls)


def _refused_key(index: int) -> bytes:
    return REFUSED_PREFIX + index.to_bytes(8, "big")
