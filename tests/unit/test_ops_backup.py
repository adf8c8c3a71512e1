"""`etcdd-ops backup` (ops/backup.py): the copy opens as the same member with the same
raft state and data, its db restores with --skip-hash-check, and a running member (a
locked WAL segment, or the database open in another process) is refused."""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from etcdd.mvcc.backend import Backend
from etcdd.mvcc.store import KVStore
from etcdd.server.bootstrap import open_raft
from etcdd.server.membership import initial_members
from ops.backup import BackupError, backup, main
from ops.restore import plan_from_flags, restore, restore_config
from tests.unit.test_ops_restore import CLUSTER, ID_M1, M1, WAL_NAME, make_snapshot

# Holds the LMDB environment open until its stdin closes, as a running member does.
_HOLDER = """
import sys, lmdb
env = lmdb.open(sys.argv[1], subdir=False, max_dbs=32, lock=True)
print("open", flush=True)
sys.stdin.read()
"""


class BackupTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.addCleanup(shutil.rmtree, self.base, True)
        self.source = os.path.join(self.base, "m1.etcd")
        plan = plan_from_flags(**M1, data_dir=self.source)
        restore(make_snapshot(self.base), plan, stream=io.StringIO())
        self.target = os.path.join(self.base, "backup")

    def open_member(self, data_dir: str) -> tuple[object, KVStore]:
        """The member's raft state and store as `etcdd` with M1's flags opens them."""
        config = restore_config(M1["name"], M1["initial_cluster"], M1["token"],
                                M1["peer_urls"], data_dir)
        backend = Backend(config.backend_path)
        self.addCleanup(backend.close)
        store = KVStore(backend)
        state = open_raft(config, ID_M1, CLUSTER, initial_members(config), backend, store)
        self.addCleanup(state.wal.close)
        return state, store

    def test_copy_opens_as_the_same_member(self) -> None:
        """The backup replays to the source's raft state and holds the same data."""
        result = backup(self.source, self.target, stream=io.StringIO())
        self.assertEqual((result.member_id, result.cluster_id, result.name),
                         (ID_M1, CLUSTER, "m1"))
        self.assertEqual((result.revision, result.consistent_index), (6, 2))
        self.assertEqual((result.wal_segments, result.snap_files), (1, 1))
        copy, copy_store = self.open_member(self.target)
        source, source_store = self.open_member(self.source)
        self.assertEqual(copy.storage.initial_state(), source.storage.initial_state())
        self.assertEqual(copy.snapshot_index, source.snapshot_index)
        self.assertEqual(copy_store.hash(), source_store.hash())
        self.assertEqual(copy_store.consistent_index(), source_store.consistent_index())

    def test_copy_db_restores_with_skip_hash_check(self) -> None:
        """The backup's member/snap/db is a snapshot without trailer: restorable."""
        backup(self.source, self.target, stream=io.StringIO())
        db = os.path.join(self.target, "member", "snap", "db")
        new_dir = os.path.join(self.base, "new.etcd")
        restore(db, plan_from_flags(data_dir=new_dir), skip_hash_check=True,
                stream=io.StringIO())
        backend = Backend(os.path.join(new_dir, "member", "snap", "db"))
        self.addCleanup(backend.close)
        self.assertEqual(KVStore(backend).current_revision(), 6)

    def test_separate_backup_wal_dir(self) -> None:
        """--backup-wal-dir receives the segments; the copy opens with --wal-dir."""
        wal_dir = os.path.join(self.base, "backup-wal")
        backup(self.source, self.target, backup_wal_dir=wal_dir, stream=io.StringIO())
        self.assertEqual(os.listdir(wal_dir), [WAL_NAME])
        self.assertFalse(os.path.exists(os.path.join(self.target, "member", "wal")))

    def test_locked_wal_is_refused(self) -> None:
        """A WAL segment flock'ed elsewhere (a running member) refuses; nothing written."""
        fd = os.open(os.path.join(self.source, "member", "wal", WAL_NAME), os.O_RDONLY)
        self.addCleanup(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        error = self.assertRaises(BackupError, backup, self.source, self.target)
        self.assertIn("the member is running", str(error))
        self.assertEqual(sorted(os.listdir(self.base)), ["m1.etcd", "snapshot.db", "source"])

    def test_database_open_in_another_process_is_refused(self) -> None:
        """LMDB's lock file held by another process (its environment open) refuses."""
        db = os.path.join(self.source, "member", "snap", "db")
        holder = subprocess.Popen([sys.executable, "-c", _HOLDER, db], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        self.addCleanup(holder.wait)
        self.addCleanup(holder.stdin.close)
        self.addCleanup(holder.stdout.close)
        self.assertEqual(holder.stdout.readline(), "open\n")
        error = self.assertRaises(BackupError, backup, self.source, self.target)
        self.assertIn("is open in another process", str(error))
        self.assertFalse(os.path.exists(self.target))

    def test_existing_target_and_foreign_source_are_refused(self) -> None:
        """An existing backup dir, or a source that is no etcdd data dir, is refused."""
        os.mkdir(self.target)
        error = self.assertRaises(BackupError, backup, self.source, self.target)
        self.assertEqual(str(error), f'backup-dir "{self.target}" exists')
        foreign = os.path.join(self.base, "foreign")
        os.makedirs(os.path.join(foreign, "member", "snap"))
        error = self.assertRaises(BackupError, backup, foreign, self.target + "2")
        self.assertIn("is not an etcdd data dir", str(error))
        self.assertFalse(os.path.exists(self.target + "2"))
        error = self.assertRaises(BackupError, backup, self.source,
                                  os.path.join(self.source, "inside"))
        self.assertIn("is inside the data dir", str(error))

    def test_cli(self) -> None:
        """`backup --data-dir SRC DST` prints one line, `-w json` the fields; errors exit 1."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            self.assertEqual(main(["--data-dir", self.source, self.target]), 0)
            self.assertEqual(main(["--data-dir", self.source, "--backup-dir",
                                   self.target + "2", "-w", "json"]), 0)
            self.assertEqual(main(["--data-dir", self.source, self.target]), 1)
        first, second = out.getvalue().splitlines()
        self.assertTrue(first.startswith(f"backed up member {ID_M1:x} (m1) of cluster "
                                         f"{CLUSTER:x} at revision 6"), first)
        self.assertEqual(json.loads(second)["member_id"], ID_M1)
        self.assertEqual(err.getvalue(), f'Error: backup-dir "{self.target}" exists\n')
