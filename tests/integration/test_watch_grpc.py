"""The Watch service over grpcio, answered exactly as etcd 3.4 answers it.

One 3-member cluster serves the whole class (``ETCDD_CLUSTER_IMPL=etcd`` runs etcd 3.4
itself), with ``--max-request-bytes 65536`` so fragmentation starts at 64 KiB + 512 KiB
and ``--experimental-watch-progress-notify-interval 1s``. Each test uses its own keys.

Every response is compared whole (header included: cluster, member, revision, term).
Absence is proved without waiting: each stream has a sentinel watcher (explicit ID 1000,
its own key); `settle` puts the sentinel key and returns what the stream delivered before
the sentinel's event. One stream's responses leave the member in the order the store
produced them, so nothing of an earlier revision can follow it.
"""
from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import grpc

from etcdd.proto import kv_pb2, rpc_pb2 as pb, rpc_pb2_grpc
from ops.cluster import LocalMember, member_status
from tests.integration.cluster import UNLIMITED_RECEIVE, ClusterTestCase

Create = pb.WatchCreateRequest
NOPUT, NODELETE = Create.NOPUT, Create.NODELETE
PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE
MAX_REQUEST_BYTES = 65536
FRAGMENT_BYTES = MAX_REQUEST_BYTES + 512 * 1024   # etcd 3.4 v3rpc/watch.go grpcOverheadBytes
SENTINEL_ID = 1000
READ_TIMEOUT_SECONDS = 30.0
_sentinels = itertools.count()


