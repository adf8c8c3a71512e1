"""The disk executor's CPU choice (ETCDD_PIN_CPU) and its ordered, one-at-a-time work."""
from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from etcdd.server.disk import SynchronousExecutor, choose_cpu


class ChooseCpuTests(SynchronousTestCase):

    def setUp(self) -> None:
        if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
            raise self.skipTest("needs Linux with two or more CPUs allowed")
        self.allowed = sorted(os.sched_getaffinity(0))

    def test_off_leaves_threads_free(self) -> None:
        """ETCDD_PIN_CPU=off chooses no CPU."""
        self.assertIsNone(choose_cpu({"ETCDD_PIN_CPU": "off"}))

    def test_explicit_cpu(self) -> None:
        """An allowed CPU number is taken as given."""
        self.assertEqual(choose_cpu({"ETCDD_PIN_CPU": str(self.allowed[-1])}),
                         self.allowed[-1])

    def test_refuses_cpu_outside_affinity_and_garbage(self) -> None:
        """A CPU outside the process's affinity, or a non-number, chooses none."""
        self.assertIsNone(choose_cpu({"ETCDD_PIN_CPU": str(max(self.allowed) + 1000)}))
        self.assertIsNone(choose_cpu({"ETCDD_PIN_CPU": "fast"}))

    def test_auto_is_an_allowed_cpu(self) -> None:
        """By default the reactor thread's current CPU is chosen, always an allowed one."""
        self.assertIn(choose_cpu({}), self.allowed)


class SynchronousExecutorTests(SynchronousTestCase):

    def test_runs_in_order_and_reports_failures(self) -> None:
        """Work runs at once, in order; an exception becomes the Deferred's failure."""
        done: list[int] = []
        executor = SynchronousExecutor()
        self.assertIsNone(self.successResultOf(executor.submit(done.append, 1)))
        executor.submit(done.append, 2)
        self.assertEqual(done, [1, 2])
        self.failureResultOf(executor.submit(lambda: 1 / 0), ZeroDivisionError)
