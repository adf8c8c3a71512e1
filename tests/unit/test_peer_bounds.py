"""Bounds of the peer transport in time and count (STYLE.md §6: every buffer and wait has one).

A peer that never greets, a snapshot stream that stalls, a receiver that never ACKs, a
flood of connections, an oversize snapshot and a peer that keeps refusing us: each is
cut off at its bound on a `Clock`, leaves no temp file and no delayed call behind, and
the member keeps serving its real peers (`Cluster` from test_peer_transport).
"""
from __future__ import annotations

import os

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.compat import iterbytes
from twisted.trial.unittest import SynchronousTestCase

from etcdd.peer.connection import PeerLimits
from etcdd.peer.framing import FrameKind, Hello, StreamKind, encode_frame, encode_hello
from etcdd.peer.protocol import MessageStreamClient, PeerServerProtocol
from etcdd.peer.snapshot import SnapshotStreamClient
from tests.unit.test_peer_bad_input import (HELLO_MSG, HELLO_SNAP, REPLY_MSG, FakeLink, error,
                                            frame_list, snap_stream)
from tests.unit.test_peer_transport import (CLUSTER_ID, Cluster, accept, captured_log,
                                            formats, message, msg_snap, url)

REPLY_SNAP = Hello(CLUSTER_ID, 2, 1, StreamKind.SNAP)
PART = "tmp-000000000000002a.snap.db.part"
_Sender = tuple[SnapshotStreamClient, StringTransport, Clock]


class _MemberCase(SynchronousTestCase):
    """Member 2 of a running two-member cluster, and raw connections to it."""

    def start(self, **options: object) -> Cluster:
        self.cluster = Cluster(self, ids=(1, 2), **options)
        self.clock = self.cluster.clock
        return self.cluster

    def connect(self) -> tuple[PeerServerProtocol, StringTransport]:
        return accept(self.cluster)

    def feed(self, raw: bytes) -> tuple[PeerServerProtocol, StringTransport]:
        """A new connection, fed `raw` one byte at a time."""
        protocol, transport = self.connect()
        self.feed_more(protocol, raw)
        return protocol, transport

    def feed_more(self, protocol: PeerServerProtocol, raw: bytes) -> None:
        for byte in iterbytes(raw):
            protocol.dataReceived(byte)

    def part_files(self) -> list[str]:
        return os.listdir(self.cluster.snapshot_dirs[2])

    def assert_still_serving(self) -> None:
        """Member 1's stream to member 2 still delivers; stopping leaves nothing behind."""
        before = len(self.cluster.handlers[2].processed)
        self.cluster.transports[1].send([message(2, index=77)])
        self.cluster.network.flush()
        self.assertEqual(self.cluster.handlers[2].processed[before:], [message(2, index=77)])
        self.assertEqual(self.part_files(), [])
        self.cluster.stop(self)


