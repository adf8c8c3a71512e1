"""Property test of Watch: under concurrent writes on overlapping keys, every watcher, on
any member, from any start, gets exactly the committed history of its range.

`WRITERS` threads (writer i through member i % 3) run seeded random puts, deletes,
delete-ranges and multi-op txns (with a compare choosing the branch) over `KEYS`, a
small key space, recording what each acknowledged write did at the revision its
response names. `WATCHERS` watchers on the leader and the followers (single keys,
prefixes, ranges, from-key; some with prev_kv or a filter) start before the load, or
mid-load at the current revision or at a past one.

After the load, with the members converged, two barrier txns (put every key, then delete
every key) give every watcher a last event to wait for. The committed history is read
independently (a watch from revision 1 over the key space) and checked against every
acknowledged write; then each watcher's events (revision, type, key, value, create
revision, version, prev_kv) must equal that history restricted to its range, start and
filters, revisions must ascend strictly across responses and no revision's events may be
split between responses.

``ETCDD_WATCH_SEED=<n>`` replays a run; the seed is printed at the start and on failure.
"""
from __future__ import annotations

import os
import random
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from etcdd.proto import kv_pb2, rpc_pb2 as pb, rpc_pb2_grpc
from ops.cluster import LocalMember
from tests.integration.cluster import ClusterTestCase, log_phase, phase
from tests.integration.test_watch_grpc import WatchStream, prefix_end

PREFIX = b"p/"
KEYS = [PREFIX + b"%c%d" % (group, i) for group in b"abc" for i in range(5)]
WRITERS, OPS_PER_WRITER, WATCHERS = 4, 250, 15
PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE
Create = pb.WatchCreateRequest
Effect = tuple[int, bytes, bytes]          # (event type, key, value): what one op wrote


@dataclass(frozen=True, slots=True)
class WatchSpec:
    """One watcher: where, what, from when. `start` is "early" (before the load, from
    the next revision), "now" (mid-load, from the next revision) or "past" (mid-load,
    from `start_revision`, chosen when it is created)."""
    member: int
    key: bytes
    range_end: bytes
    start: str
    prev_kv: bool
    filters: tuple[int, ...]

    def covers(self, key: bytes) -> bool:
        if not self.range_end:
            return key == self.key
        return self.key <= key and (self.range_end == b"\0" or key < self.range_end)

    def keeps(self, event: kv_pb2.Event) -> bool:
        return self.covers(event.kv.key) and not (
            (event.type == PUT and Create.NOPUT in self.filters)
            or (event.type == DELETE and Create.NODELETE in self.filters))


def random_specs(rng: random.Random) -> list[WatchSpec]:
    """`WATCHERS` specs: a third early, the rest mid-load, alternately now and past."""
    specs = []
    for i in range(WATCHERS):
        a, b = sorted(rng.sample(range(len(KEYS)), 2))
        key, range_end = rng.choice([
            (KEYS[a], b""), (PREFIX + b"b", PREFIX + b"c"), (KEYS[a], KEYS[b]),
            (PREFIX, prefix_end(PREFIX)), (KEYS[a], b"\0")])
        start = "early" if i < WATCHERS // 3 else ("now", "past")[i % 2]
        filters = rng.choice([(), (), (), (Create.NOPUT,), (Create.NODELETE,)])
        specs.append(WatchSpec(i % 3, key, range_end, start, rng.random() < 0.5, filters))
    return specs


def random_txn(rng: random.Random, value: bytes) -> pb.TxnRequest:
    """A txn over 2-6 of `KEYS`: a compare on one key's version choosing between two
    branches of puts and single-key deletes (with prev_kv)."""
    keys = rng.sample(KEYS, rng.randint(2, 6))
    branches: tuple[list[pb.RequestOp], list[pb.RequestOp]] = ([], [])
    for i, key in enumerate(keys):
        branch = branches[i % 2] if len(keys) > 2 else branches[0]
        if rng.random() < 0.7:
            branch.append(pb.RequestOp(request_put=pb.PutRequest(key=key, value=value)))
        else:
            branch.append(pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(
                key=key, prev_kv=True)))
    compare = pb.Compare(key=rng.choice(KEYS), target=pb.Compare.VERSION,
                         result=pb.Compare.GREATER, version=0)
    return pb.TxnRequest(compare=[compare], success=branches[0], failure=branches[1])


