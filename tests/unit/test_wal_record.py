"""WAL record framing (etcdd/wal/record.py) against etcd 3.4's encoder and decoder."""
from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from etcdd.proto import etcdserver_pb2, raft_pb2, record_pb2
from etcdd.wal.record import (
    CRC, ENTRY, MAX_RECORD_BYTES, METADATA, SNAPSHOT, STATE, CorruptRecordError,
    CRCMismatchError, Decoder, Record, RecordTooLargeError, TornTail, decode_frame_size,
    encode_frame_size, encode_record, encode_records, entry_record, metadata_record,
    snapshot_record, state_record)

# The first 672 bytes of member/wal/0000000000000000-0000000000000000.wal written by
# etcd 3.4.23 (single member "g", one `etcdctl put foo bar`); the rest of the 64 MB file
# is zeros. Records: crc(0), metadata, snapshot{0,0}, then entries and hard states.
GOLDEN_WAL = bytes.fromhex(
    "040000000000008408041000000000001f00000000000081080110c0eee05a1a16088df2f48ec1f7a6d7bd01"
    "10aaf4e5f599f3ebe7d101000d00000000000083080510b6f7e4581a04080010000000006f00000000000081"
    "080210e7a1be8d061a65080110011801225d08001000188df2f48ec1f7a6d7bd01224c7b226964223a313336"
    "36383033333135313137313930313730392c227065657255524c73223a5b22687474703a2f2f3132372e302e"
    "302e313a3233383031225d2c226e616d65223a2267227d00100000000000000008031087adcdfb0a1a060801"
    "1000180110000000000000000802109682fd8c0b1a060800100218029800000000000000080210f5e5929405"
    "1a8d01080010021803228401088188b2988ac1e8863912035055541a262f302f6d656d626572732f62646165"
    "3962626331316464333930642f6174747269627574657322347b226e616d65223a2267222c22636c69656e74"
    "55524c73223a5b22687474703a2f2f3132372e302e302e313a3233373931225d7d2800320038004800500058"
    "0060006800700078008001001900000000000087080310febbeda70e1a0f0802108df2f48ec1f7a6d7bd0118"
    "03000000000000004a000000000000860802109887c0461a410800100218042239088488b2988ac1e8863912"
    "035055541a0a2f302f76657273696f6e2205332e342e30280032003800480050005800600068007000780080"
    "01000000000000001900000000000087080310d9c1f0a90c1a0f0802108df2f48ec1f7a6d7bd011804000000"
    "000000002b00000000000085080210e1e0c1cb091a210800100218052219220a0a03666f6f1203626172a206"
    "0a088588b2988ac1e8863900000000001900000000000087080310a5f1e8d20c1a0f0802108df2f48ec1f7a6"
    "d7bd01180500000000000000")
GOLDEN_NODE_ID = 0xBDAE9BBC11DD390D
GOLDEN_CLUSTER_ID = 0xD1CFAF999EB97A2A
# (type, frame offset) of every record in GOLDEN_WAL.
GOLDEN_LAYOUT = [(CRC, 0), (METADATA, 16), (SNAPSHOT, 56), (ENTRY, 80), (STATE, 200),
                 (ENTRY, 224), (ENTRY, 248), (STATE, 408), (ENTRY, 448), (STATE, 536),
                 (ENTRY, 576), (STATE, 632)]


def decode_all(segments: list[bytes], prev_crc: int = 0) -> list[Record | TornTail]:
    """Every item the decoder yields for `segments`."""
    return list(Decoder(segments, prev_crc))


def random_records(rng: random.Random, count: int) -> list[tuple[int, bytes]]:
    """Random (type, data) records, none of them CRC records."""
    return [(rng.choice((METADATA, ENTRY, STATE, SNAPSHOT)),
             rng.randbytes(rng.randrange(0, 300))) for _ in range(count)]


def frames_of(records: list[tuple[int, bytes]], prev_crc: int = 0) -> tuple[list[bytes], int]:
    """Each record's frame, chained from `prev_crc`, and the final crc."""
    frames, crc = [], prev_crc
    for rec_type, data in records:
        frame, crc = encode_record(rec_type, data, crc)
        frames.append(frame)
    return frames, crc


