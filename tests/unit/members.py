"""Members for unit tests: a real Member, RaftLoop and raft core on a real KVStore, with an
in-memory WAL and snapshotter, a Clock as reactor and an executor the test chooses.

`SingleMember` is one voter: `settle()` runs everything due now (reactor turns and, with a
SynchronousExecutor, the disk work they submit) without advancing time; `elect()` ticks
until the member leads.

`MemberCluster` is three (or more) voters in one process on one Clock: each has its own
store, raft node, WAL and loop, and their raft messages and snapshots travel over a
`FakeNetwork` whose links the test cuts and heals. No sockets, no threads.
"""
from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from etcdd.mvcc.store import KVStore
from etcdd.peer.protocol import snapshot_part_path
from etcdd.proto import raft_pb2
from etcdd.raft import MemoryStorage, RaftConfig, RawNode
from etcdd.server.cluster import ClusterState, member_json
from etcdd.server.disk import SynchronousExecutor
from etcdd.server.member import Identity, Member
from etcdd.server import membership
from etcdd.server.membership import Member as ClusterMember
from etcdd.server.raftloop import RaftLoop
from tests.unit.stores import new_store_path, open_store

IDENTITY = Identity(cluster_id=0xCDF818194E3A8C32, member_id=0x8E9E05C52164694D, name="m1")


class MemoryWAL:
    """A WAL that remembers what was saved and what was fsync'd (`synced` holds the
    entries and hard state as of the last must_sync save)."""

    def __init__(self) -> None:
        self.entries: list[raft_pb2.Entry] = []
        self.hard_state = raft_pb2.HardState()
        self.snapshots: list[tuple[int, int]] = []
        self.syncs = 0
        self.fail_with: BaseException | None = None

    def save(self, hard_state: Any, entries: Any, must_sync: bool) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        if entries:
            first = entries[0].Index
            self.entries = [e for e in self.entries if e.Index < first] + list(entries)
        if hard_state is not None:
            self.hard_state = hard_state
        if must_sync:
            self.syncs += 1

    def save_snapshot(self, snap: Any) -> None:
        self.snapshots.append((snap.index, snap.term))

    def release_before(self, index: int, max_wals: int = 5) -> list[str]:
        return []

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


class MemorySnapshotter:
    """Keeps saved snapshots in a list; `dir` is where received backends (`db_path`) and
    the copies sent to peers go, so snapshot tests give it a real directory."""

    def __init__(self, directory: str) -> None:
        self.saved: list[raft_pb2.Snapshot] = []
        self.dir = directory

    def save(self, snapshot: raft_pb2.Snapshot) -> None:
        self.saved.append(snapshot)

    def purge(self, max_snapshots: int = 5) -> list[str]:
        return []

    def db_path(self, index: int) -> str:
        return os.path.join(self.dir, f"{index:016x}.snap.db")


class SingleMember:
    """One voter: member, loop and node wired as the service wires them."""

    def __init__(self, case: SynchronousTestCase, store: Any, clock: Clock | None = None,
                 disk: Any = None, snapshot_count: int = 100000, **member_kw: Any) -> None:
        self.clock = clock or Clock()
        self.store = store
        self.disk = disk if disk is not None else SynchronousExecutor()
        self.wal = MemoryWAL()
        self.snapshotter = MemorySnapshotter(os.path.dirname(store.backend.path))
        self.storage = MemoryStorage()
        mid = IDENTITY.member_id
        self.node = RawNode(RaftConfig(id=mid, storage=self.storage, election_ticks=10,
                                       heartbeat_ticks=1, rand=random.Random(1)))
        me = ClusterMember(mid, IDENTITY.name, ("http://127.0.0.1:2380",))
        self.node.bootstrap([(mid, member_json(me))])
        self.cluster = ClusterState(store.backend.dbs)
        with store.backend.begin_read() as txn:
            self.cluster.load(txn)
        self.member = Member(IDENTITY, store, self.cluster, self.disk, self.clock,
                             client_urls=("http://127.0.0.1:2379",), **member_kw)
        self.loop = RaftLoop(self.node, self.storage, self.wal, self.snapshotter,
                             store, self.disk, self.clock, self.member,
                             heartbeat_seconds=0.1, snapshot_count=snapshot_count,
                             conf_state=raft_pb2.ConfState(voters=[mid]),
                             on_fatal=self.member.fatal)
        self.member.loop = self.loop
        case.addCleanup(self.stop)

    def start(self) -> "SingleMember":
        self.member.start()
        self.loop.start()
        self.elect()
        return self

    def settle(self) -> None:
        """Run every call due now, and what those schedule for now, until quiet."""
        for _ in range(10000):
            due = [c for c in self.clock.getDelayedCalls() if c.getTime() <= self.clock.seconds()]
            if not due:
                run_all = getattr(self.disk, "run_all", None)
                if run_all is None or not self.disk.queue:
                    return
                run_all()
                continue
            self.clock.advance(0)
        raise AssertionError("the member did not settle")

    def elect(self) -> None:
        for _ in range(100):
            self.settle()
            if self.loop.is_leader and self.member.cluster.version:
                return
            self.clock.advance(0.1)
        raise AssertionError("no leader after 10 s of ticks")

    def stop(self) -> None:
        self.loop.stop()
        self.member.stop()