class HelloTimeoutTests(_MemberCase):

    def test_silent_connection_closed_after_ten_seconds(self) -> None:
        """An inbound connection without a HELLO for 10 s gets ERROR "hello timeout" and is
        closed, logged once."""
        self.start()
        with captured_log() as events:
            protocol, transport = self.feed(HELLO_MSG[:7])
            self.clock.advance(9.75)
            self.assertEqual(transport.value(), b"")
            self.assertFalse(transport.disconnecting)
            self.clock.advance(0.25)
            self.assertEqual(frame_list(transport.value()), [error("hello timeout")])
            self.assertTrue(transport.disconnecting)
            protocol.connectionLost()
            self.clock.advance(100)
        self.assertEqual([e["reason"] for e in formats(events, "{reason}")], ["hello timeout"])
        self.assertNotIn(protocol, self.cluster.transports[2]._context.inbound)
        self.assert_still_serving()

    def test_hello_in_time_stops_the_clock(self) -> None:
        """A HELLO within the bound ends it: a quiet message stream stays open."""
        self.start()
        protocol, transport = self.feed(HELLO_MSG)
        self.clock.advance(1000)
        self.assertEqual(frame_list(transport.value()), [(FrameKind.HELLO,
                                                          encode_hello(REPLY_MSG)[5:])])
        self.assertFalse(transport.disconnecting)
        self.feed_more(protocol, encode_frame(FrameKind.MSG,
                                              message(2, index=3).SerializeToString()))
        self.assertEqual(self.cluster.handlers[2].processed, [message(2, index=3)])
        self.assert_still_serving()

    def test_no_error_on_a_closing_transport(self) -> None:
        """A connection already closing when its HELLO time runs out is closed without an
        ERROR it could not send."""
        self.start()
        protocol, transport = self.connect()
        transport.loseConnection()
        self.clock.advance(10)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(protocol.closed)
        protocol.connectionLost()
        self.assert_still_serving()

    def test_outbound_stream_gives_up_on_a_silent_peer(self) -> None:
        """Our message stream to a peer that accepts but never answers HELLO is refused
        after 10 s (logged as refused by us) and redialled."""
        cluster = self.start()
        silent = "http://127.0.0.1:9999"
        cluster.network.listeners[silent] = Factory.forProtocol(Protocol)
        t1 = cluster.transports[1]
        with captured_log() as events:
            t1.add_peer(3, [silent])
            cluster.network.flush()
            cluster.clock.advance(9.75)
            cluster.network.flush()
            self.assertEqual(cluster.network.attempts.count(silent), 1)
            cluster.clock.advance(0.25)
            cluster.network.flush()
            self.assertFalse(t1.is_active(3))
            cluster.clock.advance(1.2)
            cluster.network.flush()
        [refused] = formats(events, "peer {id:x} at {url}")
        self.assertEqual((refused["id"], refused["reason"], refused["side"]),
                         (3, "hello timeout", "refused by us"))
        self.assertEqual(cluster.network.attempts.count(silent), 2)
        t1.remove_peer(3)
        self.assert_still_serving()


class SnapshotIdleTests(_MemberCase):

    HEADER = HELLO_SNAP + encode_frame(FrameKind.SNAP_HEADER, msg_snap(2).SerializeToString())

    def assert_aborted(self, transport: StringTransport, reason: str) -> None:
        self.assertEqual(frame_list(transport.value()),
                         [(FrameKind.HELLO, encode_hello(REPLY_SNAP)[5:]), error(reason)])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.part_files(), [])
        self.assertEqual(self.cluster.transports[2]._context.receiving, set())
        self.assertEqual(self.cluster.handlers[2].received, [])

    def test_stalled_stream_aborted_after_thirty_seconds(self) -> None:
        """Each frame buys 30 s; a stream with no frame for 30 s is aborted and its .part
        removed (bytes short of a frame are no progress)."""
        self.start()
        protocol, transport = self.feed(self.HEADER + encode_frame(FrameKind.SNAP_CHUNK, b"a"))
        self.assertEqual(self.part_files(), [PART])
        self.clock.advance(29)
        self.feed_more(protocol, encode_frame(FrameKind.SNAP_CHUNK, b"b"))
        self.clock.advance(29)
        self.feed_more(protocol, encode_frame(FrameKind.SNAP_CHUNK, b"cdef")[:-1])
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assert_aborted(transport, "no snapshot frame for 30 s")
        protocol.connectionLost()
        self.assert_still_serving()

    def test_no_header_after_hello(self) -> None:
        """A snapshot stream that greets and then says nothing is aborted after 30 s."""
        self.start()
        protocol, transport = self.feed(HELLO_SNAP)
        self.clock.advance(29.75)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.25)
        self.assert_aborted(transport, "no snapshot frame for 30 s")
        protocol.connectionLost()
        self.assert_still_serving()

    def test_install_is_not_idleness(self) -> None:
        """While the server installs a received snapshot the stream waits as long as it
        takes, then ACKs."""
        self.start()
        install = self.cluster.handlers[2].install = Deferred()
        protocol, transport = self.feed(snap_stream(b"db"))
        self.clock.advance(1000)
        self.assertFalse(transport.disconnecting)
        install.callback(None)
        self.assertEqual(frame_list(transport.value())[-1], (FrameKind.ACK, b""))
        protocol.connectionLost()
        self.assert_still_serving()

    def test_configured_idle_bound(self) -> None:
        """The idle bound is a constructor argument."""
        self.start(snapshot_idle_seconds=5)
        protocol, transport = self.feed(self.HEADER)
        self.clock.advance(5)
        self.assert_aborted(transport, "no snapshot frame for 5 s")
        protocol.connectionLost()
        self.assert_still_serving()


