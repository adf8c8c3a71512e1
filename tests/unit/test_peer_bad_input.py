"""Bad input on peer connections: a clear ERROR, that connection closed, everyone else served.

STYLE.md §6 kind 1. Raw bytes are fed one at a time to a connection accepted by a running
member (`Cluster` from test_peer_transport); after each refusal the real peer's stream
to that member still delivers, and stopping leaves nothing scheduled.
"""
from __future__ import annotations

import hashlib
import os

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.python.compat import iterbytes
from twisted.trial.unittest import SynchronousTestCase

from etcdd.peer.calls import CallStreamClient
from etcdd.peer.framing import (FrameDecoder, FrameKind, Hello, StreamKind, encode_call,
                                encode_error, encode_frame, encode_hello, encode_reply,
                                frame_header)
from etcdd.peer.protocol import MessageStreamClient, PeerServerProtocol, SnapshotStreamClient
from tests.unit.test_peer_transport import (CLUSTER_ID, Cluster, accept, captured_log,
                                            formats, message, msg_snap)

HELLO_MSG = encode_hello(Hello(CLUSTER_ID, 1, 2, StreamKind.MSG))
HELLO_SNAP = encode_hello(Hello(CLUSTER_ID, 1, 2, StreamKind.SNAP))
HELLO_CALL = encode_hello(Hello(CLUSTER_ID, 1, 2, StreamKind.CALL))
REPLY_MSG = Hello(CLUSTER_ID, 2, 1, StreamKind.MSG)


def frame_list(data: bytes) -> list[tuple[int, bytes]]:
    decoder = FrameDecoder(1 << 20)
    frames = decoder.feed(data)
    decoder.end_of_stream()
    return frames


def error(reason: str) -> tuple[int, bytes]:
    return (FrameKind.ERROR, reason.encode())


def snap_stream(payload: bytes, index: int = 0x2A) -> bytes:
    """A whole, correct snapshot stream carrying `payload` as the db."""
    return (HELLO_SNAP + encode_frame(FrameKind.SNAP_HEADER,
                                      msg_snap(2, index=index).SerializeToString())
            + encode_frame(FrameKind.SNAP_CHUNK, payload)
            + encode_frame(FrameKind.SNAP_END, hashlib.sha256(payload).digest()))


class _InboundCase(SynchronousTestCase):
    """Member 2 of a running two-member cluster, and raw connections to it."""

    def setUp(self) -> None:
        self.cluster = Cluster(self, ids=(1, 2))

    def connect(self) -> tuple[PeerServerProtocol, StringTransport]:
        return accept(self.cluster)

    def feed(self, raw: bytes) -> tuple[PeerServerProtocol, StringTransport]:
        protocol, transport = self.connect()
        for byte in iterbytes(raw):
            protocol.dataReceived(byte)
        return protocol, transport

    def assert_refused(self, raw: bytes, reason: str, replied_hello: bool = True) -> None:
        """`raw`, byte by byte, gets exactly ERROR(`reason`) (after our HELLO if the
        greeting was good) and a close; member 2 keeps serving its real peer."""
        with captured_log() as events:
            protocol, transport = self.feed(raw)
        want = [(FrameKind.HELLO, encode_hello(REPLY_MSG)[5:])] if replied_hello else []
        self.assertEqual(frame_list(transport.value()), want + [error(reason)])
        self.assertTrue(transport.disconnecting)
        self.assertEqual([e["reason"] for e in formats(events, "{reason}")], [reason])
        transport.clear()
        protocol.dataReceived(encode_frame(FrameKind.MSG, message(2).SerializeToString()))
        self.assertEqual(transport.value(), b"")                # nothing after the refusal
        protocol.connectionLost()
        self.assert_still_serving()

    def assert_still_serving(self) -> None:
        before = len(self.cluster.handlers[2].processed)
        self.cluster.transports[1].send([message(2, index=77)])
        self.cluster.network.flush()
        self.assertEqual(self.cluster.handlers[2].processed[before:], [message(2, index=77)])
        self.assertEqual(os.listdir(self.cluster.snapshot_dirs[2]), [])
        self.cluster.stop(self)


