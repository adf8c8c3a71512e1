"""Watch and lease guarantees through a kill -9 of the leader of a 3-member cluster.

`WatchFailoverTests`: `WRITERS` threads write seeded random puts, deletes, delete-ranges
and txns over the property test's keys (`test_watch_property`), starting on every member
and moving to the next one after any error. A write answered OK is *acknowledged*: its
effects are in the history at the revision it was answered with. A failed write is
*indeterminate* (timeout, connection lost, no leader): absent from the history or
present once, never twice. The property test's watchers (on every member; early, mid-load
now, mid-load from the past) watch while the leader is killed mid-load, the load goes on,
the old leader restarts and the load goes on. Then every watcher on a surviving member
has exactly the committed history of its range; each watcher on the killed member a
prefix of it, which a watcher re-created on the restarted member from (last revision
seen + 1) completes exactly. Every revision is explained by an acknowledged write, a
barrier txn, or one indeterminate write that, applied to the key space as it stood just
before, writes exactly that revision's events (a bipartite matching: none explains two).

`LeaseFailoverTests`: leases of TTL 5 with one key each, renewed over one LeaseKeepAlive
stream through a follower; half stop being renewed, then the leader is killed. The kept
ones keep their keys; each other one is revoked (its key's DELETE, watched on the same
follower, in a revision of its own) no sooner than TTL after its last renewal's answer
arrived and within 30 s of the kill (``time.monotonic()`` here, stamped on arrival).

``ETCDD_WATCH_SEED=<n>`` replays a run; the seed is printed at the start and on failure.
"""
from __future__ import annotations

import os
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import grpc
from google.protobuf.message import Message

from etcdd.proto import kv_pb2, rpc_pb2 as pb, rpc_pb2_grpc
from ops.cluster import LocalMember
from tests.integration import test_watch_property as prop
from tests.integration.cluster import ClusterTestCase, log_phase, phase
from tests.integration.test_watch_grpc import WatchStream, prefix_end
from tests.integration.test_watch_property import (
    DELETE, KEYS, PREFIX, PUT, Collector, Effect, Watch, prev_kvs, random_specs, random_txn)

WRITERS, MAX_OPS_PER_WRITER = 6, 3000
ACKED_PER_PHASE = 150        # acknowledged writes before and after each of kill, restart
WRITE_TIMEOUT_SECONDS = 10.0
LEASES, LEASE_TTL_SECONDS, KEEPALIVE_INTERVAL_SECONDS = 8, 5, 1.0
EVENTUALLY_SECONDS = 30.0    # the only upper bound: every revocation arrives by then
LEASE_PREFIX = b"lease/"
Request = pb.PutRequest | pb.DeleteRangeRequest | pb.TxnRequest


class SeededClusterTestCase(ClusterTestCase):
    """A cluster test driven by one seed: ``ETCDD_WATCH_SEED`` or a fresh one, printed
    at the start and named in any failure."""

    def setUp(self) -> None:
        super().setUp()
        self.seed = int(os.environ.get("ETCDD_WATCH_SEED",
                                       random.SystemRandom().randrange(1 << 32)))
        log_phase(f"watch failover seed {self.seed} (ETCDD_WATCH_SEED={self.seed} replays)")

    def run_seeded(self, scenario: Callable[[random.Random], None]) -> None:
        """Run `scenario` with the seed's generator; a failure names the seed."""
        try:
            scenario(random.Random(self.seed))
        except AssertionError as e:
            raise AssertionError(f"[ETCDD_WATCH_SEED={self.seed}] {e}") from None


# -- writes: requests, what an answer says they did, what they would do ------------------

def random_request(rng: random.Random, value: bytes) -> Request:
    """A put, a txn (a compare choosing between two branches), a single-key delete or a
    delete-range over `KEYS`, in the property test's proportions."""
    roll = rng.random()
    if roll < 0.35:
        return pb.PutRequest(key=rng.choice(KEYS), value=value)
    if roll < 0.65:
        return random_txn(rng, value)
    if roll < 0.85:
        return pb.DeleteRangeRequest(key=rng.choice(KEYS), prev_kv=True)
    a, b = sorted(rng.sample(range(len(KEYS) + 1), 2))
    end = KEYS[b] if b < len(KEYS) else prefix_end(PREFIX)
    return pb.DeleteRangeRequest(key=KEYS[a], range_end=end, prev_kv=True)