class WatchStream:
    """One bidirectional Watch call: requests go through a queue, a thread reads responses.

    `read` and `read_until` fail the calling test at their deadline rather than block;
    `close` cancels the call and joins the reader, so no thread outlives the test.
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.sentinel_key: bytes | None = None
        self._channel = grpc.insecure_channel(endpoint, options=UNLIMITED_RECEIVE)
        self._requests: queue.Queue[pb.WatchRequest | None] = queue.Queue()
        self._responses: queue.Queue[pb.WatchResponse | grpc.RpcError] = queue.Queue()
        self._call = rpc_pb2_grpc.WatchStub(self._channel).Watch(iter(self._requests.get, None))
        self._reader = threading.Thread(target=self._read_all, daemon=True)
        self._reader.start()

    def _read_all(self) -> None:
        try:
            for response in self._call:
                self._responses.put(response)
        except grpc.RpcError as e:
            self._responses.put(e)

    def send(self, request: pb.WatchRequest) -> None:
        self._requests.put(request)

    def create(self, key: bytes, **fields: object) -> pb.WatchResponse:
        """Send a create request and return the next response (its ``created`` answer
        when no event is due on this stream)."""
        self.send(pb.WatchRequest(create_request=Create(key=key, **fields)))
        return self.read()

    def cancel(self, watch_id: int) -> None:
        self.send(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=watch_id)))

    def request_progress(self) -> None:
        self.send(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

    def read(self, timeout: float = READ_TIMEOUT_SECONDS) -> pb.WatchResponse:
        """The next response; raises AssertionError after `timeout` or if the call ended."""
        try:
            item = self._responses.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no watch response from {self.endpoint} within "
                                 f"{timeout:g}s") from None
        if isinstance(item, grpc.RpcError):
            raise AssertionError(f"watch stream on {self.endpoint} ended: {item.code()} "
                                 f"{item.details()}")
        return item

    def read_until(self, done: Callable[[pb.WatchResponse], bool], what: str,
                   timeout: float = READ_TIMEOUT_SECONDS) -> list[pb.WatchResponse]:
        """Responses up to and including the first for which `done` holds."""
        deadline, out = time.monotonic() + timeout, []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{what}: not seen within {timeout:g}s on "
                                     f"{self.endpoint}; got {len(out)} responses: {out[-3:]}")
            out.append(self.read(remaining))
            if done(out[-1]):
                return out

    def close(self) -> None:
        self._call.cancel()
        self._requests.put(None)
        self._reader.join(10)
        self._channel.close()


def kv(key: bytes, mod: int, value: bytes = b"", create: int = 0, version: int = 0,
       lease: int = 0) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(key=key, create_revision=create, mod_revision=mod, version=version,
                           value=value, lease=lease)


def without_prev(events: Iterable[kv_pb2.Event]) -> list[kv_pb2.Event]:
    """The events as a watcher without ``prev_kv`` gets them."""
    out = []
    for event in events:
        bare = kv_pb2.Event()
        bare.CopyFrom(event)
        bare.ClearField("prev_kv")
        out.append(bare)
    return out


def etcd_fragments(whole: pb.WatchResponse, limit: int) -> list[pb.WatchResponse]:
    """The pieces etcd 3.4 sends for `whole` to a ``fragment=True`` watcher.

    Nothing is split below `limit` bytes or with fewer than two events. Otherwise each
    piece takes its first event unconditionally, then events while the piece (measured
    with ``fragment`` set) stays under `limit`; every piece but the last has
    ``fragment=True``.
    """
    events = list(whole.events)
    if whole.ByteSize() < limit or len(events) < 2:
        return [whole]
    pieces, i = [], 0
    while i < len(events):
        piece = pb.WatchResponse(header=whole.header, watch_id=whole.watch_id, fragment=True,
                                 events=[events[i]])
        i += 1
        while i < len(events):
            piece.events.append(events[i])
            if piece.ByteSize() >= limit:
                del piece.events[-1]
                break
            i += 1
        pieces.append(piece)
    pieces[-1].fragment = False
    return pieces


class WatchTestCase(ClusterTestCase):
    """A shared cluster, a KV stub on the leader, a model of this test's keys."""
    shared_cluster = True
    maxDiff = 20000
    extra_flags = ("--max-request-bytes", str(MAX_REQUEST_BYTES),
                   "--experimental-watch-progress-notify-interval", "1s")
    leader: LocalMember

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.leader = cls.cluster.wait_leader(30)

    def setUp(self) -> None:
        super().setUp()
        self.prefix = self.id().rsplit(".", 1)[-1].encode() + b"/"
        self.model: dict[bytes, kv_pb2.KeyValue] = {}
        self.headers = {m.name: member_status(m, timeout=5).header for m in self.cluster.members}
        self._kv: dict[str, rpc_pb2_grpc.KVStub] = {}

    def key(self, name: str | bytes) -> bytes:
        return self.prefix + (name.encode() if isinstance(name, str) else name)

    def header(self, rev: int, member: LocalMember | None = None) -> pb.ResponseHeader:
        """The header `member` (default the leader) sends with store revision `rev`."""
        h = self.headers[(member or self.leader).name]
        return pb.ResponseHeader(cluster_id=h.cluster_id, member_id=h.member_id,
                                 revision=rev, raft_term=h.raft_term)

    def stream(self, member: LocalMember | None = None) -> WatchStream:
        """A new stream on `member` (default the leader) with its sentinel watcher."""
        stream = WatchStream((member or self.leader).endpoint)
        self.addCleanup(stream.close)
        stream.sentinel_key = b"sentinel/%d" % next(_sentinels)
        created = stream.create(stream.sentinel_key, watch_id=SENTINEL_ID)
        self.assertEqual((created.created, created.canceled, created.watch_id),
                         (True, False, SENTINEL_ID), created)
        return stream

    def kv_stub(self, member: LocalMember | None = None) -> rpc_pb2_grpc.KVStub:
        member = member or self.leader
        if member.name not in self._kv:
            channel = grpc.insecure_channel(member.endpoint, options=UNLIMITED_RECEIVE)
            self.addCleanup(channel.close)
            self._kv[member.name] = rpc_pb2_grpc.KVStub(channel)
        return self._kv[member.name]

    def current_revision(self) -> int:
        return self.kv_stub().Range(pb.RangeRequest(key=b"\0"), timeout=10).header.revision

    # -- writes, and the events they must produce -----------------------------------------

    def put(self, key: bytes, value: bytes, on: LocalMember | None = None) -> kv_pb2.Event:
        """Put through `on` (default the leader); the event a ``prev_kv`` watcher gets."""
        rev = self.kv_stub(on).Put(pb.PutRequest(key=key, value=value), timeout=10).header.revision
        return self._put_event(key, value, rev)

    def _put_event(self, key: bytes, value: bytes, rev: int) -> kv_pb2.Event:
        prev = self.model.get(key)
        new = kv(key, rev, value, create=prev.create_revision if prev else rev,
                 version=prev.version + 1 if prev else 1)
        self.model[key] = new
        return kv_pb2.Event(type=PUT, kv=new, prev_kv=prev)

    def delete(self, key: bytes, range_end: bytes = b"",
               on: LocalMember | None = None) -> list[kv_pb2.Event]:
        """DeleteRange; the DELETE events (kv holds only key and mod_revision)."""
        resp = self.kv_stub(on).DeleteRange(
            pb.DeleteRangeRequest(key=key, range_end=range_end, prev_kv=True), timeout=10)
        return self._delete_events(resp.prev_kvs, resp.header.revision)

    def _delete_events(self, deleted: Sequence[kv_pb2.KeyValue], rev: int) -> list[kv_pb2.Event]:
        for old in deleted:
            self.assertEqual(old, self.model.pop(old.key))
        return [kv_pb2.Event(type=DELETE, kv=kv(old.key, rev), prev_kv=old) for old in deleted]

    def txn(self, *ops: pb.RequestOp, on: LocalMember | None = None) -> list[kv_pb2.Event]:
        """An unconditional Txn of puts and prev_kv deletes; its events in op order."""
        resp = self.kv_stub(on).Txn(pb.TxnRequest(success=list(ops)), timeout=10)
        rev, events = resp.header.revision, []
        for op, answer in zip(ops, resp.responses):
            if op.HasField("request_put"):
                events.append(self._put_event(op.request_put.key, op.request_put.value, rev))
            else:
                events += self._delete_events(answer.response_delete_range.prev_kvs, rev)
        return events

    # -- reading ---------------------------------------------------------------------------

    def settle(self, stream: WatchStream) -> list[pb.WatchResponse]:
        """Every response `stream` delivers for the revisions written so far."""
        rev = self.kv_stub().Put(pb.PutRequest(key=stream.sentinel_key), timeout=10).header.revision
        got = stream.read_until(lambda r: r.watch_id == SENTINEL_ID and any(
            e.kv.mod_revision == rev for e in r.events), f"sentinel event at {rev}")
        return got[:-1]

    def event_responses(self, member: LocalMember, watch_id: int,
                        events: Sequence[kv_pb2.Event]) -> list[pb.WatchResponse]:
        """One live-notify response per revision, as a synced watcher gets them."""
        out: list[pb.WatchResponse] = []
        for event in events:
            rev = event.kv.mod_revision
            if not out or out[-1].header.revision != rev:
                out.append(pb.WatchResponse(header=self.header(rev, member), watch_id=watch_id))
            out[-1].events.append(event)
        return out

    def assert_created(self, response: pb.WatchResponse, watch_id: int, rev: int,
                       member: LocalMember | None = None) -> None:
        self.assertEqual(response, pb.WatchResponse(header=self.header(rev, member),
                                                    watch_id=watch_id, created=True))

    def assert_refused(self, response: pb.WatchResponse, reason: str, rev: int) -> None:
        """A create etcd refuses: created and canceled at once, ID -1, the mvcc reason."""
        self.assertEqual(response, pb.WatchResponse(header=self.header(rev), watch_id=-1,
                                                    created=True, canceled=True,
                                                    cancel_reason=reason))


