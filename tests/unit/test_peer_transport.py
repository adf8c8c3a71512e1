"""PeerTransport (etcdd.peer.transport): members talking through an in-memory network.

Every member is a real PeerTransport on one `Clock`; `FakeNetwork` stands in for TCP
(iosim pumps, no sockets) and decides which URLs accept connections, so tests can take a
member down, bring it back and cut connections mid-stream.
"""
from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from etcdd.api.rpctypes import GrpcError, Status
from etcdd.peer.framing import Hello, StreamKind
from etcdd.peer.protocol import MessageStreamClient
from etcdd.peer.transport import IRaftPeerHandler, PeerTransport
from etcdd.proto import raft_pb2

CLUSTER_ID = 0xCDF818194E3A8C32


def url(member_id: int) -> str:
    return f"http://127.0.0.1:{2380 + member_id}"


def message(to: int, sender: int = 1, index: int = 1, kind: int = raft_pb2.MsgApp,
            data: bytes = b"") -> raft_pb2.Message:
    m = raft_pb2.Message(type=kind, to=to, term=2, index=index)
    setattr(m, "from", sender)
    if data:
        m.entries.add(Term=2, Index=index + 1, Data=data)
    return m


def msg_snap(to: int, sender: int = 1, index: int = 0x2A) -> raft_pb2.Message:
    m = message(to, sender, kind=raft_pb2.MsgSnap)
    m.snapshot.metadata.index, m.snapshot.metadata.term = index, 2
    m.snapshot.metadata.conf_state.voters.extend([1, 2, 3])
    return m


class InstallError(Exception):
    """The fake server failed to install a received snapshot."""


@implementer(IRaftPeerHandler)
class FakeHandler:
    """The server side as the transport sees it; remembers what it was told."""

    def __init__(self, work_dir: str) -> None:
        self.work_dir = work_dir
        self.processed: list[raft_pb2.Message] = []
        self.unreachable: list[int] = []
        self.snapshot_reports: list[tuple[int, bool]] = []
        self.snapshot_db = b""                  # what snapshot_source hands out
        self.source: Deferred | None = None     # set: snapshot_source returns it instead
        self.sources_asked = 0
        self.source_paths: list[str] = []
        self.received: list[tuple[raft_pb2.Message, bytes, str]] = []
        self.install: Deferred | Exception | None = None   # None: install at once
        self.calls: list[tuple[int, str, bytes]] = []
        # method name -> what answers a call of it (the request bytes in, bytes or a Deferred out)
        self.methods: dict[str, Callable[[bytes], Any]] = {}

    def process(self, message: raft_pb2.Message) -> None:
        self.processed.append(message)

    def report_unreachable(self, member_id: int) -> None:
        self.unreachable.append(member_id)

    def report_snapshot(self, member_id: int, failed: bool) -> None:
        self.snapshot_reports.append((member_id, failed))

    def snapshot_source(self, message: raft_pb2.Message) -> Deferred:
        self.sources_asked += 1
        if self.source is not None:
            return self.source
        path = os.path.join(self.work_dir, f"source-{self.sources_asked}.db")
        with open(path, "wb") as f:
            f.write(self.snapshot_db)
        self.source_paths.append(path)
        return succeed(path)

    def receive_snapshot(self, message: raft_pb2.Message, db_path: str) -> Deferred:
        with open(db_path, "rb") as f:
            self.received.append((message, f.read(), db_path))
        if isinstance(self.install, Exception):
            return fail(self.install)
        return self.install if self.install is not None else succeed(None)

    def handle_call(self, from_id: int, method: str, payload: bytes) -> Deferred | bytes:
        self.calls.append((from_id, method, payload))
        answer = self.methods.get(method)
        if answer is None:
            raise GrpcError(Status.UNIMPLEMENTED, f"unknown peer method {method}")
        return answer(payload)


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    def __init__(self, network: FakeNetwork, url: str, owner: int) -> None:
        self.network, self.url, self.owner = network, url, owner

    def connect(self, factory: IProtocolFactory) -> Deferred:
        return self.network.connect(self.url, factory, self.owner)


