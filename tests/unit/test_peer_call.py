"""Calls between members (PeerTransport.call and the call stream), over an in-memory network.

Member 1 calls member 2 through real PeerTransports on one `Clock` (`Cluster` from
test_peer_transport: iosim pumps, no sockets). Member 2's fake handler answers from its
`methods` table, at once or by a Deferred the test fires, so tests choose the order.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.compat import iterbytes
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from etcdd.api.rpctypes import GrpcError, Status
from etcdd.peer.framing import (FrameDecoder, FrameKind, Hello, PeerCallError, StreamKind,
                                decode_reply, encode_call, encode_frame, encode_hello)
from etcdd.peer.transport import IRaftPeerHandler
from etcdd.server.errors import LeaseNotFoundError
from etcdd.server.raftloop import RaftLoop
from tests.unit.test_peer_transport import (CLUSTER_ID, Cluster, accept, captured_log, formats,
                                            url)

HELLO_CALL = encode_hello(Hello(CLUSTER_ID, 1, 2, StreamKind.CALL))


class Answers:
    """Member 2's slow method: each call waits on a Deferred the test fires."""

    def __init__(self) -> None:
        self.waiting: list[Deferred] = []

    def __call__(self, payload: bytes) -> Deferred:
        d: Deferred = Deferred()
        self.waiting.append(d)
        return d


def two_members(test: SynchronousTestCase, **options: Any) -> tuple[Cluster, Answers]:
    """Members 1 and 2, connected; member 2 answers "echo" at once (reversed) and "wait"
    when the test fires `Answers.waiting`."""
    cluster = Cluster(test, ids=(1, 2), **options)
    answers = Answers()
    cluster.handlers[2].methods.update(echo=lambda payload: payload[::-1], wait=answers)
    return cluster, answers


def call_protocol(cluster: Cluster) -> Any:
    """Member 1's outbound call stream to member 2."""
    return cluster.transports[1]._links[2].calls._protocol


