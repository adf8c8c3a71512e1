"""Long-running etcdctl processes for the issue-4 integration tests (``etcdctl watch``,
``lease keep-alive``, ``lock``, ``elect``): a `LineReader` reads the process's stdout and
stderr line by line on two threads into queues, so a test waits for output with a deadline
and never sleeps a fixed time; `LineReader.stop` always reaps.

A watch started without ``--rev`` begins at the revision current when the server creates
it, which etcdctl does not report; `sync_watch` puts probe values until the watcher shows
one, so the events a test writes afterwards are all seen. The JSON helpers decode and
mask etcdctl's ``-w json`` output.
"""
from __future__ import annotations

import base64
import json
import os
import queue
import signal
import subprocess
import threading
import time
import unittest
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from ops.local import signal_and_reap
from tests.integration.harness import ETCDCTL

# Header fields that differ between runs and between members; a test masks them.
RUN_SPECIFIC_HEADER_FIELDS = ("cluster_id", "member_id", "raft_term")
_EOF = None


class LineReader:
    """A started process whose stdout and stderr lines (without ``\\n``) queue up as read.

    `seen` holds every stdout line taken so far, in order; `stderr_lines()` every stderr
    line read so far. Reads fail with an AssertionError naming what was seen.
    """

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None,
                 stdin: bool = False, cwd: str | None = None) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE,
                                     stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     text=True, env=env, cwd=cwd, bufsize=1)
        self.seen: list[str] = []
        self._out: queue.Queue[str | None] = queue.Queue()
        self._err: list[str] = []
        self._err_lock = threading.Lock()
        self._out_done = False
        self._threads = [threading.Thread(target=self._pump, args=(self.proc.stdout, self._out.put),
                                          daemon=True),
                         threading.Thread(target=self._pump, args=(self.proc.stderr, self._add_err),
                                          daemon=True)]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _pump(stream: IO[str], put: Callable[[str | None], None]) -> None:
        for line in stream:
            put(line.rstrip("\n"))
        put(_EOF)

    def _add_err(self, line: str | None) -> None:
        if line is not None:
            with self._err_lock:
                self._err.append(line)

    def stderr_lines(self) -> list[str]:
        """Every stderr line read so far."""
        with self._err_lock:
            return list(self._err)

    def error_lines(self) -> list[str]:
        """The stderr lines other than clientv3's JSON log lines (whose retries and
        cancellations vary from run to run)."""
        return [line for line in self.stderr_lines() if not line.startswith("{")]

    def describe(self) -> str:
        """The command, its status and everything it printed, for failure messages."""
        status = self.proc.poll()
        return (f"$ {' '.join(self.argv)}\n(status {status if status is not None else 'running'})"
                f"\nstdout:\n" + "\n".join(self.seen) + "\nstderr:\n" + "\n".join(self.stderr_lines()))

    def _next(self, deadline: float) -> str | None:
        """The next stdout line, or None at end of output or at the deadline."""
        if self._out_done:
            return None
        try:
            line = self._out.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None
        if line is _EOF:
            self._out_done = True
            return None
        self.seen.append(line)
        return line

    def read(self, count: int, timeout: float = 30.0) -> list[str]:
        """The next `count` stdout lines; fails if they do not all come by the deadline."""
        deadline, got = time.monotonic() + timeout, []
        while len(got) < count:
            line = self._next(deadline)
            if line is None:
                raise AssertionError(f"wanted {count} lines within {timeout}s, got {got}\n"
                                     f"{self.describe()}")
            got.append(line)
        return got

    def read_until(self, done: Callable[[str], bool], timeout: float = 30.0) -> list[str]:
        """Every stdout line up to and including the first one `done` accepts."""
        deadline, got = time.monotonic() + timeout, []
        while True:
            line = self._next(deadline)
            if line is None:
                raise AssertionError(f"no wanted line within {timeout}s, got {got}\n"
                                     f"{self.describe()}")
            got.append(line)
            if done(line):
                return got

    def wait_line(self, done: Callable[[str], bool], timeout: float = 30.0) -> bool:
        """Read until a line `done` accepts; False at the deadline or end of output."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._next(deadline)
            if line is None:
                return False
            if done(line):
                return True

    def rest(self, timeout: float = 30.0) -> list[str]:
        """Every stdout line until the process closes its stdout (call after it exits)."""
        deadline, got = time.monotonic() + timeout, []
        while True:
            line = self._next(deadline)
            if line is None:
                if not self._out_done:
                    raise AssertionError(f"stdout still open after {timeout}s\n{self.describe()}")
                return got
            got.append(line)

    def drain(self) -> list[str]:
        """The stdout lines already read from the process, without waiting for more."""
        got = []
        while not self._out_done:
            try:
                line = self._out.get_nowait()
            except queue.Empty:
                break
            if line is _EOF:
                self._out_done = True
                break
            self.seen.append(line)
            got.append(line)
        return got

    def write_line(self, line: str) -> None:
        """Send one line to the process's stdin (started with ``stdin=True``)."""
        assert self.proc.stdin is not None, "started without stdin"
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None, "started without stdin"
        self.proc.stdin.close()

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit on its own; its status (fails at the deadline)."""
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout}s\n{self.describe()}") from None
        self._join()
        return status

    def stop(self, sig: int = signal.SIGKILL, timeout: float = 30.0) -> int:
        """Send `sig` unless the process has exited, then reap it (SIGKILL after `timeout`);
        its exit status (negative: killed by that signal)."""
        signal_and_reap(self.proc, sig, timeout)
        self._join()
        return self.proc.returncode

    def _join(self) -> None:
        for thread in self._threads:
            thread.join(10)
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:   # NB: the pipe's reader is gone; nothing left to tell it
                pass


def etcdctl_env() -> dict[str, str]:
    """The environment etcdctl runs in: v3 API, no ETCDCTL_* settings from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    return env


