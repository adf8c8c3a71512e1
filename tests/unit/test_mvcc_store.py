"""The MVCC store on LMDB (`etcdd/mvcc/store.py`) against etcd 3.4's semantics: fixed
cases, the generation diagrams, hash vectors taken from a real etcd 3.4.23, and seeded
random histories checked against a small model."""
from __future__ import annotations

import copy
import random
import shutil
from typing import Any

import crc32c
from twisted.trial.unittest import SynchronousTestCase

from etcdd.mvcc.backend import DB_NAMES, Backend
from etcdd.mvcc.errors import CompactedError, DatabaseSpaceExceededError, FutureRevError
from etcdd.mvcc.keyindex import SHORT_KEY_MAX, format_generations
from etcdd.mvcc.revision import Revision, main_of, rev_to_bytes
from etcdd.mvcc.store import KVStore, StoreInvariantError
from etcdd.proto.kv_pb2 import KeyValue


class StoreTestCase(SynchronousTestCase):
    """Opens stores in temp dirs and closes them after the test."""

    def open_store(self, path: str | None = None, **kw: Any) -> KVStore:
        if path is None:
            base = self.mktemp()
            self.addCleanup(shutil.rmtree, base, True)
            path = base + "/member/snap/db"
        backend = Backend(path, **kw)
        self.addCleanup(backend.close)
        return KVStore(backend)

    def reopen(self, store: KVStore) -> KVStore:
        store.backend.close()
        return self.open_store(store.backend.path)

    @staticmethod
    def put(store: KVStore, key: bytes, value: bytes = b"v", lease: int = 0) -> int:
        with store.write_batch() as batch:
            txn = batch.txn()
            txn.put(key, value, lease)
            return txn.end()

    @staticmethod
    def delete(store: KVStore, key: bytes, end: bytes = b"") -> int:
        with store.write_batch() as batch:
            txn = batch.txn()
            txn.delete_range(key, end)
            return txn.end()

    @staticmethod
    def compact(store: KVStore, rev: int, limit: int = 1000) -> None:
        with store.write_batch() as batch:
            batch.schedule_compaction(rev)
        while not store.compact_step(limit):
            pass

    @staticmethod
    def keys(result: Any) -> list[bytes]:
        return [kv.key for kv in result.kvs]