class InboundTests(_InboundCase):
    """Bytes a broken or hostile peer sends to member 2 on a message stream."""

    def test_oversize_length(self) -> None:
        """A MSG header announcing 100 MiB is refused from its 5 bytes."""
        self.assert_refused(HELLO_MSG + frame_header(FrameKind.MSG, 100 << 20),
                            "MSG frame of 104857600 bytes is over the limit of 16777216 bytes")

    def test_unknown_kind(self) -> None:
        """A frame kind we do not know is refused."""
        self.assert_refused(HELLO_MSG + b"\x0a\x00\x00\x00\x01x", "unknown frame kind 10")

    def test_garbage_protobuf(self) -> None:
        """A MSG that is no raft Message is refused; the good one before it was processed."""
        good = encode_frame(FrameKind.MSG, message(2, index=5).SerializeToString())
        self.assert_refused(HELLO_MSG + good + encode_frame(FrameKind.MSG, b"\xff\xff\xff"),
                            "unparsable raft message: Error parsing message with type "
                            "'raftpb.Message': Wire format was corrupt")
        self.assertEqual(self.cluster.handlers[2].processed[0], message(2, index=5))

    def test_msgsnap_on_message_stream(self) -> None:
        """A MsgSnap without its database (on the message stream) is refused, never
        handed to raft."""
        self.assert_refused(HELLO_MSG + encode_frame(FrameKind.MSG,
                                                     msg_snap(2).SerializeToString()),
                            "MsgSnap on a message stream")
        self.assertEqual([m.type for m in self.cluster.handlers[2].processed],
                         [message(2).type])     # only assert_still_serving's message

    def test_call_on_message_stream(self) -> None:
        """A CALL on a message stream is refused, never handed to the handler."""
        self.assert_refused(HELLO_MSG + encode_call(1, "echo", b""),
                            "unexpected CALL frame (expected MSG)")
        self.assertEqual(self.cluster.handlers[2].calls, [])

    def test_msg_before_hello(self) -> None:
        """Anything before HELLO is refused."""
        self.assert_refused(encode_frame(FrameKind.MSG, message(2).SerializeToString()),
                            "unexpected MSG frame (expected HELLO)", replied_hello=False)

    def test_bad_hello(self) -> None:
        """A HELLO of another protocol version is refused with both versions named."""
        self.assert_refused(HELLO_MSG[:5] + b"\x07" + HELLO_MSG[6:],
                            "unsupported peer protocol version 7 (this member speaks 1)",
                            replied_hello=False)

    def test_cluster_id_mismatch(self) -> None:
        """A HELLO from another cluster gets etcd's "cluster ID mismatch"."""
        self.assert_refused(encode_hello(Hello(0x99, 1, 2, StreamKind.MSG)),
                            "cluster ID mismatch", replied_hello=False)

    def test_member_id_mismatch(self) -> None:
        """A HELLO meant for another member gets "member ID mismatch"."""
        self.assert_refused(encode_hello(Hello(CLUSTER_ID, 1, 3, StreamKind.MSG)),
                            "member ID mismatch", replied_hello=False)

    def test_snapshot_frame_on_message_stream(self) -> None:
        """A frame of the other stream kind is refused, naming what was expected."""
        self.assert_refused(HELLO_MSG + encode_frame(FrameKind.SNAP_CHUNK, b"db"),
                            "unexpected SNAP_CHUNK frame (expected MSG)")

    def test_truncated_connection(self) -> None:
        """A connection ending inside a frame processes nothing of it and says so."""
        frame = encode_frame(FrameKind.MSG, message(2).SerializeToString())
        with captured_log() as events:
            protocol, transport = self.feed(HELLO_MSG + frame[:-2])
            protocol.connectionLost()
        self.assertEqual(self.cluster.handlers[2].processed, [])
        [lost] = formats(events, "lost: {reason}")
        self.assertEqual(lost["reason"], f"connection ended inside a frame "
                                         f"({len(frame) - 2} bytes buffered)")
        self.assert_still_serving()

    def test_error_from_peer_closes_quietly(self) -> None:
        """An ERROR from the peer closes the connection without an answer."""
        protocol, transport = self.feed(HELLO_MSG + encode_error("going away"))
        self.assertEqual([k for k, _ in frame_list(transport.value())], [FrameKind.HELLO])
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost()
        self.assert_still_serving()


