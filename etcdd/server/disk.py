"""The one ordered disk thread: LMDB write transactions, commits and fsyncs.

Shell. Everything that may block on the disk runs here, in submission order, so the
reactor thread keeps serving (DESIGN.md "Threads").
"""
from __future__ import annotations

from typing import Callable, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class DiskExecutor:
    """A pool of exactly one thread: work runs one item at a time, in order."""

    def __init__(self, reactor: IReactorThreads) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="etcdd-disk")

    def start(self) -> None:
        self._pool.start()

    def stop(self) -> None:
        """Finish queued work, then join the thread."""
        self._pool.stop()

    def submit(self, fn: Callable[..., T], *args: object) -> "Deferred[T]":
        return deferToThreadPool(self._reactor, self._pool, fn, *args)


class SynchronousExecutor:
    """Runs work at once on the caller's thread (unit tests)."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def submit(self, fn: Callable[..., T], *args: object) -> "Deferred[T]":
        from twisted.internet.defer import maybeDeferred
        return maybeDeferred(fn, *args)