class StoreSemanticsTests(StoreTestCase):

    def test_fresh_store(self) -> None:
        """A fresh store is at revision 1 with compact revision -1 and nothing in it."""
        store = self.open_store()
        self.assertEqual((store.current_revision(), store.compact_revision()), (1, -1))
        self.assertEqual((store.consistent_index(), store.term(), store.key_count()), (0, 0, 0))
        r = store.range(b"\x00", b"\x00")
        self.assertEqual((r.kvs, r.count, r.rev), ([], 0, 1))
        self.assertFalse(store.pending_compaction())

    def test_first_put_gets_revision_2(self) -> None:
        """The first put takes revision 2, version 1, create = mod = 2."""
        store = self.open_store()
        self.assertEqual(self.put(store, b"foo", b"bar", lease=7), 2)
        kv = store.range(b"foo").kvs[0]
        self.assertEqual((kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease),
                         (2, 2, 1, b"bar", 7))

    def test_put_keeps_create_revision(self) -> None:
        """Putting a live key keeps create_revision, bumps version, sets mod_revision."""
        store = self.open_store()
        self.put(store, b"foo", b"1")
        self.put(store, b"other")
        self.put(store, b"foo", b"2")
        kv = store.range(b"foo").kvs[0]
        self.assertEqual((kv.create_revision, kv.mod_revision, kv.version), (2, 4, 2))

    def test_put_after_delete_starts_generation(self) -> None:
        """A put on a deleted key starts over: create_revision = its revision, version 1."""
        store = self.open_store()
        self.put(store, b"foo")
        self.put(store, b"foo")
        self.delete(store, b"foo")
        self.put(store, b"foo")
        kv = store.range(b"foo").kvs[0]
        self.assertEqual((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1))
        self.assertEqual(format_generations(store.history(b"foo")), "[2, 3, 4(t)], [5]")

    def test_put_and_delete_return_previous(self) -> None:
        """put returns the previous KeyValue (None for a new key); delete_range the deleted."""
        store = self.open_store()
        with store.write_batch() as batch:
            txn = batch.txn()
            self.assertIsNone(txn.put(b"a", b"1"))
            prev = txn.put(b"a", b"2")
            self.assertEqual((prev.value, prev.mod_revision, prev.version), (b"1", 2, 1))
            txn.put(b"b", b"3")
            deleted = txn.delete_range(b"a", b"c")
            self.assertEqual([(kv.key, kv.value) for kv in deleted], [(b"a", b"2"), (b"b", b"3")])
            self.assertEqual(txn.end(), 2)

    def test_empty_delete_keeps_revision(self) -> None:
        """Deleting nothing changes nothing: the revision stays."""
        store = self.open_store()
        self.put(store, b"a")
        self.assertEqual(self.delete(store, b"zzz"), 2)
        self.assertEqual(self.delete(store, b"b", b"c"), 2)
        self.assertEqual(store.current_revision(), 2)

    def test_tombstone_record_holds_only_the_key(self) -> None:
        """A delete writes (rev, sub) + b't' -> KeyValue{key} in the key database."""
        store = self.open_store()
        self.put(store, b"a")
        self.put(store, b"b")
        self.delete(store, b"a", b"c")
        with store.backend.begin_read() as txn:
            db = store.backend.dbs[b"key"]
            self.assertEqual(txn.get(rev_to_bytes(4, 0, True), db=db),
                             KeyValue(key=b"a").SerializeToString())
            self.assertEqual(txn.get(rev_to_bytes(4, 1, True), db=db), b"\n\x01b")

    def test_records_are_etcds_bytes(self) -> None:
        """Stored records are gogo-marshaled mvccpb.KeyValue bytes, fields in order."""
        store = self.open_store()
        self.put(store, b"foo", b"bar", lease=0x1234)
        with store.backend.begin_read() as txn:
            raw = txn.get(rev_to_bytes(2, 0), db=store.backend.dbs[b"key"])
        self.assertEqual(raw, b"\n\x03foo\x10\x02\x18\x02 \x01*\x03bar0\xb4$")

    def test_txn_changes_share_main_revision(self) -> None:
        """Within a txn every change has main = begin+1 and subs 0, 1, 2, ..."""
        store = self.open_store()
        with store.write_batch() as batch:
            txn = batch.txn()
            txn.put(b"a", b"1")
            txn.put(b"b", b"1")
            txn.delete_range(b"a")
            self.assertEqual(len(txn.changes), 3)
            self.assertEqual(txn.end(), 2)
        self.assertEqual(store.history(b"a"), [Revision(2, 0), Revision(2, 2, True)])
        self.assertEqual(store.history(b"b"), [Revision(2, 1)])

    def test_batch_txns_take_consecutive_revisions(self) -> None:
        """Each txn that writes in a batch takes the next revision; empty ones take none."""
        store = self.open_store()
        with store.write_batch() as batch:
            revs = []
            for key in (b"a", None, b"b"):
                txn = batch.txn()
                self.assertEqual(txn.begin_rev, batch.current_revision())
                if key:
                    txn.put(key, b"")
                revs.append(txn.end())
        self.assertEqual(revs, [2, 2, 3])
        self.assertEqual(store.current_revision(), 3)

    def test_range_end_conventions(self) -> None:
        """b'' is one key, b'\\x00' every key >= key, else [key, range_end)."""
        store = self.open_store()
        for k in (b"\x00", b"a", b"ab", b"b", b"c"):
            self.put(store, k)
        cases = [
            (b"a", b"", [b"a"]),
            (b"zz", b"", []),
            (b"ab", b"\x00", [b"ab", b"b", b"c"]),
            (b"\x00", b"\x00", [b"\x00", b"a", b"ab", b"b", b"c"]),
            (b"a", b"b", [b"a", b"ab"]),
            (b"a", b"a", []),
            (b"c", b"a", []),
        ]
        for key, end, want in cases:
            r = store.range(key, end)
            self.assertEqual((self.keys(r), r.count), (want, len(want)), (key, end))

    def test_range_revision_bounds(self) -> None:
        """rev > current is FutureRevError; rev < compact is CompactedError; == reads."""
        store = self.open_store()
        for i in range(5):
            self.put(store, b"k", b"%d" % i)
        self.compact(store, 4)
        self.assertRaises(FutureRevError, store.range, b"k", rev=7)
        self.assertRaises(CompactedError, store.range, b"k", rev=3)
        self.assertEqual(store.range(b"k", rev=4).kvs[0].value, b"2")
        self.assertEqual(store.range(b"k", rev=-1).kvs[0].value, b"4")
        r = store.range(b"k", rev=5)
        self.assertEqual((r.kvs[0].value, r.rev), (b"3", 6))

    def test_count_ignores_limit(self) -> None:
        """count is every key in range; limit returns the first keys ascending."""
        store = self.open_store()
        for k in (b"d", b"b", b"a", b"c"):
            self.put(store, k)
        r = store.range(b"a", b"\x00", limit=2)
        self.assertEqual((self.keys(r), r.count), ([b"a", b"b"], 4))
        r = store.range(b"a", b"\x00", count_only=True)
        self.assertEqual((r.kvs, r.count), ([], 4))
        r = store.range(b"a", b"\x00", keys_only=True, limit=1)
        self.assertEqual((r.kvs[0].key, r.kvs[0].value, r.kvs[0].version), (b"a", b"", 1))

    def test_historical_range(self) -> None:
        """A range at an old revision sees the keys and values of that moment."""
        store = self.open_store()
        self.put(store, b"a", b"1")       # 2
        self.put(store, b"b", b"1")       # 3
        self.put(store, b"a", b"2")       # 4
        self.delete(store, b"b")          # 5
        self.put(store, b"c", b"1")       # 6
        expect = {2: [(b"a", b"1")], 3: [(b"a", b"1"), (b"b", b"1")],
                  4: [(b"a", b"2"), (b"b", b"1")], 5: [(b"a", b"2")],
                  6: [(b"a", b"2"), (b"c", b"1")]}
        for rev, want in expect.items():
            r = store.range(b"a", b"\x00", rev=rev)
            self.assertEqual([(kv.key, kv.value) for kv in r.kvs], want, rev)
            self.assertEqual((r.count, r.rev), (len(want), 6))
            self.assertEqual(store.range(b"b", rev=rev).count, int(rev in (3, 4)))

    def test_write_txn_range_sees_its_writes(self) -> None:
        """A txn's range sees the batch's and its own writes at revision begin+1."""
        store = self.open_store()
        with store.write_batch() as batch:
            t1 = batch.txn()
            t1.put(b"a", b"1")
            t1.end()
            t2 = batch.txn()
            self.assertEqual(t2.range(b"a").kvs[0].value, b"1")
            self.assertRaises(FutureRevError, t2.range, b"a", rev=3)
            t2.put(b"a", b"2")
            r = t2.range(b"a", rev=3)
            self.assertEqual((r.kvs[0].value, r.rev), (b"2", 3))
            self.assertEqual(t2.range(b"a", rev=2).kvs[0].value, b"1")
            t2.end()
            self.assertEqual(store.current_revision(), 1)

    def test_read_during_open_batch_sees_old_state(self) -> None:
        """Readers see only committed batches, never part of an open one."""
        store = self.open_store()
        self.put(store, b"a", b"old")
        batch = store.write_batch()
        txn = batch.txn()
        txn.put(b"a", b"new")
        txn.put(b"b", b"new")
        txn.end()
        view = store.read()
        self.assertEqual(store.range(b"a").kvs[0].value, b"old")
        self.assertEqual(store.range(b"b").count, 0)
        self.assertEqual(store.current_revision(), 2)
        batch.commit()
        self.assertEqual(view.range(b"a").kvs[0].value, b"old")   # a view keeps its moment
        view.end()
        self.assertEqual(store.range(b"a", b"c").count, 2)
        self.assertEqual(store.current_revision(), 3)

    def test_abort_discards_everything(self) -> None:
        """An aborted batch leaves no trace."""
        store = self.open_store()
        self.put(store, b"a")
        before = store.hash()
        batch = store.write_batch()
        txn = batch.txn()
        txn.put(b"b", b"x")
        txn.delete_range(b"a")
        txn.end()
        batch.set_consistent_index(9, 9)
        batch.abort()
        self.assertEqual((store.hash(), store.current_revision(), store.consistent_index()),
                         (before, 2, 0))

    def test_batch_protocol_is_enforced(self) -> None:
        """A second txn while one is open, or a commit with one open, is refused."""
        store = self.open_store()
        batch = store.write_batch()
        txn = batch.txn()
        self.assertRaises(StoreInvariantError, batch.txn)
        self.assertRaises(StoreInvariantError, batch.commit)
        txn.end()
        self.assertRaises(StoreInvariantError, txn.put, b"a", b"")
        batch.abort()

    def test_consistent_index_and_term(self) -> None:
        """set_consistent_index records index and term in the batch's transaction."""
        store = self.open_store()
        with store.write_batch() as batch:
            batch.set_consistent_index(42, 3)
        self.assertEqual((store.consistent_index(), store.term()), (42, 3))

    def test_restart_keeps_everything(self) -> None:
        """Closing and reopening gives the same revisions, data, compaction and hashes."""
        store = self.open_store()
        for i in range(20):
            self.put(store, b"k%d" % (i % 7), b"%d" % i)
        self.delete(store, b"k1", b"k3")
        self.compact(store, 10)
        with store.write_batch() as batch:
            batch.set_consistent_index(77, 5)
        state = (store.current_revision(), store.compact_revision(), store.consistent_index(),
                 store.term(), store.key_count(), store.hash(), store.hash_kv(),
                 [kv.SerializeToString() for kv in store.range(b"\x00", b"\x00").kvs],
                 [kv.SerializeToString() for kv in store.range(b"\x00", b"\x00", rev=12).kvs])
        store = self.reopen(store)
        self.assertEqual(state, (
            store.current_revision(), store.compact_revision(), store.consistent_index(),
            store.term(), store.key_count(), store.hash(), store.hash_kv(),
            [kv.SerializeToString() for kv in store.range(b"\x00", b"\x00").kvs],
            [kv.SerializeToString() for kv in store.range(b"\x00", b"\x00", rev=12).kvs]))

    def test_databases_exist(self) -> None:
        """The environment holds every named database, `index` sorted with duplicates."""
        store = self.open_store()
        self.assertEqual(set(store.backend.dbs), set(DB_NAMES))
        with store.backend.begin_read() as txn:
            self.assertTrue(store.backend.dbs[b"index"].flags(txn)["dupsort"])
        self.assertGreater(store.backend.size_bytes(), 0)
        self.assertGreater(store.backend.size_in_use_bytes(), 0)
        self.assertLessEqual(store.backend.size_in_use_bytes(), store.backend.size_bytes())

    def test_map_full_is_no_space(self) -> None:
        """A batch that outgrows the map fails with DatabaseSpaceExceededError and
        commits nothing; the store keeps serving what it had."""
        store = self.open_store(map_size=1 << 20)
        self.put(store, b"keep", b"1")
        batch = store.write_batch()
        with self.assertRaises(DatabaseSpaceExceededError):
            for i in range(1000):
                txn = batch.txn()
                txn.put(b"big%d" % i, b"x" * 4000)
                txn.end()
        self.assertRaises(DatabaseSpaceExceededError, batch.commit)
        self.assertEqual((store.current_revision(), self.keys(store.range(b"\x00", b"\x00"))),
                         (2, [b"keep"]))