class EncodeTests(SynchronousTestCase):
    """Frames built by encode_record."""

    def test_frame_size_for_every_length_mod_8(self) -> None:
        """A record of length n gets (8 - n % 8) % 8 pad bytes, flagged 0x80|pad in the top byte."""
        for n in range(1, 41):
            word, pad = encode_frame_size(n)
            self.assertEqual(pad, (8 - n % 8) % 8)
            self.assertEqual(word >> 56, 0x80 | pad if pad else 0)
            self.assertEqual(decode_frame_size(word), (n, pad))

    def test_padding_cases_round_trip(self) -> None:
        """Records of every marshaled length mod 8 frame to a multiple of 8 and decode back."""
        seen = set()
        for size in range(0, 16):
            data = bytes(range(1, size + 1))
            frame, crc = encode_record(ENTRY, data, 0)
            word = int.from_bytes(frame[:8], "little")
            record_bytes, pad = decode_frame_size(word)
            seen.add(record_bytes % 8)
            self.assertEqual(len(frame), 8 + record_bytes + pad)
            self.assertEqual(len(frame) % 8, 0)
            self.assertEqual(frame[8 + record_bytes:], b"\0" * pad)
            [rec] = decode_all([frame])
            self.assertEqual((rec.type, rec.data, rec.crc), (ENTRY, data, crc))
        self.assertEqual(seen, set(range(8)))

    def test_crc_record_carries_prev_crc(self) -> None:
        """A CRC record holds the running crc, has no data field and leaves the crc unchanged."""
        frame, crc = encode_record(CRC, b"", 0x12345678)
        self.assertEqual(crc, 0x12345678)
        rec = record_pb2.Record()
        rec.ParseFromString(frame[8:8 + decode_frame_size(int.from_bytes(frame[:8], "little"))[0]])
        self.assertEqual((rec.type, rec.crc, rec.HasField("data")), (CRC, 0x12345678, False))

    def test_crc_record_refuses_data(self) -> None:
        """A CRC record given data is a programming error."""
        self.assertRaises(ValueError, encode_record, CRC, b"x", 0)

    def test_zero_type_and_crc_are_marshaled(self) -> None:
        """type and crc are written even when zero, as gogo's nullable=false does."""
        frame, _ = encode_record(CRC, b"", 0)
        self.assertEqual(frame, bytes.fromhex("0400000000000084" "08041000" "00000000"))


class RoundTripTests(SynchronousTestCase):
    """Random records through encode and decode."""

    def test_random_records_round_trip(self) -> None:
        """Seeded random records decode to the same types and data with the same rolling crc."""
        for seed in range(20):
            rng = random.Random(seed)
            records = [(CRC, b"")] + random_records(rng, rng.randrange(1, 40))
            data, crc = encode_records(records, 0)
            decoder = Decoder([data])
            got = list(decoder)
            self.assertEqual([(r.type, r.data) for r in got], records, f"seed {seed}")
            self.assertEqual(decoder.crc, crc, f"seed {seed}")
            self.assertEqual(decoder.offset, len(data))

    def test_crc_carried_across_segments(self) -> None:
        """A second segment opening with a CRC record of the running crc continues the chain."""
        rng = random.Random(7)
        first, crc = encode_records([(CRC, b"")] + random_records(rng, 5), 0)
        second, end_crc = encode_records([(CRC, b"")] + random_records(rng, 5), crc)
        preallocated = first + b"\0" * 4096
        got = decode_all([preallocated, second])
        self.assertEqual([r.segment for r in got], [0] * 6 + [1] * 6)
        self.assertEqual(got[6].crc, crc)
        decoder = Decoder([preallocated, second + b"\0" * 64])
        items = list(decoder)
        self.assertEqual(items[-1], TornTail(1, len(second), "zero length word"))
        self.assertEqual(decoder.crc, end_crc)

    def test_wrong_crc_record_is_mismatch(self) -> None:
        """A segment's CRC record that disagrees with the running crc is a crc mismatch."""
        first, crc = encode_records([(CRC, b""), (ENTRY, b"abc")], 0)
        second, _ = encode_records([(CRC, b"")], crc ^ 1)
        e = self.assertRaises(CRCMismatchError, decode_all, [first, second])
        self.assertEqual((e.segment, e.offset), (1, 0))

    def test_fresh_decoder_adopts_crc_record(self) -> None:
        """A decoder starting at crc 0 (opening at a later segment) adopts the CRC record's crc."""
        data, _ = encode_records([(CRC, b""), (STATE, b"hs")], 0xDEADBEEF)
        self.assertEqual([r.type for r in decode_all([data])], [CRC, STATE])