# -- a cluster of in-process members ------------------------------------------------------

# One raft tick (the heartbeat interval); 10 make the election timeout. NB: 1/8 s, not
# etcd's 0.1 s: binary floats hold its multiples exactly, so LoopingCall's `%` arithmetic
# never schedules a second tick a few ulps after the first.
TICK_SECONDS = 0.125
ELECTION_TICKS = 10
CLUSTER_TOKEN = "etcd-cluster"


class InlineThreadPool:
    """The thread pool of a ThreadlessClock: work runs at once on the caller's thread."""

    def callInThreadWithCallback(self, on_result: Callable[[bool, Any], None],
                                 func: Callable[..., Any], *args: Any, **kw: Any) -> None:
        try:
            result = func(*args, **kw)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class ThreadlessClock(Clock):
    """A Clock that is also enough of a reactor for `deferToThreadPool`: the pool's work
    runs at once and its result comes back on the next reactor turn, as from a real pool
    (`callFromThread` is `callLater(0, ...)`)."""

    def getThreadPool(self) -> InlineThreadPool:
        return InlineThreadPool()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.callLater(0, f, *args, **kw)

    def move_to(self, when: float) -> None:
        """Set the time to `when` without running anything (`run_turn` runs what is due)."""
        self.rightNow = max(self.rightNow, when)

    def next_call_time(self) -> float | None:
        return min((c.getTime() for c in self.calls), default=None)

    def run_turn(self) -> bool:
        """Run the calls due now but not the ones they schedule, as one iteration of a
        real reactor does (`advance(0)` would run those too); whether any ran."""
        now = self.seconds()
        due = [c for c in self.calls if c.getTime() <= now]
        for call in due:
            if call in self.calls:          # not cancelled by an earlier call of this turn
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)
        return bool(due)


class QueuedExecutor:
    """A disk executor that keeps submitted work, in order, until it is run; while `held`,
    a cluster's `settle()` leaves it queued."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred]] = []
        self.held = False

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def submit(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        d: Deferred = Deferred()
        self.queue.append((fn, args, d))
        return d

    def run_next(self) -> None:
        """Run the oldest queued work and fire its Deferred with the outcome."""
        fn, args, d = self.queue.pop(0)
        try:
            result = fn(*args)
        except BaseException:
            d.errback(Failure())
        else:
            d.callback(result)

    def run_all(self) -> None:
        while self.queue:
            self.run_next()


class FakeNetwork:
    """The links between in-process members sharing one Clock.

    A message sent in one reactor turn is stepped into its receiver on a later turn, after
    a serialization round trip as on the wire. A cut link (directed, `(from, to)`) drops
    what is sent on it, with `report_unreachable` to the sender as the real transport
    does, and drops what was still in flight on it. `up_since[(a, b)]` is when the link
    from a to b last came up; `snapshots` lists the snapshots received, as
    `(from, to, index)`."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.handlers: dict[int, Any] = {}                 # member ID -> IRaftPeerHandler
        self.cut: set[tuple[int, int]] = set()
        self.up_since: dict[tuple[int, int], float] = {}
        self.snapshots: list[tuple[int, int, int]] = []

    def attach(self, member_id: int, handler: Any) -> "FakePeerTransport":
        """Join `member_id`, whose messages are stepped into `handler`; its transport."""
        self.handlers[member_id] = handler
        return FakePeerTransport(self, member_id, handler)

    def is_up(self, frm: int, to: int) -> bool:
        return (frm, to) not in self.cut and to in self.handlers

    def set_link(self, a: int, b: int, up: bool) -> None:
        """Cut or heal the links between `a` and `b`, both directions."""
        for pair in ((a, b), (b, a)):
            if up and pair in self.cut:
                self.cut.discard(pair)
                self.up_since[pair] = self.clock.seconds()
            elif not up:
                self.cut.add(pair)
                self.up_since.pop(pair, None)

    def deliver(self, frm: int, to: int, payloads: list[bytes]) -> None:
        if not self.is_up(frm, to):
            return
        process = self.handlers[to].process
        for payload in payloads:
            process(raft_pb2.Message.FromString(payload))


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


