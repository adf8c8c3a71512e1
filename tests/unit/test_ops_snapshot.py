"""`etcdd-ops snapshot status` (ops/snapshot.py) on snapshot files made from a real store:
etcdctl's fields and formats, refusals of files that are not etcdd snapshots."""
from __future__ import annotations

import contextlib
import hashlib
import io
import os

from twisted.trial.unittest import SynchronousTestCase

from ops.snapshot import SnapshotError, main, simple, status, table
from tests.unit.stores import open_store


class SnapshotStatusTests(SynchronousTestCase):

    def snapshot_file(self, puts: int = 20) -> str:
        """A store with `puts` puts copied and given etcd's sha256 trailer, as saved."""
        store = open_store(self)
        with store.write_batch() as batch:
            for i in range(puts):
                txn = batch.txn()
                txn.put(b"k%02d" % i, b"v")
                txn.end()
        copy = os.path.join(os.path.dirname(store.backend.path), "copy.db")
        store.copy_to(copy)
        with open(copy, "rb") as f:
            data = f.read()
        path = copy + ".snap"
        with open(path, "wb") as f:
            f.write(data + hashlib.sha256(data).digest())
        self.store = store
        return path

    def test_fields_are_etcdctls(self) -> None:
        """Revision, the store's Hash, entries over every database, size without trailer."""
        path = self.snapshot_file()
        st = status(path)
        self.assertEqual(st["revision"], 21)
        self.assertEqual(st["hash"], self.store.hash())      # what Maintenance/Hash says
        self.assertEqual(st["totalSize"], os.path.getsize(path) - 32)
        self.assertGreater(st["totalKey"], 20 * 3)     # records, index and live rows
        self.assertNotEqual(status(self.snapshot_file(puts=21))["hash"], st["hash"])

    def test_formats_match_etcdctl(self) -> None:
        """The default line and the table are etcdctl 3.4's."""
        st = {"hash": 0x953CA626, "revision": 21, "totalKey": 24, "totalSize": 20480}
        self.assertEqual(simple(st), "953ca626, 21, 24, 20 kB")
        self.assertEqual(table(st), "\n".join([
            "+----------+----------+------------+------------+",
            "|   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |",
            "+----------+----------+------------+------------+",
            "| 953ca626 |       21 |         24 |      20 kB |",
            "+----------+----------+------------+------------+"]))

    def test_refuses_a_damaged_or_foreign_file(self) -> None:
        """A wrong trailer, or data that is not LMDB: a one-line error and status 1."""
        path = self.snapshot_file()
        with open(path, "r+b") as f:
            f.seek(100)
            f.write(b"\xff")
        self.assertRaises(SnapshotError, status, path)
        foreign = path + ".bbolt"
        data = b"\x00" * 8192
        with open(foreign, "wb") as f:
            f.write(data + hashlib.sha256(data).digest())
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(main(["status", foreign]), 1)
        self.assertIn("is not an etcdd (LMDB) snapshot", err.getvalue())
