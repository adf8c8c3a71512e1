"""ops/h2client.py's `H2Stream`: gRPC message framing both ways and the end of a call,
against an in-memory h2 server. No network."""
from __future__ import annotations

import asyncio

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived
from twisted.trial.unittest import SynchronousTestCase

from ops.h2client import H2Stream


class _Pipe:
    """A transport that hands what the client writes to an in-memory h2 server."""

    def __init__(self, server: H2Connection) -> None:
        self.server, self.events = server, []

    def write(self, data: bytes) -> None:
        self.events += self.server.receive_data(data)

    def close(self) -> None:
        pass


class H2StreamTests(SynchronousTestCase):

    def _connected(self) -> tuple[H2Stream, H2Connection, _Pipe]:
        server = H2Connection(H2Configuration(client_side=False, header_encoding="ascii"))
        server.initiate_connection()
        stream, pipe = H2Stream(), _Pipe(server)
        stream.connection_made(pipe)    # type: ignore[arg-type]
        stream.data_received(server.data_to_send())
        return stream, server, pipe

    def test_messages_split_across_frames_arrive_whole(self) -> None:
        """gRPC messages cut anywhere by DATA frames come out of `receive` whole, in
        order, all that have arrived at once."""
        stream, server, pipe = self._connected()
        stream._h2.send_headers(1, [(":method", "POST"), (":scheme", "http"),
                                    (":path", "/x"), (":authority", "a")])
        stream._flush()
        server.send_headers(1, [(":status", "200")])
        wire = b"".join(b"\0" + len(m).to_bytes(4, "big") + m for m in (b"one", b"", b"three"))
        for chunk in (wire[:2], wire[2:9], wire[9:]):
            server.send_data(1, chunk)
            stream.data_received(server.data_to_send())
        self.assertEqual(asyncio.run(stream.receive()), [b"one", b"", b"three"])

    def test_send_frames_each_message(self) -> None:
        """`send` writes each message with its 5-byte gRPC prefix, in one DATA frame."""
        stream, server, pipe = self._connected()
        stream._h2.send_headers(1, [(":method", "POST"), (":scheme", "http"),
                                    (":path", "/x"), (":authority", "a")])
        asyncio.run(stream.send([b"ab", b"c"]))
        self.assertTrue(any(isinstance(e, RequestReceived) for e in pipe.events))
        data = [e.data for e in pipe.events if isinstance(e, DataReceived)]
        self.assertEqual(data, [b"\0\0\0\0\2ab\0\0\0\0\1c"])

    def test_receive_after_the_call_ended_raises(self) -> None:
        """Once the server's trailers end the call, `receive` raises with their status
        instead of waiting for ever."""
        stream, server, pipe = self._connected()
        stream._h2.send_headers(1, [(":method", "POST"), (":scheme", "http"),
                                    (":path", "/x"), (":authority", "a")])
        stream._flush()
        server.send_headers(1, [(":status", "200")])
        server.send_headers(1, [("grpc-status", "12"), ("grpc-message", "unknown service")],
                            end_stream=True)
        stream.data_received(server.data_to_send())
        with self.assertRaises(RuntimeError) as caught:
            asyncio.run(stream.receive())
        self.assertIn("grpc-status 12: unknown service", str(caught.exception))
