"""The v3 Cluster service's membership changes: MemberAdd, MemberRemove, MemberUpdate,
MemberPromote (MemberList is answered with the Maintenance service, `api/maintenance.py`).

Shell. etcd 3.4 `etcdserver/api/v3rpc/member.go`: every answer lists all members after the
change, sorted by ID, with a header without a revision; MemberAdd also returns the new
member (ID, peer URLs, learner flag; no name yet). The work is `server/reconfig.py`'s.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from etcdd.api.kv import HeaderFiller
from etcdd.api.router import CallContext, Router
from etcdd.proto import rpc_pb2 as pb
from etcdd.server.membership import Member


class ClusterService:
    def __init__(self, reconfigurer: Any, header: HeaderFiller) -> None:
        self._reconfig = reconfigurer
        self._header = header

    def register(self, router: Router) -> None:
        add = router.add_unary
        add("/etcdserverpb.Cluster/MemberAdd", pb.MemberAddRequest, self.member_add)
        add("/etcdserverpb.Cluster/MemberRemove", pb.MemberRemoveRequest, self.member_remove)
        add("/etcdserverpb.Cluster/MemberUpdate", pb.MemberUpdateRequest, self.member_update)
        add("/etcdserverpb.Cluster/MemberPromote", pb.MemberPromoteRequest,
            self.member_promote)

    def member_add(self, req: Any, context: CallContext) -> Any:
        def answer(result: tuple[Member, list[Member]]) -> Any:
            new, members = result
            resp = pb.MemberAddResponse(member=pb.Member(
                ID=new.id, peerURLs=list(new.peer_urls), isLearner=new.is_learner))
            _add_members(resp, members)
            return self._header.fill_without_revision(resp)
        return self._reconfig.add(list(req.peerURLs), req.isLearner).addCallback(answer)

    def member_remove(self, req: Any, context: CallContext) -> Any:
        return self._reconfig.remove(req.ID).addCallback(
            self._answer, pb.MemberRemoveResponse)

    def member_update(self, req: Any, context: CallContext) -> Any:
        return self._reconfig.update(req.ID, list(req.peerURLs)).addCallback(
            self._answer, pb.MemberUpdateResponse)

    def member_promote(self, req: Any, context: CallContext) -> Any:
        return self._reconfig.promote(req.ID).addCallback(
            self._answer, pb.MemberPromoteResponse)

    def _answer(self, members: list[Member], response_type: type) -> Any:
        resp = response_type()
        _add_members(resp, members)
        return self._header.fill_without_revision(resp)


def _add_members(resp: Any, members: Iterable[Member]) -> None:
    for m in sorted(members, key=lambda m: m.id):
        resp.members.add(ID=m.id, name=m.name, peerURLs=list(m.peer_urls),
                         clientURLs=list(m.client_urls), isLearner=m.is_learner)


def supported_for_learner(path: str, request: Any) -> bool:
    """etcd 3.4 v3rpc interceptor: a learner answers only Status and serializable Range;
    every stream and every other call gets `rpc not supported for learner`."""
    if path == "/etcdserverpb.Maintenance/Status":
        return True
    return path == "/etcdserverpb.KV/Range" and request is not None and request.serializable
