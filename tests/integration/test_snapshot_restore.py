"""`snapshot restore` of one member: keys, a lease and the revision come back under a new
name, token and IDs; a damaged snapshot is refused; (etcdd) `etcdd-ops backup` of the
restored member starts as the same member and its db restores with --skip-hash-check.

The snapshot is saved with the real etcdctl. It is restored with `etcdd-ops snapshot
restore` (etcdd) or `etcdctl snapshot restore` (``ETCDD_CLUSTER_IMPL=etcd``: etcd's
files are bbolt), with the same flags; both must give the IDs etcd derives.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

from etcdd.server import membership
from tests.integration.cluster import REAL_ETCD, ClusterTestCase, phase
from tests.integration.harness import ETCDCTL, Member

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPS = [sys.executable, "-m", "ops.cli"]
GRANTED = re.compile(r"lease ([0-9a-f]{16}) granted with TTL\((\d+)s\)\n")


def run(argv: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, ETCDCTL_API="3")
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)


def restore_argv(snapshot: str, member: Member, skip_hash_check: bool = False) -> list[str]:
    """The restore command of this implementation for a one-member cluster of `member`."""
    tool = [ETCDCTL] if REAL_ETCD else OPS
    peer = f"http://127.0.0.1:{member.peer_port}"
    argv = [*tool, "snapshot", "restore", snapshot, "--name", member.name,
            "--initial-cluster", f"{member.name}={peer}",
            "--initial-cluster-token", member.token, "--initial-advertise-peer-urls", peer,
            "--data-dir", member.data_dir]
    return argv + ["--skip-hash-check"] if skip_hash_check else argv


class SnapshotRestoreTests(ClusterTestCase):
    size = 1

    def setUp(self) -> None:
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="etcdd-restore-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def new_member(self, name: str, token: str, **kw: object) -> Member:
        member = Member(name=name, data_dir=os.path.join(self.dir, name, f"{name}.etcd"),
                        token=token, real_etcd=REAL_ETCD, **kw)
        os.makedirs(os.path.dirname(member.data_dir), exist_ok=True)
        self.addCleanup(member.kill)
        return member

    def save_snapshot(self) -> tuple[str, int, str]:
        """Keys k0..k19, a lease holding `leased`, then `etcdctl snapshot save`: the file,
        the revision it holds and the lease ID (hex)."""
        member = self.wait_leader()
        for i in range(20):
            self.ctl_ok("put", f"k{i}", f"v{i}")
        granted = GRANTED.fullmatch(self.ctl_ok("lease", "grant", "3600"))
        self.assertIsNotNone(granted)
        lease = granted.group(1)
        self.ctl_ok("put", "--lease", lease, "leased", "by-lease")
        revision = self.revision(member)
        path = os.path.join(self.dir, "snapshot.db")
        self.assertEqual(self.ctl_ok("snapshot", "save", path), f"Snapshot saved at {path}\n")
        return path, revision, lease

    def test_restore_as_a_new_member(self) -> None:
        """Every key and the lease at the snapshot's revision, under the new name's and
        token's member and cluster IDs; writes go on from there."""
        path, revision, lease = self.save_snapshot()
        self.cluster.kill_all()
        member = self.new_member("restored", "new-token")
        with phase("restore"):
            done = run(restore_argv(path, member))
        self.assertEqual(done.returncode, 0, done.stderr)
        member_id = membership.member_id([f"http://127.0.0.1:{member.peer_port}"], "new-token")
        cluster_id = membership.cluster_id([member_id])
        if not REAL_ETCD:
            self.assertEqual(done.stdout, f"added member {member_id:x} [http://127.0.0.1:"
                                          f"{member.peer_port}] to cluster {cluster_id:x}\n")
        with phase("start the restored member"):
            member.start()
        got = self.ctl_json("get", "k", "--prefix", on=self.at(member))
        self.assertEqual(got["header"]["revision"], revision)
        self.assertEqual((got["header"]["member_id"], got["header"]["cluster_id"]),
                         (member_id, cluster_id))
        self.assertEqual(got["count"], 20)
        ttl = self.ctl_json("lease", "timetolive", lease, "--keys", on=self.at(member))
        self.assertEqual(ttl["granted-ttl"], 3600)
        self.assertEqual(ttl["keys"], ["bGVhc2Vk"])            # base64 of "leased"
        members = self.ctl_json("member", "list", on=self.at(member))["members"]
        self.assertEqual([(m["ID"], m["name"]) for m in members], [(member_id, "restored")])
        put = self.ctl_json("put", "after", "restore", on=self.at(member))
        self.assertEqual(put["header"]["revision"], revision + 1)
        if not REAL_ETCD:
            self.check_backup(member, revision + 1)

    def check_backup(self, member: Member, revision: int) -> None:
        """`etcdd-ops backup` of the stopped member starts as that member; its db
        restores with --skip-hash-check and not without."""
        self.assertEqual(member.stop(), 0)
        copy_dir = os.path.join(self.dir, "backup", "restored.etcd")
        with phase("backup"):
            done = run([*OPS, "backup", "--data-dir", member.data_dir, copy_dir])
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(f"at revision {revision} ", done.stdout)
        copy = self.new_member("restored", member.token, client_port=member.client_port,
                               peer_port=member.peer_port)
        copy.data_dir = copy_dir
        copy.start()
        got = self.ctl_json("get", "after", on=self.at(copy))
        self.assertEqual((got["header"]["revision"], got["kvs"][0]["mod_revision"]),
                         (revision, revision))
        db = os.path.join(copy_dir, "member", "snap", "db")
        again = self.new_member("again", "t")
        refused = run(restore_argv(db, again))
        self.assertEqual((refused.returncode, refused.stderr),
                         (1, "Error: snapshot missing hash but --skip-hash-check=false\n"))
        self.assertEqual(run(restore_argv(db, again, skip_hash_check=True)).returncode, 0)

    def test_damaged_snapshot_is_refused(self) -> None:
        """A snapshot with a flipped byte fails the sha256 check with etcd's message."""
        path, _, _ = self.save_snapshot()
        with open(path, "r+b") as f:
            f.seek(8192)
            byte = f.read(1)
            f.seek(8192)
            f.write(bytes([byte[0] ^ 0xFF]))
        member = self.new_member("damaged", "t")
        done = run(restore_argv(path, member))
        self.assertEqual(done.returncode, 1)
        self.assertRegex(done.stderr, r"Error: expected sha256 \[[0-9 ]+\], got \[[0-9 ]+\]")
        if not REAL_ETCD:       # etcd leaves the half-written dir behind
            self.assertFalse(os.path.exists(member.data_dir))
            self.assertEqual(os.listdir(os.path.dirname(member.data_dir)), [])

    def at(self, member: Member) -> list:
        """`on=` for ctl helpers: anything with `.endpoint`."""
        return [member]