class FakeNetwork:
    """URLs to listening factories; every connection is an iosim pump."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.listeners: dict[str, Any] = {}
        self.pumps: list[iosim.IOPump] = []
        self.ends: dict[int, tuple[int, str]] = {}      # id(pump) -> (connecting member, url)
        self.attempts: list[str] = []

    def endpoint_factory(self, owner: int) -> Callable[[str], FakeEndpoint]:
        return lambda url: FakeEndpoint(self, url, owner)

    def connect(self, url: str, factory: IProtocolFactory, owner: int) -> Deferred:
        self.attempts.append(url)
        listener = self.listeners.get(url)
        if listener is None:
            return fail(ConnectionRefusedError(url))
        client, server = factory.buildProtocol(None), listener.buildProtocol(None)
        pump = iosim.connect(server, iosim.makeFakeServer(server), client,
                             iosim.makeFakeClient(client), greet=False, clock=self.clock)
        self.pumps.append(pump)
        self.ends[id(pump)] = (owner, url)
        return succeed(client)

    def cut_member(self, member_id: int) -> None:
        """Cut every connection `member_id` made or accepted."""
        for pump in list(self.pumps):
            owner, to = self.ends.get(id(pump), (None, None))
            if member_id == owner or url(member_id) == to:
                self.cut(pump)

    def flush(self) -> None:
        """Move bytes and disconnections until nothing moves."""
        moved = True
        while moved:
            moved = False
            for pump in list(self.pumps):
                moved = pump.pump() or moved
                if pump.clientIO.disconnected and pump.serverIO.disconnected:
                    self.pumps.remove(pump)
                    del self.ends[id(pump)]

    def cut(self, pump: iosim.IOPump) -> None:
        """Lose the connection abruptly: bytes in flight are gone, both sides see it."""
        pump.clientIO.stream.clear()
        pump.serverIO.stream.clear()
        for io in (pump.clientIO, pump.serverIO):
            io.disconnectReason = ConnectionLost("cut")
        pump.clientIO.disconnecting = True
        self.flush()

    def pump_of(self, protocol: object) -> iosim.IOPump:
        """The pump whose client side is `protocol`."""
        for pump in self.pumps:
            if getattr(pump.client, "_protocol", pump.client) is protocol:
                return pump
        raise LookupError(protocol)


class Cluster:
    """PeerTransports for `ids`, each listening on `url(id)`, all peers added, started."""

    def __init__(self, test: SynchronousTestCase, ids: tuple[int, ...] = (1, 2, 3),
                 max_queued_bytes: int = 64 << 20, start: bool = True,
                 **options: Any) -> None:
        """`options` are PeerTransport keyword arguments for every member."""
        self.clock = Clock()
        self.options = options
        self.network = FakeNetwork(self.clock)
        self.handlers: dict[int, FakeHandler] = {}
        self.transports: dict[int, PeerTransport] = {}
        self.snapshot_dirs: dict[int, str] = {}
        for member_id in ids:
            self.add_member(test, member_id, CLUSTER_ID, max_queued_bytes)
        for member_id in ids:
            for other in ids:
                if other != member_id:
                    self.transports[member_id].add_peer(other, [url(other)])
        if start:
            for transport in self.transports.values():
                transport.start()
            self.network.flush()

    def add_member(self, test: SynchronousTestCase, member_id: int, cluster_id: int,
                   max_queued_bytes: int = 64 << 20, listen: bool = True) -> PeerTransport:
        work = test.mktemp()
        snapshot_dir = os.path.join(work, "snap")
        os.makedirs(snapshot_dir)
        handler = self.handlers[member_id] = FakeHandler(work)
        verifyObject(IRaftPeerHandler, handler)
        transport = PeerTransport(self.clock, member_id, cluster_id, handler, snapshot_dir,
                                  max_queued_bytes_per_peer=max_queued_bytes,
                                  endpoint_factory=self.network.endpoint_factory(member_id),
                                  rand=random.Random(member_id), **self.options)
        self.transports[member_id] = transport
        self.snapshot_dirs[member_id] = snapshot_dir
        if listen:
            self.network.listeners[url(member_id)] = transport.server_factory()
        return transport

    def stream(self, member_id: int, peer: int) -> Any:
        return self.transports[member_id]._links[peer].stream

    def crash(self, member_id: int) -> None:
        """Member `member_id` dies: it stops listening and every connection of it is cut."""
        del self.network.listeners[url(member_id)]
        self.transports[member_id].stop()
        self.network.cut_member(member_id)

    def restart(self, test: SynchronousTestCase, member_id: int) -> None:
        """A fresh process for `member_id`: new transport and handler, peers added, started."""
        transport = self.add_member(test, member_id, CLUSTER_ID)
        for other in self.transports:
            if other != member_id:
                transport.add_peer(other, [url(other)])
        transport.start()

    def stop(self, test: SynchronousTestCase) -> None:
        """Stop every member; each stop() fires and nothing stays scheduled."""
        stopping = [t.stop() for t in self.transports.values()]
        self.network.flush()
        for d in stopping:
            test.assertIsNone(test.successResultOf(d))
        test.assertEqual(self.network.pumps, [])
        test.assertEqual(self.clock.getDelayedCalls(), [])


def accept(cluster: "Cluster", member_id: int = 2) -> tuple[Any, StringTransport]:
    """A raw inbound connection to `member_id`'s peer port, on a StringTransport."""
    protocol = cluster.transports[member_id].server_factory().buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


