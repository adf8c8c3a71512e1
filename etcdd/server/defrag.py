"""Online defragmentation of the member's backend, for Maintenance/Defragment.

Shell. etcd 3.4 `mvcc/backend/backend.go` `defrag` copies the database into a compact
temp file with the batch tx lock held (writes wait for the whole defrag), then blocks
reads while it swaps the files. Here, with LMDB (`mvcc/backend.py`):

    disk thread  copy (`Backend.compact_copy`): applies queue behind this job, which is
                 the write hold; reads go on meanwhile. Then ask the reactor for the
                 swap and wait for it.
    reactor      hold new pool jobs back (queued), wait for the running ones (they hold
                 LMDB read transactions), then swap (`Backend.swap_in`). The reactor's
                 own reads are synchronous, so none is open then. Release the disk
                 thread, then the held pool jobs.

Pool jobs never wait for the disk thread, so the swap always comes. Defragments run one
at a time, in order: each is one disk job.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from etcdd.mvcc.backend import DefragStats


class DefragAbortedError(Exception):
    """The member began to stop before the compact copy was swapped in; nothing changed."""

    def __init__(self) -> None:
        super().__init__("defrag: the member is stopping")


@dataclass(frozen=True, slots=True)
class DefragResult:
    """What one defragment did; `writes_held_seconds` runs from the disk job's start to
    the swap (applies wait that long; reads only during the swap itself)."""
    stats: DefragStats
    writes_held_seconds: float


class _Swap:
    """A compact copy waiting to be swapped in; the disk thread waits on `done`, set
    exactly once, after which `aborted` and `error` say what happened."""

    __slots__ = ("temp", "done", "aborted", "error")

    def __init__(self, temp: str, done: Any) -> None:
        self.temp = temp
        self.done = done
        self.aborted = False
        self.error: BaseException | None = None


class Defragmenter:
    """Runs defragments and gates the reactor's thread pool around their swaps.

    Invariants: while `_swap` is set no pool job starts (they wait in `_held`); the swap
    runs on the reactor thread with no pool job running; the disk thread waiting for a
    swap is released exactly once, whatever happens (swap, failure, stop)."""

    _log = Logger()

    def __init__(self, backend: Any, disk: Any, reactor: Any,
                 on_fatal: Callable[[Failure], None],
                 submit_to_pool: Callable[..., Deferred] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 make_event: Callable[[], Any] = threading.Event) -> None:
        """`submit_to_pool(fn, *args)` runs `fn` in a thread (the reactor's pool by
        default); `clock` measures the write hold on the disk thread."""
        self._backend = backend
        self._disk = disk
        self._reactor = reactor
        self._on_fatal = on_fatal
        self._submit = submit_to_pool or (
            lambda fn, *args: deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args))
        self._clock = clock
        self._make_event = make_event
        self._running = 0                   # pool jobs started and not yet answered
        self._held: list[tuple[Deferred, Callable[..., Any], tuple]] = []
        self._swap: _Swap | None = None     # waiting for the running pool jobs
        self._lock = threading.Lock()       # guards _stopped and _pending across threads
        self._stopped = False
        self._pending: _Swap | None = None  # the disk thread waits for this one

    # -- the thread pool gate (reactor thread) ------------------------------------------

    def run_in_pool(self, fn: Callable[..., Any], *args: object) -> Deferred:
        """Run `fn(*args)` in the pool, or once the swap waiting for the pool is done."""
        if self._swap is not None:
            d: Deferred = Deferred()
            self._held.append((d, fn, args))
            return d
        return self._start_pool_job(fn, args)

    def _start_pool_job(self, fn: Callable[..., Any], args: tuple) -> Deferred:
        self._running += 1
        return self._submit(fn, *args).addBoth(self._pool_job_done)

    def _pool_job_done(self, result: Any) -> Any:
        self._running -= 1
        if self._running == 0 and self._swap is not None:
            self._swap_now()
        return result

    def _release_held(self) -> None:
        held, self._held = self._held, []
        for d, fn, args in held:
            self._start_pool_job(fn, args).chainDeferred(d)

    # -- defragment ---------------------------------------------------------------------

    def defragment(self) -> "Deferred[DefragResult]":
        """Defragment the backend (behind the applies already queued on the disk thread).

        Fails with DefragAbortedError if the member stops first, or with the copy's
        error (disk full...), leaving the old file in place."""
        if self._stopped:
            return fail(DefragAbortedError())
        return self._disk.submit(self._run).addCallbacks(self._finished, self._failed)

    def _run(self) -> DefragResult:
        """The disk job: copy, have the reactor swap, report (disk thread)."""
        started = self._clock()
        with self._lock:
            if self._stopped:
                raise DefragAbortedError()
        b = self._backend
        size, in_use = b.size_bytes(), b.size_in_use_bytes()
        self._reactor.callFromThread(
            self._log.info, "defragmenting {path}: {size} bytes, {in_use} bytes in use",
            path=b.path, size=size, in_use=in_use)
        swap = _Swap(b.compact_copy(), self._make_event())
        with self._lock:
            swap.aborted = self._stopped
            self._pending = None if swap.aborted else swap
        try:
            if not swap.aborted:
                self._reactor.callFromThread(self._swap_when_idle, swap)
                swap.done.wait()
        finally:
            with self._lock:
                self._pending = None
        if swap.aborted or swap.error is not None:
            _remove(swap.temp)
            raise swap.error or DefragAbortedError()
        held = self._clock() - started
        return DefragResult(DefragStats(b.path, size, in_use, b.size_bytes(),
                                        b.size_in_use_bytes()), held)

    def _swap_when_idle(self, swap: _Swap) -> None:
        if swap.aborted:          # stop() came first
            return
        self._swap = swap
        if self._running == 0:
            self._swap_now()

    def _swap_now(self) -> None:
        """Swap the copy in, release the disk thread, then the held pool jobs."""
        swap, self._swap = self._swap, None
        failure = None
        try:
            self._backend.swap_in(swap.temp)
        except BaseException as e:
            swap.error, failure = e, Failure()
        finally:
            swap.done.set()
        if failure is not None:
            self._log.failure("defrag: swapping in {temp} failed", failure=failure,
                              temp=swap.temp)
            self._on_fatal(failure)
        self._release_held()

    def _finished(self, result: DefragResult) -> DefragResult:
        s = result.stats
        self._log.info("finished defragmenting {path}: {before} -> {after} bytes ({in_use} "
                       "bytes in use), writes held {held:.3f}s", path=s.path,
                       before=s.size_before, after=s.size_after, in_use=s.in_use_after,
                       held=result.writes_held_seconds)
        return result

    def _failed(self, failure: Failure) -> Failure:
        self._log.warn("failed to defragment {path}: {error}", path=self._backend.path,
                       error=failure.getErrorMessage())
        return failure

    def stop(self) -> None:
        """Abandon a defragment not yet swapped in and let held pool jobs run: the member
        is stopping, and stopping waits for the pool and then the disk thread."""
        with self._lock:
            self._stopped = True
            pending = self._pending
        if pending is not None and not pending.done.is_set():
            pending.aborted = True
            pending.done.set()
        self._swap = None
        self._release_held()


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