class SnapshotSizeTests(_MemberCase):

    def test_snapshot_over_the_bound_refused(self) -> None:
        """A db growing past max_snapshot_bytes is refused at the chunk that passes it and
        its .part removed; one of exactly the bound is received."""
        self.start(max_snapshot_bytes=1000)
        raw = (HELLO_SNAP + encode_frame(FrameKind.SNAP_HEADER, msg_snap(2).SerializeToString())
               + encode_frame(FrameKind.SNAP_CHUNK, b"x" * 600)
               + encode_frame(FrameKind.SNAP_CHUNK, b"x" * 401))
        with captured_log() as events:
            protocol, transport = self.feed(raw)
        self.assertEqual(frame_list(transport.value())[-1],
                         error("snapshot is over the limit of 1000 bytes"))
        self.assertEqual([e["reason"] for e in formats(events, "{reason}")],
                         ["snapshot is over the limit of 1000 bytes"])
        self.assertEqual(self.part_files(), [])
        protocol.connectionLost()
        exact, transport = self.feed(snap_stream(b"y" * 1000))
        self.assertEqual(frame_list(transport.value())[-1], (FrameKind.ACK, b""))
        self.assertEqual([data for _, data, _ in self.cluster.handlers[2].received],
                         [b"y" * 1000])
        exact.connectionLost()
        self.assert_still_serving()

    def test_sender_hears_the_refusal(self) -> None:
        """The sending member of an oversize snapshot reports it failed."""
        self.start(max_snapshot_bytes=1 << 20)
        self.cluster.handlers[1].snapshot_db = b"z" * ((1 << 20) + 1)
        self.cluster.transports[1].send([msg_snap(2)])
        self.cluster.network.flush()
        self.assertEqual(self.cluster.handlers[1].snapshot_reports, [(2, True)])
        self.assertEqual(self.cluster.handlers[2].received, [])
        self.assert_still_serving()


class SnapshotSenderTests(SynchronousTestCase):

    def test_no_ack_reported_failed_after_bound(self) -> None:
        """A receiver that never answers SNAP_END is given up on after 120 s: the snapshot
        is reported failed, the connection closed and the receiver cleans up."""
        cluster = Cluster(self, ids=(1, 2))
        cluster.handlers[1].snapshot_db = b"db" * 1000
        install = cluster.handlers[2].install = Deferred()
        cluster.transports[1].send([msg_snap(2)])
        cluster.network.flush()
        self.assertEqual(len(cluster.handlers[2].received), 1)
        cluster.clock.advance(119.75)
        self.assertEqual(cluster.handlers[1].snapshot_reports, [])
        with captured_log() as events:
            cluster.clock.advance(0.25)
            cluster.network.flush()
        self.assertEqual(cluster.handlers[1].snapshot_reports, [(2, True)])
        [failed] = formats(events, "failed: {reason}")
        self.assertEqual(failed["reason"], "no ACK within 120 s of SNAP_END")
        self.assertEqual(len(cluster.network.pumps), 2)         # the message streams
        install.callback(None)
        self.assertEqual(os.listdir(cluster.snapshot_dirs[2]), [])
        self.assertEqual([p for p in cluster.handlers[1].source_paths if os.path.exists(p)], [])
        cluster.stop(self)

    def client(self, outcomes: list[str | None]) -> _Sender:
        """A snapshot sender of a 600 KiB db on a StringTransport, its HELLO written."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"d" * (600 * 1024))
        clock = Clock()
        protocol = SnapshotStreamClient(Hello(CLUSTER_ID, 1, 2, StreamKind.SNAP), b"hdr",
                                        open(path, "rb"), 1 << 20, outcomes.append,
                                        reactor=clock, limits=PeerLimits())
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport, clock

    def test_stalled_send_aborted(self) -> None:
        """A send TCP does not drain for 30 s is aborted (no graceful close to wait on)."""
        outcomes: list[str | None] = []
        protocol, transport, clock = self.client(outcomes)
        protocol.dataReceived(encode_hello(REPLY_SNAP))
        self.assertIs(transport.producer, protocol)
        clock.advance(20)
        protocol.resumeProducing()                      # TCP drained: one chunk out
        clock.advance(29.75)
        self.assertEqual(outcomes, [])
        clock.advance(0.25)
        self.assertEqual(outcomes, ["snapshot send stalled for 30 s"])
        self.assertTrue(transport.disconnected)         # StringTransport: aborted
        self.assertIsNone(transport.producer)
        protocol.connectionLost()
        self.assertEqual(len(outcomes), 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_hello_reply_timeout(self) -> None:
        """A snapshot receiver that never answers our HELLO fails the send after 10 s."""
        outcomes: list[str | None] = []
        protocol, transport, clock = self.client(outcomes)
        clock.advance(10)
        self.assertEqual(outcomes, ["hello timeout"])
        self.assertEqual(frame_list(transport.value()[31:]), [error("hello timeout")])
        protocol.connectionLost()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_message_stream_hello_timeout(self) -> None:
        """An outbound message stream's HELLO unanswered for 10 s is refused to its link."""
        clock, link = Clock(), FakeLink()
        protocol = MessageStreamClient(Hello(CLUSTER_ID, 1, 2, StreamKind.MSG), link, 1 << 20,
                                       1 << 20, reactor=clock)
        transport = StringTransport()
        protocol.makeConnection(transport)
        clock.advance(10)
        self.assertEqual(link.events, [("refused", ("hello timeout", False))])
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost()
        self.assertEqual(clock.getDelayedCalls(), [])