def start_etcdctl(case: unittest.TestCase, endpoints: str, *args: str, stdin: bool = False,
                  cwd: str | None = None) -> LineReader:
    """Start ``etcdctl --endpoints endpoints args...``; killed and reaped at `case` cleanup."""
    reader = LineReader([ETCDCTL, "--endpoints", endpoints, *args], env=etcdctl_env(),
                        stdin=stdin, cwd=cwd)
    case.addCleanup(reader.stop)
    return reader


def sync_watch(reader: LineReader, put: Callable[[str], None],
               shown: Callable[[str, str], bool], timeout: float = 30.0) -> None:
    """Put ``probe-1``, ``probe-2``, ... (through `put`) until the watcher shows one, then
    read up to the last probe put, so the next line it prints is about a later write.

    `shown(line, value)` says whether `line` is the watcher showing the put of `value`.
    Once one probe shows, every later probe shows too (a watch sees every revision after
    its start), so reading to the last one leaves nothing of the handshake unread.
    """
    deadline, n = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        n += 1
        put(f"probe-{n}")
        if reader.wait_line(lambda line: any(shown(line, f"probe-{i}") for i in range(1, n + 1)),
                            timeout=0.5):
            last = f"probe-{n}"
            if not reader.seen or not shown(reader.seen[-1], last):
                reader.read_until(lambda line: shown(line, last), timeout)
            return
    raise AssertionError(f"the watcher showed no probe within {timeout}s\n{reader.describe()}")


def simple_value_line(line: str, value: str) -> bool:
    """`sync_watch`'s test for etcdctl's simple output: a value is printed alone on a line."""
    return line == value


def json_value_line(line: str, value: str) -> bool:
    """`sync_watch`'s test for ``-w json``: some event's kv holds `value`."""
    return f'"value":"{b64(value)}"' in line


def b64(text: str) -> str:
    """How etcdctl's JSON shows bytes: base64 of the UTF-8."""
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def masked(response: dict[str, Any], header: str = "Header") -> dict[str, Any]:
    """A copy of an etcdctl JSON response with the run-specific header fields present
    replaced by ``"*"`` (absent ones stay absent, so their absence is still checked)."""
    out = dict(response)
    out[header] = {k: ("*" if k in RUN_SPECIFIC_HEADER_FIELDS else v)
                   for k, v in response[header].items()}
    return out


def events_of(responses: Iterable[dict[str, Any]]) -> list[tuple[str, str, str, int, int, int]]:
    """The events of ``watch -w json`` responses, flattened: ``(type, key, value,
    create_revision, mod_revision, version)``, keys and values decoded."""
    out = []
    for response in responses:
        for event in response["Events"]:
            kv = event["kv"]
            out.append(("DELETE" if event.get("type") == 1 else "PUT", unb64(kv["key"]),
                        unb64(kv.get("value", "")), kv.get("create_revision", 0),
                        kv["mod_revision"], kv.get("version", 0)))
    return out


def json_lines(lines: Iterable[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]
