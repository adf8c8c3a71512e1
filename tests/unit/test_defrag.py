"""Online defrag orchestration (`etcdd/server/defrag.py`) and Maintenance/Defragment.

A real backend in a temp dir; the reactor, disk thread and pool are fakes. Where the
swap must wait for the pool, the disk job runs in a real thread and the test's thread
plays the reactor (`QueueReactor`): every step waits for the call it expects, never for
time, so the order of events is fixed.
"""
from __future__ import annotations

import errno
import os
import queue
import threading
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from etcdd.api.maintenance import MaintenanceService
from etcdd.api.router import CallContext, Router
from etcdd.api.rpctypes import Status, status_for
from etcdd.mvcc.backend import DEFRAG_TMP_PREFIX
from etcdd.proto import rpc_pb2 as pb
from etcdd.server.defrag import DefragAbortedError, Defragmenter
from etcdd.server.disk import SynchronousExecutor
from tests.unit.stores import open_store
from tests.unit.test_backend_defrag import delete_most_and_compact, dump, fill

DEFRAGMENT = "/etcdserverpb.Maintenance/Defragment"


class ImmediateReactor:
    """`callFromThread` runs the call at once: the disk job runs on the test's thread."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        f(*args, **kw)


class QueueReactor:
    """`callFromThread` queues; the test's thread runs the calls (`run_until`)."""

    def __init__(self) -> None:
        self.calls: queue.Queue = queue.Queue()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.calls.put((f, args, kw))

    def run_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            f, args, kw = self.calls.get(timeout=60)   # NB: a deadlock guard, not a wait
            f(*args, **kw)


class ThreadDisk:
    """Each job in its own thread, its result delivered through the reactor (as
    `deferToThreadPool` does); the tests never have two jobs at once."""

    def __init__(self, reactor: QueueReactor) -> None:
        self._reactor = reactor
        self.threads: list[threading.Thread] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        d: Deferred = Deferred()

        def run() -> None:
            try:
                result = fn(*args)
            except BaseException:
                self._reactor.callFromThread(d.errback, Failure())
            else:
                self._reactor.callFromThread(d.callback, result)
        thread = threading.Thread(target=run, name="test-disk")
        self.threads.append(thread)
        thread.start()
        return d

    def join(self) -> None:
        for thread in self.threads:
            thread.join(60)


