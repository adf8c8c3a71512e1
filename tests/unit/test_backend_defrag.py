"""Defragmentation of the LMDB backend (`etcdd/mvcc/backend.py`): the file shrinks, every
database keeps its content, handles are replaced in place, offline defrag refuses a file
in use."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import lmdb
from twisted.trial.unittest import SynchronousTestCase

from etcdd.lease import backend as lease_store
from etcdd.mvcc import backend as backend_module
from etcdd.mvcc.backend import (DB_NAMES, DEFRAG_TMP_PREFIX, Backend, BackendInUseError,
                                defrag_offline, ensure_not_in_use)
from etcdd.mvcc.store import KVStore
from etcdd.server.cluster import ClusterState
from tests.unit.stores import new_store_path, open_store


def fill(store: KVStore, keys: int, value_bytes: int = 1024, prefix: bytes = b"k") -> None:
    """Put `keys` keys of `value_bytes`, a lease with two of them, and a member record."""
    with store.write_batch() as batch:
        txn = batch.txn()
        lease_store.put_row(batch.raw_txn, store.backend.dbs, 7, 60)
        for i in range(keys):
            txn.put(prefix + b"%06d" % i, bytes([i % 251]) * value_bytes, lease=7 if i < 2 else 0)
        txn.end()
        batch.raw_txn.put(b"1", b'{"id":1}', db=store.backend.dbs[b"members"])


def delete_most_and_compact(store: KVStore, prefix: bytes = b"k") -> None:
    """Delete every key under `prefix` but the first ten, then compact all history away."""
    with store.write_batch() as batch:
        txn = batch.txn()
        txn.delete_range(prefix + b"%06d" % 10, prefix + b"\xff")
        txn.end()
    with store.write_batch() as batch:
        batch.schedule_compaction(store.current_revision())
    while not store.compact_step(batch_limit=100_000):
        pass


def dump(backend: Backend) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """Every database's items (duplicates included), in order."""
    with backend.begin_read() as txn:
        return {name: list(txn.cursor(backend.dbs[name]).iternext())
                for name in DB_NAMES}


def temp_files(backend: Backend) -> list[str]:
    return [n for n in os.listdir(os.path.dirname(backend.path))
            if n.startswith(DEFRAG_TMP_PREFIX)]


class OnlineDefragTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.store = open_store(self)
        self.backend = self.store.backend
        fill(self.store, 3000)
        delete_most_and_compact(self.store)

    def test_file_shrinks_and_every_database_is_unchanged(self) -> None:
        """After deleting most keys the file shrinks to about what is in use, and every
        database (dupsort ones included) holds exactly the same items."""
        before, content = self.backend.size_bytes(), dump(self.backend)
        stats = self.backend.defrag()
        self.assertEqual(stats.size_before, before)
        self.assertLess(stats.size_after, before // 10)
        self.assertEqual(stats.size_after, self.backend.size_bytes())
        self.assertLessEqual(stats.in_use_after, stats.size_after)
        self.assertEqual(dump(self.backend), content)
        self.assertEqual(len(content[b"live"]), 10)
        self.assertEqual(len(content[b"leaseKeys"]), 2)
        self.assertEqual(temp_files(self.backend), [])

    def test_handles_are_replaced_in_place(self) -> None:
        """`dbs` stays the same dict with new handles and `env` is new, so holders of the
        dict (the store, ClusterState) go on reading and writing."""
        dbs, env, old_key_db = self.backend.dbs, self.backend.env, self.backend.dbs[b"key"]
        cluster = ClusterState(dbs)
        self.backend.defrag()
        self.assertIs(self.backend.dbs, dbs)
        self.assertIsNot(self.backend.env, env)
        self.assertIsNot(dbs[b"key"], old_key_db)
        with self.backend.begin_read() as txn:
            cluster.load(txn)
        self.assertEqual(list(cluster.members), [1])
        rev = self.store.current_revision()
        with self.store.write_batch() as batch:
            txn = batch.txn()
            txn.put(b"after", b"defrag")
            txn.end()
        self.assertEqual(self.store.current_revision(), rev + 1)
        self.assertEqual(self.store.range(b"after").kvs[0].value, b"defrag")
        self.assertEqual(self.store.range(b"k", b"l", count_only=True).count, 10)

    def test_reopened_file_holds_the_defragmented_state(self) -> None:
        """Closing and opening the path again after a defrag sees the same content."""
        self.backend.defrag()
        content = dump(self.backend)
        path = self.backend.path
        self.backend.close()
        again = Backend(path)
        self.addCleanup(again.close)
        self.assertEqual(dump(again), content)

    def test_failed_copy_leaves_no_temp_file_and_the_old_file_open(self) -> None:
        """A copy that fails (disk full) raises, removes its temp file and changes nothing."""
        def full(fd: int, inspect: object) -> None:
            os.write(fd, b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        self.patch(self.backend, "_copy_into", full)
        env = self.backend.env
        with self.assertRaises(OSError):
            self.backend.compact_copy()
        self.assertEqual(temp_files(self.backend), [])
        self.assertIs(self.backend.env, env)
        self.assertEqual(self.store.range(b"k", b"l", count_only=True).count, 10)

    def test_failed_rename_keeps_the_old_environment(self) -> None:
        """A swap whose rename fails raises and leaves the open environment as it was."""
        env = self.backend.env
        with self.assertRaises(FileNotFoundError):
            self.backend.swap_in(os.path.join(os.path.dirname(self.backend.path), "missing"))
        self.assertIs(self.backend.env, env)
        self.assertEqual(self.store.range(b"k", b"l", count_only=True).count, 10)


class OfflineDefragTests(SynchronousTestCase):

    def stopped_backend(self) -> tuple[str, dict]:
        """A filled, mostly deleted backend file, closed; its path and content."""
        path = new_store_path(self)
        backend = Backend(path)
        store = KVStore(backend)
        fill(store, 2000)
        delete_most_and_compact(store)
        content = dump(backend)
        backend.close()
        return path, content

    def test_defrag_offline_shrinks_a_stopped_file(self) -> None:
        """A closed backend is defragmented in place and keeps its content."""
        path, content = self.stopped_backend()
        before = os.path.getsize(path)
        stats = defrag_offline(path)
        self.assertEqual(stats.size_before, before)
        self.assertEqual(stats.size_after, os.path.getsize(path))
        self.assertLess(stats.size_after, before // 10)
        again = Backend(path)
        self.addCleanup(again.close)
        self.assertEqual(dump(again), content)

    def test_refused_while_open_in_this_process(self) -> None:
        """A Backend open on the path in this process is seen (no fcntl probe, which would
        drop the open environment's own locks)."""
        path, _ = self.stopped_backend()
        backend = Backend(path)
        with self.assertRaises(BackendInUseError):
            defrag_offline(path)
        backend.close()
        self.assertNotIn(os.path.realpath(path), backend_module._open_paths)
        defrag_offline(path)

    def test_refused_while_another_process_has_it_open(self) -> None:
        """LMDB's lock file shows another process's environment: refused, file untouched."""
        path, _ = self.stopped_backend()
        before = os.path.getsize(path)
        holder = subprocess.Popen(
            [sys.executable, "-c",
             "import lmdb, sys; env = lmdb.open(sys.argv[1], subdir=False, max_dbs=32); "
             "print('open', flush=True); sys.stdin.read(); env.close()", path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(holder.stdout.readline(), "open\n")
            with self.assertRaises(BackendInUseError) as caught:
                defrag_offline(path)
            self.assertIn("another process", str(caught.exception))
        finally:
            holder.stdin.close()
            holder.wait()
        self.assertEqual(os.path.getsize(path), before)
        ensure_not_in_use(path)      # released once the other process closed it

    def test_missing_or_foreign_file_is_refused_without_writing(self) -> None:
        """No file: FileNotFoundError; a non-LMDB file: lmdb.InvalidError, no lock file."""
        path = new_store_path(self)
        with self.assertRaises(FileNotFoundError):
            defrag_offline(path)
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(b"bolt" * 4096)
        with self.assertRaises(lmdb.InvalidError):
            defrag_offline(path)
        self.assertEqual(sorted(os.listdir(os.path.dirname(path))), ["db"])
