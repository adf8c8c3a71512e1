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
"""
from __future__ import annotations

import json
from typing import Any

from etcdd.proto import raft_pb2
from etcdd.server.membership import Member

CLUSTER_VERSION_KEY = b"clusterVersion"
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


class ClusterState:
    """Members by ID, as of the last applied entry. `members` is replaced, never mutated,
    so the reactor may read it while the disk thread prepares the next version."""

    def __init__(self, dbs: dict[bytes, Any]) -> None:
        self._members_db = dbs[b"members"]
        self._removed_db = dbs[b"members_removed"]
        self._cluster_db = dbs[b"cluster"]
        self.members: dict[int, Member] = {}
        self.removed: frozenset[int] = frozenset()
        self.version: str = ""

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

    def apply_conf_change(self, txn: Any, cc: raft_pb2.ConfChange) -> None:
        """Record a committed ConfChange (disk thread)."""
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
            return
        elif cc.type == raft_pb2.ConfChangeUpdateNode and mid in members and cc.context:
            old, upd = members[mid], member_from_json(cc.context, mid)
            members[mid] = Member(mid, old.name, upd.peer_urls, old.client_urls, old.is_learner)
        else:
            return
        txn.put(b"%x" % mid, member_json(members[mid]), db=self._members_db)
        self.members = members

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