class ManualPool:
    """Pool jobs wait until the test runs them (`run_next`, on the test's thread)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[..., Any], tuple, Deferred]] = []

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        d: Deferred = Deferred()
        self.jobs.append((fn, args, d))
        return d

    def run_next(self) -> None:
        fn, args, d = self.jobs.pop(0)
        d.callback(fn(*args))


class DefragmenterTestCase(SynchronousTestCase):

    def setUp(self) -> None:
        self.store = open_store(self)
        self.backend = self.store.backend
        fill(self.store, 2000)
        delete_most_and_compact(self.store)
        self.content = dump(self.backend)
        self.pool = ManualPool()
        self.fatal: list[Failure] = []
        self.events: list[dict] = []
        self.patch(Defragmenter, "_log", Logger(observer=self.events.append))

    def make(self, reactor: Any, disk: Any) -> Defragmenter:
        ticks = iter(range(100))
        d = Defragmenter(self.backend, disk, reactor, on_fatal=self.fatal.append,
                         submit_to_pool=self.pool, clock=lambda: next(ticks) * 0.25)
        self.addCleanup(d.stop)          # runs first: frees a disk thread left waiting
        return d

    def threaded(self) -> tuple[Defragmenter, QueueReactor]:
        reactor = QueueReactor()
        disk = ThreadDisk(reactor)
        self.addCleanup(disk.join)
        return self.make(reactor, disk), reactor

    def synchronous(self) -> Defragmenter:
        return self.make(ImmediateReactor(), SynchronousExecutor())

    def count(self) -> int:
        """Live keys, read as a pool job would."""
        return self.store.range(b"k", b"l", count_only=True).count

    def temp_files(self) -> list[str]:
        return [n for n in os.listdir(os.path.dirname(self.backend.path))
                if n.startswith(DEFRAG_TMP_PREFIX)]

    def logged(self) -> list[str]:
        return [formatEvent(e) for e in self.events]


class DefragmenterTests(DefragmenterTestCase):

    def test_idle_pool_swaps_at_once(self) -> None:
        """With no pool job running the copy is swapped in within the disk job; the result
        has the sizes and the write hold, and both etcd-like lines are logged."""
        defrag = self.synchronous()
        before = self.backend.size_bytes()
        result = self.successResultOf(defrag.defragment())
        self.assertEqual(result.stats.size_before, before)
        self.assertEqual(result.stats.size_after, self.backend.size_bytes())
        self.assertLess(result.stats.size_after, before // 10)
        self.assertEqual(result.writes_held_seconds, 0.25)
        self.assertEqual(dump(self.backend), self.content)
        self.assertEqual(self.temp_files(), [])
        path = self.backend.path
        self.assertEqual(self.logged(), [
            f"defragmenting {path}: {before} bytes, {result.stats.in_use_before} bytes in use",
            f"finished defragmenting {path}: {before} -> {result.stats.size_after} bytes "
            f"({result.stats.in_use_after} bytes in use), writes held 0.250s"])

    def test_swap_waits_for_running_pool_jobs_and_holds_new_ones(self) -> None:
        """The swap waits for the pool job in flight (which reads the old file), new pool
        jobs wait for the swap and then read the new file; the disk job ends after."""
        defrag, reactor = self.threaded()
        running = defrag.run_in_pool(self.count)
        env = self.backend.env
        d = defrag.defragment()
        reactor.run_until(lambda: defrag._swap is not None)
        held = defrag.run_in_pool(self.count)
        self.assertEqual(len(self.pool.jobs), 1)            # held back, not submitted
        self.assertIs(self.backend.env, env)
        self.assertNoResult(d)
        self.pool.run_next()                                # the old file, then the swap
        self.assertEqual(self.successResultOf(running), 10)
        self.assertIsNot(self.backend.env, env)
        self.assertEqual(len(self.pool.jobs), 1)            # the held job, released
        self.pool.run_next()
        self.assertEqual(self.successResultOf(held), 10)
        reactor.run_until(lambda: bool(d.called))
        self.assertEqual(self.successResultOf(d).stats.size_after, self.backend.size_bytes())
        self.assertEqual(dump(self.backend), self.content)
        self.assertEqual(self.fatal, [])

    def test_stop_abandons_a_swap_still_waiting(self) -> None:
        """Stopping while the swap waits for the pool releases the disk thread without a
        swap (its temp file removed) and lets the held pool jobs run on the old file."""
        defrag, reactor = self.threaded()
        running = defrag.run_in_pool(self.count)
        env = self.backend.env
        d = defrag.defragment()
        reactor.run_until(lambda: defrag._swap is not None)
        held = defrag.run_in_pool(self.count)
        defrag.stop()
        reactor.run_until(lambda: bool(d.called))
        self.failureResultOf(d, DefragAbortedError)
        self.assertEqual(self.temp_files(), [])
        self.assertEqual(len(self.pool.jobs), 2)
        self.pool.run_next()
        self.pool.run_next()
        self.assertEqual((self.successResultOf(running), self.successResultOf(held)), (10, 10))
        self.assertIs(self.backend.env, env)
        self.failureResultOf(defrag.defragment(), DefragAbortedError)

    def test_stop_before_the_copy_is_requested_skips_it(self) -> None:
        """A defragment queued behind other disk work when the member stops copies
        nothing and fails with DefragAbortedError."""
        disk_jobs: list[tuple[Callable[..., Any], Deferred]] = []

        class QueuedDisk:
            def submit(self, fn: Callable[..., Any]) -> Deferred:
                d: Deferred = Deferred()
                disk_jobs.append((fn, d))
                return d
        defrag = self.make(ImmediateReactor(), QueuedDisk())
        d = defrag.defragment()
        defrag.stop()
        fn, job = disk_jobs.pop()
        with self.assertRaises(DefragAbortedError):
            fn()
        self.assertNoResult(d)
        self.assertEqual(self.temp_files(), [])

    def test_failed_copy_is_the_answer_and_nothing_is_held(self) -> None:
        """A copy that fails (disk full) fails the call with its error; pool jobs are not
        held and the file is unchanged."""
        defrag = self.synchronous()

        def full() -> str:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.patch(self.backend, "compact_copy", full)
        before = self.backend.size_bytes()
        failure = self.failureResultOf(defrag.defragment(), OSError)
        self.assertEqual(status_for(failure.value),
                         (Status.UNKNOWN, "[Errno 28] No space left on device"))
        defrag.run_in_pool(self.count)
        self.assertEqual(len(self.pool.jobs), 1)
        self.assertEqual(self.backend.size_bytes(), before)
        self.assertEqual(self.fatal, [])

    def test_failed_swap_is_fatal(self) -> None:
        """A swap that fails after the copy stops the member (on_fatal), fails the call,
        removes the temp file and does not leave pool jobs held."""
        defrag = self.synchronous()

        def broken(temp: str) -> None:
            raise OSError(errno.EIO, "Input/output error")
        self.patch(self.backend, "swap_in", broken)
        self.failureResultOf(defrag.defragment(), OSError)
        self.assertEqual([f.type for f in self.fatal], [OSError])
        self.assertIn("defrag: swapping in", self.logged()[1])
        self.assertEqual(self.temp_files(), [])
        defrag.run_in_pool(self.count)
        self.assertEqual(len(self.pool.jobs), 1)

    def test_defragments_run_one_after_another(self) -> None:
        """A second defragment starts from the first one's result and changes nothing."""
        defrag = self.synchronous()
        first = self.successResultOf(defrag.defragment())
        second = self.successResultOf(defrag.defragment())
        self.assertEqual(second.stats.size_before, first.stats.size_after)
        self.assertEqual(second.stats.size_after, first.stats.size_after)
        self.assertEqual(dump(self.backend), self.content)