class EtcdVectorTests(StoreTestCase):
    """HashKV values a real etcd 3.4.23 gave for the same history (single member,
    lease 0x1234 granted first, gRPC requests in this order)."""

    def test_hash_kv_equals_etcd(self) -> None:
        """hash_kv gives etcd's numbers before and after compactions."""
        store = self.open_store()
        self.assertEqual(store.hash_kv(), (1084519789, -1, 1))
        self.put(store, b"foo", b"bar")
        self.put(store, b"foo", b"baz", lease=0x1234)
        with store.write_batch() as batch:
            txn = batch.txn()
            txn.put(b"a", b"1")
            txn.put(b"b", b"")
            txn.delete_range(b"foo")
            txn.end()
        self.put(store, b"foo", b"again")
        self.delete(store, b"a", b"c")
        at = {2: 3305255506, 3: 291365280, 4: 2591813275, 5: 3565892925, 6: 2176883415}
        for rev, h in at.items():
            self.assertEqual(store.hash_kv(rev), (h, -1, 6), rev)
        self.assertEqual(store.hash_kv(), (2176883415, -1, 6))
        with store.write_batch() as batch:
            batch.schedule_compaction(4)
        for physical_step in range(3):
            self.assertEqual(store.hash_kv(5), (3418281279, 4, 6))
            self.assertEqual(store.hash_kv(), (1661629304, 4, 6))
            store.compact_step(batch_limit=1)
        self.compact_until_done(store)
        self.assertEqual(store.hash_kv(5), (3418281279, 4, 6))
        self.assertEqual(store.hash_kv(6), (1661629304, 4, 6))
        self.assertRaises(CompactedError, store.hash_kv, 4)
        self.assertRaises(FutureRevError, store.hash_kv, 7)
        self.delete(store, b"foo")
        self.assertEqual(store.hash_kv(), (2354128765, 4, 7))
        self.compact(store, 7)
        self.assertEqual(store.hash_kv(), (1084519789, 7, 7))
        self.assertEqual(store.range(b"\x00", b"\x00").count, 0)

    @staticmethod
    def compact_until_done(store: KVStore) -> None:
        while not store.compact_step():
            pass

    def test_hash_skips_consistent_index(self) -> None:
        """hash() covers every database but not meta's consistent_index."""
        store = self.open_store()
        self.put(store, b"a")
        h = store.hash()
        with store.write_batch() as batch:
            batch.set_consistent_index(99, 0)
        self.assertNotEqual(store.hash(), h)   # the term is covered
        with store.write_batch() as batch:
            batch.set_consistent_index(100, 0)
        h2 = store.hash()
        with store.write_batch() as batch:
            batch.set_consistent_index(5000, 0)
        self.assertEqual(store.hash(), h2)


