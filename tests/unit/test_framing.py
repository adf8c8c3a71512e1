"""gRPC message framing, grpc-timeout and grpc-message encoding (etcdd.api.framing)."""
from __future__ import annotations

from twisted.python.compat import iterbytes
from twisted.trial.unittest import SynchronousTestCase

from etcdd.api.framing import (CompressedMessageError, Deframer, MalformedTimeoutError,
                               MessageTooLargeError, PayloadFormatError,
                               TruncatedMessageError, decode_grpc_message, encode,
                               encode_grpc_message, parse_timeout)
from etcdd.api.rpctypes import Status, status_for


class EncodeTests(SynchronousTestCase):

    def test_prefix_is_flag_and_big_endian_length(self) -> None:
        """A frame is a zero flag byte, a 4-byte big-endian length, then the payload."""
        self.assertEqual(encode(b"abc"), b"\x00\x00\x00\x00\x03abc")
        self.assertEqual(encode(b""), b"\x00\x00\x00\x00\x00")
        self.assertEqual(encode(b"x" * 70000)[:5], b"\x00\x00\x01\x11\x70")


class DeframerTests(SynchronousTestCase):

    def test_whole_messages_in_one_chunk(self) -> None:
        """Several complete frames in one chunk come out in order, empty ones included."""
        d = Deframer(100)
        self.assertEqual(d.feed(encode(b"a") + encode(b"") + encode(b"bc")), [b"a", b"", b"bc"])
        self.assertEqual(d.buffered_bytes, 0)
        d.end_of_stream()

    def test_one_byte_at_a_time(self) -> None:
        """Fed one byte at a time, each message appears exactly when its last byte arrives."""
        d = Deframer(100)
        data = encode(b"hello") + encode(b"") + encode(b"world!")
        out = []
        for i, byte in enumerate(iterbytes(data)):
            got = d.feed(byte)
            if got:
                out.append((i, got))
        self.assertEqual(out, [(9, [b"hello"]), (14, [b""]), (25, [b"world!"])])
        d.end_of_stream()

    def test_split_across_chunks(self) -> None:
        """A message split across chunks, with the next one starting mid-chunk, reassembles."""
        d = Deframer(1000)
        data = encode(b"x" * 300) + encode(b"y" * 10)
        self.assertEqual(d.feed(data[:3]), [])
        self.assertEqual(d.feed(data[3:100]), [])
        self.assertEqual(d.feed(data[100:200]), [])
        self.assertEqual(d.feed(data[200:310]), [b"x" * 300])
        self.assertEqual(d.feed(data[310:]), [b"y" * 10])

    def test_length_over_max_refused_from_prefix(self) -> None:
        """A length over the maximum is refused from the 5-byte prefix alone, with grpc-go's
        RESOURCE_EXHAUSTED text, before any body byte is kept."""
        d = Deframer(2097152)
        prefix = b"\x00" + (100 * 1024 * 1024).to_bytes(4, "big")
        e = self.assertRaises(MessageTooLargeError, d.feed, prefix)
        self.assertEqual(status_for(e), (Status.RESOURCE_EXHAUSTED,
                         "grpc: received message larger than max (104857600 vs. 2097152)"))
        self.assertEqual(d.buffered_bytes, 0)
        self.assertRaises(MessageTooLargeError, d.feed, b"more")

    def test_max_is_inclusive(self) -> None:
        """A message of exactly the maximum size is accepted."""
        self.assertEqual(Deframer(4).feed(encode(b"1234")), [b"1234"])
        self.assertRaises(MessageTooLargeError, Deframer(4).feed, encode(b"12345"))

    def test_compressed_flag_refused(self) -> None:
        """The compressed flag is refused: INTERNAL without a grpc-encoding, UNIMPLEMENTED
        naming the encoding otherwise (grpc-go checkRecvPayload)."""
        e = self.assertRaises(CompressedMessageError, Deframer(10).feed, b"\x01\x00\x00\x00\x01x")
        self.assertEqual(status_for(e), (Status.INTERNAL,
                         "grpc: compressed flag set with identity or empty encoding"))
        e = self.assertRaises(CompressedMessageError, Deframer(10, "gzip").feed,
                              b"\x01\x00\x00\x00\x01")
        self.assertEqual(status_for(e), (Status.UNIMPLEMENTED,
                         'grpc: Decompressor is not installed for grpc-encoding "gzip"'))

    def test_unknown_flag_refused(self) -> None:
        """A flag byte other than 0 or 1 is an unexpected payload format."""
        e = self.assertRaises(PayloadFormatError, Deframer(10).feed, b"\x07\x00\x00\x00\x00")
        self.assertEqual(status_for(e), (Status.INTERNAL,
                                         "grpc: received unexpected payload format 7"))

    def test_truncated_at_end_of_stream(self) -> None:
        """A stream that ends inside a message (prefix or body) is reported as truncated."""
        for partial in (b"\x00\x00", b"\x00\x00\x00\x00\x05abc"):
            d = Deframer(10)
            self.assertEqual(d.feed(partial), [])
            e = self.assertRaises(TruncatedMessageError, d.end_of_stream)
            self.assertEqual(status_for(e), (Status.INTERNAL, "unexpected EOF"))


class TimeoutTests(SynchronousTestCase):

    def test_units(self) -> None:
        """Every grpc-timeout unit converts to seconds."""
        cases = {"1S": 1.0, "200m": 0.2, "5u": 5e-6, "10n": 1e-8, "2M": 120.0, "1H": 3600.0,
                 "99999999S": 99999999.0, "0m": 0.0}
        for value, seconds in cases.items():
            self.assertAlmostEqual(parse_timeout(value), seconds, places=12, msg=value)

    def test_malformed(self) -> None:
        """Malformed values give grpc-go's decodeTimeout reasons under INTERNAL."""
        cases = {
            "S": 'transport: malformed time-out: transport: timeout string is too short: "S"',
            "123456789S": 'transport: malformed time-out: transport: timeout string is too '
                          'long: "123456789S"',
            "10x": 'transport: malformed time-out: transport: timeout unit is not '
                   'recognized: "10x"',
            "-1S": 'transport: malformed time-out: strconv.ParseInt: parsing "-1": '
                   'invalid syntax',
            "1.5S": 'transport: malformed time-out: strconv.ParseInt: parsing "1.5": '
                    'invalid syntax',
        }
        for value, message in cases.items():
            e = self.assertRaises(MalformedTimeoutError, parse_timeout, value)
            self.assertEqual(status_for(e), (Status.INTERNAL, message))


class GrpcMessageTests(SynchronousTestCase):

    def test_plain_ascii_untouched(self) -> None:
        """Printable ASCII other than '%' passes unchanged."""
        message = "etcdserver: mvcc: required revision has been compacted"
        self.assertEqual(encode_grpc_message(message), message.encode())

    def test_percent_encoding(self) -> None:
        """'%', control characters and non-ASCII (as UTF-8) are %XX, upper-case hex."""
        self.assertEqual(encode_grpc_message("50% done\r\n"), b"50%25 done%0D%0A")
        self.assertEqual(encode_grpc_message("caf\u00e9 \u2603"), b"caf%C3%A9 %E2%98%83")

    def test_round_trip(self) -> None:
        """decode_grpc_message inverts encode_grpc_message."""
        for message in ("", "a%b", "t\u00e4b\tle", "unknown service etcdserverpb.Foo"):
            self.assertEqual(decode_grpc_message(encode_grpc_message(message)), message)