class InboundLimitTests(_MemberCase):

    def test_connections_past_the_bound_turned_away(self) -> None:
        """Past max_inbound_connections a new connection gets ERROR "too many peer
        connections" at once; the warning is rate-limited; a freed slot is usable."""
        self.start(max_inbound_connections=3,       # member 1's stream holds one slot
                   hello_timeout_seconds=60)
        held = [self.connect(), self.connect()]
        with captured_log() as events:
            turned_away = [self.connect() for _ in range(3)]
            self.clock.advance(10)
            turned_away.append(self.connect())
        for protocol, transport in turned_away:
            self.assertEqual(frame_list(transport.value()),
                             [error("too many peer connections")])
            self.assertTrue(transport.disconnecting)
            protocol.connectionLost()
        warnings = formats(events, "turned away")
        self.assertEqual([(w["reason"], w["limit"], w["count"]) for w in warnings],
                         [("too many peer connections", 3, 1), ("too many peer connections", 3, 3)])
        self.assertEqual(len(self.cluster.transports[2]._context.inbound), 3)
        held[0][0].connectionLost()
        protocol, transport = self.feed(HELLO_MSG)
        self.assertEqual(frame_list(transport.value()),
                         [(FrameKind.HELLO, encode_hello(REPLY_MSG)[5:])])
        self.assert_still_serving()


class RefusedRedialTests(SynchronousTestCase):

    def test_refused_stream_redialled_after_a_second(self) -> None:
        """After the peer refuses our stream with ERROR, the next dial waits 1 s, not the
        ~0.1 s of the backoff after a connection that succeeded."""
        cluster = Cluster(self, ids=(1,))
        stranger = cluster.add_member(self, 2, cluster_id=0x1234, listen=False)
        stranger.add_peer(1, [url(1)])
        stranger.start()
        cluster.network.flush()
        self.assertEqual(len(cluster.network.attempts), 1)
        cluster.clock.advance(0.99)
        cluster.network.flush()
        self.assertEqual(len(cluster.network.attempts), 1)
        cluster.clock.advance(0.02)
        cluster.network.flush()
        self.assertEqual(len(cluster.network.attempts), 2)
        for _ in range(90):
            cluster.clock.advance(0.1)
            cluster.network.flush()
        self.assertIn(len(cluster.network.attempts), (10, 11))
        cluster.stop(self)

    def test_connection_loss_still_redialled_fast(self) -> None:
        """A refusal does not slow later redials: a plain loss after a good stream is
        redialled within 0.2 s."""
        cluster = Cluster(self, ids=(1, 2), refused_retry_seconds=5)
        t1 = cluster.transports[1]
        stream = cluster.stream(1, 2)
        stream._refuse("unexpected MSG frame (expected nothing)")   # a refusal by us
        cluster.network.flush()
        cluster.clock.advance(4.9)
        cluster.network.flush()
        self.assertFalse(t1.is_active(2))
        cluster.clock.advance(0.2)
        cluster.network.flush()
        self.assertTrue(t1.is_active(2))
        cluster.network.cut(cluster.network.pump_of(cluster.stream(1, 2)))
        cluster.clock.advance(0.2)
        cluster.network.flush()
        self.assertTrue(t1.is_active(2))
        cluster.stop(self)