def send(kv: rpc_pb2_grpc.KVStub, request: Request) -> Message:
    """The unary KV call for `request`; raises `grpc.RpcError`."""
    method = {pb.PutRequest: kv.Put, pb.DeleteRangeRequest: kv.DeleteRange,
              pb.TxnRequest: kv.Txn}[type(request)]
    return method(request, timeout=WRITE_TIMEOUT_SECONDS)


def answered_effects(request: Request, response: Message) -> list[Effect]:
    """What an acknowledged write did, as its response tells it (deleted keys from
    prev_kvs, the txn branch from `succeeded`)."""
    if isinstance(request, pb.PutRequest):
        return [(PUT, request.key, request.value)]
    if isinstance(request, pb.DeleteRangeRequest):
        return [(DELETE, old.key, b"") for old in response.prev_kvs]
    ran = request.success if response.succeeded else request.failure
    effects: list[Effect] = []
    for op, answer in zip(ran, response.responses):
        if op.HasField("request_put"):
            effects.append((PUT, op.request_put.key, op.request_put.value))
        else:
            effects += [(DELETE, old.key, b"") for old in answer.response_delete_range.prev_kvs]
    return effects


def would_write(request: Request, present: set[bytes]) -> list[Effect]:
    """The events `request` writes when applied to a key space holding `present`
    (etcd 3.4: a delete-range deletes in key order, a txn runs its branch in order)."""
    if isinstance(request, pb.PutRequest):
        return [(PUT, request.key, request.value)]
    if isinstance(request, pb.DeleteRangeRequest):
        start, end = request.key, request.range_end
        return [(DELETE, k, b"") for k in sorted(present)
                if (start <= k < end if end else k == start)]
    ran = request.success if request.compare[0].key in present else request.failure
    effects: list[Effect] = []
    now = set(present)
    for op in ran:
        if op.HasField("request_put"):
            effects.append((PUT, op.request_put.key, op.request_put.value))
            now.add(op.request_put.key)
        else:
            gone = would_write(op.request_delete_range, now)
            effects += gone
            now.difference_update(key for _, key, _ in gone)
    return effects


@dataclass
class FailoverWriter:
    """One writer thread: seeded writes through `members[index % 3]`, moving to the next
    member after any error, until `stop` is set.

    `acked` maps revision -> effects of every acknowledged write that changed something;
    `indeterminate` holds every request whose call failed; `errors` counts the failures
    by member and status code.
    """
    index: int
    members: Sequence[LocalMember]
    seed: int
    stop: threading.Event
    acked: dict[int, list[Effect]] = field(default_factory=dict)
    indeterminate: list[Request] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    noops: int = 0

    def run(self) -> None:
        rng, n = random.Random(self.seed), 0
        target = self.index % len(self.members)
        while not self.stop.is_set() and n < MAX_OPS_PER_WRITER:
            member = self.members[target]
            with grpc.insecure_channel(member.endpoint) as channel:
                kv = rpc_pb2_grpc.KVStub(channel)
                while not self.stop.is_set() and n < MAX_OPS_PER_WRITER:
                    request = random_request(rng, b"w%d-%d" % (self.index, n))
                    n += 1
                    try:
                        response = send(kv, request)
                    except grpc.RpcError as e:
                        self.indeterminate.append(request)
                        self.errors[f"{member.name} {e.code().name}: {e.details()}"] += 1
                        break
                    effects = answered_effects(request, response)
                    if effects:
                        self.acked[response.header.revision] = effects
                    else:
                        self.noops += 1
            target = (target + 1) % len(self.members)
            self.stop.wait(0.05)   # NB: a back-off while a member is down, not a wait for state