def of(responses: Iterable[pb.WatchResponse], watch_id: int) -> list[pb.WatchResponse]:
    return [r for r in responses if r.watch_id == watch_id]


def shape(responses: Iterable[pb.WatchResponse]) -> list[tuple[int, bool, int, int]]:
    """(watch_id, fragment, events, bytes) per response: a readable first comparison of
    responses too large to print."""
    return [(r.watch_id, r.fragment, len(r.events), r.ByteSize()) for r in responses]


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def put_op(key: bytes, value: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))


def delete_op(key: bytes, range_end: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(
        key=key, range_end=range_end, prev_kv=True))


EMPTY_RANGE = "mvcc: watcher range is empty"
DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"


class WatchGrpcTests(WatchTestCase):
    """Watch streams on a 3-member cluster answer field for field as etcd 3.4's do."""

    def test_server_assigned_ids_count_from_zero_per_stream(self) -> None:
        """Auto IDs are 0, 1, 2, ... on each stream, each create answered by a created
        response at the store revision; every watcher gets the events under its own ID."""
        one, two = self.stream(), self.stream()
        rev = self.current_revision()
        keys = [self.key(b"k%02d" % i) for i in range(20)]
        for i, key in enumerate(keys):
            self.assert_created(one.create(key), i, rev)
        self.assert_created(two.create(keys[5]), 0, rev)
        self.assert_created(two.create(self.prefix, range_end=prefix_end(self.prefix)), 1, rev)
        events = without_prev(self.put(key, b"v") for key in keys)
        got = self.settle(one)
        self.assertEqual(len(got), len(keys))
        for i, event in enumerate(events):
            self.assertEqual(of(got, i), self.event_responses(self.leader, i, [event]))
        got = self.settle(two)
        self.assertEqual(of(got, 0), self.event_responses(self.leader, 0, events[5:6]))
        self.assertEqual(of(got, 1), self.event_responses(self.leader, 1, events))

    def test_client_chosen_ids_and_a_duplicate(self) -> None:
        """An explicit ID is kept, auto IDs skip it, and a duplicate is refused with
        created, canceled, ID -1 and etcd's reason, leaving the first watcher intact."""
        s = self.stream()
        rev = self.current_revision()
        k = [self.key(b"k%d" % i) for i in range(6)]
        self.assert_created(s.create(k[0], watch_id=1), 1, rev)
        self.assert_created(s.create(k[1]), 0, rev)
        self.assert_created(s.create(k[2]), 2, rev)
        self.assert_created(s.create(k[3], watch_id=7), 7, rev)
        self.assert_refused(s.create(k[4], watch_id=7), DUPLICATE_ID, rev)
        self.assert_refused(s.create(k[4], watch_id=SENTINEL_ID), DUPLICATE_ID, rev)
        self.assert_created(s.create(k[5]), 3, rev)
        put3 = self.put(k[3], b"x")
        self.put(k[4], b"nobody watches this")
        self.assertEqual(self.settle(s), self.event_responses(self.leader, 7, without_prev([put3])))

    def test_cancel(self) -> None:
        """Cancel answers canceled with the ID and the store revision, stops that watcher
        only; unknown or already canceled IDs get no answer; IDs are not reused."""
        s = self.stream()
        a, b, c = self.key("a"), self.key("b"), self.key("c")
        rev = self.current_revision()
        self.assert_created(s.create(a), 0, rev)
        self.assert_created(s.create(b), 1, rev)
        first = self.put(a, b"1")
        self.assertEqual(self.settle(s),
                         self.event_responses(self.leader, 0, without_prev([first])))
        rev = self.current_revision()
        s.cancel(0)
        self.assertEqual(s.read(), pb.WatchResponse(header=self.header(rev), watch_id=0,
                                                    canceled=True))
        s.cancel(0)
        s.cancel(99)
        self.put(a, b"2")
        second = self.put(b, b"1")
        self.assertEqual(self.settle(s),
                         self.event_responses(self.leader, 1, without_prev([second])))
        self.assert_created(s.create(c), 2, self.current_revision())

    def test_put_and_delete_filters(self) -> None:
        """NOPUT drops puts, NODELETE drops deletes, both drop everything; a response left
        with no events is not sent at all."""
        s = self.stream()
        k = self.key("k")
        rev = self.current_revision()
        for watch_id, filters in enumerate(([], [NOPUT], [NODELETE], [NOPUT, NODELETE])):
            self.assert_created(s.create(k, filters=filters), watch_id, rev)
        e1 = self.put(k, b"1")
        e2, = self.delete(k)
        e3 = self.put(k, b"2")
        e1, e2, e3 = without_prev([e1, e2, e3])
        got = self.settle(s)
        self.assertEqual(of(got, 0), self.event_responses(self.leader, 0, [e1, e2, e3]))
        self.assertEqual(of(got, 1), self.event_responses(self.leader, 1, [e2]))
        self.assertEqual(of(got, 2), self.event_responses(self.leader, 2, [e1, e3]))
        self.assertEqual(of(got, 3), [])
        self.assertEqual(len(got), 6)

    def test_prev_kv(self) -> None:
        """With prev_kv an update or delete carries the key's previous KeyValue, a create
        (also after a delete) carries none; without it no event does."""
        s = self.stream()
        a, b = self.key("a"), self.key("b")
        rev = self.current_revision()
        self.assert_created(s.create(self.prefix, range_end=prefix_end(self.prefix)), 0, rev)
        self.assert_created(s.create(self.prefix, range_end=prefix_end(self.prefix),
                                     prev_kv=True), 1, rev)
        events = [self.put(a, b"1"), self.put(a, b"2"), self.put(b, b"1"),
                  *self.delete(self.prefix, prefix_end(self.prefix)), self.put(a, b"3")]
        self.assertEqual([e.HasField("prev_kv") for e in events],
                         [False, True, False, True, True, False])
        got = self.settle(s)
        self.assertEqual(of(got, 1), self.event_responses(self.leader, 1, events))
        self.assertEqual(of(got, 0), self.event_responses(self.leader, 0, without_prev(events)))

    def test_all_events_of_a_txn_in_one_response(self) -> None:
        """A txn's puts and deletes reach a watcher as one response, in op order, at the
        txn's revision."""
        s = self.stream()
        a, b, c, d = (self.key(n) for n in "abcd")
        rev = self.current_revision()
        self.assert_created(s.create(self.prefix, range_end=prefix_end(self.prefix),
                                     prev_kv=True), 0, rev)
        before = [self.put(c, b"0"), self.put(a, b"0")]
        events = self.txn(put_op(b, b"1"), put_op(a, b"1"), delete_op(c), put_op(d, b"1"))
        self.assertEqual(len({e.kv.mod_revision for e in events}), 1)
        got = self.settle(s)
        self.assertEqual(got, self.event_responses(self.leader, 0, before + events))
        self.assertEqual(len(got[-1].events), 4)

    def test_start_revision_in_the_future_waits(self) -> None:
        """A watch from a revision not yet written is created at once and gets events
        from that revision on, nothing before."""
        s = self.stream()
        k = self.key("k")
        rev = self.current_revision()
        self.assert_created(s.create(k, start_revision=rev + 3), 0, rev)
        events = without_prev(self.put(k, b"%d" % i) for i in range(4))
        self.assertEqual([e.kv.mod_revision for e in events], [rev + 1, rev + 2, rev + 3, rev + 4])
        self.assertEqual(self.settle(s), self.event_responses(self.leader, 0, events[2:]))

    def test_past_start_revision_replays_history_in_one_response(self) -> None:
        """A watch from a past revision gets every event since then (prev_kv included)
        in one catch-up response whose header holds the current revision."""
        a, b = self.key("a"), self.key("b")
        events = [self.put(a, b"1"), self.put(b, b"1"), self.put(a, b"2"),
                  *self.txn(delete_op(b), put_op(a, b"3"))]
        s = self.stream()
        rev = self.current_revision()
        start = events[1].kv.mod_revision
        self.assert_created(s.create(self.prefix, range_end=prefix_end(self.prefix),
                                     start_revision=start, prev_kv=True), 0, rev)
        self.assertEqual(s.read(), pb.WatchResponse(header=self.header(rev), watch_id=0,
                                                    events=events[1:]))
        self.assertEqual(self.settle(s), [])

    def test_compacted_start_revision(self) -> None:
        """Below the compact revision: created, then canceled with compact_revision and a
        header without revision; a cancel of that ID still answers. At the compact
        revision itself the watch replays from there."""
        k = self.key("k")
        events = without_prev(self.put(k, b"%d" % i) for i in range(3))
        revs = [e.kv.mod_revision for e in events]
        self.kv_stub().Compact(pb.CompactionRequest(revision=revs[1], physical=True), timeout=30)
        s = self.stream()
        rev = self.current_revision()
        self.assert_created(s.create(k, start_revision=revs[0]), 0, rev)
        self.assertEqual(s.read(), pb.WatchResponse(header=self.header(0), watch_id=0,
                                                    canceled=True, compact_revision=revs[1]))
        self.assert_created(s.create(k, start_revision=revs[1]), 1, rev)
        self.assertEqual(s.read(), pb.WatchResponse(header=self.header(rev), watch_id=1,
                                                    events=events[1:]))
        s.cancel(0)
        self.assertEqual(s.read(), pb.WatchResponse(header=self.header(rev), watch_id=0,
                                                    canceled=True))
        last = self.put(k, b"after")
        self.assertEqual(self.settle(s), self.event_responses(self.leader, 1, without_prev([last])))

    def test_invalid_range(self) -> None:
        """key >= range_end is refused (created, canceled, ID -1, 'watcher range is
        empty') without using up an ID; range_end "\\0" (from key) is valid."""
        s = self.stream()
        a, b = self.key("a"), self.key("b")
        rev = self.current_revision()
        self.assert_refused(s.create(b, range_end=a), EMPTY_RANGE, rev)
        self.assert_refused(s.create(a, range_end=a), EMPTY_RANGE, rev)
        self.assert_created(s.create(a, range_end=b"\0"), 0, rev)
        event, = without_prev([self.put(b, b"1")])
        self.assertEqual(self.settle(s), self.event_responses(self.leader, 0, [event]))

    def test_progress_request(self) -> None:
        """A progress request is answered by one header-only response with watch_id -1
        and the current revision, with or without watchers on the stream."""
        s = self.stream()
        s.request_progress()
        self.assertEqual(s.read(), pb.WatchResponse(header=self.header(self.current_revision()),
                                                    watch_id=-1))
        k = self.key("k")
        self.assert_created(s.create(k), 0, self.current_revision())
        event, = without_prev([self.put(k, b"1")])
        self.assertEqual(self.settle(s), self.event_responses(self.leader, 0, [event]))
        s.request_progress()
        self.assertEqual(s.read(), pb.WatchResponse(header=self.header(self.current_revision()),
                                                    watch_id=-1))

    def test_progress_notify(self) -> None:
        """With progress_notify (and a 1 s interval) an idle watcher gets header-only
        responses under its ID at the current revision; others on the stream get none."""
        s = self.stream()
        k, other = self.key("k"), self.key("other")
        rev = self.current_revision()
        self.assert_created(s.create(k, progress_notify=True), 0, rev)
        self.assert_created(s.create(other), 1, rev)
        progress = pb.WatchResponse(header=self.header(rev), watch_id=0)
        got = s.read_until(lambda r: not r.events, "a progress notification", 15)
        self.assertEqual(got, [progress])
        event, = without_prev([self.put(k, b"1")])
        got = s.read_until(lambda r: bool(r.events), "the event", 15)
        self.assertEqual(got, [progress] * (len(got) - 1) +
                         self.event_responses(self.leader, 0, [event]))
        got = s.read_until(lambda r: not r.events, "a progress notification", 15)
        self.assertEqual(got, [pb.WatchResponse(header=self.header(event.kv.mod_revision),
                                                watch_id=0)])

    def test_fragments_of_one_large_txn(self) -> None:
        """A txn whose events (with prev_kv) exceed max-request-bytes + 512 KiB reaches a
        fragment watcher in pieces, fragment set on all but the last, that reassemble to
        the whole; a watcher without fragment gets the whole response."""
        s = self.stream()
        rev = self.current_revision()
        big = self.key("big/")
        for watch_id, fragment in enumerate((False, True)):
            self.assert_created(s.create(self.prefix, range_end=prefix_end(self.prefix),
                                         prev_kv=True, fragment=fragment), watch_id, rev)
        puts = [self.put(big + b"%02d" % i, bytes([65 + i]) * 60000) for i in range(12)]
        events = puts + self.txn(delete_op(big, prefix_end(big)), put_op(self.key("done"), b"x"))
        whole = self.event_responses(self.leader, 0, events)
        self.assertGreater(whole[-1].ByteSize(), FRAGMENT_BYTES)
        got = self.settle(s)
        wanted = [piece for r in self.event_responses(self.leader, 1, events)
                  for piece in etcd_fragments(r, FRAGMENT_BYTES)]
        pieces = of(got, 1)
        self.assertEqual((shape(of(got, 0)), shape(pieces)), (shape(whole), shape(wanted)))
        self.assertEqual(of(got, 0), whole)
        self.assertEqual(pieces, wanted)
        self.assertEqual([len(p.events) for p in pieces[12:]], [9, 4])
        self.assertEqual([p.fragment for p in pieces], [False] * 12 + [True, False])
        self.assertEqual([e for p in pieces[12:] for e in p.events], events[12:])

    def test_fragments_of_a_history_replay(self) -> None:
        """A catch-up response over the fragment limit is split the same way: large puts
        of many revisions in one replay, reassembled in order."""
        big = self.key("big/")
        events = without_prev([self.put(big + b"%02d" % i, bytes([97 + i]) * 60000)
                               for i in range(12)] + self.delete(big, prefix_end(big)))
        s = self.stream()
        rev = self.current_revision()
        start = events[0].kv.mod_revision
        # NB: both creates go out first: watcher 0's replay may be sent before the second
        # create is read (neither etcd nor etcdd orders them), so each watcher's created
        # response is checked to precede its own events only.
        for fragment in (False, True):
            s.send(pb.WatchRequest(create_request=Create(
                key=big, range_end=prefix_end(big), start_revision=start, fragment=fragment)))
        wanted = {watch_id: [pb.WatchResponse(header=self.header(rev), watch_id=watch_id,
                                              events=events)] for watch_id in (0, 1)}
        wanted[1] = etcd_fragments(wanted[1][0], FRAGMENT_BYTES)
        self.assertEqual([len(p.events) for p in wanted[1]], [9, 15])
        created: dict[int, pb.WatchResponse] = {}
        got: dict[int, list[pb.WatchResponse]] = {0: [], 1: []}
        while len(created) < 2 or not got[0] or not got[1] or got[1][-1].fragment:
            response = s.read()
            if response.created:
                created[response.watch_id] = response
                continue
            self.assertIn(response.watch_id, created, "events before their created response")
            got[response.watch_id].append(response)
        for watch_id in (0, 1):
            self.assert_created(created[watch_id], watch_id, rev)
        self.assertEqual({k: shape(v) for k, v in got.items()},
                         {k: shape(v) for k, v in wanted.items()})
        self.assertEqual(got, wanted)
        self.assertEqual(self.settle(s), [])

    def test_follower_watch_sees_the_leaders_sequence(self) -> None:
        """Watchers on every member, written to through every member, get the same
        responses (same revisions, events and prev_kvs), each under its own member ID."""
        streams = {m.name: self.stream(m) for m in self.cluster.members}
        rev = self.current_revision()
        self.wait(lambda: all(self.revision(m) == rev for m in self.cluster.members), 30,
                  f"every member at revision {rev}")
        for member in self.cluster.members:
            self.assert_created(streams[member.name].create(
                self.prefix, range_end=prefix_end(self.prefix), start_revision=rev + 1,
                prev_kv=True), 0, rev, member)
        a, b, c = self.key("a"), self.key("b"), self.key("c")
        m0, m1, m2 = self.cluster.members
        events = [self.put(a, b"1", on=m0), self.put(b, b"1", on=m1),
                  *self.txn(put_op(c, b"1"), delete_op(a), on=m2), self.put(a, b"2", on=m1),
                  *self.delete(self.prefix, prefix_end(self.prefix), on=m2),
                  self.put(b, b"2", on=m0)]
        for member in self.cluster.members:
            with self.subTest(member=member.name):
                self.assertEqual(self.settle(streams[member.name]),
                                 self.event_responses(member, 0, events))