@contextmanager
def captured_log() -> Iterator[list[dict]]:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def formats(events: list[dict], text: str) -> list[dict]:
    return [e for e in events if text in (e.get("log_format") or "")]


class MessageTests(SynchronousTestCase):

    def test_messages_delivered_in_order(self) -> None:
        """Each peer gets exactly its messages, in the order they were sent."""
        cluster = Cluster(self)
        batch = [message(2, index=1), message(3, index=1), message(2, index=2, data=b"v" * 300),
                 message(3, index=2), message(2, index=3)]
        cluster.transports[1].send(batch)
        cluster.network.flush()
        self.assertEqual(cluster.handlers[2].processed, [batch[0], batch[2], batch[4]])
        self.assertEqual(cluster.handlers[3].processed, [batch[1], batch[3]])
        self.assertEqual(cluster.handlers[1].unreachable, [])
        cluster.stop(self)

    def test_one_write_per_peer_per_call(self) -> None:
        """All frames for one peer in one send() leave in a single transport.write."""
        cluster = Cluster(self)
        stream = cluster.stream(1, 2)
        writes: list[bytes] = []
        stream.transport.write = writes.append
        cluster.transports[1].send([message(2, index=i) for i in range(1, 50)])
        self.assertEqual(len(writes), 1)
        self.assertEqual(len(writes[0]), 49 * (5 + message(2, index=1).ByteSize()))

    def test_active_once_hello_answered(self) -> None:
        """A peer is active from the moment it answers our HELLO, and says since when."""
        cluster = Cluster(self, start=False)
        cluster.clock.advance(100)
        t1 = cluster.transports[1]
        self.assertFalse(t1.is_active(2))
        for transport in cluster.transports.values():
            transport.start()
        self.assertFalse(t1.is_active(2))                # HELLO sent, not answered yet
        self.assertIsNone(t1.active_since(2))
        cluster.network.flush()
        self.assertTrue(t1.is_active(2))
        self.assertEqual(t1.active_since(2), 100.0)
        self.assertIsNone(t1.active_since(9))
        self.assertFalse(t1.is_active(9))
        cluster.stop(self)

    def test_unreachable_when_not_connected(self) -> None:
        """Messages for a peer without a live stream (down, or unknown) are dropped and the
        peer reported unreachable once per send() call."""
        cluster = Cluster(self, ids=(1, 2))
        cluster.transports[1].add_peer(3, [url(3)])          # nobody listens there
        cluster.transports[1].send([message(3), message(2), message(3, index=2), message(9)])
        cluster.network.flush()
        self.assertEqual(cluster.handlers[1].unreachable, [3, 9])
        self.assertEqual(len(cluster.handlers[2].processed), 1)
        cluster.transports[1].send([message(3)])
        self.assertEqual(cluster.handlers[1].unreachable, [3, 9, 3])
        cluster.stop(self)

    def test_oversize_message_dropped(self) -> None:
        """A message larger than a frame may be is dropped, and its peer reported, rather than
        sent for the receiver to refuse."""
        cluster = Cluster(self, ids=(1, 2))
        cluster.transports[1]._max_frame_bytes = 1000
        cluster.transports[1].send([message(2, data=b"x" * 2000)])
        cluster.network.flush()
        self.assertEqual(cluster.handlers[1].unreachable, [2])
        self.assertEqual(cluster.handlers[2].processed, [])
        self.assertTrue(cluster.transports[1].is_active(2))
        cluster.stop(self)

    def test_queued_bytes_bound_drops_and_reports(self) -> None:
        """While TCP is backed up, messages queue up to the bound; past it a send is dropped
        and reported; when TCP drains the queue goes out in order."""
        one = message(2, data=b"x" * 100)
        frame_bytes = 5 + one.ByteSize()
        cluster = Cluster(self, ids=(1, 2), max_queued_bytes=3 * frame_bytes)
        stream = cluster.stream(1, 2)
        stream.pauseProducing()                      # what TCP does when its buffer is full
        t1 = cluster.transports[1]
        t1.send([message(2, index=1, data=b"x" * 100), message(2, index=2, data=b"x" * 100)])
        t1.send([message(2, index=3, data=b"x" * 100)])
        self.assertEqual(stream.queued_bytes, 3 * frame_bytes)
        t1.send([message(2, index=4, data=b"x" * 100)])
        self.assertEqual(cluster.handlers[1].unreachable, [2])
        cluster.network.flush()
        self.assertEqual(cluster.handlers[2].processed, [])
        stream.resumeProducing()
        cluster.network.flush()
        self.assertEqual([m.index for m in cluster.handlers[2].processed], [1, 2, 3])
        self.assertEqual(stream.queued_bytes, 0)
        cluster.stop(self)