def match_revisions(options: dict[int, list[int]]) -> dict[int, int]:
    """A maximum matching of revisions to candidate writes (each candidate used once),
    by augmenting paths: revision -> candidate index."""
    owner: dict[int, int] = {}

    def place(rev: int, seen: set[int]) -> bool:
        for candidate in options[rev]:
            if candidate not in seen:
                seen.add(candidate)
                if candidate not in owner or place(owner[candidate], seen):
                    owner[candidate] = rev
                    return True
        return False
    for rev in options:
        place(rev, set())
    return {rev: candidate for candidate, rev in owner.items()}


def explain(history: Sequence[kv_pb2.Event], acked: set[int],
            candidates: Sequence[Request]) -> tuple[dict[int, list[Effect]], list[str]]:
    """Match every revision not in `acked` to one candidate that writes exactly its
    events on the key space of the revision before: (the matched revisions' effects,
    a description of each revision nothing explains)."""
    revisions: dict[int, list[Effect]] = {}
    for event in history:
        revisions.setdefault(event.kv.mod_revision, []).append(
            (event.type, event.kv.key, event.kv.value))
    present: set[bytes] = set()
    options: dict[int, list[int]] = {}
    for rev, effects in revisions.items():
        if rev not in acked:
            options[rev] = [i for i, request in enumerate(candidates)
                            if would_write(request, present) == effects]
        for kind, key, _ in effects:
            (present.add if kind == PUT else present.discard)(key)
    matched = match_revisions(options)
    unexplained = [f"revision {rev}: {revisions[rev]} (candidates {options[rev]})"
                   for rev in options if rev not in matched]
    return {rev: revisions[rev] for rev in matched}, unexplained


# -- watches -------------------------------------------------------------------------------

def wanted_events(watch: Watch, history: Sequence[kv_pb2.Event],
                  prevs: Sequence[kv_pb2.KeyValue | None]) -> list[kv_pb2.Event]:
    """The part of `history` the watcher must deliver: from its start revision (or after
    the revision it was created at), in its range, through its filters, with prev_kv."""
    spec = watch.spec
    after = watch.start_revision - 1 if watch.start_revision else watch.created.header.revision
    out = []
    for event, prev in zip(history, prevs):
        if event.kv.mod_revision > after and spec.keeps(event):
            copy = kv_pb2.Event(type=event.type, kv=event.kv)
            if spec.prev_kv and prev is not None:
                copy.prev_kv.CopyFrom(prev)
            out.append(copy)
    return out


def resume_revision(watch: Watch) -> int:
    """Where a watcher continues: after the last revision it saw, else where it began."""
    last = watch.last_revision()
    if last:
        return last + 1
    return watch.start_revision or watch.created.header.revision + 1