class FakePeerTransport:
    """What RaftLoop and Member call on a peer transport, over a FakeNetwork: messages to
    one peer in one `send()` travel together; a MsgSnap takes the sender's
    `snapshot_source` copy to the receiver's snapshot directory, one at a time per peer."""

    def __init__(self, network: FakeNetwork, local_id: int, handler: Any) -> None:
        self._network = network
        self._local_id = local_id
        self._handler = handler
        self.peers: dict[int, tuple[str, ...]] = {}
        self._snapshotting: set[int] = set()
        self._stopped = False

    def add_peer(self, member_id: int, urls: Any) -> None:
        if member_id not in self.peers:
            self._network.up_since.setdefault((self._local_id, member_id),
                                              self._network.clock.seconds())
        self.peers[member_id] = tuple(urls)

    def update_peer(self, member_id: int, urls: Any) -> None:
        self.add_peer(member_id, urls)

    def remove_peer(self, member_id: int) -> None:
        self.peers.pop(member_id, None)

    def _reachable(self, member_id: int) -> bool:
        return member_id in self.peers and self._network.is_up(self._local_id, member_id)

    def is_active(self, member_id: int) -> bool:
        return self._reachable(member_id)

    def active_since(self, member_id: int) -> float | None:
        if not self._reachable(member_id):
            return None
        return self._network.up_since.get((self._local_id, member_id))

    def stop(self) -> None:
        self._stopped = True

    def send(self, messages: Any) -> None:
        """Send each message to its `to` on a later reactor turn; report the unreachable."""
        if self._stopped:
            return
        batches: dict[int, list[bytes] | None] = {}
        for m in messages:
            if m.type == raft_pb2.MsgSnap:
                self._send_snapshot(m)
                continue
            batch = batches.get(m.to, _UNSEEN)
            if batch is _UNSEEN:
                batch = batches[m.to] = [] if self._reachable(m.to) else None
            if batch is not None:
                batch.append(m.SerializeToString())
        for to, batch in batches.items():
            if batch is None:
                self._handler.report_unreachable(to)
            else:
                self._network.clock.callLater(0, self._network.deliver, self._local_id, to,
                                              batch)

    def _send_snapshot(self, message: raft_pb2.Message) -> None:
        to = message.to
        if to in self._snapshotting:
            return          # NB: as PeerTransport, raft waits for the one in flight
        if not self._reachable(to):
            self._handler.report_snapshot(to, True)
            return
        self._snapshotting.add(to)
        d = maybeDeferred(self._handler.snapshot_source, message)
        d.addCallback(self._snapshot_ready, message)
        d.addErrback(self._snapshot_failed, to)

    def _snapshot_ready(self, path: str, message: raft_pb2.Message) -> None:
        """The copy is ready: it reaches the receiver's snapshot dir on a later turn."""
        receiver = self._network.handlers[message.to]
        part = snapshot_part_path(receiver.snapshotter.dir, message.snapshot.metadata.index)
        shutil.copyfile(path, part)
        _remove(path)
        self._network.clock.callLater(0, self._deliver_snapshot, message.to,
                                      message.SerializeToString(), part)

    def _deliver_snapshot(self, to: int, payload: bytes, path: str) -> None:
        if not self._reachable(to):
            _remove(path)
            self._snapshot_done(to, True)
            return
        message = raft_pb2.Message.FromString(payload)

        def received(result: Any) -> None:
            _remove(path)
            failed = isinstance(result, Failure)
            if not failed:
                self._network.snapshots.append((self._local_id, to,
                                                message.snapshot.metadata.index))
            self._snapshot_done(to, failed)
        receiver = self._network.handlers[to]
        maybeDeferred(receiver.receive_snapshot, message, path).addBoth(received)

    def _snapshot_failed(self, failure: Failure, to: int) -> None:
        self._snapshot_done(to, True)

    def _snapshot_done(self, to: int, failed: bool) -> None:
        """The receiver's answer (etcd's ACK or ERROR) reaches raft, unless stopped."""
        self._snapshotting.discard(to)
        if not self._stopped:
            self._handler.report_snapshot(to, failed)