class CompactionTests(StoreTestCase):

    # (ops on b"foo" by revision: put p / delete d; other revisions are fillers on b"x"),
    # compaction revision, foo's generations before and after.
    GENERATIONS = [
        ({2: "p", 4: "p", 6: "d", 8: "p"}, 5, "[2, 4, 6(t)], [8]", "[4, 6(t)], [8]"),
        ({2: "p", 4: "p", 6: "d", 8: "p"}, 6, "[2, 4, 6(t)], [8]", "[8]"),
        ({2: "p", 4: "p", 6: "d", 8: "p"}, 7, "[2, 4, 6(t)], [8]", "[8]"),
        ({2: "p", 4: "p", 6: "d", 8: "p"}, 8, "[2, 4, 6(t)], [8]", "[8]"),
        ({2: "p", 4: "p", 6: "d", 8: "p"}, 3, "[2, 4, 6(t)], [8]", "[2, 4, 6(t)], [8]"),
        ({2: "p", 3: "d"}, 3, "[2, 3(t)]", ""),
        ({2: "p", 3: "d"}, 2, "[2, 3(t)]", "[2, 3(t)]"),
        ({2: "p", 3: "p", 4: "p"}, 4, "[2, 3, 4]", "[4]"),
        ({2: "p", 3: "d", 4: "p", 5: "d"}, 4, "[2, 3(t)], [4, 5(t)]", "[4, 5(t)]"),
        ({2: "p", 3: "d", 4: "p", 5: "d"}, 5, "[2, 3(t)], [4, 5(t)]", ""),
    ]

    def test_generation_table(self) -> None:
        """Compaction keeps each key's newest revision at or below it unless a tombstone,
        as the diagrams say."""
        for ops, at, before, after in self.GENERATIONS:
            store = self.open_store()
            for rev in range(2, max(ops) + 1):
                if ops.get(rev) == "p":
                    self.put(store, b"foo")
                elif ops.get(rev) == "d":
                    self.delete(store, b"foo")
                else:
                    self.put(store, b"x")
            self.assertEqual(format_generations(store.history(b"foo")), before, (ops, at))
            self.compact(store, at)
            self.assertEqual(format_generations(store.history(b"foo")), after, (ops, at))
            fillers = any(rev not in ops for rev in range(2, max(ops)))
            self.assertEqual(store.key_count(), (ops[max(ops)] == "p") + fillers)

    def test_schedule_validation(self) -> None:
        """Compacting at or below the compact revision, or past the current, is refused."""
        store = self.open_store()
        for _ in range(4):
            self.put(store, b"a")
        with store.write_batch() as batch:
            self.assertRaises(FutureRevError, batch.schedule_compaction, 6)
            batch.schedule_compaction(3)
            self.assertRaises(CompactedError, batch.schedule_compaction, 3)
            self.assertRaises(CompactedError, batch.schedule_compaction, 2)
            self.assertEqual(batch.compact_revision(), 3)
        self.assertEqual(store.compact_revision(), 3)

    def test_reads_below_compaction_fail_at_once(self) -> None:
        """Once scheduled and committed, reads below the compaction fail, before any
        record is deleted."""
        store = self.open_store()
        for _ in range(5):
            self.put(store, b"a")
        with store.write_batch() as batch:
            batch.schedule_compaction(4)
        self.assertTrue(store.pending_compaction())
        self.assertEqual(len(store.history(b"a")), 5)
        self.assertRaises(CompactedError, store.range, b"a", rev=3)
        self.assertEqual(store.range(b"a", rev=4).kvs[0].mod_revision, 4)

    def test_interrupted_compaction_resumes_after_restart(self) -> None:
        """A compaction cut short by a restart is still pending and finishes after it."""
        store = self.open_store()
        for i in range(60):
            self.put(store, b"k%02d" % (i % 20), b"%d" % i)
        with store.write_batch() as batch:
            batch.schedule_compaction(50)
        h = store.hash_kv()
        self.assertFalse(store.compact_step(batch_limit=7))
        store = self.reopen(store)
        self.assertTrue(store.pending_compaction())
        self.assertEqual(store.compact_revision(), 50)
        steps = 1
        while not store.compact_step(batch_limit=7):
            steps += 1
        self.assertGreater(steps, 2)
        self.assertFalse(store.pending_compaction())
        with store.backend.begin_read() as txn:
            revs = [main_of(k) for k in txn.cursor(store.backend.dbs[b"key"]).iternext(values=False)]
        # Puts at 2..61 over 20 keys: at 50 each key's newest is in 31..50; 51..61 stay.
        self.assertEqual(revs, list(range(31, 62)))
        self.assertEqual(store.hash_kv(), h)

    def test_hash_stable_during_physical_compaction(self) -> None:
        """hash_kv at every revision is the same before, during and after the deletes."""
        store = self.open_store()
        rnd = random.Random(5)
        for i in range(120):
            if rnd.random() < 0.2:
                self.delete(store, b"k%d" % rnd.randrange(10))
            else:
                self.put(store, b"k%d" % rnd.randrange(10), b"%d" % i)
        current = store.current_revision()
        with store.write_batch() as batch:
            batch.schedule_compaction(current - 30)
        revs = range(current - 29, current + 1)
        expected = [store.hash_kv(r) for r in revs]
        done = False
        while not done:
            done = store.compact_step(batch_limit=3)
            self.assertEqual([store.hash_kv(r) for r in revs], expected)
            self.assertEqual([store.hash_kv(r, _physical=False) for r in revs], expected)

    def test_newer_compaction_while_pending(self) -> None:
        """Scheduling a newer compaction mid-way finishes at the newer revision."""
        store = self.open_store()
        for i in range(40):
            self.put(store, b"k%d" % (i % 8))
        with store.write_batch() as batch:
            batch.schedule_compaction(20)
        store.compact_step(batch_limit=3)
        with store.write_batch() as batch:
            batch.schedule_compaction(35)
        while not store.compact_step(batch_limit=3):
            pass
        for i in range(8):
            # Puts at 2..41 over 8 keys: at 35 each keeps one; 36..41 hit k2..k7.
            self.assertEqual(len(store.history(b"k%d" % i)), 1 if i < 2 else 2, i)


