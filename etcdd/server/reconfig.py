"""Membership changes: MemberAdd, MemberRemove, MemberUpdate, MemberPromote.

Shell over a few pure rules. etcd 3.4 `etcdserver/server.go` (AddMember, RemoveMember,
UpdateMember, PromoteMember and their `may*` checks) and `api/membership/cluster.go`
(`IsReadyTo*`):

- The strict reconfiguration check (`--strict-reconfig-check`, on by default) runs on the
  member that got the request, against its own view: a change must leave at least a
  quorum of started voters (a member is started once it has published its name), and
  adding a voter or removing an active one needs this member connected to enough voters
  for the last 5 s (`HealthInterval`). Refusals: `re-configuration failed due to not
  enough started members`, `unhealthy cluster`.
- Promotion needs the leader's view of the learner's log (match >= 90 % of the
  leader's): a follower forwards it to the leader over the peer call stream
  (`member_promote`), as etcd forwards it over peer HTTP.
- The change then goes through raft as a ConfChange; every member validates it again when
  it applies (`ClusterState.validate`), and the proposer answers with the members after it.
- A new member's ID is etcd's: sha1 of its sorted peer URLs and the leader's wall clock in
  Unix seconds (`membership.member_id(urls, "", now)`).
"""
from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import Logger

from etcdd.api.rpctypes import GrpcError, Status
from etcdd.proto import raft_pb2
from etcdd.server import errors
from etcdd.server.cluster import member_json, members_from_json, members_json
from etcdd.server.membership import Member, member_id
from etcdd.urls import normalize_url

HEALTH_INTERVAL_SECONDS = 5.0          # etcd 3.4 etcdserver.HealthInterval
LEARNER_READY_PERCENT = 0.9            # etcd 3.4 readyPercent
PROMOTE_CALL = "member_promote"
_ID = struct.Struct(">Q")


# -- the rules (pure) ----------------------------------------------------------------------

def _quorum(n: int) -> int:
    return n // 2 + 1


def ready_to_add_voter(voters: Iterable[Member]) -> bool:
    """etcd `IsReadyToAddVotingMember`: after the add, started voters are a quorum (one
    started voter may always add a second)."""
    voters = list(voters)
    started = sum(1 for m in voters if m.name)
    members = len(voters) + 1
    return (started == 1 and members == 2) or started >= _quorum(members)


def ready_to_remove_voter(voters: Iterable[Member], target: int) -> bool:
    """etcd `IsReadyToRemoveVotingMember`: the started voters left are a quorum."""
    rest = [m for m in voters if m.id != target]
    return sum(1 for m in rest if m.name) >= _quorum(len(rest))


def ready_to_promote(voters: Iterable[Member]) -> bool:
    """etcd `IsReadyToPromoteMember`: counting the learner as a started voter, the
    started voters are a quorum."""
    voters = list(voters)
    return 1 + sum(1 for m in voters if m.name) >= _quorum(len(voters) + 1)


def learner_ready(learner_match: int | None, leader_match: int) -> bool:
    """etcd `isLearnerReady`: the learner's log matches at least 90 % of the leader's
    (a member raft does not track yet is not refused here)."""
    return learner_match is None or learner_match >= leader_match * LEARNER_READY_PERCENT


def connected_voters(active_since: Callable[[int], float | None], since: float, me: int,
                     voters: Iterable[Member]) -> int:
    """etcd `numConnectedSince`: voters connected to us since `since` (ourselves included)."""
    count = 0
    for m in voters:
        t = active_since(m.id) if m.id != me else None
        if m.id == me or (t is not None and t <= since):
            count += 1
    return count


def parse_peer_urls(urls: Sequence[str]) -> tuple[str, ...]:
    """The peer URLs of a MemberAdd/MemberUpdate, normalized; raises MemberBadURLsError
    (etcd `types.NewURLs`: none given, or one that does not parse)."""
    if not urls:
        raise errors.MemberBadURLsError()
    try:
        return tuple(sorted(normalize_url(u) for u in urls))
    except ValueError:
        raise errors.MemberBadURLsError() from None


# -- the shell -----------------------------------------------------------------------------

