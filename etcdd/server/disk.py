"""The one ordered disk thread: LMDB write transactions, commits and fsyncs.

Shell. Everything that may block on the disk runs here, in submission order, so the
reactor thread keeps serving (DESIGN.md "Threads").

The reactor thread and the disk thread are pinned to one CPU. They share one GIL, and
py-lmdb releases it around every LMDB call: on two CPUs each release hands the GIL across
cores (a futex wake-up, then a wait of up to the switch interval to get it back). Measured
with `ops.bench` on puts: +10-25 % requests per server CPU-second and +20-35 % throughput
with both threads on one CPU; letting only the disk thread follow the reactor's CPU did
not hold (the scheduler spreads the two runnable threads again). Other threads are left
alone. `ETCDD_PIN_CPU=off` turns this off, `ETCDD_PIN_CPU=N` chooses the CPU; by default
it is the one the reactor thread is running on at start.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Callable, Mapping, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


def _current_cpu() -> int | None:
    """The CPU this thread runs on (libc sched_getcpu), or None where unknown."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        cpu = libc.sched_getcpu()
    except (OSError, AttributeError):
        return None
    return cpu if cpu >= 0 else None


def choose_cpu(environ: Mapping[str, str]) -> int | None:
    """The CPU to pin the reactor and disk threads to, or None to leave them free."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    setting = environ.get("ETCDD_PIN_CPU", "auto")
    allowed = os.sched_getaffinity(0)
    if setting == "off" or len(allowed) < 2:
        return None
    if setting == "auto":
        cpu = _current_cpu()
        return cpu if cpu in allowed else None
    try:
        cpu = int(setting)
    except ValueError:
        return None
    return cpu if cpu in allowed else None


def pin_this_thread(cpu: int) -> bool:
    """Pin the calling thread to `cpu`; False where the system refuses."""
    try:
        os.sched_setaffinity(0, {cpu})      # NB: 0 is the calling thread on Linux
    except OSError:
        return False
    return True


class DiskExecutor:
    """A pool of exactly one thread: work runs one item at a time, in order."""

    _log = Logger()

    def __init__(self, reactor: IReactorThreads, cpu: int | None = None) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="etcdd-disk")
        self._cpu = cpu

    def start(self) -> None:
        """Start the thread; with a CPU chosen, pin the calling (reactor) thread and the
        disk thread to it."""
        self._pool.start()
        if self._cpu is not None and pin_this_thread(self._cpu):
            self.submit(pin_this_thread, self._cpu)
            self._log.info("reactor and disk threads pinned to CPU {cpu}", cpu=self._cpu)

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
        return maybeDeferred(fn, *args)