class LongKeyTests(StoreTestCase):
    """Keys longer than an LMDB key (511 bytes) keep etcd's byte order."""

    P = b"p" * SHORT_KEY_MAX
    KEYS = [P[:-1], P, P + b"\x00", P + b"a", P + b"a" * 300, P + b"b", P + b"a" * 30 + b"z",
            P[:-1] + b"q" + b"x" * 100, b"q" * 5000, b"a"]

    def test_ranges_in_full_key_order(self) -> None:
        """Ranges over long keys sharing a prefix return them in full-key order, now and
        at older revisions, with long starts and ends."""
        store = self.open_store()
        for k in self.KEYS:
            self.put(store, k, k[-3:])
        old = store.current_revision()
        self.delete(store, self.P + b"a")
        self.put(store, self.P + b"c")
        now = sorted(set(self.KEYS) - {self.P + b"a"} | {self.P + b"c"})
        bounds = [b"\x00", self.P, self.P + b"a", self.P + b"a" * 50, self.P + b"\x00",
                  self.P[:-1] + b"q", b"q", b"q" * 6000, b"r"]
        for start in [b"\x00"] + bounds:
            for end in bounds + [b"\x00"]:
                for rev, keys in ((0, now), (old, sorted(self.KEYS))):
                    want = [k for k in keys if k >= start and (end == b"\x00" or k < end)]
                    for limit in (0, 1, 3):
                        r = store.range(start, end, rev=rev, limit=limit)
                        self.assertEqual(
                            (self.keys(r), r.count),
                            (want[:limit] if limit else want, len(want)), (start, end, rev))

    def test_long_key_history_and_delete_range(self) -> None:
        """A long key has its own history; delete_range over long keys deletes in order."""
        store = self.open_store()
        for k in self.KEYS:
            self.put(store, k)
        self.put(store, self.P + b"a")
        self.assertEqual(store.range(self.P + b"a").kvs[0].version, 2)
        with store.write_batch() as batch:
            txn = batch.txn()
            deleted = txn.delete_range(self.P, self.P + b"b")
            txn.end()
        self.assertEqual([kv.key for kv in deleted],
                         sorted(k for k in self.KEYS if self.P <= k < self.P + b"b"))
        self.assertEqual(format_generations(store.history(self.P + b"a")), "[5, 12, 13.2(t)]")