class WatchFailoverTests(SeededClusterTestCase):
    """Watchers see the committed history exactly through a leader kill and restart."""
    maxDiff = 5000
    _check_order = prop.WatchPropertyTests._check_order
    _check_responses = prop.WatchPropertyTests._check_responses
    _check_watch = prop.WatchPropertyTests._check_watch
    _check_history = prop.WatchPropertyTests._check_history
    _history = prop.WatchPropertyTests._history
    _barrier_txns = prop.WatchPropertyTests._barrier_txns
    _start_mid_load = prop.WatchPropertyTests._start_mid_load

    def test_watchers_see_the_committed_history_through_a_leader_kill(self) -> None:
        """Writers on every member and watchers on every member through kill -9 and
        restart of the leader: survivors' watchers see exactly the history, the killed
        member's a prefix that a watcher re-created there completes; acknowledged writes
        are in it at their revision, failed ones at most once."""
        self.run_seeded(self._run)

    def _run(self, rng: random.Random) -> None:
        old = self.wait_leader()
        members = [old, *(m for m in self.cluster.members if m is not old)]
        specs = random_specs(rng)
        collectors = {(m.name, p): self._collector(m) for m in members for p in "em"}
        watches = [collectors[members[s.member].name, "e"].add(s, 0)
                   for s in specs if s.start == "early"]
        for collector in collectors.values():
            collector.created_all()
        stop = threading.Event()
        writers = [FailoverWriter(i, members, rng.randrange(1 << 32), stop)
                   for i in range(WRITERS)]
        threads = [threading.Thread(target=w.run, daemon=True) for w in writers]
        self.addCleanup(self._stop_writers, stop, threads)
        with phase(f"{WRITERS} writers before the kill, {len(specs)} watchers"):
            for thread in threads:
                thread.start()
            self._wait_acked(writers, ACKED_PER_PHASE, "load before the mid-load watchers")
            watches += self._start_mid_load(specs, members, collectors, rng)
            for collector in collectors.values():
                collector.created_all()
            self._wait_acked(writers, ACKED_PER_PHASE, "load before the kill")
        with phase(f"kill -9 the leader {old.name}, elect another, keep writing"):
            self.cluster.kill(old)
            dead = [w for w in watches if w.stream.member is old]
            for key in ((old.name, "e"), (old.name, "m")):
                self._read_to_end(collectors[key])
            new = self.wait_leader(30, not_in=[old])
            self._wait_acked(writers, ACKED_PER_PHASE, "load on the survivors")
        with phase(f"restart {old.name}, re-create its watchers, keep writing"):
            self.cluster.start_member(old, wait=True)
            again = self._collector(old)
            resumed = [again.add(w.spec, resume_revision(w)) for w in dead]
            again.created_all()
            self._wait_acked(writers, ACKED_PER_PHASE, "load after the restart")
        self._stop_writers(stop, threads)
        self.assertFalse(any(t.is_alive() for t in threads), "writers still running")
        self.wait_converged()
        self._check(new, writers, watches, dead, resumed)

    def _collector(self, member: LocalMember) -> Collector:
        collector = Collector(member)
        self.addCleanup(collector.stream.close)
        return collector

    def _wait_acked(self, writers: Sequence[FailoverWriter], more: int, what: str) -> None:
        """Wait for `more` acknowledged writes than now (writers keep going after errors)."""
        def count() -> int:
            return sum(len(w.acked) for w in writers)
        target = count() + more
        self.wait(lambda: count() >= target, 60, f"{what}: {target} acknowledged writes")

    @staticmethod
    def _stop_writers(stop: threading.Event, threads: Sequence[threading.Thread]) -> None:
        stop.set()
        for thread in threads:
            thread.join(2 * WRITE_TIMEOUT_SECONDS)

    def _read_to_end(self, collector: Collector) -> None:
        """File every response the killed member's stream delivered before it ended."""
        if not collector.watches:
            return
        try:
            collector.collect({i: 1 << 62 for i in range(len(collector.watches))})
        except AssertionError as e:
            self.assertIn("ended", str(e), f"the stream on {collector.member.name} outlived it")

    def _check(self, leader: LocalMember, writers: Sequence[FailoverWriter],
               watches: Sequence[Watch], dead: Sequence[Watch],
               resumed: Sequence[Watch]) -> None:
        barrier = self._barrier_txns(leader)
        history, responses = self._history(leader, barrier[-1])
        acked = {rev for w in writers for rev in w.acked} | set(barrier)
        candidates = [r for w in writers for r in w.indeterminate]
        explained, unexplained = explain(history, acked, candidates)
        self.assertEqual(unexplained, [], "revisions no acknowledged or failed write explains")
        # NB: _check_history reads only `acked` of each writer: the explained revisions
        # join as one more writer's
        self._check_history(history, responses, [*writers, SimpleNamespace(acked=explained)],
                            barrier)
        prevs = prev_kvs(history)
        killed = {id(w) for w in dead}
        with phase("check every watcher"):
            for watch in watches:
                if id(watch) in killed:
                    self._check_prefix(watch, history, prevs)
                else:
                    self._check_watch(watch, history, prevs)
            for watch in resumed:
                self._check_watch(watch, history, prevs)
        errors = sum((w.errors for w in writers), Counter())
        log_phase(f"{len(history)} events over revisions 2..{barrier[-1]}; "
                  f"{len(acked) - 2} acknowledged writes, {len(candidates)} failed "
                  f"({len(explained)} of them applied), {sum(w.noops for w in writers)} "
                  f"changed nothing; errors {dict(errors)}; killed member's watchers saw "
                  + ", ".join(f"{w.last_revision()}" for w in dead))

    def _check_prefix(self, watch: Watch, history: Sequence[kv_pb2.Event],
                      prevs: Sequence[kv_pb2.KeyValue | None]) -> None:
        """A watcher whose member died holds a prefix of its part of `history`, no
        revision split between responses."""
        what = f"watcher {watch.watch_id} on killed {watch.stream.member.name}: {watch.spec}"
        wanted = wanted_events(watch, history, prevs)
        got = self._check_responses(watch, wanted, what)
        self.assertEqual(got, wanted[:len(got)], what)