class ConnectionTests(SynchronousTestCase):

    def test_reconnect_after_connection_loss(self) -> None:
        """A lost stream makes the peer inactive (logged once), and the backoff reconnects it
        without anyone asking."""
        cluster = Cluster(self, ids=(1, 2))
        t1 = cluster.transports[1]
        with captured_log() as events:
            cluster.network.cut(cluster.network.pump_of(cluster.stream(1, 2)))
            self.assertFalse(t1.is_active(2))
            t1.send([message(2)])
            self.assertEqual(cluster.handlers[1].unreachable, [2])
            cluster.clock.advance(0.1)
            cluster.network.flush()
        self.assertTrue(t1.is_active(2))
        self.assertEqual([(e["log_format"], e["id"]) for e in formats(events, "became")],
                         [("peer {id:x} became inactive", 2), ("peer {id:x} became active", 2)])
        t1.send([message(2, index=7)])
        cluster.network.flush()
        self.assertEqual([m.index for m in cluster.handlers[2].processed], [7])
        cluster.stop(self)

    def test_restarted_member_reached_within_a_second(self) -> None:
        """However long a member was down, once it is back it hears from us within ~1 s,
        and the retries in between log nothing."""
        cluster = Cluster(self, ids=(1, 2))
        t1 = cluster.transports[1]
        with captured_log() as events:
            cluster.crash(2)
            for _ in range(300):
                cluster.clock.advance(0.1)
            self.assertFalse(t1.is_active(2))
            self.assertGreater(len(cluster.network.attempts), 30)
            cluster.restart(self, 2)
            cluster.clock.advance(1.05)
            cluster.network.flush()
        self.assertTrue(t1.is_active(2))
        self.assertTrue(cluster.transports[2].is_active(1))
        seen_by_1 = [e["log_format"] for e in formats(events, "became") if e["id"] == 2]
        self.assertEqual(seen_by_1, ["peer {id:x} became inactive", "peer {id:x} became active"])
        self.assertEqual(formats(events, "Scheduling retry"), [])
        cluster.stop(self)

    def test_fallback_url(self) -> None:
        """A peer listed with a dead URL first is reached at its next URL."""
        cluster = Cluster(self, ids=(1, 2), start=False)
        t1 = cluster.transports[1]
        t1.update_peer(2, ["http://10.0.0.9:2380", url(2)])
        t1.start()
        cluster.network.flush()
        self.assertFalse(t1.is_active(2))
        cluster.clock.advance(0.2)
        cluster.network.flush()
        self.assertTrue(t1.is_active(2))
        self.assertEqual(cluster.network.attempts, ["http://10.0.0.9:2380", url(2)])
        cluster.stop(self)

    def test_update_peer_moves_the_stream(self) -> None:
        """New URLs for a peer close the stream to the old one and reconnect to a new one."""
        cluster = Cluster(self, ids=(1, 2))
        t1 = cluster.transports[1]
        moved = "http://127.0.0.1:12380"
        cluster.network.listeners[moved] = cluster.transports[2].server_factory()
        t1.update_peer(2, [url(2)])                        # unchanged: nothing happens
        self.assertEqual(len(cluster.network.pumps), 2)
        t1.update_peer(2, [moved])
        cluster.network.flush()
        self.assertFalse(t1.is_active(2))
        cluster.clock.advance(0.2)
        cluster.network.flush()
        self.assertTrue(t1.is_active(2))
        self.assertEqual(cluster.network.attempts[-1], moved)
        cluster.stop(self)

    def test_remove_peer(self) -> None:
        """A removed peer is inactive at once, its stream closes and is not retried."""
        cluster = Cluster(self, ids=(1, 2))
        t1 = cluster.transports[1]
        t1.remove_peer(2)
        t1.remove_peer(2)
        self.assertFalse(t1.is_active(2))
        cluster.network.flush()
        attempts = len(cluster.network.attempts)
        cluster.clock.advance(5)
        cluster.network.flush()
        self.assertEqual(len(cluster.network.attempts), attempts)
        t1.send([message(2)])
        self.assertEqual(cluster.handlers[1].unreachable, [2])
        cluster.stop(self)

    def test_cluster_id_mismatch_rejected(self) -> None:
        """A member of another cluster is refused with "cluster ID mismatch", both IDs are
        logged, and it never becomes active."""
        cluster = Cluster(self, ids=(1,))
        stranger = cluster.add_member(self, 2, cluster_id=0x1234, listen=False)
        stranger.add_peer(1, [url(1)])
        with captured_log() as events:
            stranger.start()
            cluster.network.flush()
        self.assertFalse(stranger.is_active(1))
        [refused] = formats(events, "(got {got:x}, want {want:x})")
        self.assertEqual((refused["reason"], refused["got"], refused["want"]),
                         ("cluster ID mismatch", 0x1234, CLUSTER_ID))
        [heard] = formats(events, "peer {id:x} at {url}")
        self.assertEqual((heard["reason"], heard["side"]),
                         ("cluster ID mismatch", "refused by the peer"))
        stranger.send([message(1, sender=2)])
        self.assertEqual(cluster.handlers[1].processed, [])
        self.assertEqual(cluster.handlers[2].unreachable, [1])
        cluster.stop(self)

    def test_member_id_mismatch_rejected(self) -> None:
        """A stream meant for another member is refused with "member ID mismatch"."""
        cluster = Cluster(self, ids=(1, 2))
        t1 = cluster.transports[1]
        t1.add_peer(5, [url(2)])                 # member 2 now listens where 5 used to
        with captured_log() as events:
            cluster.network.flush()
        self.assertFalse(t1.is_active(5))
        [heard] = formats(events, "peer {id:x} at {url}")
        self.assertEqual((heard["id"], heard["reason"]), (5, "member ID mismatch"))
        cluster.stop(self)

    def test_stop_closes_everything(self) -> None:
        """stop() closes inbound and outbound connections, stops retrying, and fires."""
        cluster = Cluster(self)
        t1 = cluster.transports[1]
        d = t1.stop()
        self.assertNoResult(d)
        cluster.network.flush()
        self.assertIsNone(self.successResultOf(d))
        self.assertFalse(t1.is_active(2))
        self.assertEqual(t1._context.inbound, set())
        with captured_log() as events:
            cluster.clock.advance(5)
            cluster.network.flush()
        self.assertFalse(cluster.transports[2].is_active(1))
        self.assertEqual({e["reason"] for e in formats(events, "peer {id:x} at {url}")},
                         {"member stopped"})
        cluster.stop(self)