class Model:
    """etcd 3.4 MVCC semantics over dicts: the reference for the random tests.

    `revs[key]`: revisions on disk, oldest first; `records`: revision key -> record.
    Compaction is logical at once (`compact`) and physical at `finish_compaction()`."""

    def __init__(self) -> None:
        self.rev = 1
        self.compact = -1
        self.revs: dict[bytes, list[Revision]] = {}
        self.records: dict[bytes, bytes] = {}
        self.sub = 0

    def _at(self, key: bytes, at: int | None) -> Revision | None:
        for r in reversed(self.revs.get(key, [])):
            if at is None or r.main <= at:
                return None if r.tombstone else r
        return None

    def kv(self, key: bytes, at: int | None = None) -> KeyValue | None:
        r = self._at(key, at)
        return None if r is None else KeyValue.FromString(self.records[r.to_bytes()])

    def keys_in(self, key: bytes, end: bytes) -> list[bytes]:
        if end == b"":
            return [key]
        return sorted(k for k in self.revs if k >= key and (end == b"\x00" or k < end))

    def range(self, key: bytes, end: bytes, rev: int, limit: int) -> tuple[list[bytes], int]:
        cur = self.rev + 1 if self.sub else self.rev
        if rev > cur:
            raise FutureRevError()
        rev = cur if rev <= 0 else rev
        if rev < self.compact:
            raise CompactedError()
        kvs = [kv for kv in (self.kv(k, rev) for k in self.keys_in(key, end)) if kv]
        return [kv.SerializeToString() for kv in (kvs[:limit] if limit else kvs)], len(kvs)

    def _record(self, key: bytes, r: Revision, kv: KeyValue) -> None:
        self.revs.setdefault(key, []).append(r)
        self.records[r.to_bytes()] = kv.SerializeToString()
        self.sub += 1

    def put(self, key: bytes, value: bytes, lease: int) -> None:
        rev = self.rev + 1
        prev = self.kv(key)
        kv = KeyValue(key=key, value=value, lease=lease, mod_revision=rev,
                      create_revision=prev.create_revision if prev else rev,
                      version=prev.version + 1 if prev else 1)
        self._record(key, Revision(rev, self.sub), kv)

    def delete(self, key: bytes, end: bytes) -> int:
        live = [k for k in self.keys_in(key, end) if self.kv(k)]
        for k in live:
            self._record(k, Revision(self.rev + 1, self.sub, True), KeyValue(key=k))
        return len(live)

    def end(self) -> int:
        if self.sub:
            self.rev += 1
        self.sub = 0
        return self.rev

    def finish_compaction(self) -> None:
        for key, revs in list(self.revs.items()):
            below = [r for r in revs if r.main <= self.compact]
            if below:
                drop = below if below[-1].tombstone else below[:-1]
                for r in drop:
                    del self.records[r.to_bytes()]
                revs[:] = [r for r in revs if r not in drop]
            if not revs:
                del self.revs[key]

    def keep_is_empty(self, rev: int) -> bool:
        return not any(self._at(k, rev) for k in self.revs)

    def hash_kv(self, rev: int) -> int:
        rev = rev or self.rev
        keep = {r.to_bytes() for r in (self._at(k, rev) for k in self.revs) if r}
        h = crc32c.crc32c(b"key")
        for rk in sorted(self.records):
            if main_of(rk) > rev:
                break
            if main_of(rk) <= self.compact and keep and rk not in keep:
                continue
            h = crc32c.crc32c(self.records[rk], crc32c.crc32c(rk, h))
        return h