# -- leases --------------------------------------------------------------------------------

class StampedWatch:
    """A Watch stream on one member whose events a thread stamps with their arrival time
    (``time.monotonic()``) as they come, so a late reader never makes them look later."""

    def __init__(self, member: LocalMember, create: pb.WatchCreateRequest) -> None:
        self.stream = WatchStream(member.endpoint)
        self.stream.send(pb.WatchRequest(create_request=create))
        self.events: list[tuple[float, kv_pb2.Event]] = []
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._stamp, daemon=True)
        self._thread.start()

    def _stamp(self) -> None:
        while not self._stop.is_set():
            try:
                response = self.stream.read(timeout=0.5)
            except AssertionError as e:   # a quiet interval, or the stream ended
                if "ended" in str(e):
                    self.last_error = str(e)
                    return
                continue
            now = time.monotonic()
            self.events += [(now, event) for event in response.events]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.stream.close()


class KeepAlive:
    """LeaseKeepAlive through one member: every `KEEPALIVE_INTERVAL_SECONDS` a thread asks
    to renew each lease in `renewing`; a reader thread stamps the answers. A stream that
    ends (the member forwards renewals to a leader that may be gone) is opened again.

    `acked[lease]` is the arrival of the lease's last answer with TTL > 0; `not_found`
    lists ``(lease, arrival)`` of answers with TTL <= 0; `stream_errors` each end.
    """

    def __init__(self, member: LocalMember) -> None:
        self.renewing: set[int] = set()
        self.acked: dict[int, float] = {}
        self.not_found: list[tuple[int, float]] = []
        self.stream_errors: list[str] = []
        self._channel = grpc.insecure_channel(member.endpoint)
        self._stub = rpc_pb2_grpc.LeaseStub(self._channel)
        self._requests: queue.Queue[pb.LeaseKeepAliveRequest | None] | None = None
        self._stop = threading.Event()
        self._readers: list[threading.Thread] = []
        self._sender = threading.Thread(target=self._send, daemon=True)
        self._sender.start()

    def _send(self) -> None:
        while True:
            requests = self._requests or self._open()
            for lease in sorted(self.renewing):
                requests.put(pb.LeaseKeepAliveRequest(ID=lease))
            if self._stop.wait(KEEPALIVE_INTERVAL_SECONDS):
                return

    def _open(self) -> queue.Queue:
        requests: queue.Queue = queue.Queue()
        call = self._stub.LeaseKeepAlive(iter(requests.get, None))
        self._requests = requests
        reader = threading.Thread(target=self._read, args=(call, requests), daemon=True)
        self._readers.append(reader)
        reader.start()
        return requests

    def _read(self, call: grpc.Call, requests: queue.Queue) -> None:
        try:
            for response in call:
                now = time.monotonic()
                if response.TTL > 0:
                    self.acked[response.ID] = now
                else:
                    self.not_found.append((response.ID, now))
        except grpc.RpcError as e:
            if not self._stop.is_set():
                self.stream_errors.append(f"{e.code().name}: {e.details()}")
        if self._requests is requests:
            self._requests = None   # NB: the sender opens a new stream at its next round
        requests.put(None)

    def close(self) -> None:
        self._stop.set()
        self._sender.join(10)
        if self._requests is not None:
            self._requests.put(None)
        self._channel.close()
        for reader in self._readers:
            reader.join(10)


