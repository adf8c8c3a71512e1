"""Who is waiting for what: proposals by request ID, reads by applied index.

Core (pure). etcd 3.4 `pkg/wait` (`Wait` by ID, `WaitTime` by index). The member registers
a Deferred before proposing and triggers it when the entry carrying that ID is applied on
this member; reads wait until the applied index reaches their read index.

    w = AppliedWaiters();  d = w.wait(7)      # fires once applied reaches 7
    w.applied_to(6)                            # nothing fires
    w.applied_to(9)                            # d fires with None
"""
from __future__ import annotations

import heapq
from itertools import count
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure


class IDWaiters:
    """Deferreds keyed by request ID. Invariant: each ID is registered at most once."""

    def __init__(self) -> None:
        self._waiting: dict[int, Deferred] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, request_id: int) -> bool:
        return request_id in self._waiting

    def register(self, request_id: int) -> Deferred:
        """A Deferred that `trigger(request_id, ...)` fires. Raises KeyError on a reused ID."""
        if request_id in self._waiting:
            raise KeyError(f"request ID {request_id:x} is already waiting")
        d: Deferred = Deferred()
        self._waiting[request_id] = d
        return d

    def trigger(self, request_id: int, result: Any) -> bool:
        """Fire the waiter of `request_id` with `result` (an exception fails it); False if
        nobody waits (the entry was proposed by another member, or the caller gave up)."""
        d = self._waiting.pop(request_id, None)
        if d is None:
            return False
        if isinstance(result, BaseException):
            d.errback(Failure(result))
        else:
            d.callback(result)
        return True

    def fail_all(self, error: BaseException) -> None:
        waiting, self._waiting = self._waiting, {}
        for d in waiting.values():
            d.errback(Failure(error))


class AppliedWaiters:
    """Deferreds that fire once the applied index reaches theirs.

    Invariant: every waiter in the heap has index > `applied`."""

    def __init__(self, applied: int = 0) -> None:
        self.applied = applied
        self._heap: list[tuple[int, int, Deferred]] = []
        self._seq = count()

    def __len__(self) -> int:
        return len(self._heap)

    def wait(self, index: int) -> Deferred:
        """Fires with None once `applied_to(i)` was called with i >= index (now if so)."""
        if index <= self.applied:
            return succeed(None)
        d: Deferred = Deferred()
        heapq.heappush(self._heap, (index, next(self._seq), d))
        return d

    def applied_to(self, index: int) -> None:
        if index > self.applied:
            self.applied = index
        heap = self._heap
        while heap and heap[0][0] <= self.applied:
            _, _, d = heapq.heappop(heap)
            d.callback(None)

    def fail_all(self, error: BaseException) -> None:
        heap, self._heap = self._heap, []
        for _, _, d in heap:
            d.errback(Failure(error))