class Reconfigurer:
    """Runs membership changes for the Cluster service on one member."""

    _log = Logger()

    def __init__(self, member: Any, reactor: Any, strict: bool = True,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._member = member
        self._reactor = reactor
        self._strict = strict
        self._wall_clock = wall_clock

    @property
    def _cluster(self) -> Any:
        return self._member.cluster

    def _voters(self) -> list[Member]:
        return [m for m in self._cluster.members.values() if not m.is_learner]

    def _connected_since(self, voters: list[Member]) -> int:
        transport = self._member.loop.transport
        since = self._reactor.seconds() - HEALTH_INTERVAL_SECONDS
        active = transport.active_since if transport is not None else (lambda _: None)
        return connected_voters(active, since, self._member.identity.member_id, voters)

    def add(self, peer_urls: Sequence[str], is_learner: bool) -> Deferred:
        """Fires with (the new Member, members after the add)."""
        try:
            urls = parse_peer_urls(peer_urls)
        except errors.ServerError as e:
            return fail(e)
        new = Member(member_id(urls, "", int(self._wall_clock())), "", urls, (), is_learner)
        if self._strict:
            voters = self._voters()
            if not is_learner and not ready_to_add_voter(voters):
                self._log.warn("rejecting member add {id:x}: not enough started members",
                               id=new.id)
                return fail(errors.NotEnoughStartedMembersError())
            if self._connected_since(voters) != len(voters):
                self._log.warn("rejecting member add {id:x}: not connected to every voter "
                               "for {s:g} s", id=new.id, s=HEALTH_INTERVAL_SECONDS)
                return fail(errors.UnhealthyClusterError())
        kind = (raft_pb2.ConfChangeAddLearnerNode if is_learner
                else raft_pb2.ConfChangeAddNode)
        cc = raft_pb2.ConfChange(type=kind, node_id=new.id, context=member_json(new))
        self._log.info("adding member {id:x} {urls}{learner}", id=new.id, urls=list(urls),
                       learner=" as learner" if is_learner else "")
        return self._member.propose_conf_change(cc).addCallback(lambda ms: (new, ms))

    def remove(self, target: int) -> Deferred:
        """Fires with the members after the removal."""
        if self._strict:
            refusal = self._may_remove(target)
            if refusal is not None:
                return fail(refusal)
        cc = raft_pb2.ConfChange(type=raft_pb2.ConfChangeRemoveNode, node_id=target)
        self._log.info("removing member {id:x}", id=target)
        return self._member.propose_conf_change(cc)

    def _may_remove(self, target: int) -> errors.ServerError | None:
        m = self._cluster.members.get(target)
        if m is not None and m.is_learner:
            return None
        voters = self._voters()
        if not ready_to_remove_voter(voters, target):
            return errors.NotEnoughStartedMembersError()
        transport = self._member.loop.transport
        me = self._member.identity.member_id
        if target != me and (transport is None or transport.active_since(target) is None):
            return None      # an inactive member does not count towards the quorum anyway
        if self._connected_since(voters) - 1 < _quorum(len(voters) - 1):
            return errors.UnhealthyClusterError()
        return None

    def update(self, target: int, peer_urls: Sequence[str]) -> Deferred:
        """Fires with the members after the update (etcd checks nothing beforehand)."""
        try:
            urls = parse_peer_urls(peer_urls)
        except errors.ServerError as e:
            return fail(e)
        cc = raft_pb2.ConfChange(type=raft_pb2.ConfChangeUpdateNode, node_id=target,
                                 context=member_json(Member(target, "", urls)))
        self._log.info("updating member {id:x} peer URLs to {urls}", id=target, urls=list(urls))
        return self._member.propose_conf_change(cc)

    def promote(self, target: int) -> Deferred:
        """Fires with the members after the promotion; a follower asks the leader."""
        member = self._member
        if member.is_leader:
            return maybeDeferred(self._promote_here, target)
        lead, transport = member.leader, member.loop.transport
        if not lead or transport is None:
            return fail(errors.NoLeaderError())
        d = transport.call(lead, PROMOTE_CALL, _ID.pack(target),
                           timeout_seconds=member.request_timeout_seconds)
        return d.addCallback(members_from_json)

    def _promote_here(self, target: int) -> Deferred:
        status = self._member.loop.node.status()
        if not status.progress:
            raise errors.NotLeaderError()
        learner = status.progress.get(target)
        leader = status.progress.get(status.id)
        if not learner_ready(learner.match if learner else None,
                             leader.match if leader else 0):
            raise errors.LearnerNotReadyError()
        if self._strict and not ready_to_promote(self._voters()):
            raise errors.NotEnoughStartedMembersError()
        cc = raft_pb2.ConfChange(type=raft_pb2.ConfChangeAddNode, node_id=target,
                                 context=json.dumps({"id": target, "isPromote": True},
                                                    separators=(",", ":")).encode())
        self._log.info("promoting learner {id:x}", id=target)
        return self._member.propose_conf_change(cc)

    def handle_call(self, from_id: int, method: str, payload: bytes) -> Any:
        """A follower's forwarded MemberPromote (the peer call `member_promote`)."""
        if method != PROMOTE_CALL:
            raise GrpcError(Status.UNIMPLEMENTED, f"unknown peer method {method}")
        target = _ID.unpack(payload)[0]
        return self.promote(target).addCallback(members_json)