class InboundSnapshotTests(_InboundCase):
    """Broken snapshot streams: refused, and no temp file is left behind."""

    REPLY = encode_hello(Hello(CLUSTER_ID, 2, 1, StreamKind.SNAP))

    def assert_snap_refused(self, raw: bytes, reason: str) -> None:
        protocol, transport = self.feed(raw)
        self.assertEqual(frame_list(transport.value()),
                         [(FrameKind.HELLO, self.REPLY[5:]), error(reason)])
        self.assertEqual(os.listdir(self.cluster.snapshot_dirs[2]), [])
        self.assertEqual(self.cluster.handlers[2].received, [])
        protocol.connectionLost()
        self.assert_still_serving()

    def test_header_not_msgsnap(self) -> None:
        """A SNAP_HEADER must carry a MsgSnap."""
        self.assert_snap_refused(
            HELLO_SNAP + encode_frame(FrameKind.SNAP_HEADER, message(2).SerializeToString()),
            "SNAP_HEADER carries MsgApp, not MsgSnap")

    def test_chunk_before_header(self) -> None:
        """Chunks before the SNAP_HEADER are refused."""
        self.assert_snap_refused(HELLO_SNAP + encode_frame(FrameKind.SNAP_CHUNK, b"db"),
                                 "unexpected SNAP_CHUNK frame (expected SNAP_HEADER)")

    def test_sha256_mismatch(self) -> None:
        """A db whose sha256 differs from SNAP_END is refused and its temp file deleted."""
        raw = snap_stream(b"db bytes")
        self.assert_snap_refused(raw[:-1] + bytes([raw[-1] ^ 1]),
                                 "snapshot sha256 mismatch after 8 bytes")

    def test_short_snap_end(self) -> None:
        """A SNAP_END that is not a whole sha256 is refused."""
        raw = snap_stream(b"db bytes")
        self.assert_snap_refused(raw[:-37] + encode_frame(FrameKind.SNAP_END, b"abc"),
                                 "SNAP_END of 3 bytes, want a 32-byte sha256")

    def test_truncated_mid_snapshot(self) -> None:
        """A snapshot stream that ends mid-chunk deletes its temp file."""
        raw = snap_stream(b"x" * 5000)
        protocol, transport = self.feed(raw[:-3000])
        self.assertEqual(os.listdir(self.cluster.snapshot_dirs[2]),
                         ["tmp-000000000000002a.snap.db.part"])
        protocol.connectionLost()
        self.assert_still_serving()

    def test_same_index_twice_at_once(self) -> None:
        """A second stream for the snapshot being received is refused; the first completes."""
        first, first_transport = self.feed(snap_stream(b"first")[:-40])
        second, transport = self.feed(snap_stream(b"second")[:-40])
        self.assertEqual(frame_list(transport.value())[-1],
                         error("a snapshot at index 42 is already being received"))
        second.connectionLost()
        for byte in iterbytes(snap_stream(b"first")[-40:]):
            first.dataReceived(byte)
        self.assertEqual([data for _, data, _ in self.cluster.handlers[2].received], [b"first"])
        self.assertEqual(frame_list(first_transport.value())[-1], (FrameKind.ACK, b""))
        first.connectionLost()
        self.assert_still_serving()

    def test_stale_temp_file_replaced(self) -> None:
        """A temp file left by an earlier process is replaced, not appended to or refused."""
        stale = os.path.join(self.cluster.snapshot_dirs[2], "tmp-000000000000002a.snap.db.part")
        with open(stale, "wb") as f:
            f.write(b"left over from a crash")
        protocol, transport = self.feed(snap_stream(b"fresh"))
        self.assertEqual([data for _, data, _ in self.cluster.handlers[2].received], [b"fresh"])
        protocol.connectionLost()
        self.assert_still_serving()

    def test_snapshot_dir_missing(self) -> None:
        """A temp file that cannot be created is the sender's ERROR, logged here."""
        os.rmdir(self.cluster.snapshot_dirs[2])
        protocol, transport = self.feed(snap_stream(b"db")[:-44])
        self.assertEqual(frame_list(transport.value())[-1],
                         error("cannot create the snapshot file: No such file or directory"))
        os.mkdir(self.cluster.snapshot_dirs[2])
        protocol.connectionLost()
        self.assert_still_serving()


