"""ops/progress.py: a bar on a terminal only, redrawn per 1/1000, ended by close()."""
from __future__ import annotations

import io

from twisted.trial.unittest import SynchronousTestCase

from ops.progress import Progress, human_bytes


class Terminal(io.StringIO):
    """A stream that says it is a TTY."""

    def isatty(self) -> bool:
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ProgressTests(SynchronousTestCase):

    def test_nothing_when_not_a_terminal(self) -> None:
        """Piped output gets no bar at all, even after close()."""
        stream = io.StringIO()
        with Progress(1000, "copying", stream) as bar:
            bar.update(500)
        self.assertFalse(bar.shown)
        self.assertEqual(stream.getvalue(), "")

    def test_bar_on_a_terminal(self) -> None:
        """A terminal gets the bar redrawn in place with size and rate, then a newline."""
        stream, clock = Terminal(), FakeClock()
        bar = Progress(2_000_000, "copying", stream, clock)
        clock.now += 2
        bar.update(1_000_000)
        self.assertEqual(bar.line(), "copying [===============>              ]  50%  "
                                     "1.0 MB / 2.0 MB  500 kB/s")
        bar.close()
        bar.close()
        drawn = stream.getvalue()
        self.assertTrue(drawn.startswith("\rcopying [="), drawn)
        self.assertEqual(drawn.count("\n"), 1)
        self.assertTrue(drawn.endswith("\x1b[K\n"))

    def test_redraws_only_when_the_bar_moves(self) -> None:
        """Updates smaller than 1/1000 of the total do not redraw; overshoot is clamped."""
        stream = Terminal()
        bar = Progress(1_000_000, "x", stream, FakeClock())
        for _ in range(100):
            bar.update(10)            # 1000 bytes: one step
        self.assertEqual(stream.getvalue().count("\r"), 2)   # steps 0 and 1
        bar.update(5_000_000)
        self.assertEqual(bar.done, 1_000_000)
        self.assertIn("100%", bar.line())

    def test_empty_work_is_complete(self) -> None:
        """A total of 0 bytes draws as done rather than dividing by zero."""
        bar = Progress(0, "x", Terminal(), FakeClock())
        bar.update(0)
        self.assertIn("100%", bar.line())
        self.assertIn("[" + "=" * 30 + "]", bar.line())

    def test_human_bytes_as_etcdctl(self) -> None:
        """go-humanize's SI sizes."""
        self.assertEqual([human_bytes(n) for n in (0, 9, 999, 20480, 2_100_000, 10**9)],
                         ["0 B", "9 B", "999 B", "20 kB", "2.1 MB", "1.0 GB"])
