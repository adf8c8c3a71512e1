"""WAL record framing: records to bytes and bytes back to validated records.

Core (pure). Byte-compatible with etcd 3.4 `wal/encoder.go` and `wal/decoder.go`; the
record checks of `wal/wal.go ReadAll` (CRC records) are done here too, so the shell only
reads files, cuts a torn tail and interprets record data.

A frame is an 8-byte little-endian length word, then the marshaled `walpb.Record`, then
zero padding to a multiple of 8. When padding is present the word's top byte is
``0x80 | pad_bytes``. A 13-byte record ``08 05 10 b6 f7 e4 58 1a 04 08 00 10 00`` frames as::

    0d 00 00 00 00 00 00 83 | 08 05 10 b6 f7 e4 58 1a 04 08 00 10 00 | 00 00 00

Each record's ``crc`` is CRC-32 Castagnoli rolled over the ``data`` of every record so far
(``crc32c(data, prev_crc)``); a CRC record (type 4, no data) restates the running crc at the
start of each segment file (0 in the first file).
"""
from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from crc32c import crc32c
from google.protobuf.message import DecodeError

from etcdd.proto import etcdserver_pb2, raft_pb2, record_pb2

METADATA = 1
ENTRY = 2
STATE = 3
CRC = 4
SNAPSHOT = 5

FRAME_SIZE_BYTES = 8                              # etcd decoder.go frameSizeBytes
MIN_SECTOR_BYTES = 512                            # etcd decoder.go minSectorSize
MAX_RECORD_BYTES = 10 * 1024 * 1024               # etcd decoder.go maxWALEntrySizeLimit

_LENGTH = struct.Struct("<Q")
_RECORD_BYTES_MASK = (1 << 56) - 1


class WALRecordError(Exception):
    """Segment bytes that are not a valid WAL; names the segment and offset of the frame."""

    def __init__(self, message: str, segment: int, offset: int) -> None:
        super().__init__(f"{message} (segment {segment}, offset {offset})")
        self.reason = message
        self.segment = segment
        self.offset = offset


class CRCMismatchError(WALRecordError):
    """A record whose crc is not the running CRC-32C of the WAL at that point."""


class RecordTooLargeError(WALRecordError):
    """A length word announcing a record of 10 MiB or more."""


class CorruptRecordError(WALRecordError):
    """A frame that cannot be a torn write: unparsable record or truncated mid-WAL."""


@dataclass(frozen=True, slots=True)
class Record:
    """One decoded record; `offset` is where its frame starts in segment `segment`."""

    type: int
    crc: int
    data: bytes
    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class TornTail:
    """Valid data of the last segment ends at `offset`; the shell cuts or zeroes from there.

    `reason` is one of "zero length word" (preallocated space, the usual end), "truncated
    frame" or "zero sector" (a torn write, etcd `isTornEntry`).
    """

    segment: int
    offset: int
    reason: str


def encode_frame_size(data_bytes: int) -> tuple[int, int]:
    """Return (length word, pad bytes) for a marshaled record, as etcd encodeFrameSize."""
    pad_bytes = (8 - data_bytes % 8) % 8
    length_word = data_bytes
    if pad_bytes:
        length_word |= (0x80 | pad_bytes) << 56
    return length_word, pad_bytes


def decode_frame_size(length_word: int) -> tuple[int, int]:
    """Return (record bytes, pad bytes) from a length word, as etcd decodeFrameSize."""
    record_bytes = length_word & _RECORD_BYTES_MASK
    # NB: padding counts only when the word's sign bit is set (etcd: lenField < 0).
    pad_bytes = (length_word >> 56) & 0x7 if length_word >> 63 else 0
    return record_bytes, pad_bytes


def marshal_record(rec_type: int, crc: int, data: bytes | None) -> bytes:
    """Marshal a walpb.Record as gogo does: type and crc always, data when not None."""
    rec = record_pb2.Record(type=rec_type, crc=crc)
    if data is not None:
        rec.data = data
    return rec.SerializeToString()


def encode_record(rec_type: int, data: bytes, prev_crc: int) -> tuple[bytes, int]:
    """Frame one record and return (frame bytes, new running crc).

    A CRC record carries `prev_crc` and no data (etcd wal.go saveCrc: `Record{Type: crcType,
    Crc: prevCrc}`, nil data, so gogo omits field 3); raises ValueError if given data.
    """
    if rec_type == CRC:
        if data:
            raise ValueError("a CRC record carries no data")
        crc, payload = prev_crc, marshal_record(CRC, prev_crc, None)
    else:
        crc = crc32c(data, prev_crc)
        payload = marshal_record(rec_type, crc, data)
    length_word, pad_bytes = encode_frame_size(len(payload))
    return _LENGTH.pack(length_word) + payload + b"\0" * pad_bytes, crc


def encode_records(records: Sequence[tuple[int, bytes]], prev_crc: int) -> tuple[bytes, int]:
    """Frame (type, data) records back to back; return (bytes, running crc after them)."""
    frames = []
    crc = prev_crc
    for rec_type, data in records:
        frame, crc = encode_record(rec_type, data, crc)
        frames.append(frame)
    return b"".join(frames), crc


def metadata_record(node_id: int, cluster_id: int) -> tuple[int, bytes]:
    """Return (METADATA, marshaled etcdserverpb.Metadata{NodeID, ClusterID})."""
    meta = etcdserver_pb2.Metadata(NodeID=node_id, ClusterID=cluster_id)
    return METADATA, meta.SerializeToString()


def entry_record(entry: raft_pb2.Entry) -> tuple[int, bytes]:
    """Return (ENTRY, marshaled raftpb.Entry) with Type/Term/Index always present, as gogo."""
    out = raft_pb2.Entry(Type=entry.Type, Term=entry.Term, Index=entry.Index)
    if entry.HasField("Data"):
        out.Data = entry.Data
    return ENTRY, out.SerializeToString()