class InboundCallTests(_InboundCase):
    """Broken call streams: refused, and member 2 still answers member 1's calls."""

    REPLY = encode_hello(Hello(CLUSTER_ID, 2, 1, StreamKind.CALL))

    def setUp(self) -> None:
        super().setUp()
        self.waiting: list[Deferred] = []
        self.cluster.handlers[2].methods.update(echo=lambda payload: payload,
                                                wait=lambda payload: self._wait())

    def _wait(self) -> Deferred:
        d: Deferred = Deferred()
        self.waiting.append(d)
        return d

    def assert_call_refused(self, raw: bytes, reason: str) -> StringTransport:
        """`raw` after a good HELLO, byte by byte, gets ERROR(`reason`) last and a close."""
        with captured_log() as events:
            protocol, transport = self.feed(HELLO_CALL + raw)
        frames = frame_list(transport.value())
        self.assertEqual((frames[0], frames[-1]), ((FrameKind.HELLO, self.REPLY[5:]),
                                                   error(reason)))
        self.assertTrue(transport.disconnecting)
        self.assertEqual([e["reason"] for e in formats(events, "{reason}")], [reason])
        protocol.connectionLost()
        return transport

    def assert_still_answering(self) -> None:
        d = self.cluster.transports[1].call(2, "echo", b"still", timeout_seconds=5)
        self.cluster.network.flush()
        self.assertEqual(self.successResultOf(d), b"still")
        self.assert_still_serving()

    def test_malformed_calls(self) -> None:
        """CALLs too short, without a method, overrunning their payload, with a name that
        is not ascii or announcing more than a frame may hold are each refused."""
        cases = {
            encode_frame(FrameKind.CALL, b"\0" * 8): "CALL of 8 bytes, want at least 9",
            encode_frame(FrameKind.CALL, b"\0" * 7 + b"\x02\x00"): "CALL 2 without a method "
                                                                  "name",
            encode_frame(FrameKind.CALL, b"\0" * 7 + b"\x02\x09echo"):
                "CALL 2 method name of 9 bytes overruns its 13-byte payload",
            encode_frame(FrameKind.CALL, b"\0" * 7 + b"\x02\x04\xe9cho"):
                "CALL 2 method name is not ascii",
            frame_header(FrameKind.CALL, 100 << 20):
                "CALL frame of 104857600 bytes is over the limit of 16777216 bytes",
        }
        for raw, reason in cases.items():
            self.assert_call_refused(raw, reason)
        self.assertEqual(self.cluster.handlers[2].calls, [])
        self.assert_still_answering()

    def test_reply_on_call_stream(self) -> None:
        """The calling side sends no REPLY: one is refused."""
        self.assert_call_refused(encode_reply(1, b""), "unexpected REPLY frame (expected CALL)")
        self.assert_still_answering()

    def test_call_id_reused_in_flight(self) -> None:
        """A CALL reusing the id of one still in flight is refused; the first one's answer,
        ready after the close, is dropped."""
        transport = self.assert_call_refused(
            encode_call(1, "wait", b"") + encode_call(1, "wait", b""),
            "CALL 1 is already in flight")
        sent = transport.value()
        self.waiting[0].callback(b"late")
        self.assertEqual(transport.value(), sent)
        self.assert_still_answering()

    def test_quiet_call_stream_kept(self) -> None:
        """A call stream may stay quiet after its HELLO: no deadline closes it."""
        protocol, transport = self.feed(HELLO_CALL)
        self.cluster.clock.advance(3600)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(encode_call(5, "echo", b"hi"))
        self.assertEqual(frame_list(transport.value())[-1],
                         (FrameKind.REPLY, encode_reply(5, b"hi")[5:]))
        protocol.connectionLost()
        self.assert_still_answering()


class FakeCallLink:
    """Records what an outbound call stream tells its link."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def call_stream_ready(self, protocol: CallStreamClient) -> None:
        self.events.append(("ready", None))

    def reply_received(self, call_id: int, status: int, body: bytes) -> None:
        self.events.append(("reply", (call_id, status, body)))

    def call_stream_lost(self, protocol: CallStreamClient, reason: str) -> None:
        self.events.append(("lost", reason))


class OutboundCallTests(SynchronousTestCase):
    """Bytes a broken peer answers our call stream with."""

    REPLY = encode_hello(Hello(CLUSTER_ID, 2, 1, StreamKind.CALL))

    def client(self) -> tuple[CallStreamClient, StringTransport, FakeCallLink]:
        link = FakeCallLink()
        protocol = CallStreamClient(Hello(CLUSTER_ID, 1, 2, StreamKind.CALL), link,
                                    max_frame_bytes=1 << 20)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertEqual(transport.value(), HELLO_CALL)
        transport.clear()
        return protocol, transport, link

    def assert_refused(self, raw: bytes, reason: str, ready: bool = True) -> None:
        """`raw`, byte by byte, gets ERROR(`reason`) and a close; the link hears `reason`."""
        protocol, transport, link = self.client()
        with captured_log():
            for byte in iterbytes(raw):
                protocol.dataReceived(byte)
        self.assertEqual(frame_list(transport.value()), [error(reason)])
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost()
        self.assertEqual(link.events, [("ready", None)] * ready + [("lost", reason)])

    def test_reply_with_unknown_status(self) -> None:
        """A REPLY whose status is no gRPC code is refused, not delivered."""
        self.assert_refused(self.REPLY + encode_frame(FrameKind.REPLY,
                                                      b"\0" * 7 + b"\x04\x11oops"),
                            "REPLY 4 with unknown status 17")

    def test_short_reply(self) -> None:
        """A REPLY shorter than its head is refused."""
        self.assert_refused(self.REPLY + encode_frame(FrameKind.REPLY, b"\0" * 8),
                            "REPLY of 8 bytes, want at least 9")

    def test_reply_before_hello(self) -> None:
        """A REPLY before the peer's HELLO is refused; the stream was never ready."""
        self.assert_refused(encode_reply(1, b""), "unexpected REPLY frame (expected HELLO)",
                            ready=False)

    def test_call_from_the_peer(self) -> None:
        """The answering side sends no CALL on our stream: one is refused."""
        self.assert_refused(self.REPLY + encode_call(1, "echo", b""),
                            "unexpected CALL frame (expected REPLY)")

    def test_peer_error_reaches_the_link(self) -> None:
        """An ERROR from the peer closes the stream, and the link hears the peer's reason."""
        protocol, transport, link = self.client()
        with captured_log():
            protocol.dataReceived(self.REPLY + encode_error("member stopped"))
        self.assertEqual(transport.value(), b"")
        protocol.connectionLost()
        self.assertEqual(link.events, [("ready", None),
                                       ("lost", "refused by the peer: member stopped")])


