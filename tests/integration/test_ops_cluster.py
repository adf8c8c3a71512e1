"""``etcdd-ops cluster up --detach``, ``cluster status`` and ``cluster down [--purge]``: a
local cluster (etcdd, or etcd 3.4 with ``ETCDD_CLUSTER_IMPL=etcd``) that outlives the
command that started it.

``up --detach`` returns once the cluster is healthy and leaves members in their own
sessions; ``status`` shows every member and its pid; etcdctl reads and writes through the
printed endpoints; ``down`` stops every member (the ports close), ``up`` on the same base
dir brings the same cluster back with its data, and ``down --purge`` leaves nothing. A pid
recorded in the state file is only signalled while it is still that member.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import unittest

from ops.clusterctl import (RUNNING, STATE_FILE, ClusterState, MemberRecord, process_state,
                            read_state, start_ticks, stop_members, write_state)
from tests.integration.cluster import IMPL, REAL_ETCD
from tests.integration.harness import ETCD, ETCDCTL, ROOT, etcdctl


def cluster_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``etcdd-ops cluster <args>``; the finished process."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "ops.cli", "cluster", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def is_listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def table_rows(text: str) -> list[dict[str, str]]:
    """A ``+---+`` table's data rows as header -> cell."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines]
    return [dict(zip(cells[0], row)) for row in cells[1:]]


@unittest.skipIf(ETCDCTL is None, "etcdctl (Debian etcd-client) is not installed")
class DetachedClusterTests(unittest.TestCase):
    """A detached cluster's whole life through the CLI."""

    def setUp(self) -> None:
        if REAL_ETCD and ETCD is None:
            self.skipTest("etcd 3.4 (Debian etcd-server) is not installed")
        parent = tempfile.mkdtemp(prefix="etcdd-ops-cluster-")
        self.addCleanup(shutil.rmtree, parent, True)
        self.base_dir = os.path.join(parent, "cluster")
        self.addCleanup(self.stop_leftovers)

    def stop_leftovers(self) -> None:
        """Whatever a failed test left running is stopped (SIGKILL after 5 s)."""
        if os.path.exists(os.path.join(self.base_dir, STATE_FILE)):
            stop_members(read_state(self.base_dir).members, timeout_seconds=5)

    def cli_ok(self, *args: str) -> str:
        r = cluster_cli(*args, "--base-dir", self.base_dir)
        self.assertEqual(r.returncode, 0, f"cluster {' '.join(args)} ({IMPL}):\n"
                                          f"{r.stdout}{r.stderr}")
        return r.stdout

    def up(self) -> str:
        return self.cli_ok("up", "--detach", "--size", "3", *(["--etcd"] if REAL_ETCD else []))

    def assert_all_gone(self, state: ClusterState) -> None:
        """No member process runs and no member port accepts connections."""
        self.assertEqual([m.name for m in state.members if process_state(m) == RUNNING], [])
        ports = [p for m in state.members for p in (m.client_port, m.peer_port)]
        self.assertEqual([p for p in ports if is_listening(p)], [])

    def assert_one_down_is_shown(self, state: ClusterState) -> None:
        """With member c stopped, status still shows every member, c as unreachable and
        exited, the two others healthy, and exits 1."""
        self.assertEqual(stop_members([state.members[2]])["c"],
                         f"stopped (pid {state.members[2].pid}, SIGTERM)")
        r = cluster_cli("status", "--base-dir", self.base_dir)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        rows = {row["NAME"]: row for row in table_rows(r.stdout)}
        self.assertEqual(sorted(rows), ["a", "b", "c"])
        self.assertEqual((rows["c"]["PROCESS"], rows["c"]["HEALTH"]), ("exited", "false"))
        self.assertTrue(rows["c"]["ERRORS"].startswith("unreachable: "), rows["c"])
        self.assertEqual([rows[n]["HEALTH"] for n in "ab"], ["true", "true"])

    def test_up_detach_status_serve_down_and_purge(self) -> None:
        """up --detach returns with the members running in their own sessions; status,
        etcdctl, down, up again (same data) and down --purge all do what they say."""
        out = self.up()
        state = read_state(self.base_dir)
        self.assertEqual([m.name for m in state.members], ["a", "b", "c"])
        self.assertEqual([process_state(m) for m in state.members], [RUNNING] * 3)
        self.assertEqual([os.getsid(m.pid) for m in state.members],
                         [m.pid for m in state.members])
        self.assertIn(f"endpoints: {state.endpoints}\n", out)
        self.assertIn(f"etcdctl --endpoints={state.endpoints} ", out)

        rows = table_rows(self.cli_ok("status"))
        self.assertEqual(sorted(r["NAME"] for r in rows), ["a", "b", "c"])
        self.assertEqual([r["IS LEADER"] for r in rows].count("true"), 1, rows)
        self.assertEqual({(r["HEALTH"], r["PROCESS"]) for r in rows}, {("true", "running")})
        self.assertEqual(sorted(int(r["PID"]) for r in rows), [m.pid for m in state.members])
        entries = json.loads(self.cli_ok("status", "-w", "json"))
        self.assertEqual(sorted(e["Pid"] for e in entries), [m.pid for m in state.members])
        self.assertEqual(len({e["Status"]["leader"] for e in entries}), 1)

        put = etcdctl(state.endpoints, "put", "detached", "yes")
        self.assertEqual((put.returncode, put.stdout), (0, "OK\n"), put.stderr)
        for member in state.members:
            self.assertEqual(etcdctl(member.endpoint, "get", "detached").stdout,
                             "detached\nyes\n")
        again = cluster_cli("up", "--detach", "--base-dir", self.base_dir)
        self.assertEqual(again.returncode, 1)
        self.assertIn("already running", again.stderr)

        self.assert_one_down_is_shown(state)
        self.assertEqual(self.cli_ok("down").count("stopped (pid"), 2)
        self.assert_all_gone(state)
        stopped = cluster_cli("status", "--base-dir", self.base_dir)
        self.assertEqual(stopped.returncode, 1)
        self.assertEqual({r["PROCESS"] for r in table_rows(stopped.stdout)}, {"exited"})

        self.up()
        resumed = read_state(self.base_dir)
        self.assertEqual(resumed.endpoints, state.endpoints)
        self.assertEqual(etcdctl(resumed.endpoints, "get", "detached",
                                 "--print-value-only").stdout, "yes\n")
        self.cli_ok("down", "--purge")
        self.assert_all_gone(resumed)
        self.assertFalse(os.path.exists(self.base_dir))
        gone = cluster_cli("status", "--base-dir", self.base_dir)
        self.assertEqual((gone.returncode, gone.stderr.split(" (")[0]),
                         (1, f"Error: no cluster in {self.base_dir}"))


