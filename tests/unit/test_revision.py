"""Revision keys (etcd 3.4 `mvcc/revision.go`) and the key index encodings and rules
(`etcdd/mvcc/keyindex.py`)."""
from __future__ import annotations

import hashlib
import random

from twisted.trial.unittest import SynchronousTestCase

from etcdd.mvcc.keyindex import (LONG_INDEX_KEY_LEN, SHORT_KEY_MAX, compaction_drops,
                                 format_generations, generations, index_key, index_probe,
                                 index_value, index_value_of, is_long_index_key,
                                 is_tombstone_value, record_key, rev_key_of,
                                 revision_of_value)
from etcdd.mvcc.revision import (Revision, bytes_to_rev, is_tombstone, main_of,
                                 main_rev_bytes, rev_to_bytes)
from etcdd.proto.kv_pb2 import KeyValue


def R(text: str) -> Revision:
    """'6t' -> Revision(6, 0, tombstone); '5.1' -> Revision(5, 1)."""
    tomb = text.endswith("t")
    main, _, sub = text.rstrip("t").partition(".")
    return Revision(int(main), int(sub or 0), tomb)


def values(*texts: str) -> list[bytes]:
    return [index_value(R(t).to_bytes()) for t in texts]


class RevisionBytesTests(SynchronousTestCase):

    def test_layout_is_etcds(self) -> None:
        """A revision key is 8-byte big-endian main, '_', 8-byte big-endian sub."""
        self.assertEqual(rev_to_bytes(5, 1),
                         b"\x00\x00\x00\x00\x00\x00\x00\x05_\x00\x00\x00\x00\x00\x00\x00\x01")
        self.assertEqual(rev_to_bytes(0x0102030405060708, 0)[:8],
                         bytes([1, 2, 3, 4, 5, 6, 7, 8]))

    def test_tombstone_mark(self) -> None:
        """A tombstone's key is the revision key followed by b't' (18 bytes)."""
        b = rev_to_bytes(7, 2, tombstone=True)
        self.assertEqual(b, rev_to_bytes(7, 2) + b"t")
        self.assertTrue(is_tombstone(b))
        self.assertFalse(is_tombstone(rev_to_bytes(7, 2)))
        self.assertEqual(bytes_to_rev(b), Revision(7, 2, True))

    def test_round_trip(self) -> None:
        """bytes_to_rev inverts rev_to_bytes for any main, sub and mark."""
        rnd = random.Random(1)
        for _ in range(500):
            r = Revision(rnd.randrange(1 << 63), rnd.randrange(1 << 63), rnd.random() < 0.5)
            self.assertEqual(bytes_to_rev(r.to_bytes()), r)
            self.assertEqual(main_of(r.to_bytes()), r.main)

    def test_byte_order_is_revision_order(self) -> None:
        """Sorting revision keys sorts revisions (main, then sub)."""
        rnd = random.Random(2)
        revs = [Revision(rnd.randrange(1, 300), rnd.randrange(0, 300)) for _ in range(300)]
        revs = list(set(revs))
        self.assertEqual(sorted(revs), [bytes_to_rev(b) for b in
                                        sorted(r.to_bytes() for r in revs)])

    def test_bad_bytes_refused(self) -> None:
        """Keys of the wrong length, mark or separator raise ValueError."""
        for bad in (b"", b"x" * 17, rev_to_bytes(1)[:16], rev_to_bytes(1) + b"x",
                    rev_to_bytes(1) + b"tt"):
            self.assertRaises(ValueError, bytes_to_rev, bad)
        self.assertRaises(ValueError, rev_to_bytes, -1)
        self.assertRaises(ValueError, rev_to_bytes, 1 << 63)

    def test_meta_compact_marks(self) -> None:
        """scheduledCompactRev/finishedCompactRev are stored as revision (main, 0)."""
        self.assertEqual(main_rev_bytes(9), rev_to_bytes(9, 0))


