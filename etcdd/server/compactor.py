"""Auto compaction: which revision to compact, and when. A core.

Matches etcd 3.4 `etcdserver/api/v3compactor` (`--auto-compaction-mode` and
`--auto-compaction-retention`). The shell (`server/autocompact.py`) calls `tick()` every
`interval_seconds` with the clock's time, the store's revision and whether this member
leads (a follower's compactor is paused), proposes the compaction it returns, and
reports `succeeded()` when it applied (or was already compacted).

periodic, retention P (e.g. "1h", or a number of hours): a revision is sampled every
P/10 (at most every 6 minutes) into a window of P/interval + 1 samples; the first
compaction comes P after start, at the revision sampled at start; later ones every
min(P, 1 h), each at the oldest sample of the window::

    P = 10 s: samples every 1 s; at t=10 s compact the revision of t=0,
              at t=20 s that of t=9, at t=30 s that of t=19 (etcd periodic.go)

revision, retention N: every 5 minutes compact `current - N` unless it is not positive or
is what was compacted last.
"""
from __future__ import annotations

from etcdd.goflags import parse_duration

HOUR_SECONDS = 3600.0
RETRY_DIVISOR = 10                      # etcd periodic.go retryDivisor
REVISION_INTERVAL_SECONDS = 300.0       # etcd revision.go revInterval


def parse_retention(mode: str, retention: str) -> float:
    """etcd `parseCompactionRetention`: a plain number is hours (periodic) or revisions
    (revision); otherwise a Go duration, in seconds. 0 disables. Raises ValueError."""
    if retention.isdigit():
        n = int(retention)
        return float(n) * HOUR_SECONDS if mode == "periodic" else float(n)
    return parse_duration(retention)


class PeriodicCompactor:
    """Invariant: `revs[0]` is the revision sampled `period` ago (once enough samples)."""

    def __init__(self, period_seconds: float, start_seconds: float, start_rev: int) -> None:
        if period_seconds <= 0:
            raise ValueError("the retention period must be positive")
        self.period = period_seconds
        self.compact_interval = min(period_seconds, HOUR_SECONDS)
        self.interval_seconds = self.compact_interval / RETRY_DIVISOR
        self._retentions = int(self.period / self.interval_seconds) + 1
        self._revs = [start_rev]
        self._last_success = start_seconds
        self._base = period_seconds

    def tick(self, now: float, rev: int, paused: bool) -> int | None:
        """The revision to compact now, or None; then `rev` is sampled."""
        target = None
        if not paused and now - self._last_success >= self._base:
            self._base = self.compact_interval
            target = self._revs[0]
        self._revs.append(rev)
        if len(self._revs) > self._retentions:
            del self._revs[0]
        return target

    def succeeded(self, now: float) -> None:
        """The compaction returned by the last tick applied (or was already done)."""
        self._last_success = now


class RevisionCompactor:
    """Keeps the last `retention` revisions; remembers the last target it compacted."""

    interval_seconds = REVISION_INTERVAL_SECONDS

    def __init__(self, retention: int) -> None:
        if retention <= 0:
            raise ValueError("the revision retention must be positive")
        self.retention = retention
        self._prev = 0
        self._pending = 0

    def tick(self, now: float, rev: int, paused: bool) -> int | None:
        if paused:
            return None
        target = rev - self.retention
        if target <= 0 or target == self._prev:
            return None
        self._pending = target
        return target

    def succeeded(self, now: float) -> None:
        self._prev = self._pending
