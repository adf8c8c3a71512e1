"""A one-line progress bar on stderr for long ops work (hash checks, copies, downloads).

A shell (writes to a stream, reads a monotonic clock). Drawn only when the stream is a
terminal: piped or redirected output (scripts, tests, CI logs) gets nothing, so callers
use it unconditionally::

    with Progress(total_bytes, "copying db") as bar:
        for chunk in chunks:
            ...
            bar.update(len(chunk))

draws, redrawing in place at most once per 1/1000 of the total::

    copying db [==============>               ]  48%  1.2 GB / 2.5 GB  310 MB/s

`close()` (or leaving the `with`) ends the line; a bar closed early leaves its last
state visible, so an error printed after it reads as where the work stopped.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

BAR_WIDTH = 30


def human_bytes(n: float) -> str:
    """SI sizes as etcdctl prints them (go-humanize `Bytes`): 0 B, 37 kB, 2.1 MB."""
    if n < 10:
        return f"{int(n)} B"
    units = ("B", "kB", "MB", "GB", "TB", "PB")
    value, i = float(n), 0
    while value >= 1000 and i < len(units) - 1:
        value /= 1000
        i += 1
    return f"{value:.1f} {units[i]}" if value < 10 else f"{value:.0f} {units[i]}"


class Progress:
    """Progress of `total_bytes` of work labelled `label`.

    Invariant: `done` never exceeds `total_bytes` (a caller that overshoots is clamped);
    nothing is written unless `shown`, and nothing after `close()`.
    """

    def __init__(self, total_bytes: int, label: str, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total_bytes = max(0, total_bytes)
        self.label = label
        self.done = 0
        self._stream = sys.stderr if stream is None else stream
        self._clock = clock
        self._started = clock()
        self._drawn_step = -1
        self._closed = False
        isatty = getattr(self._stream, "isatty", None)
        self.shown = bool(isatty is not None and isatty())

    def update(self, n_bytes: int) -> None:
        """Count `n_bytes` more done; redraw when the bar moved by 1/1000 or more."""
        self.done = min(self.total_bytes, self.done + n_bytes)
        if not self.shown or self._closed:
            return
        step = self.done * 1000 // self.total_bytes if self.total_bytes else 1000
        if step != self._drawn_step:
            self._drawn_step = step
            self._draw()

    def close(self) -> None:
        """End the bar's line (drawing its final state); idempotent."""
        if self._closed:
            return
        if self.shown:
            self._draw()
            self._stream.write("\n")
            self._stream.flush()
        self._closed = True

    def line(self) -> str:
        """The bar as drawn now (without the carriage return)."""
        fraction = self.done / self.total_bytes if self.total_bytes else 1.0
        filled = int(fraction * BAR_WIDTH)
        bar = "=" * filled + (">" if filled < BAR_WIDTH else "") + " " * (BAR_WIDTH - filled - 1)
        elapsed = self._clock() - self._started
        rate = f"  {human_bytes(self.done / elapsed)}/s" if elapsed > 0 else ""
        return (f"{self.label} [{bar[:BAR_WIDTH]}] {fraction * 100:3.0f}%  "
                f"{human_bytes(self.done)} / {human_bytes(self.total_bytes)}{rate}")

    def _draw(self) -> None:
        # NB: "\x1b[K" clears what a longer previous line left at the end.
        self._stream.write("\r" + self.line() + "\x1b[K")
        self._stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