_UNSEEN: Any = object()


@dataclass(eq=False)
class LocalMember:
    """One member of a MemberCluster, wired as `service.py` wires a member."""

    name: str
    client_urls: tuple[str, ...]
    store: KVStore
    wal: MemoryWAL
    snapshotter: MemorySnapshotter
    storage: MemoryStorage
    node: RawNode
    cluster: ClusterState
    member: Member
    loop: RaftLoop
    disk: Any
    transport: FakePeerTransport

    @property
    def id(self) -> int:
        return self.member.identity.member_id

    @property
    def running(self) -> bool:
        return not self.member.stopped

    def stop(self) -> None:
        """Stop as MemberService._stop_all does: loop, member, transport."""
        self.loop.stop()
        self.member.stop()
        self.transport.stop()


class MemberCluster:
    """`size` voters bootstrapped together (etcd `--initial-cluster`), each with its own
    KVStore, raft node, in-memory WAL and loop, all on one ThreadlessClock, talking over a
    FakeNetwork. Disks are SynchronousExecutors unless `disks` gives one per member.

    `settle()` runs every reactor turn due now (and queued disk work, unless held);
    `advance(s)` moves time from timer to timer (1/8 s ticks), settling at each."""

    def __init__(self, case: SynchronousTestCase, size: int = 3, seed: int = 1,
                 disks: list[Any] | None = None, snapshot_count: int = 100000,
                 **member_kw: Any) -> None:
        self.clock = ThreadlessClock()
        self.network = FakeNetwork(self.clock)
        urls = [(f"http://127.0.0.1:{2380 + 10 * i}",) for i in range(size)]
        peers = [ClusterMember(membership.member_id(u, CLUSTER_TOKEN), f"m{i + 1}", u)
                 for i, u in enumerate(urls)]
        self.cluster_id = membership.cluster_id(p.id for p in peers)
        self.members = [self._build(case, p, peers, disks[i] if disks else None,
                                    random.Random(seed * 1000 + i), snapshot_count, member_kw)
                        for i, p in enumerate(peers)]
        case.addCleanup(self.stop)

    def _build(self, case: SynchronousTestCase, me: ClusterMember, peers: list[ClusterMember],
               disk: Any, rand: random.Random, snapshot_count: int,
               member_kw: dict[str, Any]) -> LocalMember:
        path = new_store_path(case)
        store = open_store(case, path)
        disk = disk if disk is not None else SynchronousExecutor()
        storage = MemoryStorage()
        node = RawNode(RaftConfig(id=me.id, storage=storage, election_ticks=ELECTION_TICKS,
                                  heartbeat_ticks=1, rand=rand))
        node.bootstrap([(p.id, member_json(p)) for p in peers])
        state = ClusterState(store.backend.dbs)
        with store.backend.begin_read() as txn:
            state.load(txn)
        port = int(me.peer_urls[0].rsplit(":", 1)[1]) - 1
        client_urls = (f"http://127.0.0.1:{port}",)
        member_kw.setdefault("election_timeout_seconds", ELECTION_TICKS * TICK_SECONDS)
        member = Member(Identity(self.cluster_id, me.id, me.name), store, state, disk,
                        self.clock, client_urls=client_urls, **member_kw)
        wal, snapshotter = MemoryWAL(), MemorySnapshotter(os.path.dirname(path))
        loop = RaftLoop(node, storage, wal, snapshotter, store, disk, self.clock, member,
                        heartbeat_seconds=TICK_SECONDS, snapshot_count=snapshot_count,
                        conf_state=raft_pb2.ConfState(voters=sorted(p.id for p in peers)),
                        on_fatal=member.fatal)
        member.loop = loop
        loop.transport = self.network.attach(me.id, loop)
        for p in peers:
            if p.id != me.id:
                loop.transport.add_peer(p.id, p.peer_urls)
        return LocalMember(me.name, client_urls, store, wal, snapshotter, storage, node, state,
                           member, loop, disk, loop.transport)

    # -- life --------------------------------------------------------------------------------

    def start(self) -> "MemberCluster":
        """Start every member as the service does (the first election tick advanced) and
        wait until a leader is elected and everyone has published."""
        for m in self.members:
            for _ in range(ELECTION_TICKS - 1):     # etcd --initial-election-tick-advance
                m.node.tick()
            m.member.start()
            m.loop.start()
        self.elect()
        return self

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    # -- time --------------------------------------------------------------------------------

    def settle(self, until: Callable[[], bool] | None = None) -> None:
        """Run reactor turns due now (and queued disk work not held) until quiet, or until
        `until()` holds (checked before every turn)."""
        for _ in range(100000):
            if until is not None and until():
                return
            if self.clock.run_turn():
                continue
            queued = [d for d in self._queued_disks() if d.queue]
            if not queued:
                return
            for d in queued:
                d.run_next()
        raise AssertionError("the cluster did not settle")

    def _queued_disks(self) -> list[Any]:
        return [m.disk for m in self.members
                if hasattr(m.disk, "queue") and not getattr(m.disk, "held", False)]

    def advance(self, seconds: float, until: Callable[[], bool] | None = None) -> bool:
        """Move time by `seconds`, stopping at each timer's own time (the raft ticks, the
        sweepers) and settling there; stop early once `until()` holds. Whether it held."""
        clock = self.clock
        end = clock.seconds() + seconds
        while True:
            self.settle(until)
            if until is not None and until():
                return True
            when = clock.next_call_time()
            if when is None or when > end:
                break
            clock.move_to(when)
        clock.move_to(end)
        return False

    def wait_for(self, condition: Callable[[], bool], seconds: float = 10.0,
                 what: str = "the condition") -> None:
        """Advance until `condition()` holds; AssertionError after `seconds`."""
        if not self.advance(seconds, condition):
            raise AssertionError(f"{what} did not hold within {seconds} s")

    # -- who is who --------------------------------------------------------------------------

    @property
    def running(self) -> list[LocalMember]:
        return [m for m in self.members if m.running]

    def leader(self) -> LocalMember | None:
        """The running member that leads at the highest term, if any."""
        leaders = [m for m in self.running if m.loop.is_leader]
        return max(leaders, key=lambda m: m.node.term) if leaders else None

    def followers(self) -> list[LocalMember]:
        lead = self.leader()
        return [m for m in self.running if m is not lead]

    def by_id(self, mid: int) -> LocalMember:
        return next(m for m in self.members if m.id == mid)

    def converged(self) -> bool:
        """A leader every running member follows; all applied its commit index; everyone
        published and the cluster version set everywhere."""
        lead = self.leader()
        if lead is None:
            return False
        committed = lead.member.committed_index
        return all(m.loop.lead == lead.id and m.member.applied_index == committed
                   and m.cluster.version
                   and all(x.client_urls for x in m.cluster.members.values())
                   for m in self.running)

    def elect(self, seconds: float = 10.0) -> LocalMember:
        """Advance until the cluster converged; its leader."""
        self.wait_for(self.converged, seconds, "convergence")
        lead = self.leader()
        assert lead is not None
        return lead

    # -- faults ------------------------------------------------------------------------------

    def cut(self, a: LocalMember, b: LocalMember) -> None:
        """Drop everything between `a` and `b` from now on, in flight included."""
        self.network.set_link(a.id, b.id, up=False)

    def isolate(self, m: LocalMember) -> None:
        for other in self.members:
            if other is not m:
                self.cut(m, other)

    def heal(self, a: LocalMember | None = None, b: LocalMember | None = None) -> None:
        """Restore the link between `a` and `b`, every link of `a`, or all links."""
        for x in self.members:
            for y in self.members:
                if x is not y and (a is None or a in (x, y)) and (b is None or b in (x, y)):
                    self.network.set_link(x.id, y.id, up=True)