class LeaseFailoverTests(SeededClusterTestCase):
    """Lease expiry through a leader kill: never early, never lost."""

    def test_leases_expire_neither_early_nor_never_across_a_leader_kill(self) -> None:
        """Leases kept alive through a follower survive a leader kill -9; the ones no
        longer renewed are each revoked (their key deleted in a revision of its own) no
        sooner than TTL after their last renewal and within 30 s of the kill."""
        self.run_seeded(self._run)

    def _run(self, rng: random.Random) -> None:
        old = self.wait_leader()
        via = rng.choice([m for m in self.cluster.members if m is not old])
        leases, granted, last_put = self._grant(via)
        watch = StampedWatch(via, pb.WatchCreateRequest(
            key=LEASE_PREFIX, range_end=prefix_end(LEASE_PREFIX), start_revision=last_put + 1))
        self.addCleanup(watch.close)
        keeper = KeepAlive(via)
        self.addCleanup(keeper.close)
        keeper.renewing.update(leases)
        with phase(f"renew {LEASES} leases through {via.name} past their first TTL"):
            self.wait(lambda: all(keeper.acked.get(lease, 0) > granted[lease] +
                                  LEASE_TTL_SECONDS + 1 for lease in leases), 30,
                      "every lease renewed more than TTL + 1 s after its grant")
        dying = sorted(rng.sample(leases, LEASES // 2))
        kept = [lease for lease in leases if lease not in dying]
        keeper.renewing.difference_update(dying)
        with phase(f"stop renewing {len(dying)}, kill -9 the leader {old.name}"):
            killed_at = time.monotonic()
            self.cluster.kill(old)
            self.wait_leader(30, not_in=[old])
        with phase("the unrenewed leases are revoked"):
            self.wait(lambda: self._deleted(watch, leases, dying) == set(dying),
                      killed_at + EVENTUALLY_SECONDS - time.monotonic(),
                      f"the keys of leases {dying} to be deleted (watch: {watch.last_error})")
            last_delete = max(at for at, _ in watch.events)
            self.wait(lambda: all(keeper.acked.get(lease, 0) > last_delete for lease in kept),
                      EVENTUALLY_SECONDS, "a renewal of every kept lease after the revocations")
        self._check_revocations(watch, keeper, leases, dying)
        self._check_survivors(via, watch, keeper, leases, kept, dying)
        with phase(f"restart {old.name}: every member agrees on the leases"):
            keeper.close()
            self.cluster.start_member(old, wait=True)
            self.wait_converged()
            for member in self.cluster.members:
                self._check_leases_on(member, leases, kept)
        log_phase(f"kept {[f'{x:x}' for x in kept]} through {via.name}; keep-alive stream "
                  f"ends: {keeper.stream_errors}")

    def _grant(self, via: LocalMember) -> tuple[list[int], dict[int, float], int]:
        """Grant `LEASES` leases through `via` and put key ``lease/<n>`` with each: the
        lease IDs, when each grant was sent, and the last put's revision."""
        leases, granted, revision = [], {}, 0
        with grpc.insecure_channel(via.endpoint) as channel:
            lease_stub, kv = rpc_pb2_grpc.LeaseStub(channel), rpc_pb2_grpc.KVStub(channel)
            for n in range(LEASES):
                sent = time.monotonic()
                lease = lease_stub.LeaseGrant(pb.LeaseGrantRequest(TTL=LEASE_TTL_SECONDS),
                                              timeout=30).ID
                leases.append(lease)
                granted[lease] = sent
                revision = kv.Put(pb.PutRequest(key=lease_key(leases, lease), value=b"v",
                                                lease=lease), timeout=30).header.revision
        return leases, granted, revision

    @staticmethod
    def _deleted(watch: StampedWatch, leases: Sequence[int], among: Iterable[int]) -> set[int]:
        """Which of the leases `among` have had their key deleted."""
        gone = {e.kv.key for _, e in watch.events if e.type == DELETE}
        return {lease for lease in among if lease_key(leases, lease) in gone}

    def _check_revocations(self, watch: StampedWatch, keeper: KeepAlive,
                           leases: Sequence[int], dying: Sequence[int]) -> None:
        """Each unrenewed lease's key is deleted once, alone in its revision, no sooner
        than TTL after the lease's last acknowledged renewal."""
        deletes = [(at, e) for at, e in watch.events if e.type == DELETE]
        per_revision = Counter(e.kv.mod_revision for _, e in deletes)
        for lease in dying:
            key = lease_key(leases, lease)
            mine = [(at, e) for at, e in deletes if e.kv.key == key]
            self.assertEqual(len(mine), 1, f"DELETE events of {key!r}: {mine}")
            at, event = mine[0]
            self.assertEqual(per_revision[event.kv.mod_revision], 1,
                             f"{key!r} deleted at {event.kv.mod_revision} with other keys")
            since = at - keeper.acked[lease]
            self.assertGreaterEqual(
                since, LEASE_TTL_SECONDS, f"lease {lease:x} revoked {since:.3f}s after its "
                f"last renewal was acknowledged (TTL {LEASE_TTL_SECONDS}s)")
            log_phase(f"lease {lease:x} revoked at revision {event.kv.mod_revision}, "
                      f"{since:.2f}s after its last renewal")

    def _check_survivors(self, via: LocalMember, watch: StampedWatch, keeper: KeepAlive,
                         leases: Sequence[int], kept: Sequence[int],
                         dying: Sequence[int]) -> None:
        """The kept leases were always renewed, live, hold their keys and lost none; the
        others are gone."""
        self.assertEqual([(lease, at) for lease, at in keeper.not_found if lease in kept], [],
                         "renewals of kept leases answered 'not found'")
        with grpc.insecure_channel(via.endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            sentinel = kv.Put(pb.PutRequest(key=LEASE_PREFIX + b"~sentinel", value=b"s"),
                              timeout=30).header.revision
            self.wait(lambda: any(e.kv.mod_revision == sentinel for _, e in watch.events),
                      EVENTUALLY_SECONDS, "the sentinel's event")
            self.assertEqual(self._deleted(watch, leases, leases), set(dying))
            got = kv.Range(pb.RangeRequest(key=LEASE_PREFIX, range_end=prefix_end(LEASE_PREFIX)),
                           timeout=30)
            self.assertEqual([(k.key, k.lease) for k in got.kvs if k.lease],
                             [(lease_key(leases, lease), lease) for lease in kept])
            lease_stub = rpc_pb2_grpc.LeaseStub(channel)
            for lease in leases:
                ttl = lease_stub.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease, keys=True),
                                                 timeout=30)
                if lease in kept:
                    self.assertTrue(0 < ttl.TTL <= LEASE_TTL_SECONDS, ttl)
                    self.assertEqual((ttl.grantedTTL, list(ttl.keys)),
                                     (LEASE_TTL_SECONDS, [lease_key(leases, lease)]))
                else:
                    self.assertEqual(ttl.TTL, -1, ttl)

    def _check_leases_on(self, member: LocalMember, leases: Sequence[int],
                         kept: Sequence[int]) -> None:
        """`member` alone (serializable reads, its own lease list) has exactly the kept
        leases and their keys."""
        with grpc.insecure_channel(member.endpoint) as channel:
            listed = rpc_pb2_grpc.LeaseStub(channel).LeaseLeases(pb.LeaseLeasesRequest(),
                                                                 timeout=30)
            got = rpc_pb2_grpc.KVStub(channel).Range(pb.RangeRequest(
                key=LEASE_PREFIX, range_end=prefix_end(LEASE_PREFIX), serializable=True),
                timeout=30)
        self.assertEqual(sorted(s.ID for s in listed.leases), sorted(kept), member.name)
        self.assertEqual([k.key for k in got.kvs if k.lease],
                         [lease_key(leases, lease) for lease in kept], member.name)


def lease_key(leases: Sequence[int], lease: int) -> bytes:
    """The key attached to `lease`: ``lease/<its grant order, two digits>``."""
    return LEASE_PREFIX + b"%02d" % leases.index(lease)

