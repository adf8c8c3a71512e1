"""``etcdd-ops cluster up``: a local cluster in the foreground, stopped by Ctrl-C.

The command prints a member table and the endpoints once every member is healthy; the
cluster then serves etcdctl; SIGINT (Ctrl-C) stops every member and removes the data dirs
(kept with ``--keep``), exiting 0.
"""
from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from tests.integration.cluster import IMPL, REAL_ETCD
from tests.integration.harness import ETCD, ETCDCTL, ROOT, etcdctl


def pid_alive(pid: int) -> bool:
    """Whether `pid` names a process that has not been reaped (zombies count as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


@unittest.skipIf(ETCDCTL is None, "etcdctl (Debian etcd-client) is not installed")
class ClusterUpTests(unittest.TestCase):
    """The operator's local cluster starts, serves and stops cleanly."""

    def setUp(self) -> None:
        if REAL_ETCD and ETCD is None:
            self.skipTest("etcd 3.4 (Debian etcd-server) is not installed")
        self.base_dir = tempfile.mkdtemp(prefix="etcdd-cluster-up-")
        self.addCleanup(shutil.rmtree, self.base_dir, True)

    def start(self, *flags: str) -> tuple[subprocess.Popen, "queue.Queue[str]"]:
        argv = [sys.executable, "-m", "ops.cli", "cluster", "up", "--base-dir", self.base_dir,
                *(["--etcd"] if REAL_ETCD else []), *flags]
        env = dict(os.environ, PYTHONPATH=ROOT)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, cwd=ROOT)
        self.addCleanup(self.reap, proc)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout],
                         daemon=True).start()
        return proc, lines

    def reap(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def read_until(self, lines: "queue.Queue[str]", prefix: str, timeout: float) -> list[str]:
        """Every line printed up to and including the first starting with `prefix`."""
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
            if seen[-1].startswith(prefix):
                return seen
        self.fail(f"no line starting {prefix!r} within {timeout}s ({IMPL}):\n{''.join(seen)}")

    def test_up_serves_and_ctrl_c_stops_every_member(self) -> None:
        """cluster up prints three members and the endpoints, the cluster serves, and
        Ctrl-C stops every member, removes the data and exits 0."""
        proc, lines = self.start("--size", "3")
        out = self.read_until(lines, "endpoints: ", 90)
        endpoints = out[-1].split(": ", 1)[1].strip()
        table = [line.split() for line in out if line[:2] in ("a ", "b ", "c ")]
        self.assertEqual([row[0] for row in table], ["a", "b", "c"])
        pids = [int(row[1]) for row in table]
        self.assertEqual(len(endpoints.split(",")), 3)
        put = etcdctl(endpoints, "put", "cli", "up")
        self.assertEqual((put.returncode, put.stdout), (0, "OK\n"), put.stderr)
        for endpoint in endpoints.split(","):
            self.assertEqual(etcdctl(endpoint, "get", "cli").stdout, "cli\nup\n")
        proc.send_signal(signal.SIGINT)
        self.assertEqual(proc.wait(60), 0)
        self.assertEqual([pid for pid in pids if pid_alive(pid)], [])
        self.assertEqual(sorted(os.listdir(self.base_dir)), [])

    def test_keep_leaves_data_and_logs(self) -> None:
        """With --keep the data dirs and logs stay after Ctrl-C."""
        proc, lines = self.start("--size", "1", "--keep")
        self.read_until(lines, "endpoints: ", 90)
        proc.send_signal(signal.SIGINT)
        self.assertEqual(proc.wait(60), 0)
        self.assertEqual(sorted(os.listdir(self.base_dir)), ["a.etcd", "a.log"])