class DownSignalsOnlyItsMembersTests(unittest.TestCase):
    """``cluster down`` checks a recorded pid is still its member before signalling it."""

    def sleeper(self, data_dir: str) -> subprocess.Popen:
        """A process whose command line says ``--data-dir data_dir``, reaped at cleanup."""
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)",
                                 "--data-dir", data_dir])
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        return proc

    def test_recycled_or_foreign_pids_are_not_signalled(self) -> None:
        """A pid with another start time or without the member's data dir on its command
        line is left alone; the member that still is itself is stopped."""
        base_dir = tempfile.mkdtemp(prefix="etcdd-ops-down-")
        self.addCleanup(shutil.rmtree, base_dir, True)
        dirs = {name: os.path.join(base_dir, f"{name}.etcd") for name in "abc"}
        older, foreign, member = (self.sleeper(dirs["a"]), self.sleeper("/elsewhere"),
                                  self.sleeper(dirs["c"]))

        def record(name: str, proc: subprocess.Popen, ticks_offset: int = 0) -> MemberRecord:
            ticks = start_ticks(proc.pid)
            self.assertIsNotNone(ticks, f"{name}: no /proc/{proc.pid}/stat")
            return MemberRecord(name, proc.pid, ticks + ticks_offset, 1, 2, dirs[name],
                                os.path.join(base_dir, f"{name}.log"), ())
        write_state(ClusterState(base_dir, "etcdd", "t", (
            record("a", older, ticks_offset=-1), record("b", foreign), record("c", member))))
        out = cluster_cli("down", "--base-dir", base_dir, "--timeout", "30")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.splitlines(), [
            f"a: pid {older.pid} is now another process: not signalled",
            f"b: pid {foreign.pid} is now another process: not signalled",
            f"c: stopped (pid {member.pid}, SIGTERM)"])
        self.assertEqual(member.wait(30), -signal.SIGTERM)
        self.assertEqual((older.poll(), foreign.poll()), (None, None))
        again = cluster_cli("down", "--base-dir", base_dir)
        self.assertIn("c: had already exited", again.stdout)
