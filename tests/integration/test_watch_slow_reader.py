"""Watchers whose client does not read: writes go on, nothing is lost, nothing repeats.

A raw HTTP/2 client (`h2` over a blocking socket) opens Watch streams carrying thousands
of watchers of one prefix and then reads nothing, so TCP and HTTP/2 flow control push
back on the member. Meanwhile grpcio writers put megabytes under the prefix: every put
must be acknowledged and the member must keep answering other clients. Then the client
reads, granting window as it goes: every watcher gets every revision exactly once, in
order (etcd's watchable store parks such watchers as victims and catches them up from
the store; etcdd does the same without buffering more than a bounded queue per stream).

Runs against etcd 3.4 with ``ETCDD_CLUSTER_IMPL=etcd``.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, StreamEnded, StreamReset

from etcdd.proto import rpc_pb2 as pb, rpc_pb2_grpc
from tests.integration.cluster import ClusterTestCase

STREAMS = 10
WATCHERS_PER_STREAM = 1000
PUTS = 300
VALUE = b"v" * 16
PREFIX = b"slow/"
READ_DEADLINE_SECONDS = 120.0


def _frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


class RawWatchClient:
    """Watch streams on one HTTP/2 connection that read only when told to."""

    def __init__(self, endpoint: str) -> None:
        host, port = endpoint.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.buffers: dict[int, bytes] = {}
        self.events: dict[tuple[int, int], list[int]] = {}   # (stream, watch id) -> revisions
        self.created: dict[int, int] = {}
        self.ended: list[str] = []

    def open(self, watchers: int, prefix: bytes) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.buffers[sid] = b""
        self.created[sid] = 0
        self.conn.send_headers(sid, [
            (":method", "POST"), (":scheme", "http"), (":path", "/etcdserverpb.Watch/Watch"),
            (":authority", "etcd"), ("content-type", "application/grpc"), ("te", "trailers")])
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        create = _frame(pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=prefix, range_end=end)).SerializeToString())
        payload = create * watchers
        while payload:
            window = min(self.conn.local_flow_control_window(sid),
                         self.conn.max_outbound_frame_size)
            if window <= 0:
                self._pump(block=True)
                continue
            self.conn.send_data(sid, payload[:window])
            payload = payload[window:]
            self.sock.sendall(self.conn.data_to_send())
        return sid

    def _pump(self, block: bool) -> bool:
        """Read once from the socket and handle what came; False when nothing did."""
        self.sock.settimeout(1.0 if block else 0.2)
        try:
            data = self.sock.recv(1 << 20)
        except (socket.timeout, BlockingIOError):
            return False
        if not data:
            self.ended.append("connection closed")
            return False
        for event in self.conn.receive_data(data):
            if isinstance(event, DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                    event.stream_id)
                self._parse(event.stream_id, event.data)
            elif isinstance(event, (StreamEnded, StreamReset)):
                self.ended.append(f"stream {event.stream_id} ended: {event}")
        self.sock.sendall(self.conn.data_to_send())
        return True

    def _parse(self, sid: int, data: bytes) -> None:
        buf = self.buffers[sid] + data
        while len(buf) >= 5:
            (length,) = struct.unpack(">I", buf[1:5])
            if len(buf) < 5 + length:
                break
            resp = pb.WatchResponse.FromString(buf[5:5 + length])
            buf = buf[5 + length:]
            if resp.created:
                self.created[sid] += 1
            for ev in resp.events:
                self.events.setdefault((sid, resp.watch_id), []).append(ev.kv.mod_revision)
        self.buffers[sid] = buf

    def read_until(self, done: Callable[[], bool], deadline: float) -> None:
        while not done():
            if time.monotonic() > deadline or self.ended:
                return
            self._pump(block=True)

    def close(self) -> None:
        self.sock.close()


class SlowReaderTests(ClusterTestCase):
    size = 1
    shared_cluster = True

    def test_unread_watchers_never_hold_writes_and_catch_up_exactly(self) -> None:
        """10,000 watchers of one prefix on streams nobody reads: 300 puts (150 MB of events) are
        all acknowledged and a range answers meanwhile; once read, every watcher has
        every revision once, in order."""
        endpoint = self.cluster.members[0].endpoint
        client = RawWatchClient(endpoint)
        self.addCleanup(client.close)
        sids = [client.open(WATCHERS_PER_STREAM, PREFIX) for _ in range(STREAMS)]
        # Every create is answered before the writes start (reading them is cheap).
        client.read_until(lambda: all(client.created[s] == WATCHERS_PER_STREAM for s in sids),
                          time.monotonic() + 60)
        self.assertEqual([client.created[s] for s in sids], [WATCHERS_PER_STREAM] * STREAMS,
                         client.ended)
        channel = grpc.insecure_channel(endpoint)
        self.addCleanup(channel.close)
        kv = rpc_pb2_grpc.KVStub(channel)
        revisions: list[int] = []
        lock = threading.Lock()

        def put(i: int) -> None:
            resp = kv.Put(pb.PutRequest(key=PREFIX + b"%05d" % i, value=VALUE), timeout=60)
            with lock:
                revisions.append(resp.header.revision)
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(put, i) for i in range(PUTS)]
            # While nobody reads the watch streams, other clients are served.
            self.assertEqual(kv.Range(pb.RangeRequest(key=b"other"), timeout=30).count, 0)
            for f in futures:
                f.result()
        self.assertEqual(len(revisions), PUTS)
        revisions.sort()
        last = revisions[-1]
        client.read_until(
            lambda: sum(1 for revs in client.events.values() if revs and revs[-1] == last)
            == STREAMS * WATCHERS_PER_STREAM, time.monotonic() + READ_DEADLINE_SECONDS)
        self.assertEqual(client.ended, [])
        self.assertEqual(len(client.events), STREAMS * WATCHERS_PER_STREAM)
        wrong = {k: (len(v), v[:3], v[-3:]) for k, v in client.events.items()
                 if v != revisions}
        self.assertEqual(wrong, {}, f"{len(wrong)} watchers saw another sequence")