class GoldenTests(SynchronousTestCase):
    """Bytes written by the real etcd 3.4.23."""

    def test_decodes_etcd_wal(self) -> None:
        """Our decoder reads etcd's records, crc chain included, to a clean end."""
        decoder = Decoder([GOLDEN_WAL])
        got = list(decoder)
        self.assertEqual([(r.type, r.offset) for r in got], GOLDEN_LAYOUT)
        self.assertEqual(got[0].crc, 0)
        self.assertEqual(decoder.offset, len(GOLDEN_WAL))
        self.assertEqual(got[-1].crc, 3394910373)
        self.assertEqual(decoder.crc, 3394910373)

    def test_preallocated_tail_is_zero_length_word(self) -> None:
        """The zeros of etcd's preallocated segment end the data at the last frame."""
        got = decode_all([GOLDEN_WAL + b"\0" * 1024])
        self.assertEqual(got[-1], TornTail(0, len(GOLDEN_WAL), "zero length word"))

    def test_reencodes_byte_identically(self) -> None:
        """Re-encoding etcd's records from their types and data reproduces every byte."""
        records = [(r.type, r.data) for r in decode_all([GOLDEN_WAL])]
        data, _ = encode_records(records, 0)
        self.assertEqual(data, GOLDEN_WAL)

    def test_helpers_match_etcd(self) -> None:
        """The record helpers marshal metadata, snapshot, entries and hard states as etcd does."""
        got = decode_all([GOLDEN_WAL])
        self.assertEqual(metadata_record(GOLDEN_NODE_ID, GOLDEN_CLUSTER_ID),
                         (METADATA, got[1].data))
        self.assertEqual(snapshot_record(0, 0), (SNAPSHOT, got[2].data))
        for rec in got[3:]:
            if rec.type == ENTRY:
                entry = raft_pb2.Entry()
                entry.ParseFromString(rec.data)
                self.assertEqual(entry_record(entry), (ENTRY, rec.data))
            else:
                hard_state = raft_pb2.HardState()
                hard_state.ParseFromString(rec.data)
                self.assertEqual(state_record(hard_state), (STATE, rec.data))

    def test_helpers_write_zero_fields(self) -> None:
        """An all-zero entry and hard state still marshal their gogo non-nullable fields."""
        self.assertEqual(entry_record(raft_pb2.Entry()), (ENTRY, bytes.fromhex("080010001800")))
        self.assertEqual(state_record(raft_pb2.HardState()),
                         (STATE, bytes.fromhex("080010001800")))
        meta = etcdserver_pb2.Metadata()
        meta.ParseFromString(metadata_record(1, 2)[1])
        self.assertEqual((meta.NodeID, meta.ClusterID), (1, 2))


