"""`etcdctl snapshot save` against a member (issue 5 groundwork: Maintenance/Snapshot).

The real etcdctl checks the stream's sha256 trailer and that the file is 32 bytes past a
multiple of 512; both hold against etcd 3.4 (``ETCDD_CLUSTER_IMPL=etcd``) and etcdd. For
etcdd the file without its trailer is an LMDB environment holding every key at the
snapshot's revision (etcd's is a bbolt file, which `etcdctl snapshot status` reads and
etcdd's own `snapshot status` will, in issue 5).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

from etcdd.mvcc.backend import Backend
from etcdd.mvcc.store import KVStore
from tests.integration.cluster import REAL_ETCD, ClusterTestCase, load_keys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class SnapshotSaveTests(ClusterTestCase):

    def test_etcdctl_snapshot_save_from_a_follower(self) -> None:
        """A snapshot saved through a follower during no load: etcdctl accepts it, the
        trailer is the sha256 of the rest, and (etcdd) it holds every key."""
        leader = self.wait_leader()
        follower = next(m for m in self.cluster.members if m is not leader)
        load_keys(leader.endpoint, 2000, prefix=b"snap/")
        rev = self.wait_converged()
        out_dir = tempfile.mkdtemp(prefix="etcdd-snapshot-test-")
        self.addCleanup(shutil.rmtree, out_dir, ignore_errors=True)
        path = os.path.join(out_dir, "snap.db")
        out = self.ctl_ok("snapshot", "save", path, on=follower)
        self.assertEqual(out, f"Snapshot saved at {path}\n")
        with open(path, "rb") as f:
            data = f.read()
        self.assertEqual(len(data) % 512, 32)
        self.assertEqual(hashlib.sha256(data[:-32]).digest(), data[-32:])
        if REAL_ETCD:
            return
        db = os.path.join(out_dir, "db")
        with open(db, "wb") as f:
            f.write(data[:-32])
        backend = Backend(db)
        self.addCleanup(backend.close)
        store = KVStore(backend)
        self.assertEqual(store.range(b"snap/", b"snap0", count_only=True).count, 2000)
        self.assertEqual(store.current_revision(), rev)

    def test_etcdd_ops_snapshot_save_and_status(self) -> None:
        """`etcdd-ops snapshot save` writes what etcdctl writes (trailer checked), and
        `etcdd-ops snapshot status` reports the member's revision (etcdd only: etcd's
        files are bbolt, which `etcdctl snapshot status` reads)."""
        if REAL_ETCD:
            self.skipTest("etcdd-ops reads etcdd's LMDB snapshots, not etcd's bbolt ones")
        leader = self.wait_leader()
        load_keys(leader.endpoint, 500, prefix=b"ops/")
        rev = self.wait_converged()
        out_dir = tempfile.mkdtemp(prefix="etcdd-snapshot-test-")
        self.addCleanup(shutil.rmtree, out_dir, ignore_errors=True)
        path = os.path.join(out_dir, "ops.db")
        ops = [sys.executable, "-m", "ops.cli", "snapshot"]
        saved = subprocess.run([*ops, "save", path, "--endpoints", leader.endpoint],
                               capture_output=True, text=True, timeout=120, cwd=ROOT)
        self.assertEqual((saved.returncode, saved.stdout), (0, f"Snapshot saved at {path}\n"),
                         saved.stderr)
        shown = subprocess.run([*ops, "status", path, "-w", "json"], capture_output=True,
                               text=True, timeout=120, cwd=ROOT)
        self.assertEqual(shown.returncode, 0, shown.stderr)
        st = json.loads(shown.stdout)
        self.assertEqual(st["revision"], rev)
        self.assertEqual(st["totalSize"], os.path.getsize(path) - 32)
