"""The raft loop: ticks, steps and drains the raft core, one Ready at a time.

Shell. etcd 3.4 `etcdserver/raft.go` `raftNode.start`: for each Ready, the leader sends
its messages first (followers persist in parallel with the leader's own fsync); then, on
the ordered disk thread, an incoming snapshot is saved (`.snap` file, WAL snapshot record,
backend replaced), hard state and entries are appended to the WAL and fsync'd, and the
committed entries are applied in one LMDB transaction that also records the consistent
index; back on the reactor the raft storage learns the entries, a follower sends its
messages (acknowledgements only after its fsync), conf changes reach raft and the peer
transport, waiters are answered, and `advance()` lets the next Ready come. All work that
arrived during one disk round trip goes out as the next batch.

Every `snapshot_count` applied entries the member saves a snapshot: the backend is flushed,
the `.snap` file and the WAL snapshot record are written, old WAL segments and snapshot
files are released, and the in-memory raft log keeps the last 5000 entries so a slow
follower can still catch up from the log (etcd `snapshotCatchUpEntriesN`).

The loop is also the peer transport's handler (`IRaftPeerHandler`): messages from peers
are stepped into raft; a MsgSnap to send takes a consistent copy of the backend off the
reactor; a snapshot received is made durable before raft sees it.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from etcdd.peer.transport import IRaftPeerHandler
from etcdd.proto import raft_pb2
from etcdd.raft import RaftError, RawNode, StateType
from etcdd.wal.wal import WALSnapshot

# etcd 3.4 etcdserver/server.go snapshotCatchUpEntriesN
SNAPSHOT_CATCH_UP_ENTRIES = 5000


class IRaftHost(Protocol):
    """What the loop needs from the member that owns it."""

    def apply_entries(self, entries: list) -> Any: ...          # disk thread
    def install_snapshot(self, snapshot: Any, db_path: str) -> None: ...  # disk thread
    def entries_applied(self, batch: Any) -> None: ...          # reactor
    def snapshot_installed(self, snapshot: Any) -> None: ...    # reactor
    def soft_state_changed(self, lead: int, state: StateType) -> None: ...
    def read_states(self, states: list) -> None: ...
    def conf_changed(self, conf_state: Any) -> None: ...


@implementer(IRaftPeerHandler)
class RaftLoop:
    """Invariants: at most one Ready is between `ready()` and `advance()`; the disk thread
    handles Readys in the order they were taken; nothing a Ready says to persist is
    acknowledged to a peer before it is durable (followers send after the fsync)."""

    _log = Logger()

    def __init__(self, node: RawNode, storage: Any, wal: Any, snapshotter: Any,
                 store: Any, disk: Any, reactor: Any, host: IRaftHost,
                 heartbeat_seconds: float, snapshot_count: int, max_wals: int = 5,
                 max_snapshots: int = 5, snapshot_index: int = 0,
                 conf_state: raft_pb2.ConfState | None = None,
                 on_fatal: Callable[[Failure], None] | None = None) -> None:
        self.node = node
        self.storage = storage
        self.wal = wal
        self.snapshotter = snapshotter
        self._backend = store.backend
        self._backend_copy = store.copy_to
        self._disk = disk
        self._reactor = reactor
        self._host = host
        self._heartbeat_seconds = heartbeat_seconds
        self._snapshot_count = snapshot_count
        self._max_wals = max_wals
        self._max_snapshots = max_snapshots
        self.snapshot_index = snapshot_index
        self.conf_state = conf_state or raft_pb2.ConfState()
        self._on_fatal = on_fatal or (lambda failure: None)
        self.transport: Any = None
        self.applied_index = snapshot_index
        self._busy = False
        self._snapshotting = False
        self._stopped = False
        self._process_call: Any = None
        self._ticker: LoopingCall | None = None
        self._lead = 0
        self._state = StateType.FOLLOWER

    # -- life ------------------------------------------------------------------------------

    def start(self) -> None:
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = self._reactor
        self._ticker.start(self._heartbeat_seconds, now=False)
        self.schedule()

    def stop(self) -> None:
        self._stopped = True
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        if self._process_call is not None and self._process_call.active():
            self._process_call.cancel()
        self._process_call = None

    @property
    def lead(self) -> int:
        return self._lead

    @property
    def is_leader(self) -> bool:
        return self._state == StateType.LEADER

    # -- inputs ----------------------------------------------------------------------------

    def _tick(self) -> None:
        self.node.tick()
        self.schedule()

    def propose(self, datas: list[bytes]) -> None:
        """Propose entries as one MsgProp. Raises ProposalDroppedError (no leader, leader
        transfer in progress)."""
        m = raft_pb2.Message(type=raft_pb2.MsgProp, **{"from": self.node.id})
        m.entries.extend(raft_pb2.Entry(Data=d) for d in datas)
        self.node.step(m)
        self.schedule()

    def propose_conf_change(self, cc: raft_pb2.ConfChange) -> None:
        self.node.propose_conf_change(cc)
        self.schedule()

    def read_index(self, ctx: bytes) -> None:
        self.node.read_index(ctx)
        self.schedule()

    def transfer_leader(self, transferee: int) -> None:
        self.node.transfer_leader(transferee)
        self.schedule()

    def campaign(self) -> None:
        self.node.campaign()
        self.schedule()

    # IRaftPeerHandler

    def process(self, message: raft_pb2.Message) -> None:
        if self._stopped:
            return
        try:
            self.node.step(message)
        except RaftError as e:
            self._log.debug("ignored a message from {peer:x}: {error}",
                            peer=getattr(message, "from"), error=e)
        self.schedule()

    def report_unreachable(self, member_id: int) -> None:
        self.node.report_unreachable(member_id)
        self.schedule()

    def report_snapshot(self, member_id: int, failed: bool) -> None:
        self.node.report_snapshot(member_id, failed)
        self.schedule()

    def snapshot_source(self, message: raft_pb2.Message) -> Deferred:
        """A consistent copy of the backend for the MsgSnap `message`, taken in a read
        transaction in the reactor's thread pool (the disk thread keeps writing).

        etcd 3.4 `createMergedSnapshotMessage`: the message is rewritten to describe what
        is sent, the copy's consistent index and term and the current membership, so the
        receiver is always in the snapshot's ConfState and skips nothing it lacks."""
        path = os.path.join(self.snapshotter.dir, f"tmp-send-{message.to:x}.db")
        if os.path.exists(path):
            os.unlink(path)
        conf_state = raft_pb2.ConfState()
        conf_state.CopyFrom(self.conf_state)

        def rewrite(index_term: tuple[int, int]) -> str:
            meta = message.snapshot.metadata
            meta.index, meta.term = index_term
            meta.conf_state.CopyFrom(conf_state)
            self._log.info("sending database snapshot at index {index} to {peer:x}",
                           index=meta.index, peer=message.to)
            return path
        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                              self._backend_copy, path)
        return d.addCallback(rewrite)

    def receive_snapshot(self, message: raft_pb2.Message, db_path: str) -> Deferred:
        """Make the received backend durable under its etcd name, then give raft the
        snapshot; the Ready that carries it installs the backend."""
        index = message.snapshot.metadata.index
        final = self.snapshotter.db_path(index)

        def durable() -> None:
            fd = os.open(db_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(db_path, final)
            dfd = os.open(os.path.dirname(final), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

        def step(_: None) -> None:
            self._log.info("received database snapshot at index {index} from {peer:x}",
                           index=index, peer=getattr(message, "from"))
            self.process(message)
        return self._disk.submit(durable).addCallback(step)

    # -- the Ready loop --------------------------------------------------------------------

    def schedule(self) -> None:
        """Handle the next Ready at the end of this reactor turn (coalesced)."""
        if self._process_call is None and not self._busy and not self._stopped:
            self._process_call = self._reactor.callLater(0, self._process)

    def _process(self) -> None:
        self._process_call = None
        if self._busy or self._stopped or not self.node.has_ready():
            return
        rd = self.node.ready()
        if rd.soft_state is not None:
            self._lead, self._state = rd.soft_state.lead, rd.soft_state.raft_state
            self._host.soft_state_changed(self._lead, self._state)
        if rd.read_states:
            self._host.read_states(rd.read_states)
        sent = False
        if self._state == StateType.LEADER and rd.messages:
            # Raft thesis §10.2.1: the leader may send in parallel with its own fsync.
            self._send(rd.messages)
            sent = True
        self._busy = True
        d = self._disk.submit(self._persist_and_apply, rd)
        d.addCallbacks(self._persisted, self._failed, callbackArgs=(rd, sent))

    def _send(self, messages: Iterable[raft_pb2.Message]) -> None:
        if self.transport is not None:
            self.transport.send(messages)

    def _persist_and_apply(self, rd: Any) -> Any:
        """Disk thread: snapshot, WAL append + fsync, then apply the committed entries."""
        if rd.snapshot is not None:
            meta = rd.snapshot.metadata
            self.snapshotter.save(rd.snapshot)
            self.wal.save_snapshot(WALSnapshot(meta.index, meta.term))
            db_path = self.snapshotter.db_path(meta.index)
            self._host.install_snapshot(rd.snapshot, db_path)
            os.unlink(db_path)
        if rd.entries or rd.hard_state is not None:
            self.wal.save(rd.hard_state, rd.entries, rd.must_sync)
        if rd.committed_entries:
            return self._host.apply_entries(rd.committed_entries)
        return None

    def _persisted(self, batch: Any, rd: Any, sent: bool) -> None:
        if self._stopped:
            return
        storage = self.storage
        if rd.snapshot is not None:
            storage.apply_snapshot(rd.snapshot)
            self.snapshot_index = self.applied_index = rd.snapshot.metadata.index
            self.conf_state = rd.snapshot.metadata.conf_state
            self._host.snapshot_installed(rd.snapshot)
            self._host.conf_changed(self.conf_state)
        if rd.hard_state is not None:
            storage.set_hard_state(rd.hard_state)
        if rd.entries:
            storage.append(rd.entries)
        if not sent and rd.messages:
            self._send(rd.messages)
        if batch is not None:
            for cc in batch.conf_changes:
                self.conf_state = self.node.apply_conf_change(cc)
            if batch.conf_changes:
                self._host.conf_changed(self.conf_state)
            self.applied_index = batch.last_index
            self._host.entries_applied(batch)
        self.node.advance(rd)
        self._busy = False
        self._maybe_snapshot()
        self.schedule()

    def _failed(self, failure: Failure) -> None:
        # STYLE.md §6.4: a WAL or backend failure stops the member; never carry on.
        self._log.critical("persisting raft state failed; stopping: {f}",
                           f=failure.getTraceback())
        self.stop()
        self._on_fatal(failure)

    # -- snapshots -------------------------------------------------------------------------

    def _maybe_snapshot(self) -> None:
        if self._snapshotting or self.applied_index - self.snapshot_index <= self._snapshot_count:
            return
        index = self.applied_index
        snap = self.storage.create_snapshot(index, self.conf_state, b"")
        self._snapshotting = True
        d = self._disk.submit(self._save_snapshot, snap)
        d.addCallbacks(self._snapshot_saved, self._failed, callbackArgs=(index,))

    def _save_snapshot(self, snap: raft_pb2.Snapshot) -> list[str]:
        """Disk thread: the backend must be durable up to the snapshot before the WAL
        segments that could replay it are released."""
        meta = snap.metadata
        self._backend.sync()
        self.snapshotter.save(snap)
        self.wal.save_snapshot(WALSnapshot(meta.index, meta.term))
        released = self.wal.release_before(meta.index, self._max_wals)
        released += self.snapshotter.purge(self._max_snapshots)
        return released

    def _snapshot_saved(self, released: list[str], index: int) -> None:
        self._snapshotting = False
        self.snapshot_index = index
        self._log.info("saved snapshot at index {index}", index=index)
        if index > SNAPSHOT_CATCH_UP_ENTRIES:
            compact_to = index - SNAPSHOT_CATCH_UP_ENTRIES
            if compact_to > self.storage.first_index():
                self.storage.compact(compact_to)
                self._log.info("compacted raft logs at {index}", index=compact_to)

