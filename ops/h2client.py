"""A raw HTTP/2 gRPC client for one bidirectional streaming call, written with h2 on
asyncio, for the benchmarks' client processes (ops/watch_bench.py). A shell (ops/*).

Why not grpcio: grpcio costs ~100 us of client CPU per streamed message, which made the
client, not the server, the bottleneck of the watch and keep-alive benchmarks. Here many
messages go out in one DATA frame and `H2Stream.receive` returns every message that has
arrived, for ~1-2 us each. Plaintext only (h2c with prior knowledge), no deadlines or
metadata: just enough of gRPC to stream length-prefixed protobuf messages both ways.
`BlockingWatchClient` is the same idea on a blocking socket, for a client that stops
reading on purpose.
"""
from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable
from typing import Sequence

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (ConnectionTerminated, DataReceived, StreamEnded, StreamReset,
                       TrailersReceived, WindowUpdated)
from h2.settings import SettingCodes

from etcdd.proto import rpc_pb2 as pb


class H2Stream(asyncio.Protocol):
    """One bidirectional gRPC call on its own HTTP/2 connection (stream 1): `send` frames
    a batch of messages into as few DATA frames as flow control allows, `receive` returns
    every message that has arrived since the last call."""

    def __init__(self) -> None:
        self._h2 = H2Connection(H2Configuration(client_side=True, header_encoding="ascii"))
        self._inbox, self._messages = bytearray(), []
        self._arrived, self._window = asyncio.Event(), asyncio.Event()
        self.ended: str | None = None

    @classmethod
    async def open(cls, endpoint: str, path: str) -> "H2Stream":
        host, _, port = endpoint.rpartition(":")
        _, stream = await asyncio.get_running_loop().create_connection(cls, host, int(port))
        stream._h2.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":path", path),
                                    (":authority", endpoint), ("te", "trailers"),
                                    ("content-type", "application/grpc")])
        stream._flush()
        return stream

    def connection_made(self, transport: asyncio.Transport) -> None:   # type: ignore[override]
        self._transport = transport
        self._h2.initiate_connection()
        self._h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
        self._h2.increment_flow_control_window(1 << 28)
        self._flush()

    def data_received(self, data: bytes) -> None:
        for event in self._h2.receive_data(data):
            if isinstance(event, DataReceived):
                self._inbox += event.data
                self._h2.acknowledge_received_data(event.flow_controlled_length, 1)
            elif isinstance(event, WindowUpdated):
                self._window.set()
            elif isinstance(event, TrailersReceived):
                fields = dict(event.headers)
                self.ended = f"grpc-status {fields.get('grpc-status')}: " \
                             f"{fields.get('grpc-message', '')}"
            elif isinstance(event, (StreamReset, ConnectionTerminated)):
                self.ended = self.ended or type(event).__name__
        self._flush()
        self._deframe()
        self._arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = self.ended or f"connection lost: {exc}"
        self._arrived.set()
        self._window.set()

    def _flush(self) -> None:
        if data := self._h2.data_to_send():
            self._transport.write(data)

    def _deframe(self) -> None:
        box, at = self._inbox, 0
        while len(box) - at >= 5:
            size = int.from_bytes(box[at + 1:at + 5], "big")
            if len(box) - at - 5 < size:
                break
            self._messages.append(bytes(box[at + 5:at + 5 + size]))
            at += 5 + size
        del box[:at]

    async def send(self, messages: Sequence[bytes]) -> None:
        """Frame and send `messages` as flow control allows; raises RuntimeError if the
        call has ended."""
        data = b"".join(b"\0" + len(m).to_bytes(4, "big") + m for m in messages)
        while data:
            if self.ended:
                raise RuntimeError(f"stream ended: {self.ended}")
            room = min(self._h2.local_flow_control_window(1), self._h2.max_outbound_frame_size)
            if room <= 0:
                self._window.clear()
                await self._window.wait()
                continue
            self._h2.send_data(1, data[:room])
            data = data[room:]
            self._flush()

    async def receive(self) -> list[bytes]:
        """Every message arrived since the last call (waits for one); raises
        RuntimeError once the call has ended and nothing is left."""
        while not self._messages:
            if self.ended:
                raise RuntimeError(f"stream ended: {self.ended}")
            self._arrived.clear()
            await self._arrived.wait()
        out, self._messages = self._messages, []
        return out

    def close(self) -> None:
        self._transport.close()


def _frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


class BlockingWatchClient:
    """Watch streams on one HTTP/2 connection over a blocking socket, read only when told
    to: a client that stops reading, for the slow-reader test and `ops.unread_watch_bench`.
    `events[(stream, watch id)]` collects each watcher's event revisions."""

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
