"""Refusals raised by the member's request path (etcd 3.4 `etcdserver/errors.go`,
`etcdserver/api/v3rpc/key.go` validation, `lease/lessor.go`).

The wire form of each lives in `etcdd/api/rpctypes.py`.
"""


class ServerError(Exception):
    """Base of every refusal the request path raises."""


class EmptyKeyError(ServerError):
    """A request named no key."""


class KeyNotFoundError(ServerError):
    """`ignore_value`/`ignore_lease` on a missing key, or an empty RequestOp."""


class ValueProvidedError(ServerError):
    """`ignore_value` together with a value."""


class LeaseProvidedError(ServerError):
    """`ignore_lease` together with a lease."""


class TooManyOpsError(ServerError):
    """A txn branch or compare list longer than `--max-txn-ops`."""


class DuplicateKeyError(ServerError):
    """A txn branch writes one key twice."""


class RequestTooLargeError(ServerError):
    """A request larger than `--max-request-bytes`."""


class TooManyRequestsError(ServerError):
    """Too many proposals are waiting to be applied."""


class LeaseNotFoundError(ServerError):
    """A request names a lease that does not exist."""


class LeaseExistsError(ServerError):
    """LeaseGrant of an ID already in use."""


class LeaseTTLTooLargeError(ServerError):
    """LeaseGrant with a TTL beyond the maximum."""


class NoLeaderError(ServerError):
    """The member knows no leader."""


class NotLeaderError(ServerError):
    """A leader-only request reached a follower."""


class StoppedError(ServerError):
    """The member is shutting down."""


class RequestTimeoutError(ServerError):
    """A proposal was not applied in time."""


class NotCapableError(ServerError):
    """The cluster version is not decided yet."""


class ProposalDroppedError(ServerError):
    """Raft dropped the proposal (no leader, or a leader transfer is in progress)."""


class LeaderChangedError(ServerError):
    """The leader changed while a linearizable read waited for its ReadIndex."""


class TimeoutDueToLeaderFailError(ServerError):
    """Timed out around an election: the previous leader likely failed."""


class TimeoutDueToConnectionLostError(ServerError):
    """Timed out while the connection to the leader (or a quorum) was down."""


class BadLeaderTransfereeError(ServerError):
    """MoveLeader to a learner or a member that is not in the cluster."""


class LeaderTransferTimeoutError(ServerError):
    """MoveLeader did not complete within the request timeout."""


class ProposalDeadlineError(ServerError):
    """A proposal that raft never took (no leader) outlived the request timeout."""


class ElectionNotLeaderError(ServerError):
    """Proclaim by a leader key that is gone or was re-created (etcd 3.4
    clientv3/concurrency `ErrElectionNotLeader`)."""


class ElectionNoLeaderError(ServerError):
    """Leader of an election nobody campaigns in (clientv3/concurrency
    `ErrElectionNoLeader`)."""


class MissingLeaderKeyError(ServerError):
    """Proclaim or Resign without its `leader` field (v3election `ErrMissingLeaderKey`)."""


class TimeoutWaitAppliedIndexError(ServerError):
    """The leader did not apply what it had committed within a second (etcd 3.4
    `waitAppliedIndex`, before a lease renewal or TTL query)."""


# -- membership (etcd 3.4 etcdserver/api/membership/errors.go, etcdserver/errors.go) ------

class MemberNotFoundError(ServerError):
    """The member ID is not in the cluster, or was removed (membership `ErrIDNotFound`,
    `ErrIDRemoved`)."""


class MemberExistsError(ServerError):
    """MemberAdd of an ID the cluster has (membership `ErrIDExists`)."""


class PeerURLExistsError(ServerError):
    """Another member already uses one of the peer URLs (membership `ErrPeerURLexists`)."""


class MemberBadURLsError(ServerError):
    """A peer URL that does not parse (v3rpc `ErrGRPCMemberBadURLs`)."""


class MemberNotLearnerError(ServerError):
    """MemberPromote of a voting member (membership `ErrMemberNotLearner`)."""


class LearnerNotReadyError(ServerError):
    """MemberPromote of a learner whose log is under 90 % of the leader's
    (etcd `ErrLearnerNotReady`)."""


class TooManyLearnersError(ServerError):
    """MemberAdd of a second learner (membership `ErrTooManyLearners`, maxLearners = 1)."""


class NotEnoughStartedMembersError(ServerError):
    """A change that would leave fewer started voters than a quorum (strict reconfig
    check, etcd `ErrNotEnoughStartedMembers`)."""


class UnhealthyClusterError(ServerError):
    """A change while this member has not been connected to enough voters for the last
    5 s (strict reconfig check, etcd `ErrUnhealthy`)."""


class NotSupportedForLearnerError(ServerError):
    """A learner serves only serializable Range and Status (etcd 3.4 v3rpc interceptor)."""


class MemberRemovedError(ServerError):
    """This member was removed from the cluster and stops."""


class CorruptError(ServerError):
    """The CORRUPT alarm is active: the cluster's members disagree on their data."""

    def __init__(self) -> None:
        super().__init__("etcdserver: corrupt cluster")
