"""The lessor: which leases exist, which keys each holds, and when each expires. A core.

Matches etcd 3.4 `lease/lessor.go` and `lease/lease_queue.go` minus the backend: every
member grants, revokes, attaches and checkpoints as entries apply; only the primary (the
leader's lessor) keeps real expiries, hands out expired leases for the server to propose
`LeaseRevoke`, and hands out checkpoints to propose `LeaseCheckpoint`. Nothing here writes
anything: methods return what changed and the shell persists it (the `lease` bucket rows are
`(id, ttl, remaining_ttl)`, which `restore` takes back at start).

Time is the injected clock's `seconds()`; a lease's `expiry` is in those seconds and is
`math.inf` on a member that is not primary. Worked example (min TTL 5, primary at t=0):

    grant(7, ttl_seconds=2)   -> Lease(7, ttl 5, expiry 5.0)     # raised to the min TTL
    t=4.0: renew(7)           -> 5, expiry 9.0
    t=9.0: take_expired()     -> [7]; t=10.0: take_expired() -> []  # proposed once
    t=12.0: take_expired()    -> [7]                                # retry after 3 s
    revoke(7)                 -> Lease(7, keys={...}); the shell deletes the keys
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Iterable

from twisted.internet.interfaces import IReactorTime

from etcdd.server.errors import LeaseExistsError, LeaseNotFoundError, LeaseTTLTooLargeError

__all__ = ["Lease", "Lessor", "LeaseError", "NotPrimaryError", "LeaseExpiredError",
           "LeaseNotFoundError", "LeaseExistsError", "LeaseTTLTooLargeError",
           "MAX_LEASE_TTL_SECONDS", "NO_LEASE"]

NO_LEASE = 0
# etcd 3.4 lease/lessor.go MaxLeaseTTL.
MAX_LEASE_TTL_SECONDS = 9_000_000_000
# etcd 3.4 leaseRevokeRate, defaultExpiredleaseRetryInterval, maxLeaseCheckpointBatchSize.
LEASE_REVOKE_RATE = 1000
EXPIRED_LEASE_RETRY_SECONDS = 3.0
MAX_CHECKPOINT_BATCH = 1000
# NB: a non-primary lease's Remaining() in etcd is time.Duration(MaxInt64); its whole
# seconds are what LeaseTimeToLive would answer.
FOREVER_REMAINING_SECONDS = (2**63 - 1) // 1_000_000_000


class LeaseError(Exception):
    """Base of the refusals that only the lessor raises."""


class NotPrimaryError(LeaseError):
    """Renew on a lessor that is not primary (etcd `ErrNotPrimary`)."""


class LeaseExpiredError(LeaseError, LeaseNotFoundError):
    """Renew of a lease whose expiry has passed and whose revocation is pending.

    etcd 3.4 blocks such a renew until the revocation applies and then answers
    `ErrLeaseNotFound` (or `ErrNotPrimary` on demotion); a core cannot block, so it raises
    this `LeaseNotFoundError` at once and the shell may wait for the revoke if it likes.
    """


@dataclass(slots=True)
class Lease:
    """One lease. `remaining_ttl_seconds == 0` means "unset: use `ttl_seconds`".

    `expiry` is clock seconds on the primary and `math.inf` elsewhere; `keys` is the set
    of keys attached to the lease (owned by the lessor; read it, do not mutate it).
    """

    id: int
    ttl_seconds: int
    remaining_ttl_seconds: int = 0
    expiry: float = math.inf
    keys: set[bytes] = field(default_factory=set)

    @property
    def effective_ttl_seconds(self) -> int:
        """The TTL a refresh counts from: the checkpointed remaining TTL if set, else the TTL."""
        remaining = self.remaining_ttl_seconds
        return remaining if remaining > 0 else self.ttl_seconds


class _DueQueue:
    """Lease ids ordered by due time, one live time per id (etcd's LeaseQueue, lazily).

    Invariant: `_due[id]` is the id's only live time; a heap entry `(t, id)` is live iff
    `_due.get(id) == t`, and stale entries are dropped when they reach the top. The heap is
    rebuilt when stale entries outnumber live ones, so it stays O(live ids).
    """

    __slots__ = ("_heap", "_due")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._due: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._due)

    def set(self, lease_id: int, at: float) -> None:
        """Make `at` the id's due time, replacing any earlier one; O(log n)."""
        self._due[lease_id] = at
        heapq.heappush(self._heap, (at, lease_id))
        self._maybe_compact()

    def discard(self, lease_id: int) -> None:
        """Forget the id; its heap entries go stale."""
        if self._due.pop(lease_id, None) is not None:
            self._maybe_compact()

    def peek(self) -> tuple[float, int] | None:
        """The earliest live `(due, id)`, or None when empty."""
        heap, due = self._heap, self._due
        while heap:
            top = heap[0]
            if due.get(top[1]) == top[0]:
                return top
            heapq.heappop(heap)
        return None

    def pop(self) -> tuple[float, int]:
        """Remove and return the earliest live `(due, id)`; call only after `peek()` found one."""
        top = heapq.heappop(self._heap)
        del self._due[top[1]]
        return top

    def reset(self, due: dict[int, float]) -> None:
        """Replace the whole queue with `due` (id -> time) in O(n)."""
        self._due = due
        self._heap = [(at, lease_id) for lease_id, at in due.items()]
        heapq.heapify(self._heap)

    def _maybe_compact(self) -> None:
        if len(self._heap) > 2 * len(self._due) + 64:
            self.reset(self._due)


class Lessor:
    """The in-memory lessor of one member.

    Invariants: every id in the expiry and checkpoint queues is a granted lease; a key is
    in `lease_of` iff it is in that lease's `keys`; when not primary every `expiry` is
    `math.inf` and both queues are empty.
    """

    def __init__(self, clock: IReactorTime, min_ttl_seconds: int = 5,
                 checkpoint_interval_seconds: float = 300.0,
                 max_lease_ttl_seconds: int = MAX_LEASE_TTL_SECONDS, *,
                 revoke_rate_per_second: int = LEASE_REVOKE_RATE,
                 expired_retry_seconds: float = EXPIRED_LEASE_RETRY_SECONDS) -> None:
        """Raises ValueError for a non-positive retry interval or revoke rate."""
        if expired_retry_seconds <= 0 or revoke_rate_per_second <= 0:
            raise ValueError("expired_retry_seconds and revoke_rate_per_second must be > 0")
        self._clock = clock
        self._min_ttl = min_ttl_seconds
        self._max_ttl = max_lease_ttl_seconds
        self._checkpoint_interval = checkpoint_interval_seconds
        # etcd: RemainingTTL() > int64(checkpointInterval.Seconds()) schedules a checkpoint.
        self._checkpoint_above = int(checkpoint_interval_seconds)
        self._revoke_rate = revoke_rate_per_second
        self._retry = expired_retry_seconds
        self._primary = False
        self._leases: dict[int, Lease] = {}
        self._items: dict[bytes, int] = {}
        self._expiries = _DueQueue()
        self._checkpoints = _DueQueue()
        # Leases whose checkpointed remaining TTL a renew cleared: (id, 0) to propose.
        self._clears: dict[int, None] = {}

    # -- Queries ------------------------------------------------------------------------

    @property
    def is_primary(self) -> bool:
        """Whether this lessor keeps expiries (the member is the leader)."""
        return self._primary

    def lookup(self, lease_id: int) -> Lease | None:
        """The lease with this id, or None."""
        return self._leases.get(lease_id)

    def exists(self, lease_id: int) -> bool:
        """Whether a lease with this id is granted (the applier's lease check)."""
        return lease_id in self._leases

    def leases(self) -> list[Lease]:
        """Every lease, sorted by id."""
        leases = self._leases
        return [leases[lease_id] for lease_id in sorted(leases)]

    def lease_of(self, key: bytes) -> int:
        """The id of the lease the key is attached to, or `NO_LEASE` (0)."""
        return self._items.get(key, NO_LEASE)

    def time_to_live(self, lease_id: int) -> tuple[int, int]:
        """`(granted_ttl, remaining_seconds)` as etcd's LeaseTimeToLive answers them.

        Remaining is `int64(l.Remaining().Seconds())`: truncated toward zero, so a lease
        granted 10 s at t=0 reads 9 at t=0.5; a non-primary lessor reads
        `FOREVER_REMAINING_SECONDS`. Raises LeaseNotFoundError.
        """
        lease = self._get(lease_id)
        if lease.expiry == math.inf:
            return lease.ttl_seconds, FOREVER_REMAINING_SECONDS
        return lease.ttl_seconds, int(lease.expiry - self._clock.seconds())

    # -- Applied on every member ----------------------------------------------------------

    def grant(self, lease_id: int, ttl_seconds: int) -> Lease:
        """Create a lease of at least the minimum TTL; the shell persists the returned lease.

        Raises ValueError for id 0 (the server picks ids before proposing),
        LeaseTTLTooLargeError above the maximum TTL, LeaseExistsError for a granted id.
        """
        if lease_id == NO_LEASE:
            raise ValueError("lease id 0 means no lease")
        if ttl_seconds > self._max_ttl:
            raise LeaseTTLTooLargeError(ttl_seconds)
        if lease_id in self._leases:
            raise LeaseExistsError(lease_id)
        lease = Lease(lease_id, max(ttl_seconds, self._min_ttl))
        self._leases[lease_id] = lease
        if self._primary:
            now = self._clock.seconds()
            lease.expiry = now + lease.ttl_seconds
            self._expiries.set(lease_id, lease.expiry)
            self._schedule_checkpoint(lease, now)
        return lease

    def revoke(self, lease_id: int) -> Lease:
        """Remove the lease and its key attachments; returns it, `keys` intact.

        The shell deletes those keys in sorted order (etcd sorts so every member assigns
        the same sub-revisions) without detaching them again, and deletes the lease row.
        Raises LeaseNotFoundError.
        """
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            raise LeaseNotFoundError(lease_id)
        items = self._items
        for key in lease.keys:
            if items.get(key) == lease_id:
                del items[key]
        self._expiries.discard(lease_id)
        self._checkpoints.discard(lease_id)
        self._clears.pop(lease_id, None)
        return lease

    def attach(self, lease_id: int, keys: Iterable[bytes]) -> None:
        """Attach keys to the lease. Raises LeaseNotFoundError."""
        lease = self._get(lease_id)
        items, leases, held = self._items, self._leases, lease.keys
        for key in keys:
            old = items.get(key)
            if old is not None and old != lease_id:
                # NB: etcd leaves the key in the old lease's set too (the store detaches
                # first); moving it keeps `keys` and `lease_of` in agreement regardless.
                leases[old].keys.discard(key)
            items[key] = lease_id
            held.add(key)

    def detach(self, lease_id: int, keys: Iterable[bytes]) -> None:
        """Detach keys from the lease. Raises LeaseNotFoundError."""
        lease = self._get(lease_id)
        items, held = self._items, lease.keys
        for key in keys:
            held.discard(key)
            if items.get(key) == lease_id:
                del items[key]

    def checkpoint(self, lease_id: int, remaining_ttl_seconds: int) -> Lease | None:
        """Apply a committed LeaseCheckpoint; returns the lease (to persist) or None if unknown.

        On the primary the lease's next checkpoint is scheduled (etcd 3.4 `Checkpoint`);
        the expiry itself is not moved: the remaining TTL counts from the next promote.
        """
        lease = self._leases.get(lease_id)
        if lease is None:
            return None
        lease.remaining_ttl_seconds = remaining_ttl_seconds
        if self._primary:
            self._schedule_checkpoint(lease, self._clock.seconds())
        return lease

    def restore(self, leases: Iterable[tuple[int, int, int]]) -> None:
        """Replace every lease with `(id, ttl, remaining_ttl)` rows read from the backend.

        TTLs are raised to the minimum; keys start empty (the store re-attaches them). On a
        primary the leases are refreshed at once, elsewhere their expiry is infinite.
        """
        min_ttl = self._min_ttl
        self._leases = {lease_id: Lease(lease_id, max(ttl, min_ttl), remaining)
                        for lease_id, ttl, remaining in leases}
        self._items = {}
        self._clears = {}
        if self._primary:
            self.promote(extend_seconds=0)
        else:
            self._expiries.reset({})
            self._checkpoints.reset({})

    # -- Leadership -----------------------------------------------------------------------

    def promote(self, extend_seconds: float) -> None:
        """Become primary: each lease expires `extend_seconds` after its remaining TTL from now.

        With `revoke_rate_per_second` leases or more, expiries bunched within a second are
        spread so about 3/4 of the revoke rate expire per second (etcd 3.4 `Promote`).
        """
        self._primary = True
        now = self._clock.seconds()
        leases = self._leases
        for lease in leases.values():
            lease.expiry = now + extend_seconds + lease.effective_ttl_seconds
        if len(leases) >= self._revoke_rate:
            self._spread_expiries(now, extend_seconds)
        self._expiries.reset({lease_id: lease.expiry for lease_id, lease in leases.items()})
        due = now + self._checkpoint_interval
        above = self._checkpoint_above
        self._checkpoints.reset({lease_id: due for lease_id, lease in leases.items()
                                 if lease.effective_ttl_seconds > above})

    def demote(self) -> None:
        """Stop being primary: every expiry becomes infinite and nothing is handed out."""
        self._primary = False
        for lease in self._leases.values():
            lease.expiry = math.inf
        self._expiries.reset({})
        self._checkpoints.reset({})
        self._clears = {}

    # -- Primary only -----------------------------------------------------------------------

    def renew(self, lease_id: int) -> int:
        """Restart the lease's full TTL from now; returns the TTL (LeaseKeepAlive).

        A checkpointed remaining TTL is cleared here and `(id, 0)` is queued for
        `take_checkpoints`, as etcd 3.4 proposes it on renew. Raises NotPrimaryError,
        LeaseNotFoundError, and LeaseExpiredError when the expiry has already passed.
        """
        if not self._primary:
            raise NotPrimaryError(lease_id)
        lease = self._get(lease_id)
        now = self._clock.seconds()
        if lease.expiry <= now:
            raise LeaseExpiredError(lease_id)
        if lease.remaining_ttl_seconds > 0:
            lease.remaining_ttl_seconds = 0
            self._clears[lease_id] = None
        lease.expiry = now + lease.ttl_seconds
        self._expiries.set(lease_id, lease.expiry)
        return lease.ttl_seconds

    def take_expired(self, limit: int = LEASE_REVOKE_RATE) -> list[int]:
        """Ids of expired leases for the shell to propose revoking, earliest expiry first.

        A lease handed out is not handed out again for `expired_retry_seconds` (etcd's
        expiredLeaseRetryInterval), then again while it still exists and has not been
        renewed. At most `limit` ids; always empty when not primary.
        """
        if not self._primary:
            return []
        now = self._clock.seconds()
        queue, leases = self._expiries, self._leases
        expired: list[int] = []
        while len(expired) < limit:
            top = queue.peek()
            if top is None or top[0] > now:
                break
            lease = leases[top[1]]
            if lease.expiry <= now:
                expired.append(lease.id)
                queue.set(lease.id, now + self._retry)
            else:
                queue.set(lease.id, lease.expiry)
        return expired

    def take_checkpoints(self, limit: int = MAX_CHECKPOINT_BATCH) -> list[tuple[int, int]]:
        """`(id, remaining_ttl_seconds)` checkpoints for the shell to propose, at most `limit`.

        First the `(id, 0)` clears queued by `renew`, then leases whose checkpoint is due
        (every checkpoint interval for a lease whose TTL exceeds it), with the remaining TTL
        rounded up; an expired lease, or one not yet below its TTL, is skipped. The next
        checkpoint is scheduled when this one applies. Always empty when not primary.
        """
        if not self._primary:
            return []
        out: list[tuple[int, int]] = []
        clears = self._clears
        while clears and len(out) < limit:
            lease_id = next(iter(clears))
            del clears[lease_id]
            out.append((lease_id, 0))
        now = self._clock.seconds()
        queue, leases = self._checkpoints, self._leases
        while len(out) < limit:
            top = queue.peek()
            if top is None or top[0] > now:
                break
            lease = leases[queue.pop()[1]]
            if lease.expiry <= now:
                continue
            remaining = math.ceil(lease.expiry - now)
            if remaining < lease.ttl_seconds:
                out.append((lease.id, remaining))
        return out

    # -- Helpers ----------------------------------------------------------------------------

    def _get(self, lease_id: int) -> Lease:
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError(lease_id)
        return lease

    def _schedule_checkpoint(self, lease: Lease, now: float) -> None:
        if lease.effective_ttl_seconds > self._checkpoint_above:
            self._checkpoints.set(lease.id, now + self._checkpoint_interval)

    def _spread_expiries(self, now: float, extend_seconds: float) -> None:
        """Push back leases beyond ~3/4 of the revoke rate per one-second window.

        Example (rate 4, so 3 per window): five leases all due at +10 s keep +10, +10, +10
        and move to +11.33 and +11.67 (`expires / target` seconds past the window's base).
        """
        leases = sorted(self._leases.values(), key=lambda lease: (lease.expiry, lease.id))
        target = max(1, (3 * self._revoke_rate) // 4)
        base = leases[0].expiry - now
        next_window = base + 1.0
        expires = 0
        for lease in leases:
            remaining = lease.expiry - now
            if remaining > next_window:
                base, next_window, expires = remaining, remaining + 1.0, 1
                continue
            expires += 1
            if expires <= target:
                continue
            delay = expires / target - (remaining - base)
            next_window = base + delay
            lease.expiry = now + delay + extend_seconds + lease.effective_ttl_seconds
