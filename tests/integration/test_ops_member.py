"""``etcdd-ops member add|promote|update|remove|list`` and ``etcdd-ops status`` on a real
3-member cluster (etcdd, or etcd 3.4 with ``ETCDD_CLUSTER_IMPL=etcd``).

A learner is added with etcdd-ops, started with the environment lines etcdd-ops printed
(``ETCD_INITIAL_CLUSTER_STATE="existing"``), promoted once in sync, serves as a voter and
is removed, after which it stops by itself. Along the way etcdd-ops' ``member list`` (table,
simple, json) and its errors and exit statuses are compared with the real etcdctl's.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from ops.cluster import ETCD
from ops.local import free_port, signal_and_reap
from tests.integration.cluster import REAL_ETCD, ClusterTestCase, log_phase, phase
from tests.integration.harness import ROOT, etcdctl

# etcd's strict reconfiguration check: every voter connected for the last 5 s
UNHEALTHY = "etcdserver: unhealthy cluster"
IN_SYNC = "etcdserver: can only promote a learner member which is in sync with leader"
ADDED = re.compile(r"^Member ([0-9a-f ]{16}) added to cluster ([0-9a-f ]{16})$")


def ops(endpoints: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``etcdd-ops <args> --endpoints <endpoints>``; the finished process."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "ops.cli", *args, "--endpoints", endpoints],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def last_line(text: str) -> str:
    """The last line of `text` (etcdctl logs a json warning before its ``Error:`` line)."""
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


class OpsMemberTests(ClusterTestCase):
    """Membership changes driven by etcdd-ops, checked against etcdctl."""

    def ops_ok(self, *args: str) -> str:
        r = ops(self.cluster.endpoints, *args)
        self.assertEqual(r.returncode, 0, f"etcdd-ops {' '.join(args)}:\n{r.stderr}")
        return r.stdout

    def assert_like_etcdctl(self, endpoint: str, *args: str) -> subprocess.CompletedProcess:
        """etcdd-ops and etcdctl give the same exit status, stdout and last stderr line."""
        with ThreadPoolExecutor(2) as pool:     # NB: both at once: python starts slowly
            mine_future = pool.submit(ops, endpoint, *args)
            theirs = etcdctl(endpoint, *args)
            mine = mine_future.result()
        self.assertEqual((mine.returncode, mine.stdout, last_line(mine.stderr)),
                         (theirs.returncode, theirs.stdout, last_line(theirs.stderr)),
                         f"etcdd-ops vs etcdctl: {' '.join(args)}")
        return mine

    def assert_lists_like_etcdctl(self) -> None:
        """member list in the three formats is etcdctl's, asked of one member."""
        first = self.cluster.members[0].endpoint
        for write_out in ("table", "simple", "json"):
            self.assert_like_etcdctl(first, "member", "list", "-w", write_out)

    def members_json(self) -> list[dict]:
        return self.ctl_json("member", "list", on=self.cluster.members[0])["members"]

    def start_joining_member(self, env_lines: list[str], peer_port: int
                             ) -> tuple[subprocess.Popen, str]:
        """Start the added member with the printed ETCD_* lines as its environment; the
        process (reaped by a cleanup) and its client endpoint."""
        env = dict(os.environ, PYTHONPATH=ROOT)
        for line in env_lines:
            key, _, quoted = line.partition("=")
            env[key] = json.loads(quoted)      # NB: Go's %q of ASCII is a JSON string
        client = f"http://127.0.0.1:{free_port()}"
        data_dir = os.path.join(self.cluster.base_dir, "d.etcd")
        program = [ETCD] if REAL_ETCD else [sys.executable, "-m", "etcdd"]
        log = open(os.path.join(self.cluster.base_dir, "d.log"), "ab")
        self.addCleanup(log.close)
        proc = subprocess.Popen([*program, "--data-dir", data_dir, "--listen-client-urls",
                                 client, "--advertise-client-urls", client,
                                 "--listen-peer-urls", f"http://127.0.0.1:{peer_port}"],
                                stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=self.cluster.base_dir, start_new_session=True)
        self.addCleanup(signal_and_reap, proc)
        return proc, client.removeprefix("http://")

    def test_learner_added_started_promoted_and_removed(self) -> None:
        """add --learner prints a working environment; the learner joins, is promoted once
        in sync, serves writes as a voter, and stops by itself once removed."""
        peer_port = free_port()
        peer_url = f"http://127.0.0.1:{peer_port}"
        with phase("member add --learner"):
            out = self.ops_retrying(("member", "add", "d", "--peer-urls", peer_url,
                                     "--learner"), UNHEALTHY)
        lines = out.splitlines()
        new_id, cluster_id = (int(x, 16) for x in ADDED.match(lines[0]).groups())
        env = dict(line.split("=", 1) for line in lines[2:])
        self.assertEqual(lines[1], "")
        self.assertEqual(env["ETCD_NAME"], '"d"')
        self.assertEqual(set(json.loads(env["ETCD_INITIAL_CLUSTER"]).split(",")),
                         {f"{m.name}={m.peer_url}" for m in self.cluster.members} |
                         {f"d={peer_url}"})
        self.assertEqual(env["ETCD_INITIAL_ADVERTISE_PEER_URLS"], f'"{peer_url}"')
        self.assertEqual(env["ETCD_INITIAL_CLUSTER_STATE"], '"existing"')
        self.assertEqual(self.ctl_json("member", "list")["header"]["cluster_id"], cluster_id)
        added = [m for m in self.members_json() if m["ID"] == new_id]
        self.assertEqual(added, [{"ID": new_id, "peerURLs": [peer_url], "isLearner": True}])
        self.assert_lists_like_etcdctl()

        with phase("start the learner from the printed environment"):
            proc, endpoint = self.start_joining_member(lines[2:], peer_port)
            self.wait(lambda: any(m.get("name") == "d" for m in self.members_json()), 60,
                      "the learner to publish its name")
        with phase("promote once in sync"):
            promoted = self.ops_retrying(("member", "promote", f"{new_id:x}"), IN_SYNC)
        self.assertEqual(promoted, f"Member {new_id:16x} promoted in cluster "
                                   f"{cluster_id:16x}\n")
        self.assertEqual([m.get("isLearner", False) for m in self.members_json()],
                         [False] * 4)
        self.assert_lists_like_etcdctl()
        self.assert_status_of_four(new_id)
        self.assertEqual(etcdctl(endpoint, "put", "via-d", "1").stdout, "OK\n")
        self.assertEqual(self.ctl_ok("get", "via-d", "--print-value-only",
                                     on=self.cluster.members[0]), "1\n")

        with phase("member remove; the removed member stops"):
            removed = self.ops_ok("member", "remove", f"{new_id:x}")
            self.assertEqual(removed, f"Member {new_id:16x} removed from cluster "
                                      f"{cluster_id:16x}\n")
            self.wait(lambda: proc.poll() is not None, 60, "the removed member to exit")
        log_phase(f"removed member exited with {proc.returncode}")
        self.assertEqual(sorted(m["name"] for m in self.members_json()), ["a", "b", "c"])
        self.assert_lists_like_etcdctl()

    def ops_retrying(self, args: tuple[str, ...], refusal: str, timeout: float = 60) -> str:
        """Run etcdd-ops until it stops refusing with `refusal` (a state the cluster leaves
        by itself: peers connected for less than etcd's 5 s health interval, a learner
        catching up); its stdout."""
        deadline = time.monotonic() + timeout
        while True:
            r = ops(self.cluster.endpoints, *args)
            if r.returncode == 0:
                return r.stdout
            self.assertEqual(last_line(r.stderr), f"Error: {refusal}", args)
            self.assertLess(time.monotonic(), deadline, f"still refused: {refusal}")
            time.sleep(0.2)   # NB: a back-off between attempts, not a wait for state

    def assert_status_of_four(self, new_id: int) -> None:
        """etcdd-ops status --cluster: four healthy members, one leader, one view of it."""
        r = ops(self.cluster.members[0].endpoint, "status", "--cluster", "-w", "json")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        rows = json.loads(r.stdout)
        self.assertEqual(sorted(row["Name"] for row in rows), ["a", "b", "c", "d"])
        self.assertEqual([row["Health"] for row in rows], [True] * 4)
        leaders = {row["Status"]["leader"] for row in rows}
        self.assertEqual(len(leaders), 1, rows)
        self.assertEqual(sum(row["Status"]["header"]["member_id"] in leaders for row in rows), 1)
        self.assertIn(new_id, [row["ID"] for row in rows])
        table = ops(self.cluster.endpoints, "status", "--cluster")
        self.assertEqual(table.returncode, 0, table.stderr)
        self.assertEqual(len(table.stdout.splitlines()), 3 + 4 + 1)

    def test_update_and_refusals_match_etcdctl(self) -> None:
        """update sets an unstarted learner's peer URLs; promote, remove, bad IDs, missing
        arguments and an unreachable endpoint fail with etcdctl's message and status."""
        first = self.cluster.members[0].endpoint
        out = self.ops_retrying(("member", "add", "e", "--peer-urls",
                                 f"http://127.0.0.1:{free_port()}", "--learner", "-w", "json"),
                                UNHEALTHY)
        new_id = json.loads(out)["member"]["ID"]
        moved = f"http://127.0.0.1:{free_port()}"
        self.assertRegex(self.ops_ok("member", "update", f"{new_id:x}", "--peer-urls", moved),
                         rf"^Member {new_id:16x} updated in cluster [0-9a-f ]{{16}}\n$")
        self.assertEqual([m["peerURLs"] for m in self.members_json() if m["ID"] == new_id],
                         [[moved]])
        self.assert_lists_like_etcdctl()
        voter = next(f"{m['ID']:x}" for m in self.members_json() if m["ID"] != new_id)
        refusals = [("member", "promote", f"{new_id:x}"),     # not in sync (never started)
                    ("member", "promote", voter),             # not a learner
                    ("member", "remove", "zz"), ("member", "remove"),
                    ("member", "add", "x"), ("member", "add"),
                    ("member", "update", f"{new_id:x}")]
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda args: self.assert_like_etcdctl(first, *args),
                                    refusals))
        self.assertEqual([r.returncode for r in results], [1, 1, 128, 128, 128, 128, 128])
        self.ops_ok("member", "remove", f"{new_id:x}")
        r = self.assert_like_etcdctl(first, "member", "remove", f"{new_id:x}")
        self.assertEqual((r.returncode, last_line(r.stderr)),
                         (1, "Error: etcdserver: member not found"))
        r = self.assert_like_etcdctl(f"127.0.0.1:{free_port()}", "member", "list",
                                     "--dial-timeout", "1s", "--command-timeout", "1s")
        self.assertEqual((r.returncode, last_line(r.stderr)),
                         (1, "Error: context deadline exceeded"))