class FakeLink:
    """Records what an outbound message stream tells its link."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def stream_ready(self, protocol: MessageStreamClient) -> None:
        self.events.append(("ready", None))

    def stream_lost(self, protocol: MessageStreamClient) -> None:
        self.events.append(("lost", None))

    def stream_refused(self, reason: str, by_peer: bool) -> None:
        self.events.append(("refused", (reason, by_peer)))


class OutboundTests(SynchronousTestCase):
    """Bytes a broken peer answers our outbound streams with."""

    def client(self) -> tuple[MessageStreamClient, StringTransport, FakeLink]:
        link = FakeLink()
        protocol = MessageStreamClient(Hello(CLUSTER_ID, 1, 2, StreamKind.MSG), link,
                                       max_frame_bytes=1 << 20, max_queued_bytes=1 << 20)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertEqual(transport.value(), HELLO_MSG)
        transport.clear()
        return protocol, transport, link

    def test_garbage_reply(self) -> None:
        """A reply that is not a HELLO of ours is refused with ERROR; never ready."""
        protocol, transport, link = self.client()
        for byte in iterbytes(b"HTTP/1.1 400 Bad Request\r\n\r\n"):
            protocol.dataReceived(byte)
        self.assertEqual(frame_list(transport.value()), [error("unknown frame kind 72")])
        protocol.connectionLost()
        self.assertEqual(link.events, [("refused", ("unknown frame kind 72", False)),
                                       ("lost", None)])
        self.assertFalse(protocol.write_frames(b"x"))

    def test_reply_from_wrong_member(self) -> None:
        """A HELLO answered by another member is refused as "member ID mismatch"."""
        protocol, transport, link = self.client()
        protocol.dataReceived(encode_hello(Hello(CLUSTER_ID, 3, 1, StreamKind.MSG)))
        self.assertEqual(frame_list(transport.value()), [error("member ID mismatch")])
        self.assertEqual(link.events, [("refused", ("member ID mismatch", False))])

    def test_frames_after_hello(self) -> None:
        """The peer sends nothing after its HELLO on a message stream: a MSG is refused."""
        protocol, transport, link = self.client()
        protocol.dataReceived(encode_hello(REPLY_MSG) + encode_frame(FrameKind.MSG, b""))
        self.assertEqual(frame_list(transport.value()),
                         [error("unexpected MSG frame (expected nothing)")])
        self.assertEqual(link.events, [("ready", None), ("refused", (
            "unexpected MSG frame (expected nothing)", False))])

    def test_ack_before_snapshot_sent(self) -> None:
        """An ACK before the snapshot was sent fails that snapshot."""
        outcomes: list[str | None] = []
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"db")
        source = open(path, "rb")
        protocol = SnapshotStreamClient(Hello(CLUSTER_ID, 1, 2, StreamKind.SNAP), b"", source,
                                        1 << 20, outcomes.append)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(encode_frame(FrameKind.ACK))
        self.assertEqual(outcomes, ["unexpected ACK frame (expected HELLO)"])
        protocol.connectionLost()
        self.assertEqual(len(outcomes), 1)
        self.assertTrue(source.closed)