class SnapshotTests(SynchronousTestCase):

    def _cluster(self, size: int = 3 << 20) -> Cluster:
        cluster = Cluster(self, ids=(1, 2))
        cluster.handlers[1].snapshot_db = random.Random(7).randbytes(size)
        return cluster

    def _leftovers(self, cluster: Cluster) -> list[str]:
        files = os.listdir(cluster.snapshot_dirs[2])
        return files + [p for p in cluster.handlers[1].source_paths if os.path.exists(p)]

    def test_snapshot_streamed_end_to_end(self) -> None:
        """A 3 MB snapshot arrives byte for byte with its MsgSnap; the ACK reports success
        and both temp files are gone."""
        cluster = self._cluster()
        snap = msg_snap(2)
        cluster.transports[1].send([snap, message(2, index=9)])
        cluster.network.flush()
        [(received, data, path)] = cluster.handlers[2].received
        self.assertEqual(received, snap)
        self.assertEqual(data, cluster.handlers[1].snapshot_db)
        self.assertEqual(os.path.basename(path), "tmp-000000000000002a.snap.db.part")
        self.assertEqual(cluster.handlers[1].snapshot_reports, [(2, False)])
        self.assertEqual([m.index for m in cluster.handlers[2].processed], [9])
        self.assertEqual(self._leftovers(cluster), [])
        cluster.stop(self)

    def test_chunks_follow_backpressure(self) -> None:
        """The sender reads one chunk each time the transport asks, never the whole file."""
        cluster = self._cluster(size=1 << 20)
        cluster.transports[1].send([msg_snap(2)])
        pump = cluster.network.pumps[-1]
        sizes = []
        for _ in range(3):
            pump.pump()
            sizes.append(sum(len(s) for s in pump.clientIO.stream))
        self.assertLessEqual(max(sizes), 256 * 1024 + 5 + msg_snap(2).ByteSize() + 5)
        cluster.network.flush()
        self.assertEqual(cluster.handlers[1].snapshot_reports, [(2, False)])
        cluster.stop(self)

    def test_receiver_fails_to_install(self) -> None:
        """The receiving server failing to install answers ERROR: reported failed, and the
        received temp file is deleted."""
        cluster = self._cluster()
        cluster.handlers[2].install = InstallError("disk full")
        cluster.transports[1].send([msg_snap(2)])
        cluster.network.flush()
        self.assertEqual(len(self.flushLoggedErrors(InstallError)), 1)
        self.assertEqual(cluster.handlers[1].snapshot_reports, [(2, True)])
        self.assertEqual(self._leftovers(cluster), [])
        cluster.stop(self)

    def test_connection_lost_mid_stream(self) -> None:
        """A connection lost mid-stream deletes the partial temp file and reports failure;
        the next MsgSnap goes through."""
        cluster = self._cluster()
        cluster.transports[1].send([msg_snap(2)])
        pump = cluster.network.pumps[-1]
        for _ in range(4):
            pump.pump()
        self.assertEqual(len(os.listdir(cluster.snapshot_dirs[2])), 1)
        cluster.network.cut(pump)
        self.assertEqual(cluster.handlers[1].snapshot_reports, [(2, True)])
        self.assertEqual(cluster.handlers[2].received, [])
        self.assertEqual(self._leftovers(cluster), [])
        cluster.transports[1].send([msg_snap(2)])
        cluster.network.flush()
        self.assertEqual(cluster.handlers[1].snapshot_reports, [(2, True), (2, False)])
        cluster.stop(self)

    def test_connection_lost_while_installing(self) -> None:
        """A connection lost while the receiver installs fails the sender; the receiver
        still finishes and then removes its temp file."""
        cluster = self._cluster(size=1000)
        install = cluster.handlers[2].install = Deferred()
        cluster.transports[1].send([msg_snap(2)])
        cluster.network.flush()
        [(_, _, path)] = cluster.handlers[2].received
        cluster.network.cut(cluster.network.pumps[-1])
        self.assertEqual(cluster.handlers[1].snapshot_reports, [(2, True)])
        self.assertTrue(os.path.exists(path))
        install.callback(None)
        self.assertEqual(self._leftovers(cluster), [])
        cluster.stop(self)

    def test_source_fails(self) -> None:
        """No snapshot from the server's source: reported failed, nothing connects."""
        cluster = self._cluster()
        cluster.handlers[1].source = fail(InstallError("no db"))
        pumps = len(cluster.network.pumps)
        cluster.transports[1].send([msg_snap(2)])
        self.assertEqual(len(self.flushLoggedErrors(InstallError)), 1)
        self.assertEqual(cluster.handlers[1].snapshot_reports, [(2, True)])
        self.assertEqual(len(cluster.network.pumps), pumps)
        cluster.stop(self)

    def test_unreachable_peer(self) -> None:
        """A MsgSnap for a peer nobody answers for, or no peer at all, is reported failed."""
        cluster = self._cluster()
        cluster.crash(2)
        cluster.transports[1].send([msg_snap(2), msg_snap(9)])
        self.assertEqual(sorted(cluster.handlers[1].snapshot_reports), [(2, True), (9, True)])
        self.assertEqual(self._leftovers(cluster), [])
        cluster.stop(self)

    def test_one_snapshot_in_flight_per_peer(self) -> None:
        """A second MsgSnap while one is in flight is ignored: one source, one report."""
        cluster = self._cluster()
        source = cluster.handlers[1].source = Deferred()
        cluster.transports[1].send([msg_snap(2)])
        cluster.transports[1].send([msg_snap(2, index=50)])
        self.assertEqual(cluster.handlers[1].sources_asked, 1)
        path = os.path.join(cluster.handlers[1].work_dir, "pending.db")
        with open(path, "wb") as f:
            f.write(b"db")
        source.callback(path)
        cluster.network.flush()
        self.assertEqual(cluster.handlers[1].snapshot_reports, [(2, False)])
        self.assertFalse(os.path.exists(path))
        cluster.stop(self)

    def test_stop_drops_snapshot_unreported(self) -> None:
        """stop() cuts a snapshot in flight without telling the stopped server."""
        cluster = self._cluster()
        cluster.transports[1].send([msg_snap(2)])
        cluster.network.pumps[-1].pump()
        cluster.stop(self)
        self.assertEqual(cluster.handlers[1].snapshot_reports, [])
        self.assertEqual(self._leftovers(cluster), [])

    def test_remove_peer_aborts_snapshot(self) -> None:
        """Removing a peer aborts its snapshot in flight, reported failed."""
        cluster = self._cluster()
        cluster.transports[1].send([msg_snap(2)])
        cluster.network.pumps[-1].pump()
        cluster.transports[1].remove_peer(2)
        cluster.network.flush()
        self.assertEqual(cluster.handlers[1].snapshot_reports, [(2, True)])
        self.assertEqual(self._leftovers(cluster), [])
        cluster.stop(self)


class StreamClientTests(SynchronousTestCase):
    """The outbound message stream against a bare StringTransport."""

    def test_close_while_paused_releases_the_transport(self) -> None:
        """A stream paused by TCP and then closed from outside unregisters itself when TCP
        drains, or TCP would never finish closing."""
        link = _NullLink()
        stream = MessageStreamClient(Hello(CLUSTER_ID, 1, 2, StreamKind.MSG), link,
                                     max_frame_bytes=1 << 20, max_queued_bytes=100)
        transport = StringTransport()
        stream.makeConnection(transport)
        self.assertIs(transport.producer, stream)
        stream.pauseProducing()
        self.assertTrue(stream.write_frames(b"x" * 100))
        self.assertFalse(stream.write_frames(b"y"))
        transport.loseConnection()                    # ClientService.stopService does this
        stream.resumeProducing()
        self.assertIsNone(transport.producer)


class _NullLink:
    def stream_ready(self, protocol: object) -> None:
        pass

    def stream_lost(self, protocol: object) -> None:
        pass

    def stream_refused(self, reason: str, by_peer: bool) -> None:
        pass
