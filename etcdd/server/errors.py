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
