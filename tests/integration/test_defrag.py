"""Defragmentation of a member under write load (issue 5: Maintenance/Defragment and
`etcdd-ops defrag`), validated against etcd 3.4 with ``ETCDD_CLUSTER_IMPL=etcd``.

One member: a bulk of keys written, deleted and compacted away leaves a big file with
little in use. Then four grpcio writers put unique keys while watchers follow them, and
the member is defragmented twice, by the real `etcdctl defrag` and by `etcdd-ops defrag`.
No put may fail and every acknowledged put must be stored, delivered to the watchers and
still there after a restart; the file must shrink. For etcdd, the stopped member's data
dir is then defragmented offline (refused while the member runs).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from ops.cluster import member_status
from etcdd.proto import rpc_pb2 as pb
from tests.integration.cluster import (REAL_ETCD, ClusterTestCase, WriteLoad, load_keys,
                                       log_phase, phase)
from tests.integration.harness import ETCDCTL
from tests.integration.test_watch_grpc import WatchStream
from tests.integration.watchers import etcdctl_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BULK_KEYS = 8000
BULK_VALUE = b"b" * 2048
PREFIX = b"load/"


def ops(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``etcdd-ops`` (this checkout's) with `args`."""
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


class PrefixWatch:
    """A Watch of `PREFIX` from `start_revision`: key -> mod_revision of every PUT seen."""

    def __init__(self, endpoint: str, start_revision: int) -> None:
        self.stream = WatchStream(endpoint)
        created = self.stream.create(PREFIX, range_end=PREFIX[:-1] + b"0",
                                     start_revision=start_revision)
        self.seen: dict[bytes, int] = {}
        self.last_revision = start_revision - 1
        self._take(created)

    def _take(self, resp: pb.WatchResponse) -> None:
        for ev in resp.events:
            self.seen[ev.kv.key] = ev.kv.mod_revision
            self.last_revision = max(self.last_revision, ev.kv.mod_revision)

    def read_to(self, revision: int) -> None:
        """Read until an event at or past `revision` arrived (fails at a deadline)."""
        while self.last_revision < revision:
            self._take(self.stream.read())


class DefragTests(ClusterTestCase):
    size = 1

    def db_size(self) -> int:
        return member_status(self.cluster.members[0], timeout=10).dbSize

    def test_defrag_under_write_load(self) -> None:
        """Both defrags shrink the file while four writers and two watchers go on: no put
        fails, every acknowledged put is stored, watched, and survives a restart."""
        member = self.cluster.members[0]
        self.wait_leader()
        with phase(f"bulk {BULK_KEYS} keys, delete, compact"):
            load_keys(member.endpoint, BULK_KEYS, prefix=b"bulk/", value=BULK_VALUE)
            self.ctl_ok("del", "--prefix", "bulk/")
            rev = member_status(member, timeout=10).header.revision
            self.ctl_ok("compact", str(rev), "--physical")
        size_before = self.db_size()
        log_phase(f"db size before defrag: {size_before}")
        watch = PrefixWatch(member.endpoint, rev + 1)
        self.addCleanup(watch.stream.close)
        load = WriteLoad([member], writers=4, prefix=PREFIX).start()
        self.addCleanup(load.stop)
        self.wait(lambda: load.acked_count() >= 200, 60, "200 acknowledged puts")
        with phase("etcdctl defrag"):
            out = self.ctl_ok("defrag", "--command-timeout", "60s", on=member)
        self.assertEqual(out, f"Finished defragmenting etcd member[{member.endpoint}]\n")
        self.assertLess(self.db_size(), size_before // 2)
        # a second watcher reads history (the pool) around the next defrag
        history = PrefixWatch(member.endpoint, rev + 1)
        self.addCleanup(history.stream.close)
        acked = load.acked_count()
        self.wait(lambda: load.acked_count() >= acked + 200, 60, "200 more puts")
        snapshot = os.path.join(os.path.dirname(member.data_dir), "during-defrag.db")
        saving = subprocess.Popen([ETCDCTL, "--endpoints", member.endpoint, "snapshot",
                                   "save", snapshot], env=etcdctl_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(saving.wait)
        self.addCleanup(saving.kill)
        with phase("etcdd-ops defrag (and etcdctl snapshot save)"):
            r = ops("defrag", "--endpoints", member.endpoint, "-w", "json")
            _, saved_err = saving.communicate(timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(saving.returncode, 0, saved_err)
        self.assertEqual(os.path.getsize(snapshot) % 512, 32)
        [report] = json.loads(r.stdout)
        self.assertNotIn("Error", report)
        self.assertLess(report["DbSize"], size_before // 2)
        log_phase(f"etcdd-ops defrag: {report}")
        acked = load.acked_count()
        self.wait(lambda: load.acked_count() >= acked + 200, 60, "puts after the defrags")
        load.stop()
        self.assertEqual(load.errors, [])
        self.assert_acked_everywhere(load)
        last = max(load.acked.values())
        for w in (watch, history):
            w.read_to(last)
            missing = [k for k, v in load.acked.items() if w.seen.get(k) != v]
            self.assertEqual(missing[:5], [], f"{len(missing)} acknowledged puts not watched")
        with phase("restart"):
            self.cluster.stop(member)
            if not REAL_ETCD:
                self.offline_defrag(member)
            self.cluster.start_member(member)
        self.assert_acked_everywhere(load)

    def offline_defrag(self, member: object) -> None:
        """`etcdd-ops defrag --data-dir` on the stopped member; refused while it runs is
        checked by `test_offline_defrag_refused_while_running`."""
        r = ops("defrag", "--data-dir", member.data_dir, "-w", "json")
        self.assertEqual(r.returncode, 0, r.stderr)
        [report] = json.loads(r.stdout)
        self.assertEqual(report["DbSize"], os.path.getsize(
            os.path.join(member.data_dir, "member", "snap", "db")))

    def test_offline_defrag_refused_while_running(self) -> None:
        """`etcdd-ops defrag --data-dir` on a running member's data dir is refused and the
        member keeps serving (etcd's data dirs are bbolt: etcdd only)."""
        if REAL_ETCD:
            self.skipTest("etcdd-ops defragments etcdd's LMDB data dirs, not etcd's bbolt")
        member = self.cluster.members[0]
        self.wait_leader()
        r = ops("defrag", "--data-dir", member.data_dir, "-w", "simple")
        self.assertEqual((r.returncode, r.stdout), (1, ""))
        self.assertIn(f"Failed to defragment etcd data[{member.data_dir}]", r.stderr)
        self.assertIn("is the member running?", r.stderr)
        self.ctl_ok("put", "still", "serving", on=member)