class CallTests(SynchronousTestCase):

    def test_round_trip(self) -> None:
        """A call reaches the peer's handler with the caller's ID and fires with its answer;
        later calls reuse the one call connection."""
        cluster, _ = two_members(self)
        t1 = cluster.transports[1]
        d = t1.call(2, "echo", b"abc", timeout_seconds=5)
        self.assertNoResult(d)
        cluster.network.flush()
        self.assertEqual(self.successResultOf(d), b"cba")
        connections = len(cluster.network.attempts)
        d = t1.call(2, "echo", b"", timeout_seconds=5)
        cluster.network.flush()
        self.assertEqual(self.successResultOf(d), b"")
        self.assertEqual(len(cluster.network.attempts), connections)
        self.assertEqual(cluster.handlers[2].calls, [(1, "echo", b"abc"), (1, "echo", b"")])
        cluster.stop(self)

    def test_calls_before_hello_go_in_one_write(self) -> None:
        """Calls made while the call stream is being opened wait for the peer's HELLO and
        then leave together in one write, on one connection."""
        cluster, _ = two_members(self)
        t1 = cluster.transports[1]
        attempts = len(cluster.network.attempts)
        calls = [t1.call(2, "echo", b"%d" % i, timeout_seconds=5) for i in range(10, 13)]
        self.assertEqual(len(cluster.network.attempts), attempts + 1)
        transport, writes = call_protocol(cluster).transport, []
        write = transport.write
        transport.write = lambda data: (writes.append(data), write(data))
        cluster.network.flush()
        self.assertEqual(len(writes), 1)
        self.assertEqual([self.successResultOf(d) for d in calls], [b"01", b"11", b"21"])
        cluster.stop(self)

    def test_remote_error_carries_etcds_message(self) -> None:
        """A handler raising, or failing its Deferred with, an etcd error gives the caller
        that error's gRPC code and etcd's exact message; nothing is logged as a bug."""
        cluster, answers = two_members(self)
        t1 = cluster.transports[1]
        cluster.handlers[2].methods["renew"] = lease_not_found
        raised = t1.call(2, "renew", b"\x08\x2a", timeout_seconds=5)
        failed = t1.call(2, "wait", b"", timeout_seconds=5)
        cluster.network.flush()
        answers.waiting[0].errback(LeaseNotFoundError())
        cluster.network.flush()
        for d in (raised, failed):
            error = self.failureResultOf(d, GrpcError).value
            self.assertEqual((error.code, error.message),
                             (Status.NOT_FOUND, "etcdserver: requested lease not found"))
        self.assertEqual(self.flushLoggedErrors(), [])
        cluster.stop(self)

    def test_unknown_method(self) -> None:
        """A method the peer's handler does not know fails with UNIMPLEMENTED."""
        cluster, _ = two_members(self)
        d = cluster.transports[1].call(2, "nope", b"", timeout_seconds=5)
        cluster.network.flush()
        error = self.failureResultOf(d, GrpcError).value
        self.assertEqual((error.code, error.message),
                         (Status.UNIMPLEMENTED, "unknown peer method nope"))
        cluster.stop(self)

    def test_unexpected_error_is_unknown_and_logged(self) -> None:
        """An exception missing from the wire table reaches the caller as UNKNOWN with its
        text, and the answering member logs its traceback."""
        cluster, _ = two_members(self)
        cluster.handlers[2].methods["boom"] = lambda payload: 1 // 0
        d = cluster.transports[1].call(2, "boom", b"", timeout_seconds=5)
        cluster.network.flush()
        error = self.failureResultOf(d, GrpcError).value
        self.assertEqual((error.code, error.message),
                         (Status.UNKNOWN, "integer division or modulo by zero"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        cluster.stop(self)

    def test_concurrent_calls_answered_out_of_order(self) -> None:
        """Calls in flight reach the handler at once and each caller gets its own answer,
        whatever order the handler answers in."""
        cluster, answers = two_members(self)
        calls = [cluster.transports[1].call(2, "wait", bytes([i]), timeout_seconds=5)
                 for i in range(3)]
        cluster.network.flush()
        self.assertEqual([payload for _, _, payload in cluster.handlers[2].calls],
                         [b"\x00", b"\x01", b"\x02"])
        for i in (2, 0, 1):
            answers.waiting[i].callback(b"answer %d" % i)
            cluster.network.flush()
            self.assertEqual(self.successResultOf(calls[i]), b"answer %d" % i)
        cluster.stop(self)

    def test_reply_too_large(self) -> None:
        """An answer too large for a frame fails that call with RESOURCE_EXHAUSTED; the
        connection stays up for the next call."""
        cluster, _ = two_members(self, max_frame_bytes=1000)
        cluster.handlers[2].methods["double"] = lambda payload: payload * 2
        t1 = cluster.transports[1]
        with captured_log() as events:
            d = t1.call(2, "double", b"x" * 600, timeout_seconds=5)
            cluster.network.flush()
        error = self.failureResultOf(d, GrpcError).value
        self.assertEqual((error.code, error.message), (Status.RESOURCE_EXHAUSTED,
                         "peer reply of 1200 bytes is over the frame limit"))
        self.assertEqual(len(formats(events, "over the {limit}-byte frame limit")), 1)
        d = t1.call(2, "echo", b"ok", timeout_seconds=5)
        cluster.network.flush()
        self.assertEqual(self.successResultOf(d), b"ko")
        cluster.stop(self)

    def test_request_too_large(self) -> None:
        """A request too large for a frame fails at once, without being sent."""
        cluster, _ = two_members(self, max_frame_bytes=1000)
        d = cluster.transports[1].call(2, "echo", b"x" * 1000, timeout_seconds=5)
        self.assertEqual(self.failureResultOf(d, PeerCallError).value.reason,
                         "call of 1013 bytes is over the frame limit of 1000 bytes")
        self.assertEqual(cluster.handlers[2].calls, [])
        cluster.stop(self)


class FailureTests(SynchronousTestCase):

    def test_timeout(self) -> None:
        """A call unanswered for `timeout_seconds` fails then, not a moment before; its late
        reply is ignored and the connection serves the next call."""
        cluster, answers = two_members(self)
        t1 = cluster.transports[1]
        d = t1.call(2, "wait", b"", timeout_seconds=2)
        cluster.network.flush()
        cluster.clock.advance(1.9)
        self.assertNoResult(d)
        cluster.clock.advance(0.1)
        self.assertEqual(self.failureResultOf(d, PeerCallError).value.reason,
                         "no reply from peer 2 within 2 s")
        answers.waiting[0].callback(b"late")
        cluster.network.flush()
        d = t1.call(2, "echo", b"next", timeout_seconds=2)
        cluster.network.flush()
        self.assertEqual(self.successResultOf(d), b"txen")
        cluster.stop(self)

    def test_connection_lost_with_calls_in_flight(self) -> None:
        """Losing the call connection fails every call in flight; the answers the peer
        gives afterwards go nowhere, and the next call reconnects."""
        cluster, answers = two_members(self)
        t1 = cluster.transports[1]
        calls = [t1.call(2, "wait", b"", timeout_seconds=5) for _ in range(2)]
        cluster.network.flush()
        cluster.network.cut(cluster.network.pump_of(call_protocol(cluster)))
        for d in calls:
            self.assertEqual(self.failureResultOf(d, PeerCallError).value.reason,
                             "peer 2: connection lost: Connection to the other side was "
                             "lost in a non-clean fashion: cut.")
        for waiting in answers.waiting:
            waiting.callback(b"too late")
        self.assertEqual(self.flushLoggedErrors(), [])
        d = t1.call(2, "echo", b"again", timeout_seconds=5)
        cluster.network.flush()
        self.assertEqual(self.successResultOf(d), b"niaga")
        cluster.stop(self)

    def test_unknown_and_unreachable_peers(self) -> None:
        """A call to a member that is no peer, or to one nobody answers for, fails at once."""
        cluster, _ = two_members(self)
        t1 = cluster.transports[1]
        self.assertEqual(self.failureResultOf(t1.call(9, "echo", b"", 5), PeerCallError)
                         .value.reason, "unknown peer 9")
        cluster.crash(2)
        self.assertEqual(self.failureResultOf(t1.call(2, "echo", b"", 5), PeerCallError)
                         .value.reason, "peer 2 unreachable: Connection was refused by "
                                        "other side: http://127.0.0.1:2382.")
        cluster.stop(self)

    def test_refused_hello(self) -> None:
        """A call stream the peer refuses fails its calls with the peer's reason."""
        cluster, _ = two_members(self)
        t1 = cluster.transports[1]
        t1.add_peer(5, [url(2)])                    # member 2 listens there now
        with captured_log():
            d = t1.call(5, "echo", b"", 5)
            cluster.network.flush()
        self.assertEqual(self.failureResultOf(d, PeerCallError).value.reason,
                         "peer 5: refused by the peer: member ID mismatch")
        cluster.stop(self)

    def test_stop_fails_pending_calls(self) -> None:
        """stop() fails every call in flight or not yet sent, closes the call connections,
        and refuses later calls; nothing stays scheduled."""
        cluster, _ = two_members(self)
        t1 = cluster.transports[1]
        sent = t1.call(2, "wait", b"", timeout_seconds=5)
        cluster.network.flush()
        cluster.transports[1].add_peer(3, ["http://127.0.0.1:9"])
        cluster.network.listeners["http://127.0.0.1:9"] = cluster.transports[2].server_factory()
        unsent = t1.call(3, "echo", b"", timeout_seconds=5)     # HELLO not yet answered
        stopping = t1.stop()
        for d in (sent, unsent):
            self.assertEqual(self.failureResultOf(d, PeerCallError).value.reason,
                             "transport stopped")
        self.assertEqual(self.failureResultOf(t1.call(2, "echo", b"", 5), PeerCallError)
                         .value.reason, "transport stopped")
        cluster.network.flush()
        self.successResultOf(stopping)
        cluster.stop(self)

    def test_remove_peer_fails_its_calls(self) -> None:
        """Removing a peer fails its calls in flight; it is unknown from then on."""
        cluster, _ = two_members(self)
        t1 = cluster.transports[1]
        d = t1.call(2, "wait", b"", timeout_seconds=5)
        cluster.network.flush()
        t1.remove_peer(2)
        self.assertEqual(self.failureResultOf(d, PeerCallError).value.reason,
                         "peer 2 removed")
        self.assertEqual(self.failureResultOf(t1.call(2, "echo", b"", 5), PeerCallError)
                         .value.reason, "unknown peer 2")
        cluster.stop(self)

    def test_cancelled_call(self) -> None:
        """A call its caller cancels fails with CancelledError and its reply is ignored."""
        cluster, answers = two_members(self)
        t1 = cluster.transports[1]
        d = t1.call(2, "wait", b"", timeout_seconds=5)
        cluster.network.flush()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(t1._links[2].calls.pending, {})
        answers.waiting[0].callback(b"ignored")
        cluster.network.flush()
        cluster.stop(self)


class BoundTests(SynchronousTestCase):

    def test_in_flight_bound_per_peer(self) -> None:
        """Past `max_calls_in_flight` calls awaiting replies, a call fails at once; an
        answer frees a place."""
        cluster, answers = two_members(self, max_calls_in_flight=3)
        t1 = cluster.transports[1]
        calls = [t1.call(2, "wait", b"", timeout_seconds=5) for _ in range(3)]
        self.assertEqual(self.failureResultOf(t1.call(2, "wait", b"", 5), PeerCallError)
                         .value.reason, "too many calls in flight")
        cluster.network.flush()
        answers.waiting[0].callback(b"one")
        cluster.network.flush()
        self.assertEqual(self.successResultOf(calls[0]), b"one")
        more = t1.call(2, "echo", b"yz", timeout_seconds=5)
        cluster.network.flush()
        self.assertEqual(self.successResultOf(more), b"zy")
        cluster.stop(self)
        for d in calls[1:]:
            self.failureResultOf(d, PeerCallError)

    def test_in_flight_bound_per_inbound_connection(self) -> None:
        """The answering side answers a CALL past its bound with RESOURCE_EXHAUSTED at
        once, and the calls within the bound normally."""
        cluster, answers = two_members(self, max_calls_in_flight=2)
        protocol, transport = accept(cluster)
        protocol.dataReceived(HELLO_CALL)
        transport.clear()
        for call_id in (1, 2, 3):
            for byte in iterbytes(encode_call(call_id, "wait", b"")):
                protocol.dataReceived(byte)
        self.assertEqual(replies(transport.value()),
                         [(3, Status.RESOURCE_EXHAUSTED, b"too many calls in flight")])
        transport.clear()
        answers.waiting[1].callback(b"second")
        answers.waiting[0].callback(b"first")
        self.assertEqual(replies(transport.value()), [(2, 0, b"second"), (1, 0, b"first")])
        protocol.connectionLost()
        cluster.stop(self)


class MalformedTests(SynchronousTestCase):
    """Malformed CALL and REPLY payloads end their connection only."""

    def test_malformed_call_refused(self) -> None:
        """A CALL without a whole method name gets ERROR and a close; member 2 still
        answers member 1's calls."""
        cluster, _ = two_members(self)
        protocol, transport = accept(cluster)
        with captured_log():
            for byte in iterbytes(HELLO_CALL + encode_frame(FrameKind.CALL,
                                                            b"\0" * 7 + b"\1\x09ech")):
                protocol.dataReceived(byte)
        frames = FrameDecoder(1 << 20).feed(transport.value())
        self.assertEqual(frames[-1], (FrameKind.ERROR, b"CALL 1 method name of 9 bytes "
                                                       b"overruns its 12-byte payload"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(cluster.handlers[2].calls, [])
        protocol.connectionLost()
        d = cluster.transports[1].call(2, "echo", b"fresh", timeout_seconds=5)
        cluster.network.flush()
        self.assertEqual(self.successResultOf(d), b"hserf")
        cluster.stop(self)

    def test_malformed_reply_refused(self) -> None:
        """A REPLY too short for its head makes the caller send ERROR and close; the calls
        in flight fail with the reason, and the next call goes on a fresh connection."""
        cluster, _ = two_members(self)
        t1 = cluster.transports[1]
        d = t1.call(2, "wait", b"", timeout_seconds=5)
        cluster.network.flush()
        with captured_log() as events:
            call_protocol(cluster).dataReceived(encode_frame(FrameKind.REPLY, b"\0\1"))
            cluster.network.flush()
        self.assertEqual(self.failureResultOf(d, PeerCallError).value.reason,
                         "peer 2: REPLY of 2 bytes, want at least 9")
        self.assertEqual([e["reason"] for e in formats(events, "closed by the peer")],
                         ["REPLY of 2 bytes, want at least 9"])
        attempts = len(cluster.network.attempts)
        d = t1.call(2, "echo", b"fresh", timeout_seconds=5)
        cluster.network.flush()
        self.assertEqual(self.successResultOf(d), b"hserf")
        self.assertEqual(len(cluster.network.attempts), attempts + 1)
        cluster.stop(self)


class RaftLoopCallTests(SynchronousTestCase):
    """The real handler's part: RaftLoop hands calls to its `call_handler`."""

    def loop(self) -> RaftLoop:
        store = SimpleNamespace(backend=None, copy_to=None)
        return RaftLoop(node=None, storage=None, wal=None, snapshotter=None, store=store,
                        disk=None, reactor=Clock(), host=None, heartbeat_seconds=0.1,
                        snapshot_count=100)

    def test_without_call_handler_every_method_is_unknown(self) -> None:
        """With no call handler set, a call fails with UNIMPLEMENTED naming the method."""
        loop = self.loop()
        verifyObject(IRaftPeerHandler, loop)
        error = self.assertRaises(GrpcError, loop.handle_call, 2, "lease/renew", b"")
        self.assertEqual((error.code, error.message),
                         (Status.UNIMPLEMENTED, "unknown peer method lease/renew"))

    def test_call_handler_answers(self) -> None:
        """With a call handler set, a call is its answer, the caller's ID passed along."""
        loop = self.loop()
        loop.call_handler = lambda from_id, method, payload: b"%d %s %s" % (
            from_id, method.encode(), payload)
        self.assertEqual(loop.handle_call(2, "m", b"p"), b"2 m p")


def replies(data: bytes) -> list[tuple[int, int, bytes]]:
    """The REPLY frames in `data`, decoded."""
    return [decode_reply(payload) for kind, payload in FrameDecoder(1 << 20).feed(data)
            if kind == FrameKind.REPLY]


def lease_not_found(payload: bytes) -> bytes:
    raise LeaseNotFoundError()
