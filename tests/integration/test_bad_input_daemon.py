"""Bad input against a running daemon: each bad client gets a clear error, and the
member keeps serving everyone else (checked with the real etcdctl after each case)."""
from __future__ import annotations

import socket
import struct
import unittest

import grpc
import h2.config
import h2.connection
import h2.events

from etcdd.proto import rpc_pb2 as pb, rpc_pb2_grpc
from tests.integration.harness import ETCDCTL, Member, etcdctl


class RawH2Client:
    """A blocking HTTP/2 client that sends whatever the test wants."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def call(self, path: str, body: bytes, end: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"),
                                     (":path", path), (":authority", "localhost"),
                                     ("content-type", "application/grpc"), ("te", "trailers")])
        self.conn.send_data(sid, body, end_stream=end)
        self.flush()
        return sid

    def trailers(self, sid: int) -> dict[str, str]:
        """The headers that ended stream `sid` (trailers, or trailers-only headers)."""
        seen: dict[str, str] = {}
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            for event in self.conn.receive_data(data):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)) \
                        and event.stream_id == sid:
                    seen.update({k.decode(): v.decode() for k, v in event.headers})
                if isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                        event.stream_id)
                if isinstance(event, h2.events.StreamEnded) and event.stream_id == sid:
                    self.flush()
                    return seen
            self.flush()

    def close(self) -> None:
        self.sock.close()


@unittest.skipIf(ETCDCTL is None, "etcdctl is not installed")
class BadInputTests(unittest.TestCase):

    @classmethod
    def setUpClass(cls) -> None:
        cls.member = Member(name="bad-input").start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.member.cleanup()

    def assert_still_serving(self) -> None:
        self.assertEqual(etcdctl(self.member.endpoint, "put", "alive", "yes").stdout, "OK\n")
        self.assertIsNone(self.member.proc.poll())

    def test_malformed_frames(self) -> None:
        """Garbage after the HTTP/2 preface closes that connection only."""
        s = socket.create_connection(("127.0.0.1", self.member.client_port), timeout=10)
        # a SETTINGS frame whose length is not a multiple of 6: FRAME_SIZE_ERROR
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x05\x04\x00\x00\x00\x00\x00"
                  + b"junk!")
        received = b""
        while chunk := s.recv(65536):
            received += chunk
        s.close()
        self.assertIn(b"\x07", received[:200])   # a GOAWAY frame (type 7) was sent
        self.assert_still_serving()

    def test_lying_length_prefix(self) -> None:
        """A message shorter than its prefix says gets INTERNAL, not a hang."""
        c = RawH2Client(self.member.client_port)
        sid = c.call("/etcdserverpb.KV/Range", struct.pack(">BI", 0, 100) + b"\x0a\x01a")
        t = c.trailers(sid)
        c.close()
        self.assertEqual(t.get("grpc-status"), "13")
        self.assert_still_serving()

    def test_huge_length_prefix_refused_before_buffering(self) -> None:
        """A 100 MB message is refused from its prefix with RESOURCE_EXHAUSTED."""
        c = RawH2Client(self.member.client_port)
        sid = c.call("/etcdserverpb.KV/Put", struct.pack(">BI", 0, 100 << 20) + b"x" * 1000,
                     end=False)
        t = c.trailers(sid)
        c.close()
        self.assertEqual(t.get("grpc-status"), "8")
        self.assertIn("received message larger than max", t.get("grpc-message", ""))
        self.assert_still_serving()

    def test_unparsable_protobuf(self) -> None:
        """A body that is not a RangeRequest gets INTERNAL with grpc-go's wording."""
        c = RawH2Client(self.member.client_port)
        sid = c.call("/etcdserverpb.KV/Range", struct.pack(">BI", 0, 3) + b"\xff\xff\xff")
        t = c.trailers(sid)
        c.close()
        self.assertEqual(t.get("grpc-status"), "13")
        self.assertIn("unmarshal", t.get("grpc-message", ""))
        self.assert_still_serving()

    def test_unknown_method(self) -> None:
        """An unknown method gets UNIMPLEMENTED."""
        with grpc.insecure_channel(self.member.endpoint) as channel:
            call = channel.unary_unary("/etcdserverpb.KV/Nope")
            with self.assertRaises(grpc.RpcError) as e:
                call(b"", timeout=5)
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        self.assert_still_serving()

    def test_thousand_streams_never_read(self) -> None:
        """A client that opens 1,000 streams with big answers and never reads does not
        stop others from being served."""
        with grpc.insecure_channel(self.member.endpoint) as channel:
            rpc_pb2_grpc.KVStub(channel).Put(pb.PutRequest(key=b"big", value=b"x" * 200_000))
        s = socket.create_connection(("127.0.0.1", self.member.client_port), timeout=10)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        body = pb.RangeRequest(key=b"big").SerializeToString()
        for _ in range(1000):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"),
                                    (":path", "/etcdserverpb.KV/Range"),
                                    (":authority", "x"), ("content-type", "application/grpc")])
            conn.send_data(sid, struct.pack(">BI", 0, len(body)) + body, end_stream=True)
        s.sendall(conn.data_to_send())
        try:
            self.assert_still_serving()
        finally:
            s.close()
        self.assert_still_serving()
