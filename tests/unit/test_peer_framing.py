"""The peer wire format (etcdd.peer.framing): frames, HELLO, the bounded decoder."""
from __future__ import annotations

from twisted.python.compat import iterbytes
from twisted.trial.unittest import SynchronousTestCase

from etcdd.peer.framing import (HELLO_BYTES, MAX_ERROR_BYTES, SNAP_CHUNK_BYTES, FrameDecoder,
                                FrameKind, FrameTooLargeError, Hello, PeerFrameError,
                                StreamKind, TruncatedFrameError, UnknownFrameKindError,
                                decode_call, decode_error, decode_hello, decode_message,
                                decode_reply, encode_call, encode_error, encode_frame,
                                encode_hello, encode_reply, encode_reply_error, frame_header,
                                reply_message)
from etcdd.proto import raft_pb2


def message(to: int = 2, sender: int = 1, index: int = 5) -> raft_pb2.Message:
    m = raft_pb2.Message(type=raft_pb2.MsgApp, to=to, term=3, index=index, commit=4)
    setattr(m, "from", sender)
    m.entries.add(Term=3, Index=index + 1, Data=b"put k v")
    return m


class EncodeTests(SynchronousTestCase):

    def test_frame_is_kind_length_payload(self) -> None:
        """A frame is a kind byte, a 4-byte big-endian length, then the payload."""
        self.assertEqual(encode_frame(FrameKind.MSG, b"ab"), b"\x02\x00\x00\x00\x02ab")
        self.assertEqual(encode_frame(FrameKind.ACK), b"\x06\x00\x00\x00\x00")
        self.assertEqual(frame_header(FrameKind.SNAP_CHUNK, 70000), b"\x04\x00\x01\x11\x70")

    def test_hello_round_trip(self) -> None:
        """A HELLO decodes to what was encoded, 64-bit IDs included."""
        hello = Hello(cluster_id=2**64 - 1, from_id=0x8e9e05c52164694d, to_id=1,
                      stream=StreamKind.SNAP)
        frame = encode_hello(hello)
        self.assertEqual(frame[:5], frame_header(FrameKind.HELLO, HELLO_BYTES))
        self.assertEqual(decode_hello(frame[5:]), hello)

    def test_hello_reply_swaps_roles(self) -> None:
        """The accepting side answers with from and to swapped, cluster and stream kept."""
        self.assertEqual(Hello(7, 1, 2, StreamKind.MSG).reply(), Hello(7, 2, 1, StreamKind.MSG))

    def test_bad_hello_refused(self) -> None:
        """A HELLO of the wrong size, protocol version or stream kind is bad input."""
        payload = encode_hello(Hello(7, 1, 2, StreamKind.MSG))[5:]
        cases = {
            payload[:-1]: "HELLO of 25 bytes, want 26",
            b"\x02" + payload[1:]: "unsupported peer protocol version 2 "
                                   "(this member speaks 1)",
            payload[:-1] + b"\x09": "unknown stream kind 9",
        }
        for bad, text in cases.items():
            e = self.assertRaises(PeerFrameError, decode_hello, bad)
            self.assertEqual(str(e), text)

    def test_message_round_trip(self) -> None:
        """A raft Message survives encode and decode, `from` included."""
        m = message()
        self.assertEqual(decode_message(m.SerializeToString()), m)
        self.assertEqual(getattr(decode_message(m.SerializeToString()), "from"), 1)

    def test_unparsable_message(self) -> None:
        """Bytes that are no Message raise PeerFrameError naming protobuf's reason."""
        e = self.assertRaises(PeerFrameError, decode_message, b"\xff\xff\xff")
        self.assertEqual(str(e), "unparsable raft message: Error parsing message with type "
                                 "'raftpb.Message': Wire format was corrupt")

    def test_error_reason_is_cut_to_bound(self) -> None:
        """An ERROR reason is sent as utf-8, cut to MAX_ERROR_BYTES; a cut character
        decodes as U+FFFD."""
        frame = encode_error("é" * MAX_ERROR_BYTES)
        self.assertEqual(frame[:5], frame_header(FrameKind.ERROR, MAX_ERROR_BYTES))
        self.assertEqual(decode_error(frame[5:]), "é" * (MAX_ERROR_BYTES // 2))
        self.assertEqual(decode_error(b"caf\xc3"), "caf\ufffd")
        self.assertEqual(decode_error(encode_error("cluster ID mismatch")[5:]),
                         "cluster ID mismatch")


class CallFrameTests(SynchronousTestCase):
    """CALL and REPLY payloads: call id, then method name or status, then the bytes."""

    def test_call_bytes(self) -> None:
        """A CALL is the call id (u64), the method's length (u8) and ascii, the request."""
        self.assertEqual(encode_call(7, "renew", b"\x08\x2a"),
                         b"\x08\x00\x00\x00\x10" + b"\x00" * 7 + b"\x07\x05renew\x08\x2a")

    def test_call_round_trip(self) -> None:
        """A CALL decodes to what was encoded: 64-bit id, longest method, empty request."""
        for call_id, method, request in ((2**64 - 1, "m" * 255, b""), (1, "lease/renew",
                                                                        b"\0" * 300)):
            frame = encode_call(call_id, method, request)
            self.assertEqual(frame[:5], frame_header(FrameKind.CALL, len(frame) - 5))
            self.assertEqual(decode_call(frame[5:]), (call_id, method, request))

    def test_bad_method_name_not_encoded(self) -> None:
        """A method name that is empty, over 255 bytes or not ascii is a ValueError."""
        for method in ("", "m" * 256, "renouvelé"):
            self.assertRaises(ValueError, encode_call, 1, method, b"")

    def test_bad_call_refused(self) -> None:
        """A CALL too short, with no method name, one overrunning the payload or one that
        is not ascii is bad input."""
        head = b"\x00" * 7 + b"\x03"
        cases = {
            head: "CALL of 8 bytes, want at least 9",
            head + b"\x00": "CALL 3 without a method name",
            head + b"\x05ren": "CALL 3 method name of 5 bytes overruns its 12-byte payload",
            head + b"\x02r\xe9": "CALL 3 method name is not ascii",
        }
        for bad, text in cases.items():
            e = self.assertRaises(PeerFrameError, decode_call, bad)
            self.assertEqual(str(e), text)

    def test_reply_round_trip(self) -> None:
        """An ok REPLY carries the response; a failed one its status and utf-8 message."""
        ok = encode_reply(2**64 - 1, b"\x08\x2a\x10\x05")
        self.assertEqual(ok, b"\x09\x00\x00\x00\x0d" + b"\xff" * 8 + b"\x00\x08\x2a\x10\x05")
        self.assertEqual(decode_reply(ok[5:]), (2**64 - 1, 0, b"\x08\x2a\x10\x05"))
        failed = encode_reply_error(7, 5, "etcdserver: requested lease not found")
        call_id, status, body = decode_reply(failed[5:])
        self.assertEqual((call_id, status, reply_message(body)),
                         (7, 5, "etcdserver: requested lease not found"))

    def test_reply_message_cut_to_bound(self) -> None:
        """A failed REPLY's message is cut to MAX_ERROR_BYTES of utf-8, as an ERROR's is."""
        _, _, body = decode_reply(encode_reply_error(1, 2, "é" * MAX_ERROR_BYTES)[5:])
        self.assertEqual(len(body), MAX_ERROR_BYTES)
        self.assertEqual(reply_message(body), "é" * (MAX_ERROR_BYTES // 2))

    def test_reply_error_needs_error_status(self) -> None:
        """A failed REPLY's status is a gRPC error code, 1 to 16."""
        for status in (0, 17):
            self.assertRaises(ValueError, encode_reply_error, 1, status, "x")

    def test_bad_reply_refused(self) -> None:
        """A REPLY too short for its head, or with a status no gRPC code has, is bad input."""
        cases = {
            b"\x00" * 8: "REPLY of 8 bytes, want at least 9",
            b"\x00" * 7 + b"\x04\x11oops": "REPLY 4 with unknown status 17",
        }
        for bad, text in cases.items():
            e = self.assertRaises(PeerFrameError, decode_reply, bad)
            self.assertEqual(str(e), text)


class DecoderTests(SynchronousTestCase):

    def test_frames_in_one_chunk(self) -> None:
        """Several complete frames in one chunk come out in order, empty ones included."""
        d = FrameDecoder(100)
        data = (encode_frame(FrameKind.MSG, b"a") + encode_frame(FrameKind.ACK)
                + encode_frame(FrameKind.MSG, b"bc"))
        self.assertEqual(d.feed(data), [(2, b"a"), (6, b""), (2, b"bc")])
        self.assertEqual(d.buffered_bytes, 0)
        d.end_of_stream()

    def test_one_byte_at_a_time(self) -> None:
        """Fed one byte at a time, each frame appears exactly when its last byte arrives."""
        d = FrameDecoder(100)
        data = (encode_hello(Hello(7, 1, 2, StreamKind.MSG)) + encode_frame(FrameKind.ACK)
                + encode_frame(FrameKind.MSG, b"world!"))
        out = []
        for i, byte in enumerate(iterbytes(data)):
            for kind, payload in d.feed(byte):
                out.append((i, kind, len(payload)))
        self.assertEqual(out, [(30, 1, 26), (35, 6, 0), (46, 2, 6)])
        self.assertEqual(d.buffered_bytes, 0)
        d.end_of_stream()

    def test_large_frame_across_chunks(self) -> None:
        """A frame split over many chunks, the next one starting mid-chunk, reassembles."""
        payload = bytes(range(256)) * 400
        data = encode_frame(FrameKind.MSG, payload) + encode_frame(FrameKind.MSG, b"next")
        d = FrameDecoder(len(payload))
        frames = []
        for start in range(0, len(data), 1000):
            frames.extend(d.feed(data[start:start + 1000]))
            self.assertLessEqual(d.buffered_bytes, len(payload) + 5)
        self.assertEqual(frames, [(2, payload), (2, b"next")])

    def test_length_over_max_refused_from_header(self) -> None:
        """A MSG announcing more than max_frame_bytes is refused from its 5-byte header;
        frames before it are still returned and nothing of it is buffered."""
        d = FrameDecoder(1 << 20)
        data = encode_frame(FrameKind.MSG, b"ok") + frame_header(FrameKind.MSG, 100 << 20)
        self.assertEqual(d.feed(data), [(2, b"ok")])
        self.assertIsInstance(d.error, FrameTooLargeError)
        self.assertEqual(str(d.error),
                         "MSG frame of 104857600 bytes is over the limit of 1048576 bytes")
        self.assertEqual(d.buffered_bytes, 0)
        self.assertRaises(FrameTooLargeError, d.feed, b"more")

    def test_header_refused_when_split(self) -> None:
        """An oversize header fed one byte at a time is refused at its fifth byte."""
        d = FrameDecoder(10)
        header = frame_header(FrameKind.SNAP_HEADER, 11)
        for byte in iterbytes(header[:4]):
            self.assertEqual(d.feed(byte), [])
        self.assertIsNone(d.error)
        self.assertEqual(d.feed(header[4:]), [])
        self.assertIsInstance(d.error, FrameTooLargeError)

    def test_max_is_inclusive(self) -> None:
        """A MSG, CALL or REPLY of exactly max_frame_bytes is accepted, one more refused."""
        for kind in (FrameKind.MSG, FrameKind.CALL, FrameKind.REPLY):
            self.assertEqual(FrameDecoder(4).feed(encode_frame(kind, b"1234")),
                             [(kind, b"1234")])
            d = FrameDecoder(4)
            d.feed(encode_frame(kind, b"12345"))
            self.assertIsInstance(d.error, FrameTooLargeError)
            self.assertEqual(d.error.limit, 4)

    def test_per_kind_limits(self) -> None:
        """Kinds with a fixed or small payload are bounded by it, whatever the maximum."""
        cases = [(FrameKind.HELLO, HELLO_BYTES + 1), (FrameKind.SNAP_CHUNK, SNAP_CHUNK_BYTES + 1),
                 (FrameKind.SNAP_END, 33), (FrameKind.ACK, 1),
                 (FrameKind.ERROR, MAX_ERROR_BYTES + 1)]
        for kind, length in cases:
            d = FrameDecoder(64 << 20)
            d.feed(frame_header(kind, length))
            self.assertIsInstance(d.error, FrameTooLargeError, kind)
            self.assertEqual((d.error.kind, d.error.length, d.error.limit),
                             (kind, length, length - 1))
        d = FrameDecoder(64 << 20)
        self.assertEqual(d.feed(encode_frame(FrameKind.SNAP_CHUNK, b"x" * SNAP_CHUNK_BYTES)),
                         [(4, b"x" * SNAP_CHUNK_BYTES)])

    def test_unknown_kind_refused(self) -> None:
        """A kind byte naming no frame (0, 10, 255) is refused from the header."""
        for kind in (0, 10, 255):
            d = FrameDecoder(100)
            self.assertEqual(d.feed(bytes([kind]) + b"\x00\x00\x00\x00"), [])
            self.assertIsInstance(d.error, UnknownFrameKindError)
            self.assertEqual(str(d.error), f"unknown frame kind {kind}")

    def test_end_inside_frame(self) -> None:
        """A connection ending inside a header or a payload is a truncated frame."""
        for cut in (3, 7):
            d = FrameDecoder(100)
            d.feed(encode_frame(FrameKind.MSG, b"abcdef")[:cut])
            e = self.assertRaises(TruncatedFrameError, d.end_of_stream)
            self.assertEqual(str(e), f"connection ended inside a frame ({cut} bytes buffered)")