class FakeDefragmenter:
    def __init__(self, result: Deferred) -> None:
        self.result = result

    def defragment(self) -> Deferred:
        return self.result


class MaintenanceDefragmentTests(SynchronousTestCase):

    def service(self, defragmenter: Any) -> tuple[MaintenanceService, Router]:
        router = Router()
        service = MaintenanceService(None, None, None, None, None, alarms=object(),
                                     defragmenter=defragmenter)
        service.register(router)
        return service, router

    def test_answer_has_no_header(self) -> None:
        """etcd answers Defragment with an empty DefragmentResponse: no header at all."""
        _, router = self.service(FakeDefragmenter(succeed(object())))
        method = router.lookup(DEFRAGMENT)
        resp = self.successResultOf(method.handler(pb.DefragmentRequest(),
                                                   CallContext(path=DEFRAGMENT)))
        self.assertEqual(resp, pb.DefragmentResponse())
        self.assertFalse(resp.HasField("header"))

    def test_failure_is_passed_through(self) -> None:
        """A failed defrag fails the call with its own error (Unknown on the wire)."""
        _, router = self.service(FakeDefragmenter(fail(DefragAbortedError())))
        method = router.lookup(DEFRAGMENT)
        failure = self.failureResultOf(method.handler(pb.DefragmentRequest(),
                                                      CallContext(path=DEFRAGMENT)))
        self.assertEqual(status_for(failure.value),
                         (Status.UNKNOWN, "defrag: the member is stopping"))

    def test_not_registered_without_a_defragmenter(self) -> None:
        """A MaintenanceService built without a defragmenter has no Defragment method."""
        _, router = self.service(None)
        self.assertIsNone(router.lookup(DEFRAGMENT))
