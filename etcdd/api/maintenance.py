"""The v3 Maintenance and Cluster services (the parts a single member answers), and
grpc.health.v1.

Matches etcd 3.4 `etcdserver/api/v3rpc/maintenance.go` and `member.go`: Status, Hash,
HashKV, MoveLeader, Alarm (through raft, as `v3_server.go` Alarm; its answer carries no
header, as etcd's), MemberList, Defragment (`server/defrag.py`).
"""
from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred

from etcdd.api.kv import HeaderFiller
from etcdd.api.router import CallContext, Router
from etcdd.proto import health_pb2, rpc_pb2 as pb
from etcdd.server.alarms import alarm_text
from etcdd.version import ETCD_SERVER_VERSION


class MaintenanceService:
    def __init__(self, member: Any, store: Any, backend: Any, header: HeaderFiller,
                 cluster: Any, run_read: Callable[..., Deferred] = maybeDeferred,
                 alarms: Any = None, defragmenter: Any = None) -> None:
        self._defragmenter = defragmenter    # server/defrag.py; None: no Defragment
        self._member = member
        self._store = store
        self._backend = backend
        self._header = header
        self._cluster = cluster
        self._run_read = run_read     # long read-only scans: e.g. deferToThread
        self._alarms = alarms if alarms is not None else member.alarms   # AlarmSet

    def register(self, router: Router) -> None:
        add = router.add_unary
        add("/etcdserverpb.Maintenance/Status", pb.StatusRequest, self.status)
        add("/etcdserverpb.Maintenance/Hash", pb.HashRequest, self.hash)
        add("/etcdserverpb.Maintenance/HashKV", pb.HashKVRequest, self.hash_kv)
        add("/etcdserverpb.Maintenance/Alarm", pb.AlarmRequest, self.alarm)
        add("/etcdserverpb.Maintenance/MoveLeader", pb.MoveLeaderRequest, self.move_leader)
        add("/etcdserverpb.Cluster/MemberList", pb.MemberListRequest, self.member_list)
        add("/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest, self.health_check)
        if self._defragmenter is not None:
            add("/etcdserverpb.Maintenance/Defragment", pb.DefragmentRequest, self.defragment)

    def defragment(self, req: Any, context: CallContext) -> Deferred:
        """etcd 3.4 `Defragment`: this member only, answered with no header at all; a
        failure goes back as it is (not in rpctypes' table: Unknown with its text)."""
        return self._defragmenter.defragment().addCallback(
            lambda _: pb.DefragmentResponse())

    def status(self, req: Any, context: CallContext) -> Any:
        m = self._member
        resp = pb.StatusResponse(
            version=ETCD_SERVER_VERSION,
            dbSize=self._backend.size_bytes(),
            leader=m.leader,
            raftIndex=m.committed_index,
            raftTerm=m.term,
            raftAppliedIndex=m.applied_index,
            dbSizeInUse=self._backend.size_in_use_bytes(),
            isLearner=m.is_learner,
        )
        if not m.leader:
            resp.errors.append("etcdserver: no leader")
        resp.errors.extend(alarm_text(a) for a in self._alarms.get())
        return self._header.fill(resp)

    def move_leader(self, req: Any, context: CallContext) -> Any:
        """etcd 3.4 `MoveLeader`: only the leader transfers; answers once the target leads."""
        return self._member.move_leader(req.targetID).addCallback(
            lambda _: self._header.fill(pb.MoveLeaderResponse()))

    def hash(self, req: Any, context: CallContext) -> Any:
        # NB: a full scan (~100 ms per 100k records): off the reactor, in a read thread.
        d = self._run_read(self._store.hash)
        return d.addCallback(lambda h: self._header.fill(pb.HashResponse(hash=h)))

    def hash_kv(self, req: Any, context: CallContext) -> Any:
        def answer(result: tuple[int, int, int]) -> Any:
            hash_, compact_rev, rev = result
            resp = pb.HashKVResponse(hash=hash_, compact_revision=compact_rev)
            resp.header.revision = rev
            return self._header.fill(resp)
        return self._run_read(self._store.hash_kv, req.revision).addCallback(answer)

    def alarm(self, req: Any, context: CallContext) -> Any:
        """etcd 3.4 `Alarm`: GET, ACTIVATE and DEACTIVATE all go through raft and answer
        what the applier answered (server/alarms.py)."""
        return self._member.propose("alarm", req)

    def member_list(self, req: Any, context: CallContext) -> Any:
        resp = pb.MemberListResponse()
        for member in self._cluster.sorted_members():
            resp.members.add(ID=member.id, name=member.name, peerURLs=list(member.peer_urls),
                             clientURLs=list(member.client_urls), isLearner=member.is_learner)
        return self._header.fill_without_revision(resp)

    def health_check(self, req: Any, context: CallContext) -> Any:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
