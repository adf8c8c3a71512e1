"""`etcdd-ops snapshot restore` (ops/restore.py): the data dir it writes is what etcd 3.4's
restore writes (WAL bytes, snapshot metadata, IDs), it opens as a member through the
daemon's own bootstrap, and every refusal leaves nothing behind."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from etcdd.lease import backend as lease_store
from etcdd.mvcc.backend import Backend
from etcdd.mvcc.store import KVStore
from etcdd.proto import raft_pb2
from etcdd.server.bootstrap import open_raft
from etcdd.server.cluster import CLUSTER_VERSION_KEY, REFUSED_PREFIX, ClusterState
from etcdd.server.identity import load_or_create_identity
from etcdd.server.membership import initial_members
from etcdd.wal.snap import read_snap
from ops.restore import (RestoreError, SnapshotError, plan_from_flags, restore,
                         restore_config)
from ops.snapshot import main

FIXTURE = Path(__file__).parent / "testdata" / "etcd-restore"
WAL_NAME = "0000000000000000-0000000000000000.wal"
# The flags the fixture was made with (testdata/etcd-restore/README.md).
M1 = dict(name="m1", initial_cluster="m1=http://127.0.0.1:1111,m2=http://127.0.0.1:2222",
          token="tok", peer_urls="http://127.0.0.1:1111")
ID_M1, ID_M2, CLUSTER = 0x7DB29806059DE6FA, 0x08CB1F3DE5DCF951, 0x7B3082BDF199D98E
LEASE = 0x1234


def make_snapshot(base: str, puts: int = 5, trailer: bool = True) -> str:
    """An etcdd snapshot file: `puts` keys (the first on a lease), old members, a trailer."""
    backend = Backend(os.path.join(base, "source", "db"))
    store = KVStore(backend)
    with store.write_batch() as batch:
        lease_store.put_row(batch.raw_txn, backend.dbs, LEASE, 60)
        for i in range(puts):
            txn = batch.txn()
            txn.put(b"k%02d" % i, b"v%d" % i, lease=LEASE if i == 0 else 0)
            txn.end()
        batch.raw_txn.put(b"aaaa", b'{"id":43690,"peerURLs":["http://old:1"]}',
                          db=backend.dbs[b"members"])
        batch.raw_txn.put(b"bbbb", b"removed", db=backend.dbs[b"members_removed"])
        for index in (3, 9):
            batch.raw_txn.put(REFUSED_PREFIX + index.to_bytes(8, "big"), b"",
                              db=backend.dbs[b"cluster"])
        batch.raw_txn.put(CLUSTER_VERSION_KEY, b"3.4.0", db=backend.dbs[b"cluster"])
        batch.set_consistent_index(812, 7)
    path = os.path.join(base, "snapshot.db")
    store.copy_to(path + ".raw")
    backend.close()
    with open(path + ".raw", "rb") as f:
        data = f.read()
    os.remove(path + ".raw")
    with open(path, "wb") as f:
        f.write(data + (hashlib.sha256(data).digest() if trailer else b""))
    return path


class RestoreTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.addCleanup(shutil.rmtree, self.base, True)
        self.snapshot = make_snapshot(self.base)

    def restore(self, path: str | None = None, skip: bool = False, **flags: str) -> str:
        flags = {**M1, "data_dir": os.path.join(self.base, "m1.etcd"), **flags}
        restore(path or self.snapshot, plan_from_flags(**flags), skip, io.StringIO())
        return flags["data_dir"]

    def assertNothingLeft(self) -> None:
        """Only the inputs remain in the base dir: no data dir, no temp dir."""
        self.assertEqual(sorted(os.listdir(self.base)), ["snapshot.db", "source"])

    def test_ids_are_etcds(self) -> None:
        """Member and cluster IDs come from the new initial cluster and token, as etcd's."""
        plan = plan_from_flags(**M1)
        self.assertEqual((plan.member_id, plan.cluster_id), (ID_M1, CLUSTER))
        self.assertEqual([m.id for m in plan.members], [ID_M2, ID_M1])
        self.assertEqual(plan.consistent_index, 2)

    def test_wal_is_byte_for_byte_etcds(self) -> None:
        """The WAL segment holds exactly the records etcd 3.4.23's restore writes."""
        wal = os.path.join(self.restore(), "member", "wal", WAL_NAME)
        expected = (FIXTURE / WAL_NAME).read_bytes()
        with open(wal, "rb") as f:
            self.assertEqual(f.read(len(expected)), expected)
        self.assertEqual(os.path.getsize(wal), 64_000_000)

    def test_snap_metadata_is_etcds(self) -> None:
        """The .snap file is at (1, 2) with etcd's ConfState; its data is etcdd's (empty)."""
        snap_dir = os.path.join(self.restore(), "member", "snap")
        name = "0000000000000001-0000000000000002.snap"
        ours, etcds = read_snap(os.path.join(snap_dir, name)), read_snap(str(FIXTURE / name))
        self.assertEqual(ours.metadata.SerializeToString(),
                         etcds.metadata.SerializeToString())
        self.assertEqual(ours.data, b"")

    def test_daemon_bootstrap_replays_the_restored_raft_state(self) -> None:
        """open_raft, as `etcdd` with the same flags runs it, restarts at the snapshot:
        hard state {1, vote m2, commit 2}, both voters, no entries after index 2."""
        data_dir = self.restore()
        config = restore_config(M1["name"], M1["initial_cluster"], M1["token"],
                                M1["peer_urls"], data_dir)
        backend = Backend(config.backend_path)
        self.addCleanup(backend.close)
        store = KVStore(backend)
        state = open_raft(config, ID_M1, CLUSTER, initial_members(config), backend, store)
        self.addCleanup(state.wal.close)
        self.assertFalse(state.is_new)
        self.assertEqual(state.snapshot_index, 2)
        self.assertEqual(list(state.conf_state.voters), [ID_M2, ID_M1])
        hard_state, conf_state = state.storage.initial_state()
        self.assertEqual((hard_state.term, hard_state.vote, hard_state.commit), (1, ID_M2, 2))
        self.assertEqual((state.storage.first_index(), state.storage.last_index()), (3, 2))
        identity = load_or_create_identity(config.member_dir, "m1", 1, 1, "tok")
        self.assertEqual((identity.member_id, identity.cluster_id), (ID_M1, CLUSTER))

    def test_store_keeps_keys_and_leases_and_gets_new_members(self) -> None:
        """Keys, revision, leases and cluster version are the snapshot's; members are the
        new cluster's, none removed, no refused conf change of the old log remembered; the
        consistent index is the member count at term 1."""
        data_dir = self.restore()
        backend = Backend(os.path.join(data_dir, "member", "snap", "db"))
        self.addCleanup(backend.close)
        store = KVStore(backend)
        self.assertEqual(store.current_revision(), 6)
        self.assertEqual([kv.value for kv in store.range(b"k", b"l").kvs],
                         [b"v%d" % i for i in range(5)])
        self.assertEqual(store.range(b"k00").kvs[0].lease, LEASE)
        self.assertEqual((store.consistent_index(), store.term()), (2, 1))
        cluster = ClusterState(backend.dbs)
        with backend.begin_read() as txn:
            cluster.load(txn)
            self.assertEqual(lease_store.rows(txn, backend.dbs), [(LEASE, 60, 0)])
        self.assertEqual({m.id: (m.name, m.peer_urls) for m in cluster.sorted_members()},
                         {ID_M1: ("m1", ("http://127.0.0.1:1111",)),
                          ID_M2: ("m2", ("http://127.0.0.1:2222",))})
        self.assertEqual(cluster.removed, frozenset())
        self.assertEqual(cluster.version, "3.4.0")
        with backend.begin_read() as txn:
            self.assertEqual(list(txn.cursor(backend.dbs[b"cluster"]).iternext(values=False)),
                             [CLUSTER_VERSION_KEY])

    def test_separate_wal_dir(self) -> None:
        """With --wal-dir the WAL goes there and the data dir holds no member/wal."""
        wal_dir = os.path.join(self.base, "wals", "m1")
        data_dir = self.restore(wal_dir=wal_dir)
        self.assertEqual(os.listdir(wal_dir), [WAL_NAME])
        self.assertEqual(sorted(os.listdir(os.path.join(data_dir, "member"))),
                         ["identity", "snap"])

    def test_skip_hash_check_takes_a_db_from_a_data_dir(self) -> None:
        """A file with no trailer (a copied member/snap/db) restores with
        --skip-hash-check and is refused without it, with etcd's message."""
        plain = make_snapshot(os.path.join(self.base, "plain"), trailer=False)
        error = self.assertRaises(RestoreError, self.restore, plain)
        self.assertEqual(str(error), "snapshot missing hash but --skip-hash-check=false")
        self.assertFalse(os.path.exists(os.path.join(self.base, "m1.etcd")))
        data_dir = self.restore(plain, skip=True)
        self.assertTrue(os.path.exists(os.path.join(data_dir, "member", "wal", WAL_NAME)))

    def test_hash_mismatch_is_refused_with_etcds_message(self) -> None:
        """A damaged snapshot: `expected sha256 [...], got [...]`, and no dir left."""
        with open(self.snapshot, "r+b") as f:
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
            f.seek(-1, os.SEEK_END)
            f.write(bytes([last[0] ^ 1]))
        error = self.assertRaises(RestoreError, self.restore)
        self.assertRegex(str(error), r"^expected sha256 \[(\d+ ){31}\d+\], got \[(\d+ ){31}\d+\]$")
        self.assertNothingLeft()

    def test_existing_dirs_are_refused(self) -> None:
        """An existing data dir or WAL dir is refused with etcd's message, untouched."""
        taken = os.path.join(self.base, "taken")
        os.mkdir(taken)
        error = self.assertRaises(RestoreError, self.restore, data_dir=taken)
        self.assertEqual(str(error), f'data-dir "{taken}" exists')
        error = self.assertRaises(RestoreError, self.restore, wal_dir=taken)
        self.assertEqual(str(error), f'wal-dir "{taken}" exists')
        self.assertEqual(os.listdir(taken), [])

    def test_foreign_files_are_refused_in_one_line(self) -> None:
        """An etcd bbolt snapshot and a file that is not LMDB are refused; nothing left."""
        bbolt = os.path.join(self.base, "bbolt.db")
        page = bytearray(4096)
        page[16:20] = b"\xed\xda\x0c\xed"
        with open(bbolt, "wb") as f:
            f.write(bytes(page) + hashlib.sha256(page).digest())
        error = self.assertRaises(SnapshotError, self.restore, bbolt)
        self.assertIn("is an etcd (bbolt) snapshot", str(error))
        self.assertIn("etcdctl snapshot restore", str(error))
        junk = os.path.join(self.base, "junk.db")
        with open(junk, "wb") as f:
            f.write(b"\x01" * 8192 + hashlib.sha256(b"\x01" * 8192).digest())
        error = self.assertRaises(SnapshotError, self.restore, junk)
        self.assertIn("is not an etcdd (LMDB) snapshot", str(error))
        os.remove(bbolt)
        os.remove(junk)
        self.assertNothingLeft()

    def test_bad_cluster_flags_are_refused_with_etcds_messages(self) -> None:
        """A name missing from --initial-cluster, or the default cluster with another
        --name (etcdctl does not rewrite it as `etcd --name` does)."""
        error = self.assertRaises(RestoreError, plan_from_flags, name="m3",
                                  initial_cluster=M1["initial_cluster"])
        self.assertEqual(str(error), 'couldn\'t find local name "m3" in the initial '
                                     'cluster configuration')
        self.assertRaises(RestoreError, plan_from_flags, name="m1")
        self.assertEqual(plan_from_flags().member_id, 0x8E9E05C52164694D)

    def test_cli_prints_added_members_or_json(self) -> None:
        """`snapshot restore` prints etcdctl's `added member` lines; -w json the IDs."""
        out = io.StringIO()
        argv = ["restore", self.snapshot, "--name", "m1", "--initial-cluster",
                M1["initial_cluster"], "--initial-cluster-token", "tok",
                "--initial-advertise-peer-urls", M1["peer_urls"]]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            self.assertEqual(main([*argv, "--data-dir", os.path.join(self.base, "a")]), 0)
            self.assertEqual(main([*argv, "--data-dir", os.path.join(self.base, "b"),
                                   "-w", "json"]), 0)
        lines = out.getvalue().splitlines()
        self.assertEqual(lines[:2], [
            "added member 8cb1f3de5dcf951 [http://127.0.0.1:2222] to cluster 7b3082bdf199d98e",
            "added member 7db29806059de6fa [http://127.0.0.1:1111] to cluster 7b3082bdf199d98e"])
        result = json.loads(lines[2])
        self.assertEqual((result["member_id"], result["cluster_id"], result["revision"]),
                         (ID_M1, CLUSTER, 6))

    def test_cli_error_is_one_line(self) -> None:
        """A refused restore prints `Error: ...` on stderr and exits 1."""
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(main(["restore", self.snapshot, "--data-dir", self.base]), 1)
        self.assertEqual(err.getvalue(), f'Error: data-dir "{self.base}" exists\n')

    def test_raft_entries_are_conf_changes_in_id_order(self) -> None:
        """Entry i adds the i-th lowest ID with etcd's member JSON as context."""
        plan = plan_from_flags(**M1)
        ccs = [raft_pb2.ConfChange.FromString(e.Data) for e in plan.entries()]
        self.assertEqual([(cc.node_id, cc.context) for cc in ccs], [
            (ID_M2, b'{"id":633634523285616977,"peerURLs":["http://127.0.0.1:2222"],'
                    b'"name":"m2"}'),
            (ID_M1, b'{"id":9057468952226948858,"peerURLs":["http://127.0.0.1:1111"],'
                    b'"name":"m1"}')])
