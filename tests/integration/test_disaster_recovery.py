"""Disaster recovery, end to end (issue 5 item 5): a 3-member cluster under write load,
`etcdctl snapshot save` from one member, every member killed and its data dir deleted,
three new members restored from the file under a new token, started: every put
acknowledged at or below the snapshot's revision is there at its revision, nothing newer
is, every member is at the snapshot's revision with one `endpoint hashkv --cluster`, the
IDs are those etcd derives for the new token, and writes work again.

Restored with `etcdd-ops snapshot restore`, or `etcdctl snapshot restore` against etcd
3.4 (``ETCDD_CLUSTER_IMPL=etcd``); the snapshot's revision is read from the file with
the matching `snapshot status`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from etcdd.server import membership
from tests.integration.cluster import REAL_ETCD, ClusterTestCase, WriteLoad, log_phase, phase
from tests.integration.harness import ETCDCTL

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = [ETCDCTL] if REAL_ETCD else [sys.executable, "-m", "ops.cli"]
TOKEN = "recovered-cluster"


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ETCDCTL_API="3")
    return subprocess.run([*TOOL, *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=env)


class DisasterRecoveryTests(ClusterTestCase):

    def test_restore_three_members_from_a_snapshot_taken_under_load(self) -> None:
        """Acknowledged puts up to the snapshot's revision survive the loss of every data
        dir; the restored members agree and accept writes."""
        snap_dir = tempfile.mkdtemp(prefix="etcdd-dr-test-")
        self.addCleanup(shutil.rmtree, snap_dir, True)
        path = os.path.join(snap_dir, "dr.db")
        self.wait_leader()
        load = WriteLoad(self.cluster.members, writers=4, prefix=b"dr/").start()
        self.addCleanup(load.stop)
        self.wait(lambda: load.acked_count() >= 300, 30, "300 acknowledged puts")
        with phase("snapshot save from a member under load"):
            self.ctl_ok("snapshot", "save", path, on=self.cluster.members[1])
        self.wait(lambda: load.acked_count() >= 600, 30, "300 more acknowledged puts")
        load.stop()
        self.cluster.kill_all()
        for member in self.cluster.members:
            shutil.rmtree(member.data_dir)
        status = run("snapshot", "status", path, "-w", "json")
        self.assertEqual(status.returncode, 0, status.stderr)
        revision = json.loads(status.stdout)["revision"]
        kept = {k: rev for k, rev in load.acked.items() if rev <= revision}
        log_phase(f"snapshot at revision {revision}: {len(kept)} of {len(load.acked)} "
                  f"acknowledged puts at or below it")
        self.assertGreater(len(kept), 0)
        self.assertLess(len(kept), len(load.acked))
        with phase("restore three members"):
            for member in self.cluster.members:
                done = run("snapshot", "restore", path, "--name", member.name,
                           "--initial-cluster", self.cluster.initial_cluster,
                           "--initial-cluster-token", TOKEN,
                           "--initial-advertise-peer-urls", member.peer_url,
                           "--data-dir", member.data_dir)
                self.assertEqual(done.returncode, 0, done.stderr)
        self.cluster.set_flag("--initial-cluster-token", TOKEN)
        with phase("start the restored members"):
            self.cluster.start(wait=False)
            self.wait_ready(timeout=60)
        self.check_recovered(revision, kept)

    def check_recovered(self, revision: int, kept: dict[bytes, int]) -> None:
        """The restored cluster: data, revision, hashes, IDs, then a write."""
        for member in self.cluster.members:
            self.assertEqual(self.revision(member), revision, member.name)
            stored = self.serializable_range(member, b"dr/")
            missing = [k for k, rev in kept.items() if stored.get(k) != rev]
            self.assertEqual(missing[:10], [], f"{len(missing)} acknowledged puts missing "
                                               f"on {member.name}")
            self.assertLessEqual(max(stored.values()), revision)
        self.assert_hashkv_cluster_agrees()
        ids = {membership.member_id([m.peer_url], TOKEN): m for m in self.cluster.members}
        listed = self.ctl_json("member", "list")
        self.assertEqual(listed["header"]["cluster_id"], membership.cluster_id(ids))
        self.assertEqual({m["ID"]: m["name"] for m in listed["members"]},
                         {mid: m.name for mid, m in ids.items()})
        put = self.ctl_json("put", "after-recovery", "ok")
        self.assertEqual(put["header"]["revision"], revision + 1)
        self.assertEqual(self.wait_converged(), revision + 1)