def state_record(hard_state: raft_pb2.HardState) -> tuple[int, bytes]:
    """Return (STATE, marshaled raftpb.HardState) with term/vote/commit always present."""
    out = raft_pb2.HardState(term=hard_state.term, vote=hard_state.vote,
                             commit=hard_state.commit)
    return STATE, out.SerializeToString()


def snapshot_record(index: int, term: int) -> tuple[int, bytes]:
    """Return (SNAPSHOT, marshaled walpb.Snapshot{index, term})."""
    return SNAPSHOT, record_pb2.Snapshot(index=index, term=term).SerializeToString()


def _has_zero_sector(data: bytes, file_offset: int) -> bool:
    """Say whether any 512-byte-sector-aligned chunk of `data` is all zeros (isTornEntry).

    `file_offset` is where `data` starts in the file; chunks split on sector boundaries,
    so the first and last chunks may be short.
    """
    pos = 0
    while pos < len(data):
        chunk_len = min(MIN_SECTOR_BYTES - (file_offset + pos) % MIN_SECTOR_BYTES,
                        len(data) - pos)
        if not any(data[pos:pos + chunk_len]):
            return True
        pos += chunk_len
    return False


class Decoder:
    """Decode the records of one or more consecutive segment files, checking the crc chain.

    Invariants: `offset` is the end of the last valid frame in segment `segment`; `crc` is
    the running CRC-32C after the last valid record. Torn tails are recognised only in the
    last segment (etcd isTornEntry: `len(d.brs) != 1` returns false); an earlier segment
    ends at EOF or a zero length word, and anything else wrong in it is an error.
    """

    def __init__(self, segments: Sequence[bytes], prev_crc: int = 0) -> None:
        self._segments = [memoryview(s) for s in segments]
        self.segment = 0
        self.offset = 0
        self.crc = prev_crc
        self._done = not self._segments

    def __iter__(self) -> Iterator[Record | TornTail]:
        """Yield each record, then a TornTail if the data ends in one."""
        while True:
            item = self.decode()
            if item is None:
                return
            yield item
            if isinstance(item, TornTail):
                return

    def decode(self) -> Record | TornTail | None:
        """Return the next record, a TornTail (then None), or None at a clean end.

        Raises CRCMismatchError, RecordTooLargeError or CorruptRecordError naming the frame.
        """
        while not self._done:
            item = self._decode_in_segment()
            if item is not None:
                return item
        return None

    def _is_last(self) -> bool:
        return self.segment == len(self._segments) - 1

    def _end_segment(self, reason: str) -> TornTail | None:
        """Move past the current segment; at the last one report where valid data ends."""
        if self._is_last():
            self._done = True
            return None if reason == "eof" else TornTail(self.segment, self.offset, reason)
        self.segment += 1
        self.offset = 0
        return None

    def _decode_in_segment(self) -> Record | TornTail | None:
        buf, start = self._segments[self.segment], self.offset
        remaining = len(buf) - start
        if remaining == 0:
            return self._end_segment("eof")
        if remaining < FRAME_SIZE_BYTES:
            return self._torn_or_corrupt("truncated frame", "truncated length word")
        (length_word,) = _LENGTH.unpack_from(buf, start)
        if length_word == 0:
            return self._end_segment("zero length word")
        record_bytes, pad_bytes = decode_frame_size(length_word)
        if record_bytes >= MAX_RECORD_BYTES - pad_bytes:
            raise RecordTooLargeError(
                f"wal: max entry size limit exceeded: record of {record_bytes} bytes",
                self.segment, start)
        body_start = start + FRAME_SIZE_BYTES
        end = body_start + record_bytes + pad_bytes
        if end > len(buf):
            return self._torn_or_corrupt("truncated frame", "truncated frame")
        record = self._parse(buf[body_start:end], record_bytes)
        if record is None:                        # _parse saw a torn write, last segment only
            self._done = True
            return TornTail(self.segment, start, "zero sector")
        self.offset = end
        return record

    def _torn_or_corrupt(self, torn_reason: str, error: str) -> TornTail:
        """Report a TornTail in the last segment; mid-WAL the same damage is corruption."""
        if not self._is_last():
            raise CorruptRecordError(f"wal: {error}", self.segment, self.offset)
        self._done = True
        return TornTail(self.segment, self.offset, torn_reason)

    def _parse(self, framed: memoryview, record_bytes: int) -> Record | None:
        """Parse and check one frame body; None means a torn write (all-zero sector).

        Raises CorruptRecordError or CRCMismatchError when the frame is bad but not torn.
        """
        rec = record_pb2.Record()
        try:
            rec.ParseFromString(framed[:record_bytes].tobytes())
        except DecodeError as e:
            if self._is_torn(framed):
                return None
            raise CorruptRecordError(f"wal: unparsable record: {e}",
                                     self.segment, self.offset) from e
        if rec.type == CRC:
            # etcd wal.go ReadAll: a fresh decoder (crc 0) adopts the record's crc unchecked.
            if self.crc != 0 and rec.crc != self.crc:
                raise CRCMismatchError("wal: crc mismatch", self.segment, self.offset)
            self.crc = rec.crc
        else:
            crc = crc32c(rec.data, self.crc)
            if rec.crc != crc:
                if self._is_torn(framed):
                    return None
                raise CRCMismatchError("wal: crc mismatch", self.segment, self.offset)
            self.crc = crc
        return Record(rec.type, rec.crc, rec.data, self.segment, self.offset)

    def _is_torn(self, framed: memoryview) -> bool:
        return self._is_last() and _has_zero_sector(
            framed, self.offset + FRAME_SIZE_BYTES)
