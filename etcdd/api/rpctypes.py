"""The one table of wire errors: exception class -> (gRPC status code, etcd's exact message).

Core. Wire-compatible with etcd 3.4 `etcdserver/api/v3rpc/rpctypes/error.go` and
`v3rpc/util.go togRPCError`: clients match these strings byte for byte.
"""
from __future__ import annotations

from enum import IntEnum

from etcdd.mvcc import errors as mvcc
from etcdd.server import errors as server


class Status(IntEnum):
    """gRPC status codes (grpc/codes)."""
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class GrpcError(Exception):
    """A call's failure already in wire form (used by the transport and by handlers
    that answer with a status etcd builds inline)."""

    def __init__(self, code: Status, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


WIRE_ERRORS: dict[type[BaseException], tuple[Status, str]] = {
    server.EmptyKeyError: (Status.INVALID_ARGUMENT, "etcdserver: key is not provided"),
    server.KeyNotFoundError: (Status.INVALID_ARGUMENT, "etcdserver: key not found"),
    server.ValueProvidedError: (Status.INVALID_ARGUMENT, "etcdserver: value is provided"),
    server.LeaseProvidedError: (Status.INVALID_ARGUMENT, "etcdserver: lease is provided"),
    server.TooManyOpsError: (Status.INVALID_ARGUMENT,
                             "etcdserver: too many operations in txn request"),
    server.DuplicateKeyError: (Status.INVALID_ARGUMENT,
                               "etcdserver: duplicate key given in txn request"),
    server.RequestTooLargeError: (Status.INVALID_ARGUMENT, "etcdserver: request is too large"),
    # NB: etcd 3.4 sends this one as Unknown through a mapping slip (v3rpc/util.go);
    # clients match the string, so we send it the same way.
    server.TooManyRequestsError: (Status.UNKNOWN, "etcdserver: too many requests"),
    server.LeaseNotFoundError: (Status.NOT_FOUND, "etcdserver: requested lease not found"),
    server.LeaseExistsError: (Status.FAILED_PRECONDITION, "etcdserver: lease already exists"),
    server.LeaseTTLTooLargeError: (Status.OUT_OF_RANGE, "etcdserver: too large lease TTL"),
    server.NoLeaderError: (Status.UNAVAILABLE, "etcdserver: no leader"),
    server.NotLeaderError: (Status.FAILED_PRECONDITION, "etcdserver: not leader"),
    server.StoppedError: (Status.UNAVAILABLE, "etcdserver: server stopped"),
    server.RequestTimeoutError: (Status.UNAVAILABLE, "etcdserver: request timed out"),
    server.NotCapableError: (Status.UNAVAILABLE, "etcdserver: not capable"),
    server.LeaderChangedError: (Status.UNAVAILABLE, "etcdserver: leader changed"),
    server.TimeoutDueToLeaderFailError: (
        Status.UNAVAILABLE,
        "etcdserver: request timed out, possibly due to previous leader failure"),
    server.TimeoutDueToConnectionLostError: (
        Status.UNAVAILABLE, "etcdserver: request timed out, possibly due to connection lost"),
    server.BadLeaderTransfereeError: (Status.FAILED_PRECONDITION,
                                      "etcdserver: bad leader transferee"),
    # NB: etcd 3.4 leaves these two unmapped (togRPCError), so they travel as Unknown.
    server.ProposalDroppedError: (Status.UNKNOWN, "raft proposal dropped"),
    server.ProposalDeadlineError: (Status.UNKNOWN, "context deadline exceeded"),
    server.LeaderTransferTimeoutError: (
        Status.UNKNOWN, "etcdserver: request timed out, leader transfer took too long"),
    mvcc.CompactedError: (Status.OUT_OF_RANGE,
                          "etcdserver: mvcc: required revision has been compacted"),
    mvcc.FutureRevError: (Status.OUT_OF_RANGE,
                          "etcdserver: mvcc: required revision is a future revision"),
    mvcc.DatabaseSpaceExceededError: (Status.RESOURCE_EXHAUSTED,
                                      "etcdserver: mvcc: database space exceeded"),
    # NB: etcd 3.4 v3election returns these as plain Go errors, so grpc-go sends Unknown.
    server.ElectionNotLeaderError: (Status.UNKNOWN, "election: not leader"),
    server.ElectionNoLeaderError: (Status.UNKNOWN, "election: no leader"),
    server.MissingLeaderKeyError: (Status.UNKNOWN, '"leader" field must be provided'),
    server.TimeoutWaitAppliedIndexError: (
        Status.UNAVAILABLE,
        "etcdserver: request timed out, waiting for the applied index took too long"),
    server.MemberNotFoundError: (Status.NOT_FOUND, "etcdserver: member not found"),
    server.MemberExistsError: (Status.FAILED_PRECONDITION, "etcdserver: member ID already exist"),
    server.PeerURLExistsError: (Status.FAILED_PRECONDITION,
                                "etcdserver: Peer URLs already exists"),
    server.MemberBadURLsError: (Status.INVALID_ARGUMENT,
                                "etcdserver: given member URLs are invalid"),
    server.MemberNotLearnerError: (Status.FAILED_PRECONDITION,
                                   "etcdserver: can only promote a learner member"),
    server.LearnerNotReadyError: (
        Status.FAILED_PRECONDITION,
        "etcdserver: can only promote a learner member which is in sync with leader"),
    server.TooManyLearnersError: (Status.FAILED_PRECONDITION,
                                  "etcdserver: too many learner members in cluster"),
    server.NotEnoughStartedMembersError: (
        Status.FAILED_PRECONDITION,
        "etcdserver: re-configuration failed due to not enough started members"),
    server.UnhealthyClusterError: (Status.UNAVAILABLE, "etcdserver: unhealthy cluster"),
    server.NotSupportedForLearnerError: (Status.UNAVAILABLE,
                                         "etcdserver: rpc not supported for learner"),
    server.CorruptError: (Status.DATA_LOSS, "etcdserver: corrupt cluster"),
    server.MemberRemovedError: (Status.UNAVAILABLE,
                                "the member has been permanently removed from the cluster"),
}


def status_for(error: BaseException) -> tuple[Status, str]:
    """Map an exception to its wire (code, message); unknown ones become UNKNOWN with
    their text, as etcd's `togRPCError` passes unmapped errors through."""
    if isinstance(error, GrpcError):
        return error.code, error.message
    for cls in type(error).__mro__:
        wire = WIRE_ERRORS.get(cls)
        if wire is not None:
            return wire
    return Status.UNKNOWN, str(error) or type(error).__name__
