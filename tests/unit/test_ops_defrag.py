"""`etcdd-ops defrag` (ops/defrag.py): the report formats and the offline defrag of a
stopped member's data dir, refused while its WAL is locked."""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os

from twisted.trial.unittest import SynchronousTestCase

from etcdd.mvcc.backend import Backend
from etcdd.mvcc.store import KVStore
from ops.defrag import DefragReport, defrag_data_dir, format_reports, main
from tests.unit.test_backend_defrag import delete_most_and_compact, dump, fill

REPORTS = [DefragReport("127.0.0.1:2379", 33_456_128, 24_576, 24_576, 0.0404),
           DefragReport("127.0.0.1:22379", error="context deadline exceeded")]


class FormatTests(SynchronousTestCase):

    def test_table(self) -> None:
        """etcdctl-style table: sizes in go-humanize units, TOOK, errors; then the note
        that TOOK is the write hold."""
        self.assertEqual(format_reports(REPORTS, "table").splitlines(), [
            "+-----------------+----------------+---------------+--------------+--------+"
            "---------------------------+",
            "|    ENDPOINT     | DB SIZE BEFORE | DB SIZE AFTER | IN USE AFTER |  TOOK  |"
            "           ERROR           |",
            "+-----------------+----------------+---------------+--------------+--------+"
            "---------------------------+",
            "|  127.0.0.1:2379 |          34 MB |         25 kB |        25 kB | 0.040s |"
            "                           |",
            "| 127.0.0.1:22379 |                |               |              |        |"
            " context deadline exceeded |",
            "+-----------------+----------------+---------------+--------------+--------+"
            "---------------------------+",
            "TOOK: the Defragment call; the member held writes about that long (RPC overhead "
            "included), reads only while it swapped the file."])

    def test_json(self) -> None:
        """One object per member; a failed one has only its endpoint and error."""
        self.assertEqual(json.loads(format_reports(REPORTS, "json")), [
            {"Endpoint": "127.0.0.1:2379", "DbSizeBefore": 33_456_128, "DbSize": 24_576,
             "DbSizeInUse": 24_576, "TookSeconds": 0.0404},
            {"Endpoint": "127.0.0.1:22379", "Error": "context deadline exceeded"}])


class OfflineTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.data_dir = self.mktemp()
        self.db = os.path.join(self.data_dir, "member", "snap", "db")
        backend = Backend(self.db)
        store = KVStore(backend)
        fill(store, 2000)
        delete_most_and_compact(store)
        self.content = dump(backend)
        backend.close()
        wal_dir = os.path.join(self.data_dir, "member", "wal")
        os.makedirs(wal_dir)
        self.segment = os.path.join(wal_dir, "0000000000000000-0000000000000000.wal")
        with open(self.segment, "wb") as f:
            f.write(b"\0" * 64)

    def run_main(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
        return code, out.getvalue(), err.getvalue()

    def test_stopped_member_is_defragmented(self) -> None:
        """`--data-dir -w json` shrinks the backend and keeps every database's content."""
        before = os.path.getsize(self.db)
        code, out, err = self.run_main("--data-dir", self.data_dir, "-w", "json")
        self.assertEqual((code, err), (0, ""))
        [report] = json.loads(out)
        self.assertEqual(report["Endpoint"], self.data_dir)
        self.assertEqual(report["DbSizeBefore"], before)
        self.assertEqual(report["DbSize"], os.path.getsize(self.db))
        self.assertLess(report["DbSize"], before // 10)
        backend = Backend(self.db)
        self.addCleanup(backend.close)
        self.assertEqual(dump(backend), self.content)

    def test_refused_while_a_wal_segment_is_locked(self) -> None:
        """A flock'ed WAL segment (a running member holds one) refuses, touching nothing;
        simple mode prints etcdctl's failure line."""
        before = os.path.getsize(self.db)
        fd = os.open(self.segment, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, out, err = self.run_main("--data-dir", self.data_dir, "-w", "simple")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, f"Failed to defragment etcd data[{self.data_dir}] ({self.segment}"
                              " is locked by another process (is the member running?); to "
                              "defrag a running member, omit --data-dir)\n")
        self.assertEqual(os.path.getsize(self.db), before)

    def test_missing_backend_is_an_error(self) -> None:
        """A data dir without member/snap/db is refused with the path in the error."""
        report = defrag_data_dir(self.mktemp())
        self.assertIn(os.path.join("member", "snap", "db"), report.error)