class IndexEncodingTests(SynchronousTestCase):

    def test_index_values_sort_newest_first(self) -> None:
        """Index values ascend as revisions descend; a tombstone keeps its place."""
        revs = [R(t) for t in ("2", "3.0", "3.1", "4t", "9", "10.5t", "300")]
        vals = sorted(index_value(r.to_bytes()) for r in revs)
        self.assertEqual([revision_of_value(v) for v in vals], sorted(revs, reverse=True))

    def test_value_round_trip(self) -> None:
        """rev_key_of inverts index_value; the tombstone shows in the value's length."""
        for r in (R("5"), R("5.3t"), R("123456789.7")):
            v = index_value_of(r.main, r.sub, r.tombstone)
            self.assertEqual(rev_key_of(v), r.to_bytes())
            self.assertEqual(is_tombstone_value(v), r.tombstone)

    def test_probe_finds_newest_at_or_below(self) -> None:
        """The first value >= index_probe(r) is the newest revision with main <= r."""
        history = values("2", "4", "4.1", "6t", "8")
        vals = sorted(history)
        cases = {1: None, 2: "2", 3: "2", 4: "4.1", 5: "4.1", 6: "6t", 7: "6t", 8: "8", 99: "8"}
        for at, want in cases.items():
            found = next((v for v in vals if v >= index_probe(at)), None)
            self.assertEqual(None if found is None else revision_of_value(found),
                             None if want is None else R(want), f"at {at}")

    def test_short_keys_are_themselves(self) -> None:
        """Keys up to SHORT_KEY_MAX bytes are their own index key."""
        for key in (b"a", b"\x00", b"k" * SHORT_KEY_MAX):
            self.assertEqual(index_key(key), key)
            self.assertFalse(is_long_index_key(key))

    def test_long_keys_are_prefix_and_digest(self) -> None:
        """A longer key becomes its prefix plus SHA-256: 511 bytes, an LMDB key."""
        key = b"p" * 2000
        ik = index_key(key)
        self.assertEqual(len(ik), LONG_INDEX_KEY_LEN)
        self.assertEqual(LONG_INDEX_KEY_LEN, 511)
        self.assertEqual(ik, key[:SHORT_KEY_MAX] + hashlib.sha256(key).digest())
        self.assertTrue(is_long_index_key(ik))

    def test_record_key_reads_field_one(self) -> None:
        """record_key returns the key of a marshaled KeyValue, long or short."""
        for key in (b"a", b"k" * 200, b"x" * 100000):
            kv = KeyValue(key=key, create_revision=2, mod_revision=3, version=1, value=b"v")
            self.assertEqual(record_key(kv.SerializeToString()), key)
            self.assertEqual(record_key(KeyValue(key=key).SerializeToString()), key)
        self.assertRaises(ValueError, record_key, b"")
        self.assertRaises(ValueError, record_key, KeyValue(value=b"v").SerializeToString())


class CompactionRuleTests(SynchronousTestCase):
    """Which revisions at or below the compaction revision go (etcd 3.4 keyIndex.compact).
    Each case: a key's revisions at or below the compaction, newest first -> dropped,
    oldest first."""

    CASES = [
        # put@2, put@4, delete@6, put@8; compact(5): [2, 4, 6(t)], [8] -> [4, 6(t)], [8]
        (("4", "2"), ("2",)),
        # compact(6): the generation ended at 6 goes whole -> [8]
        (("6t", "4", "2"), ("2", "4", "6t")),
        # compact(7): same
        (("6t", "4", "2"), ("2", "4", "6t")),
        # compact(1): nothing at or below
        ((), ()),
        # only the newest survives, subs included
        (("5.1", "5.0", "3"), ("3", "5.0")),
        # a single revision is its own newest
        (("9",), ()),
        # a lone tombstone (a half-finished compaction left it) goes
        (("6t",), ("6t",)),
    ]

    def test_cases(self) -> None:
        """Every table case drops exactly what etcd drops, oldest first."""
        for below, dropped in self.CASES:
            self.assertEqual(compaction_drops(values(*below)), values(*dropped), below)


class GenerationDiagramTests(SynchronousTestCase):

    def test_generations_split_at_tombstones(self) -> None:
        """put@2, put@4, delete@6, put@8 gives generations [2, 4, 6(t)], [8]."""
        history = [R("2"), R("4"), R("6t"), R("8")]
        self.assertEqual(generations(history), [[R("2"), R("4"), R("6t")], [R("8")]])
        self.assertEqual(format_generations(history), "[2, 4, 6(t)], [8]")

    def test_subs_are_drawn(self) -> None:
        """Sub revisions show as main.sub."""
        self.assertEqual(format_generations([R("3.1"), R("4.2t")]), "[3.1, 4.2(t)]")
        self.assertEqual(format_generations([]), "")