class RandomHistoryTests(StoreTestCase):
    """Seeded random histories: the store and the model must agree after every step."""

    P = b"p" * SHORT_KEY_MAX
    KEYS = [b"a", b"b", b"ba", b"c", b"foo", b"foo/1", b"foo/2", b"\x00", b"\xff\xfe", b"z",
            P, P + b"a" * 40, P + b"b", P + b"\x00"]
    ENDS = [b"", b"", b"\x00", b"b", b"foo0", b"foo/2", b"zz", P + b"a", P + b"a" * 50]

    def test_random_histories(self) -> None:
        """Random puts, deletes, txns, aborts, reads at random revisions, compactions in
        random steps, restarts and hashes agree with the model (seed in the message)."""
        for seed in range(6):
            self.run_history(seed, steps=150)

    def run_history(self, seed: int, steps: int) -> None:
        rnd = random.Random(seed)
        store, model = self.open_store(), Model()
        for step in range(steps):
            where = f"seed {seed} step {step}"
            x = rnd.random()
            if x < 0.5:
                model = self.random_batch(rnd, store, model, where)
            elif x < 0.65:
                self.check_read(rnd, store, model, where)
            elif x < 0.75:
                self.random_compaction(rnd, store, model, where)
            elif x < 0.8:
                store = self.reopen(store)
            else:
                self.check_state(rnd, store, model, where)
        while not store.compact_step(batch_limit=rnd.randint(1, 9)):
            pass
        model.finish_compaction()
        self.check_state(rnd, store, model, f"seed {seed} end")

    def random_batch(self, rnd: random.Random, store: KVStore, model: Model,
                     where: str) -> Model:
        saved = copy.deepcopy(model)
        batch = store.write_batch()
        for _ in range(rnd.randint(1, 4)):
            txn = batch.txn()
            for _ in range(rnd.randint(0, 4)):
                key, y = rnd.choice(self.KEYS), rnd.random()
                if y < 0.55:
                    value, lease = rnd.randbytes(rnd.choice([0, 3, 200])), rnd.choice([0, 0, 9])
                    prev = txn.put(key, value, lease)
                    self.assertEqual(prev, model.kv(key), where)
                    model.put(key, value, lease)
                elif y < 0.8:
                    end = rnd.choice(self.ENDS)
                    deleted = txn.delete_range(key, end)
                    self.assertEqual(len(deleted), model.delete(key, end), where)
                else:
                    self.check_range(rnd, txn, model, where)
            self.assertEqual(txn.end(), model.end(), where)
        if rnd.random() < 0.15:
            batch.abort()
            return saved
        batch.set_consistent_index(step_index := rnd.randint(1, 10**6), 2)
        batch.commit()
        self.assertEqual(store.consistent_index(), step_index)
        return model

    def check_range(self, rnd: random.Random, view: Any, model: Model, where: str) -> None:
        key, end = rnd.choice(self.KEYS + self.ENDS[3:]), rnd.choice(self.ENDS)
        cur = model.rev + 1 if model.sub else model.rev
        rev = rnd.choice([0, 0, cur, cur + 1, rnd.randint(max(model.compact - 1, 1), cur)])
        limit = rnd.choice([0, 1, 2, 5])
        try:
            want = model.range(key, end, rev, limit)
        except (CompactedError, FutureRevError) as e:
            self.assertRaises(type(e), view.range, key, end, rev, limit)
            return
        r = view.range(key, end, rev=rev, limit=limit)
        self.assertEqual(([kv.SerializeToString() for kv in r.kvs], r.count), want,
                         f"{where}: range {key!r} {end!r} rev={rev} limit={limit}")
        self.assertEqual(r.rev, cur, where)

    def check_read(self, rnd: random.Random, store: KVStore, model: Model, where: str) -> None:
        for _ in range(3):
            self.check_range(rnd, store, model, where)

    def random_compaction(self, rnd: random.Random, store: KVStore, model: Model,
                          where: str) -> None:
        rev = rnd.randint(model.compact - 1, model.rev + 1)
        with store.write_batch() as batch:
            if rev <= model.compact:
                self.assertRaises(CompactedError, batch.schedule_compaction, rev)
            elif rev > model.rev:
                self.assertRaises(FutureRevError, batch.schedule_compaction, rev)
            else:
                batch.schedule_compaction(rev)
                model.compact = rev
        for _ in range(rnd.choice([0, 1, 2, 100])):
            if store.compact_step(batch_limit=rnd.randint(1, 6)):
                model.finish_compaction()
                break
        self.assertEqual(store.compact_revision(), model.compact, where)

    def check_state(self, rnd: random.Random, store: KVStore, model: Model, where: str) -> None:
        self.assertEqual((store.current_revision(), store.compact_revision()),
                         (model.rev, model.compact), where)
        self.assertEqual(store.key_count(), sum(1 for k in model.revs if model.kv(k)), where)
        pending = store.pending_compaction()
        revs = {0, model.rev}
        if model.rev > model.compact + 1:
            revs.add(rnd.randint(max(model.compact + 1, 1), model.rev))
        for rev in sorted(revs):
            if 0 < rev <= model.compact:
                continue
            if pending and model.keep_is_empty(rev or model.rev):
                continue   # etcd too: with nothing live, the hash follows the deletes
            self.assertEqual(store.hash_kv(rev), (model.hash_kv(rev), model.compact, model.rev),
                             f"{where}: hash_kv({rev})")
        if not pending:
            for key in self.KEYS:
                self.assertEqual(store.history(key), model.revs.get(key, []), where)


class CompactStepProgressTests(SynchronousTestCase):

    def test_batch_limit_of_one_makes_progress(self) -> None:
        """compact_step(batch_limit=1) still finishes: each step drops at least one record."""
        from etcdd.mvcc.backend import Backend
        from etcdd.mvcc.store import KVStore
        backend = Backend(self.mktemp())
        self.addCleanup(backend.close)
        store = KVStore(backend)
        for value in (b"1", b"2", b"3", b"4"):
            with store.write_batch() as batch:
                txn = batch.txn()
                txn.put(b"k", value)
                txn.end()
        with store.write_batch() as batch:
            batch.schedule_compaction(5)
        steps = 0
        while not store.compact_step(batch_limit=1):
            steps += 1
            self.assertLess(steps, 20)
        self.assertEqual([kv.value for kv in store.range(b"k").kvs], [b"4"])
        self.assertEqual(len(store.history(b"k")), 1)
