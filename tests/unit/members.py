"""Members for unit tests: a real Member, RaftLoop and raft core on a real KVStore, with an
in-memory WAL and snapshotter, a Clock as reactor and an executor the test chooses.

`settle()` runs everything due now (reactor turns and, with a SynchronousExecutor, the disk
work they submit) without advancing time; `elect()` ticks until the member leads.
"""
from __future__ import annotations

import random
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from etcdd.proto import raft_pb2
from etcdd.raft import MemoryStorage, RaftConfig, RawNode
from etcdd.server.cluster import ClusterState, member_json
from etcdd.server.disk import SynchronousExecutor
from etcdd.server.member import Identity, Member
from etcdd.server.membership import Member as ClusterMember
from etcdd.server.raftloop import RaftLoop

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
    def __init__(self) -> None:
        self.saved: list[raft_pb2.Snapshot] = []
        self.dir = "/nonexistent"

    def save(self, snapshot: raft_pb2.Snapshot) -> None:
        self.saved.append(snapshot)

    def purge(self, max_snapshots: int = 5) -> list[str]:
        return []

    def db_path(self, index: int) -> str:
        return f"/nonexistent/{index:016x}.snap.db"


class SingleMember:
    """One voter: member, loop and node wired as the service wires them."""

    def __init__(self, case: SynchronousTestCase, store: Any, clock: Clock | None = None,
                 disk: Any = None, snapshot_count: int = 100000, **member_kw: Any) -> None:
        self.clock = clock or Clock()
        self.store = store
        self.disk = disk if disk is not None else SynchronousExecutor()
        self.wal = MemoryWAL()
        self.snapshotter = MemorySnapshotter()
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