@dataclass
class Writer:
    """One writer thread's seeded ops and what was acknowledged: revision -> effects."""
    index: int
    member: LocalMember
    seed: int
    acked: dict[int, list[Effect]] = field(default_factory=dict)
    noops: int = 0
    errors: list[str] = field(default_factory=list)
    done_ops: int = 0

    def run(self) -> None:
        rng = random.Random(self.seed)
        with grpc.insecure_channel(self.member.endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            for n in range(OPS_PER_WRITER):
                try:
                    rev, effects = self._one(kv, rng, n)
                except grpc.RpcError as e:
                    self.errors.append(f"{e.code().name}: {e.details()}")
                    continue
                finally:
                    self.done_ops += 1
                if effects:
                    self.acked[rev] = effects
                else:
                    self.noops += 1

    def _one(self, kv: rpc_pb2_grpc.KVStub, rng: random.Random,
             n: int) -> tuple[int, list[Effect]]:
        value = b"w%d-%d" % (self.index, n)
        roll = rng.random()
        if roll < 0.35:
            key = rng.choice(KEYS)
            resp = kv.Put(pb.PutRequest(key=key, value=value), timeout=30)
            return resp.header.revision, [(PUT, key, value)]
        if roll < 0.65:
            return self._txn(kv, rng, value)
        if roll < 0.85:
            key, end = rng.choice(KEYS), b""
        else:
            a, b = sorted(rng.sample(range(len(KEYS) + 1), 2))
            key, end = KEYS[a], KEYS[b] if b < len(KEYS) else prefix_end(PREFIX)
        resp = kv.DeleteRange(pb.DeleteRangeRequest(key=key, range_end=end, prev_kv=True),
                              timeout=30)
        return resp.header.revision, [(DELETE, old.key, b"") for old in resp.prev_kvs]

    def _txn(self, kv: rpc_pb2_grpc.KVStub, rng: random.Random,
             value: bytes) -> tuple[int, list[Effect]]:
        req = random_txn(rng, value)
        resp = kv.Txn(req, timeout=30)
        ran = req.success if resp.succeeded else req.failure
        effects: list[Effect] = []
        for op, answer in zip(ran, resp.responses):
            if op.HasField("request_put"):
                effects.append((PUT, op.request_put.key, op.request_put.value))
            else:
                effects += [(DELETE, old.key, b"")
                            for old in answer.response_delete_range.prev_kvs]
        return resp.header.revision, effects


@dataclass
class Watch:
    """A created watcher: its spec, stream, ID, the revision it starts at, what it got."""
    spec: WatchSpec
    stream: "Collector"
    watch_id: int
    start_revision: int
    created: pb.WatchResponse | None = None
    responses: list[pb.WatchResponse] = field(default_factory=list)

    def last_revision(self) -> int:
        for response in reversed(self.responses):
            if response.events:
                return response.events[-1].kv.mod_revision
        return 0


class Collector:
    """A Watch stream whose watchers are created in order; `collect` files responses
    under their watcher (created responses match creates in order, as clientv3 does)."""

    def __init__(self, member: LocalMember) -> None:
        self.member = member
        self.stream = WatchStream(member.endpoint)
        self.watches: list[Watch] = []
        self._uncreated: list[Watch] = []

    def add(self, spec: WatchSpec, start_revision: int) -> Watch:
        watch = Watch(spec, self, len(self.watches), start_revision)
        self.watches.append(watch)
        self._uncreated.append(watch)
        self.stream.send(pb.WatchRequest(create_request=Create(
            key=spec.key, range_end=spec.range_end, start_revision=start_revision,
            prev_kv=spec.prev_kv, filters=list(spec.filters))))
        return watch

    def collect(self, until: dict[int, int]) -> None:
        """Read until every watcher (by ID) is created and has an event at or past its
        revision in `until`; fails at the stream's read deadline."""
        def done() -> bool:
            return not self._uncreated and all(
                self.watches[i].last_revision() >= rev for i, rev in until.items())
        while not done():
            response = self.stream.read()
            if response.created:
                watch = self._uncreated.pop(0)
                watch.created = response
            else:
                self.watches[response.watch_id].responses.append(response)

    def created_all(self) -> None:
        self.collect({})


def prev_kvs(history: Sequence[kv_pb2.Event]) -> list[kv_pb2.KeyValue | None]:
    """Each event's prev_kv as etcd attaches it: the key's KeyValue before the event,
    None for a create."""
    state: dict[bytes, kv_pb2.KeyValue] = {}
    prevs: list[kv_pb2.KeyValue | None] = []
    for event in history:
        prevs.append(state.get(event.kv.key))
        if event.type == PUT:
            state[event.kv.key] = event.kv
        else:
            state.pop(event.kv.key, None)
    return prevs


class WatchPropertyTests(ClusterTestCase):
    """Watchers on every member see exactly the committed history of their range."""
    maxDiff = 5000

    def setUp(self) -> None:
        super().setUp()
        self.seed = int(os.environ.get("ETCDD_WATCH_SEED",
                                       random.SystemRandom().randrange(1 << 32)))
        log_phase(f"watch property seed {self.seed} (ETCDD_WATCH_SEED={self.seed} replays)")

    def test_every_watcher_sees_the_committed_history_of_its_range(self) -> None:
        """N writers on overlapping keys, M watchers on all members from various starts:
        each watcher's events equal the history of its range, which matches every
        acknowledged write."""
        try:
            self._run(random.Random(self.seed))
        except AssertionError as e:
            raise AssertionError(f"[ETCDD_WATCH_SEED={self.seed}] {e}") from None

    def _run(self, rng: random.Random) -> None:
        leader = self.wait_leader()
        members = [leader, *(m for m in self.cluster.members if m is not leader)]
        specs = random_specs(rng)
        collectors = {(m.name, phase_): Collector(m) for m in members for phase_ in "em"}
        for collector in collectors.values():
            self.addCleanup(collector.stream.close)
        watches = [collectors[members[s.member].name, "e"].add(s, 0)
                   for s in specs if s.start == "early"]
        for c in collectors.values():
            c.created_all()
        writers = [Writer(i, members[i % 3], rng.randrange(1 << 32)) for i in range(WRITERS)]
        threads = [threading.Thread(target=w.run, daemon=True) for w in writers]
        with phase(f"{WRITERS} writers x {OPS_PER_WRITER} ops, {WATCHERS} watchers"):
            for thread in threads:
                thread.start()
            self.wait(lambda: all(w.done_ops >= OPS_PER_WRITER // 3 for w in writers), 60,
                      "a third of the load")
            watches += self._start_mid_load(specs, members, collectors, rng)
            for thread in threads:
                thread.join(120)
            self.assertFalse(any(t.is_alive() for t in threads), "writers still running")
        self.assertEqual([e for w in writers for e in w.errors], [])
        self.wait_converged()
        barrier = self._barrier_txns(leader)
        history, responses = self._history(leader, barrier[-1])
        self._check_history(history, responses, writers, barrier)
        prevs = prev_kvs(history)
        with phase("check every watcher"):
            for watch in watches:
                self._check_watch(watch, history, prevs)
        log_phase(f"{len(history)} events over revisions 2..{barrier[-1]}, "
                  f"{sum(w.noops for w in writers)} writes changed nothing; watchers "
                  "(member/start/created at/events): " + ", ".join(
                      f"{w.stream.member.name}/{w.start_revision or w.spec.start}/"
                      f"{w.created.header.revision}/{sum(len(r.events) for r in w.responses)}"
                      for w in watches))

    def _start_mid_load(self, specs: Sequence[WatchSpec], members: Sequence[LocalMember],
                        collectors: dict, rng: random.Random) -> list[Watch]:
        out = []
        for spec in specs:
            if spec.start == "early":
                continue
            collector = collectors[members[spec.member].name, "m"]
            start = 0
            if spec.start == "past":
                start = rng.randint(1, max(1, self.revision(members[spec.member])))
            out.append(collector.add(spec, start))
        return out

    def _barrier_txns(self, leader: LocalMember) -> list[int]:
        """Put every key in one txn, then delete every key in another: their revisions."""
        with grpc.insecure_channel(leader.endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            puts = [pb.RequestOp(request_put=pb.PutRequest(key=k, value=b"end")) for k in KEYS]
            deletes = [pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=k))
                       for k in KEYS]
            return [kv.Txn(pb.TxnRequest(success=ops), timeout=30).header.revision
                    for ops in (puts, deletes)]

    def _history(self, leader: LocalMember,
                 last: int) -> tuple[list[kv_pb2.Event], list[pb.WatchResponse]]:
        """Every event of the key space, from a watch from revision 1 on the leader."""
        stream = WatchStream(leader.endpoint)
        self.addCleanup(stream.close)
        stream.send(pb.WatchRequest(create_request=Create(
            key=PREFIX, range_end=prefix_end(PREFIX), start_revision=1)))
        created = stream.read()
        self.assertEqual((created.created, created.canceled, created.watch_id), (True, False, 0))
        responses = stream.read_until(
            lambda r: bool(r.events) and r.events[-1].kv.mod_revision >= last,
            f"the history up to revision {last}", 60)
        return [e for r in responses for e in r.events], responses

    def _check_history(self, history: Sequence[kv_pb2.Event],
                       responses: Sequence[pb.WatchResponse], writers: Sequence[Writer],
                       barrier: Sequence[int]) -> None:
        """Revisions 2..last each once and ascending; KeyValues consistent; each
        acknowledged write's revision holds exactly that write's effects."""
        self._check_order(responses, "history")
        by_rev: dict[int, list[Effect]] = {}
        for event in history:
            by_rev.setdefault(event.kv.mod_revision, []).append(
                (event.type, event.kv.key, event.kv.value))
        self.assertEqual(sorted(by_rev), list(range(2, barrier[-1] + 1)),
                         "every revision from 2 on holds events, none is missing")
        acked = {rev: effects for w in writers for rev, effects in w.acked.items()}
        acked[barrier[0]] = [(PUT, k, b"end") for k in KEYS]
        acked[barrier[1]] = [(DELETE, k, b"") for k in KEYS]
        self.assertEqual(sum(len(w.acked) for w in writers) + 2, len(acked), "shared revisions")
        self.assertEqual(by_rev, acked)
        state: dict[bytes, kv_pb2.KeyValue] = {}
        for event in history:
            prev, kv = state.get(event.kv.key), event.kv
            if event.type == DELETE:
                self.assertIsNotNone(prev, f"delete of an absent key: {event}")
                self.assertEqual(kv, kv_pb2.KeyValue(key=kv.key, mod_revision=kv.mod_revision))
                del state[kv.key]
                continue
            self.assertEqual((kv.create_revision, kv.version, kv.lease),
                             (prev.create_revision, prev.version + 1, 0) if prev
                             else (kv.mod_revision, 1, 0), f"{event}after {prev}")
            state[kv.key] = kv
        self.assertEqual(state, {})

    def _check_responses(self, watch: Watch, wanted: Sequence[kv_pb2.Event],
                         what: str) -> list[kv_pb2.Event]:
        """Check the watch's responses ascend and never split a revision of `wanted`
        between two responses; returns their events in order."""
        self._check_order(watch.responses, what)
        per_revision = Counter(e.kv.mod_revision for e in wanted)
        for response in watch.responses:
            here = Counter(e.kv.mod_revision for e in response.events)
            self.assertEqual({rev: per_revision[rev] for rev in here}, dict(here),
                             f"{what}: a revision split between responses")
        return [e for r in watch.responses for e in r.events]

    def _check_order(self, responses: Sequence[pb.WatchResponse], what: str) -> None:
        """Revisions strictly ascend across responses, never descend inside one, and
        no revision's events are split over two responses."""
        last = 0
        for response in responses:
            revs = [e.kv.mod_revision for e in response.events]
            self.assertEqual(revs, sorted(revs), f"{what}: revisions out of order")
            if revs:
                self.assertGreater(revs[0], last, f"{what}: revision {revs[0]} after {last}")
                self.assertGreaterEqual(response.header.revision, revs[-1], what)
                last = revs[-1]

    def _check_watch(self, watch: Watch, history: Sequence[kv_pb2.Event],
                     prevs: Sequence[kv_pb2.KeyValue | None]) -> None:
        """The watcher's responses hold exactly its part of `history`, in order."""
        spec, collector = watch.spec, watch.stream
        wanted = []
        for event, prev in zip(history, prevs):
            if watch.start_revision and event.kv.mod_revision < watch.start_revision:
                continue
            if spec.keeps(event):
                copy = kv_pb2.Event(type=event.type, kv=event.kv)
                if spec.prev_kv and prev is not None:
                    copy.prev_kv.CopyFrom(prev)
                wanted.append(copy)
        collector.collect({watch.watch_id: wanted[-1].kv.mod_revision})
        created = watch.created
        what = f"watcher {watch.watch_id} on {collector.member.name}: {spec}"
        self.assertEqual((created.created, created.canceled, created.watch_id),
                         (True, False, watch.watch_id), what)
        if not watch.start_revision:
            wanted = [e for e in wanted if e.kv.mod_revision > created.header.revision]
        got = self._check_responses(watch, wanted, what)
        self.assertEqual(len(got), len(wanted), what)
        self.assertEqual(got, wanted, what)