class TornTailTests(SynchronousTestCase):
    """The end of the last segment after a crash."""

    def test_truncated_last_frame_at_every_offset(self) -> None:
        """Cutting the last frame at any byte reports TornTail at its start after all earlier records."""
        start = GOLDEN_LAYOUT[-1][1]
        for cut in range(start + 1, len(GOLDEN_WAL)):
            got = decode_all([GOLDEN_WAL[:cut]])
            self.assertEqual([(r.type, r.offset) for r in got[:-1]], GOLDEN_LAYOUT[:-1])
            self.assertEqual(got[-1], TornTail(0, start, "truncated frame"), f"cut {cut}")
        self.assertEqual(len(decode_all([GOLDEN_WAL[:start]])), len(GOLDEN_LAYOUT) - 1)

    def test_zeroed_last_frame_body_is_torn(self) -> None:
        """A last frame whose length word landed but whose body is zeros is a torn write."""
        start = GOLDEN_LAYOUT[-1][1]
        torn = GOLDEN_WAL[:start + 8] + b"\0" * (len(GOLDEN_WAL) - start - 8) + b"\0" * 512
        got = decode_all([torn])
        self.assertEqual(got[-1], TornTail(0, start, "zero sector"))
        self.assertEqual(len(got), len(GOLDEN_LAYOUT))

    def test_zero_sector_inside_large_last_frame_is_torn(self) -> None:
        """A large last frame with one all-zero 512-byte sector is a torn write, etcd isTornEntry."""
        head, crc = encode_records([(CRC, b""), (ENTRY, b"a" * 100)], 0)
        last, _ = encode_record(ENTRY, bytes(range(1, 256)) * 8, crc)
        data = bytearray(head + last)
        sector = (len(head) // 512 + 2) * 512
        data[sector:sector + 512] = b"\0" * 512
        got = decode_all([bytes(data)])
        self.assertEqual(got[-1], TornTail(0, len(head), "zero sector"))
        self.assertEqual(len(got), 3)

    def test_zero_sector_in_earlier_segment_is_corruption(self) -> None:
        """The same zeroed sector in a segment that is not the last is an error, not a tail."""
        head, crc = encode_records([(CRC, b"")], 0)
        last, crc = encode_record(ENTRY, bytes(range(1, 256)) * 8, crc)
        data = bytearray(head + last)
        data[1024:1536] = b"\0" * 512
        second, _ = encode_records([(CRC, b"")], crc)
        self.assertRaises((CRCMismatchError, CorruptRecordError), decode_all, [bytes(data), second])

    def test_truncated_frame_in_earlier_segment_is_corruption(self) -> None:
        """A segment that ends mid-frame but is followed by another segment is corrupt."""
        first, crc = encode_records([(CRC, b""), (ENTRY, b"x" * 40)], 0)
        second, _ = encode_records([(CRC, b"")], crc)
        e = self.assertRaises(CorruptRecordError, decode_all, [first[:-3], second])
        self.assertEqual((e.segment, e.offset), (0, 16))


class CorruptionTests(SynchronousTestCase):
    """Damage that must stop the member rather than be cut."""

    def test_flipped_bit_in_middle_names_offset(self) -> None:
        """A flipped bit in any data byte of a middle record is a crc mismatch at that frame."""
        kind, start = GOLDEN_LAYOUT[6]
        end = GOLDEN_LAYOUT[7][1]
        for pos in range(end - 40, end - 8):
            data = bytearray(GOLDEN_WAL)
            data[pos] ^= 0x10
            e = self.assertRaises(CRCMismatchError, decode_all, [bytes(data)])
            self.assertEqual((e.segment, e.offset), (0, start), f"byte {pos}")
            self.assertIn(f"offset {start}", str(e))

    def test_flipped_bit_in_last_frame_is_not_torn(self) -> None:
        """A flipped bit in the last frame, with no zero sector, is corruption, not a torn tail."""
        data = bytearray(GOLDEN_WAL)
        data[-10] ^= 0x01
        e = self.assertRaises(CRCMismatchError, decode_all, [bytes(data)])
        self.assertEqual(e.offset, GOLDEN_LAYOUT[-1][1])

    def test_garbage_frame_before_valid_data(self) -> None:
        """A garbled frame followed by valid frames is an error naming the garbled frame."""
        good, crc = encode_records([(CRC, b""), (ENTRY, b"ok")], 0)
        bad = (16).to_bytes(8, "little") + b"\xff" * 16
        after, _ = encode_record(ENTRY, b"later", crc)
        e = self.assertRaises(CorruptRecordError, decode_all, [good + bad + after])
        self.assertEqual(e.offset, len(good))

    def test_oversize_length_is_refused(self) -> None:
        """A length word of 10 MiB or more is refused before reading the record."""
        good, _ = encode_records([(CRC, b"")], 0)
        word = MAX_RECORD_BYTES.to_bytes(8, "little")
        e = self.assertRaises(RecordTooLargeError, decode_all, [good + word + b"\0" * 64])
        self.assertEqual(e.offset, len(good))
        near = (MAX_RECORD_BYTES - 8).to_bytes(8, "little")
        self.assertEqual(decode_all([good + near])[-1], TornTail(0, len(good), "truncated frame"))

    def test_empty_input_is_clean(self) -> None:
        """No segments, or an empty one, decode to nothing."""
        self.assertEqual(decode_all([]), [])
        self.assertEqual(decode_all([b""]), [])
