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

from etcdd.api.rpctypes import GrpcError, Status
from etcdd.peer.snapshot import remove_if_exists
from etcdd.peer.transport import IRaftPeerHandler
from etcdd.proto import raft_pb2
from etcdd.raft import (ProposalDroppedError, RaftInvariantError, RawNode, StateType,
                        StepLocalMsgError, StepPeerNotFoundError)
from etcdd.server.cluster import member_from_json
from etcdd.wal.wal import WALSnapshot, fsync_dir

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


_HEARTBEATS = frozenset((raft_pb2.MsgHeartbeat, raft_pb2.MsgHeartbeatResp))


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
                 on_fatal: Callable[[Failure], None] | None = None,
                 run_in_pool: Callable[..., Deferred] | None = None) -> None:
        """`run_in_pool(fn, *args)` runs bulk file work (snapshot copies and fsyncs) off
        both the reactor and the ordered disk thread; the reactor's pool by default."""
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
        self._run_in_pool = run_in_pool or (
            lambda fn, *args: deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args))
        self._sends = 0
        self.transport: Any = None
        # answers peers' calls (`handle_call`): (from_id, method, payload) -> bytes|Deferred
        self.call_handler: Callable[[int, str, bytes], Deferred | bytes] | None = None
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
        self._ticker.start(self._heartbeat_seconds, now=False).addErrback(self._failed)
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
        self._send_heartbeats_if_busy()
        self.schedule()

    def _send_heartbeats_if_busy(self) -> None:
        """While a Ready is on the disk thread (which a defrag can hold for seconds),
        heartbeats and their answers still go out: they need nothing persisted."""
        if self._busy and not self._stopped:
            urgent = self.node.take_messages(_HEARTBEATS)
            if urgent:
                self._send(urgent)

    def propose(self, datas: list[bytes]) -> None:
        """Propose entries as one MsgProp. Raises ProposalDroppedError (no leader, leader
        transfer in progress)."""
        m = raft_pb2.Message(type=raft_pb2.MsgProp, **{"from": self.node.id})
        m.entries.extend(raft_pb2.Entry(Data=d) for d in datas)
        self.node.step(m)
        self.schedule()

    def propose_conf_change(self, cc: raft_pb2.ConfChange) -> None:
        """Propose a membership change. Raises ProposalDroppedError."""
        self.node.propose_conf_change(cc)
        self.schedule()

    def read_index(self, ctx: bytes) -> None:
        self.node.read_index(ctx)
        self.schedule()

    def transfer_leader(self, transferee: int) -> None:
        self.node.transfer_leader(transferee)
        self.schedule()

    # IRaftPeerHandler

    def process(self, message: raft_pb2.Message) -> None:
        """A message from a peer's message stream (MsgSnap only ever comes with its
        database, through `receive_snapshot`)."""
        if message.type == raft_pb2.MsgSnap:
            self._log.warn("dropped a MsgSnap without its database from {peer:x}",
                           peer=getattr(message, "from"))
            return
        self._step(message)

    def _step(self, message: raft_pb2.Message) -> None:
        if self._stopped:
            return
        try:
            self.node.step(message)
            if message.type == raft_pb2.MsgHeartbeat:
                self._send_heartbeats_if_busy()
        except (StepPeerNotFoundError, StepLocalMsgError, ProposalDroppedError) as e:
            self._log.debug("ignored a message from {peer:x}: {error}",
                            peer=getattr(message, "from"), error=e)
        except Exception:
            # STYLE.md §6.3: a broken raft invariant stops the member with the evidence.
            self._failed(Failure())
            return
        self.schedule()

    def handle_call(self, from_id: int, method: str, payload: bytes) -> Deferred | bytes:
        """A peer's call, answered by `call_handler`; without one every method is unknown
        (raises `GrpcError(Status.UNIMPLEMENTED, ...)`)."""
        if self.call_handler is None:
            raise GrpcError(Status.UNIMPLEMENTED, f"unknown peer method {method}")
        return self.call_handler(from_id, method, payload)

    def report_unreachable(self, member_id: int) -> None:
        self.node.report_unreachable(member_id)
        self.schedule()

    def report_snapshot(self, member_id: int, failed: bool) -> None:
        self.node.report_snapshot(member_id, failed)
        self.schedule()

    def snapshot_source(self, message: raft_pb2.Message) -> Deferred:
        """A consistent copy of the backend for the MsgSnap `message`, taken in one read
        transaction in the thread pool (the disk thread keeps writing).

        etcd 3.4 `createMergedSnapshotMessage`: the message is rewritten to describe what
        is sent: the copy's consistent index and term, and the membership recorded in that
        same transaction, so the receiver is in the snapshot's ConfState and skips nothing
        the copy lacks."""
        self._sends += 1
        path = os.path.join(self.snapshotter.dir,
                            f"tmp-send-{message.to:x}-{self._sends}.db")

        def rewrite(seen: tuple[int, int, list[tuple[bytes, bytes]]]) -> str:
            index, term, members = seen
            meta = message.snapshot.metadata
            meta.index, meta.term = index, term
            meta.conf_state.CopyFrom(conf_state_of(members))
            self._log.info("sending database snapshot at index {index} to {peer:x}",
                           index=index, peer=message.to)
            return path

        def failed(failure: Failure) -> Failure:
            remove_if_exists(path)
            return failure
        d = self._run_in_pool(self._backend_copy, path)
        return d.addCallbacks(rewrite, failed)

    def receive_snapshot(self, message: raft_pb2.Message, db_path: str) -> Deferred:
        """Make the received backend durable under its etcd name (in the thread pool, not
        ahead of WAL appends on the disk thread), then give raft the snapshot; the Ready
        that carries it installs the backend. A snapshot raft does not take is removed."""
        index = message.snapshot.metadata.index
        final = self.snapshotter.db_path(index)

        def durable() -> None:
            fd = os.open(db_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(db_path, final)
            fsync_dir(os.path.dirname(final))

        def step(_: None) -> None:
            self._log.info("received database snapshot at index {index} from {peer:x}",
                           index=index, peer=getattr(message, "from"))
            self._step(message)
            if self.node.pending_snapshot_index != index:
                self._log.info("raft did not take the snapshot at index {index}", index=index)
                remove_if_exists(final)
        return self._run_in_pool(durable).addCallback(step)

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
        # NB: addCallback then addErrback, so a failure in _persisted is fatal too.
        d.addCallback(self._persisted, rd, sent).addErrback(self._failed)

    def _send(self, messages: Iterable[raft_pb2.Message]) -> None:
        if self.transport is not None:
            self.transport.send(messages)

    def _persist_and_apply(self, rd: Any) -> Any:
        """Disk thread: snapshot, WAL append + fsync, then apply the committed entries."""
        if rd.snapshot is not None:
            meta = rd.snapshot.metadata
            if not os.path.exists(self.snapshotter.db_path(meta.index)):
                raise RaftInvariantError(f"raft took a snapshot at index {meta.index} "
                                         f"without its database")
            self.snapshotter.save(rd.snapshot)
            self.wal.save_snapshot(WALSnapshot(meta.index, meta.term))
            db_path = self.snapshotter.db_path(meta.index)
            self._host.install_snapshot(rd.snapshot, db_path)
            remove_if_exists(db_path)
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
        if self._stopped:
            return
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
        d.addCallback(self._snapshot_saved, index).addErrback(self._failed)

    def _save_snapshot(self, snap: raft_pb2.Snapshot) -> list[str]:
        """Disk thread: the backend must be durable up to the snapshot before the WAL
        segments that could replay it are released."""
        meta = snap.metadata
        self._backend.sync()
        self.snapshotter.save(snap)
        self.wal.save_snapshot(WALSnapshot(meta.index, meta.term))
        released = self.wal.release_before(meta.index, self._max_wals)
        released += self.snapshotter.purge(self._max_snapshots)
        released += purge_snapshot_dbs(self.snapshotter, meta.index)
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



def conf_state_of(members: list[tuple[bytes, bytes]]) -> raft_pb2.ConfState:
    """The ConfState that `members` records (hex ID -> member JSON) describe."""
    parsed = [member_from_json(value, int(key, 16)) for key, value in members]
    return raft_pb2.ConfState(voters=sorted(m.id for m in parsed if not m.is_learner),
                              learners=sorted(m.id for m in parsed if m.is_learner))


def purge_snapshot_dbs(snapshotter: Any, index: int) -> list[str]:
    """Remove received backends (`<index>.snap.db`) at or below `index`: installed or
    superseded (etcd 3.4 `ReleaseSnapDBs`)."""
    removed = []
    for name in os.listdir(snapshotter.dir):
        if not name.endswith(".snap.db"):
            continue
        try:
            at = int(name[:-len(".snap.db")], 16)
        except ValueError:
            continue
        if at <= index:
            path = os.path.join(snapshotter.dir, name)
            remove_if_exists(path)
            removed.append(path)
    return removed
