"""Refusals raised by the MVCC store (etcd 3.4 `mvcc/kvstore.go` errors).

The wire form of each lives in `etcdd/api/rpctypes.py`, the only table of wire errors.
"""


class MVCCError(Exception):
    """Base of every refusal the store raises."""


class CompactedError(MVCCError):
    """The requested revision is older than the last compaction."""


class FutureRevError(MVCCError):
    """The requested revision is newer than the store's current revision."""


class DatabaseSpaceExceededError(MVCCError):
    """The backend reached `--quota-backend-bytes` (the NOSPACE alarm)."""
