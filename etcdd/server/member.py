"""The member: turns client requests into raft proposals, applies committed entries, answers.

Shell. etcd 3.4 `etcdserver/v3_server.go` and `server.go`:

- A write becomes an `InternalRaftRequest` whose header carries a request ID unique to this
  member; a Deferred waits for that ID. Every proposal of one reactor turn goes to raft as
  one MsgProp (a follower's raft forwards it to the leader). Every member applies every
  committed entry; the member that proposed an entry answers its client.
- Committed entries are applied on the disk thread (`server/entries.py`), all of a Ready
  in one LMDB write transaction that also records the consistent index, so replaying the
  WAL after a crash skips what is already applied (`entry.index <= consistent_index`).
- A linearizable read waits for a ReadIndex round (one round serves every read that
  arrived meanwhile), then for the applied index to reach it; a serializable read is
  served at once from the local store.
- Refusals as etcd: `too many requests` when committed runs 5000 ahead of applied,
  `request is too large`, `raft proposal dropped` (no leader, leader transfer), and after
  the request timeout (5 s + 2 x election timeout) `request timed out` or its
  "previous leader failure" / "connection lost" variants; `leader changed` for a read whose
  ReadIndex round was cut by an election.
- After start the member publishes its name and client URLs through raft (etcd's v2
  `PUT /0/members/<id>/attributes`), and the leader sets the cluster version once
  (`PUT /0/version`), so raft indexes and terms follow etcd's.
"""
from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from etcdd.proto import etcdserver_pb2, raft_internal_pb2, raft_pb2
from etcdd.raft import ProposalDroppedError, StateType
from etcdd.server import errors
from etcdd.server.apply import Applier
from etcdd.server.cluster import ClusterState
from etcdd.server.entries import AppliedBatch, EntryApplier
from etcdd.server.errors import (RequestTooLargeError, ServerError, StoppedError,
                                 TooManyRequestsError)
from etcdd.server.wait import AppliedWaiters, IDWaiters

# etcd 3.4 etcdserver/server.go maxGapBetweenApplyAndCommitIndex
MAX_PENDING_PROPOSALS = 5000
CLUSTER_VERSION = "3.4.0"
# etcd 3.4 stopWithDelay(10 * 100 ms) after applying its own removal
REMOVED_STOP_DELAY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this member is; stable across restarts."""
    cluster_id: int
    member_id: int
    name: str


class RequestIDs:
    """etcd 3.4 `pkg/idutil`: member ID's low 16 bits, then milliseconds and a counter."""

    def __init__(self, member_id: int, now_seconds: float) -> None:
        self._prefix = (member_id & 0xFFFF) << 48
        self._suffix = (int(now_seconds * 1000) & 0xFFFFFFFFFF) << 8

    def next(self) -> int:
        self._suffix += 1
        return self._prefix | (self._suffix & ((1 << 48) - 1))


class Member:
    """Invariants: `applied_index <= committed_index`; a Deferred from `propose()` fires
    only after its entry is committed by a quorum and applied here."""

    _log = Logger()

    def __init__(self, identity: Identity, store: Any, cluster: ClusterState, disk: Any,
                 reactor: IReactorTime, max_request_bytes: int = 1572864,
                 request_timeout_seconds: float = 7.0, election_timeout_seconds: float = 1.0,
                 client_urls: tuple[str, ...] = (), applied_index: int = 0,
                 on_fatal: Callable[[Failure], None] | None = None,
                 min_lease_ttl_seconds: int = 1,
                 on_ready: Callable[[], None] | None = None,
                 on_removed: Callable[[], None] | None = None,
                 alarms: Any = None) -> None:
        self.identity = identity
        self._store = store
        self.cluster = cluster
        self._disk = disk
        self._reactor = reactor
        self._max_request_bytes = max_request_bytes
        self._timeout = request_timeout_seconds
        self._election_timeout = election_timeout_seconds
        self._client_urls = client_urls
        self._on_fatal = on_fatal or (lambda failure: None)
        self._on_ready = on_ready or (lambda: None)
        self._on_removed = on_removed or (lambda: None)
        self._removed_seen = False
        self._applier = Applier()
        self._entries = EntryApplier(store, cluster, self._applier,
                                     min_lease_ttl_seconds=min_lease_ttl_seconds,
                                     alarms=alarms)
        self.alarms = self._entries.alarms     # server/alarms.py AlarmSet
        self.loop: Any = None                       # the RaftLoop, attached by the service
        # Attached by the service (None in tests that need neither): the watchable store
        # (mvcc/watchable.py) and the leases (server/leases.py).
        self.watchable: Any = None
        self.leases: Any = None
        self._ids = RequestIDs(identity.member_id, reactor.seconds())
        self._waiters = IDWaiters()
        self._deadlines: deque[tuple[float, int]] = deque()   # (deadline, request ID)
        self._applied = AppliedWaiters(applied_index)
        self._applied_term = store.term()
        # Proposals raft has not taken yet (request ID -> entry data, or a ConfChange), in
        # proposal order.
        self._pending: dict[int, bytes | raft_pb2.ConfChange] = {}
        self._flush_call: Any = None
        self._stopped = False
        self._fatal_seen = False
        self._compacting = False
        self._compaction_waiters: list[Deferred] = []
        self._read_waiters: list[Deferred] = []
        self._read_round: tuple[bytes, list[Deferred], float] | None = None
        self._read_seq = 0
        self._lead_elected_at = 0.0
        self._published = False
        self._publishing = False
        self._calls: list[Any] = []        # one-shot timers to cancel on stop
        self._version_proposed = False
        self._transfer_waiters: list[tuple[int, Deferred]] = []
        self._sweeper: Any = None

    # -- state -----------------------------------------------------------------------------

    @property
    def term(self) -> int:
        """The term of the last applied entry, which etcd 3.4 reports as the raft term
        (`EtcdServer.Term()`, set in `apply`); it moves only once a new leader's first
        entry is applied."""
        return self._applied_term

    @property
    def committed_index(self) -> int:
        return self.loop.node.committed

    @property
    def applied_index(self) -> int:
        return self._applied.applied

    @property
    def leader(self) -> int:
        return self.loop.lead

    @property
    def is_leader(self) -> bool:
        return self.loop.is_leader

    @property
    def request_timeout_seconds(self) -> float:
        return self._timeout

    @property
    def is_learner(self) -> bool:
        m = self.cluster.members.get(self.identity.member_id)
        return bool(m and m.is_learner)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def start(self) -> None:
        """Begin serving: the sweeper times out requests; pending compaction resumes."""
        self._sweeper = self._reactor.callLater(0.1, self._sweep)
        if self._store.pending_compaction():
            self._call_later(0, self._run_compaction)

    def stop(self) -> None:
        """Refuse new proposals and fail everyone still waiting with `server stopped`."""
        self._stopped = True
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls = []
        self._fail_everyone(StoppedError())

    def fatal(self, failure: Failure) -> None:
        """A durability failure (WAL, fsync, LMDB commit): stop and tell the service once.
        STYLE.md §6.4: never carry on after a failed write."""
        if self._fatal_seen:
            return
        self._fatal_seen = True
        if self.loop is not None:
            self.loop.stop()
        self.stop()
        self._on_fatal(failure)

    def _fail_everyone(self, error: ServerError) -> None:
        self._pending = {}
        self._waiters.fail_all(error)
        self._applied.fail_all(error)
        self._fail_read_round(error)
        reads, self._read_waiters = self._read_waiters, []
        for d in reads:
            d.errback(Failure(error))
        waiters, self._compaction_waiters = self._compaction_waiters, []
        waiters += [d for _, d in self._transfer_waiters]
        self._transfer_waiters = []
        for d in waiters:
            d.errback(Failure(error))

    # -- proposals -------------------------------------------------------------------------

    def propose(self, kind: str, request: Any) -> Deferred:
        """Propose a v3 write; the Deferred fires with its response once applied here.

        Raises (as a failed Deferred) StoppedError, TooManyRequestsError,
        RequestTooLargeError, ProposalDroppedError, RequestTimeoutError (and variants)."""
        if self._stopped:
            return fail(StoppedError())
        if (self.loop.node.committed > self._applied.applied + MAX_PENDING_PROPOSALS
                or len(self._pending) >= MAX_PENDING_PROPOSALS):
            return fail(TooManyRequestsError())
        request_id = self._ids.next()
        ir = raft_internal_pb2.InternalRaftRequest(**{kind: request})
        ir.header.ID = request_id
        data = ir.SerializeToString()
        if len(data) > self._max_request_bytes:
            return fail(RequestTooLargeError())
        return self._propose_data(request_id, data)

    def _propose_data(self, request_id: int, data: bytes | raft_pb2.ConfChange) -> Deferred:
        d = self._waiters.register(request_id)
        self._deadlines.append((self._reactor.seconds() + self._timeout, request_id))
        self._pending[request_id] = data
        self._schedule_flush()
        return d

    def _schedule_flush(self) -> None:
        if self._flush_call is None:
            self._flush_call = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        """Hand this turn's proposals to raft as one MsgProp. Without a leader they wait
        (etcd 3.4's raft node stops taking proposals then) until one is elected or their
        request times out."""
        self._flush_call = None
        if not self.loop.lead:
            return
        pending, self._pending = self._pending, {}
        if not pending:
            return
        datas = {rid: d for rid, d in pending.items() if isinstance(d, bytes)}
        try:
            if datas:
                self.loop.propose(list(datas.values()))
        except ProposalDroppedError as e:
            for request_id in datas:
                self._waiters.trigger(request_id, errors.ProposalDroppedError(str(e)))
        for request_id, cc in pending.items():
            if request_id in datas:
                continue
            try:
                self.loop.propose_conf_change(cc)
            except ProposalDroppedError as e:
                self._waiters.trigger(request_id, errors.ProposalDroppedError(str(e)))

    def _sweep(self) -> None:
        """Every 100 ms: time out proposals and read rounds past the request timeout."""
        now = self._reactor.seconds()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            deadline, request_id = deadlines.popleft()
            if self._pending.pop(request_id, None) is not None:
                # etcd 3.4: raft took no proposal (no leader) before the request's
                # context expired; the bare context error reaches the client.
                self._waiters.trigger(request_id, errors.ProposalDeadlineError())
            elif request_id in self._waiters:
                started = deadline - self._timeout
                self._waiters.trigger(request_id, self._timeout_error(started))
        if self._read_round is not None and self._read_round[2] <= now:
            self._log.warn("timed out waiting for read index response")
            self._fail_read_round(errors.RequestTimeoutError())
            self._start_read_round()
        self._sweeper = self._reactor.callLater(0.1, self._sweep)

    def _timeout_error(self, started: float) -> ServerError:
        """etcd 3.4 `parseProposeCtxErr`: which `request timed out` this is."""
        elected = self._lead_elected_at
        if elected - 2 * self._election_timeout < started < elected:
            return errors.TimeoutDueToLeaderFailError()
        transport = self.loop.transport
        lead = self.loop.lead
        if transport is not None and lead == self.identity.member_id:
            active = 1 + sum(1 for m in self.cluster.members
                             if m != lead and _active_since(transport, m, started))
            if active * 2 <= len(self.cluster.members):
                return errors.TimeoutDueToConnectionLostError()
        elif transport is not None and lead and not _active_since(transport, lead, started):
            return errors.TimeoutDueToConnectionLostError()
        return errors.RequestTimeoutError()

    def propose_conf_change(self, cc: raft_pb2.ConfChange) -> Deferred:
        """Propose a membership change (etcd `configure`); fires with the members after it
        was applied here, or fails with the reason the cluster refused it, a
        ProposalDroppedError, or a request timeout (also when the leader turned it into a
        no-op because another change was pending)."""
        if self._stopped:
            return fail(StoppedError())
        cc.id = self._ids.next()
        return self._propose_data(cc.id, cc)

    def check_health(self) -> "Deferred[bool]":
        """etcd 3.4 /health: a leader is known and a v2 QGET goes through raft (taking an
        index, as etcd's does) within one second. Before this member's attributes are
        published it is not healthy: etcd serves clients only once published (its
        `ReadyNotify`), so `member list` shows every healthy member's client URLs."""
        if self._stopped or not self.loop.lead or not self._published:
            return succeed(False)
        request_id = self._ids.next()
        data = etcdserver_pb2.Request(ID=request_id, Method="QGET").SerializeToString()
        d = self._deadline(self._propose_data(request_id, data), 1.0, partial(
            self._waiters.trigger, request_id, errors.RequestTimeoutError()))
        return d.addCallbacks(lambda _: True, lambda _: False)

    def _deadline(self, d: Deferred, seconds: float, on_timeout: Callable[[], Any]) -> Deferred:
        """Call `on_timeout` (which must fire `d`) unless `d` fired within `seconds`."""
        call = self._reactor.callLater(seconds, on_timeout)

        def fired(result: Any) -> Any:
            if call.active():
                call.cancel()
            return result
        return d.addBoth(fired)

    # -- publish and cluster version (etcd 3.4 server.go publish, monitorVersions) --------

    def _publish(self) -> None:
        if self._published or self._publishing or self._stopped:
            return
        self._publishing = True
        attrs = json.dumps({"name": self.identity.name, "clientURLs": list(self._client_urls)},
                           separators=(",", ":"))
        self._propose_v2(f"/0/members/{self.identity.member_id:x}/attributes", attrs,
                         self._published_ok, self._publish_failed)

    def _published_ok(self, _: Any) -> None:
        self._published = True
        self._publishing = False
        self._log.info("published {{Name:{name} ClientURLs:[{urls}]}} to cluster {cid:x}",
                       name=self.identity.name, urls=" ".join(self._client_urls),
                       cid=self.identity.cluster_id)
        # etcd's ReadyNotify: the member serves clients once it has published.
        self._on_ready()

    def _publish_failed(self, failure: Failure) -> None:
        self._publishing = False
        if not self._stopped:
            self._log.info("publish failed, retrying: {e}", e=failure.getErrorMessage())
            self._call_later(0.5, self._publish)

    def _call_later(self, seconds: float, fn: Callable[[], None]) -> None:
        self._calls = [c for c in self._calls if c.active()]
        self._calls.append(self._reactor.callLater(seconds, fn))

    def _maybe_set_version(self) -> None:
        if self._version_proposed or self.cluster.version or not self.loop.is_leader:
            return
        self._version_proposed = True
        self._log.info("setting up the initial cluster version to {v}", v="3.4")

        def failed(failure: Failure) -> None:
            self._version_proposed = False
        self._propose_v2("/0/version", CLUSTER_VERSION, lambda _: None, failed)

    def _propose_v2(self, path: str, value: str, ok: Callable, failed: Callable) -> None:
        request_id = self._ids.next()
        data = etcdserver_pb2.Request(ID=request_id, Method="PUT", Path=path,
                                      Val=value).SerializeToString()
        self._propose_data(request_id, data).addCallbacks(ok, failed)

    # -- raft host: reactor side -----------------------------------------------------------

    def soft_state_changed(self, lead: int, state: StateType) -> None:
        if lead:
            self._lead_elected_at = self._reactor.seconds()
            self._log.info("{me:x} elected leader {lead:x} at term {term}",
                           me=self.identity.member_id, lead=lead, term=self.term)
            # etcd linearizableReadLoop: a leader change fails the round in flight.
            self._fail_read_round(errors.LeaderChangedError())
            self._publish()
            self._start_read_round()
            if self._pending:
                self._schedule_flush()
        else:
            self._log.info("{me:x} lost leader; raft.node has no leader at term {term}",
                           me=self.identity.member_id, term=self.term)
        if state != StateType.LEADER and self.leases is not None:
            self.leases.lost_leadership()
        for target, d in list(self._transfer_waiters):
            if lead == target:
                self._transfer_waiters.remove((target, d))
                d.callback(None)

    def read_states(self, states: list) -> None:
        if self._read_round is None:
            return
        ctx, waiters, _ = self._read_round
        for rs in states:
            if rs.request_ctx == ctx:
                self._read_round = None
                self._applied.wait(rs.index).addBoth(partial(_fire_all, waiters))
                self._start_read_round()
                return

    def entries_applied(self, batch: AppliedBatch) -> None:
        # The lessor and the watchers hear of the batch before any client does.
        if batch.lease_ops and self.leases is not None:
            self.leases.applied(batch.lease_ops)
        if batch.changes and self.watchable is not None:
            self.watchable.notify(batch.changes)
        if batch.leader_entry and self.leases is not None:
            self.leases.leader_entry_applied()
        self._applied.applied_to(batch.last_index)
        self._applied_term = batch.last_term
        trigger = self._waiters.trigger
        for request_id, result in batch.results:
            trigger(request_id, result)
        if batch.compaction_scheduled:
            self._run_compaction()
        self._maybe_set_version()

    def conf_changed(self, conf_state: Any) -> None:
        me = self.identity.member_id
        if me in self.cluster.removed:
            self.removed()
            return
        transport = self.loop.transport
        if transport is None:
            return
        for member in self.cluster.sorted_members():
            if member.id != me and member.peer_urls:
                transport.add_peer(member.id, member.peer_urls)
        for mid in self.cluster.removed:
            transport.remove_peer(mid)

    def removed(self) -> None:
        """This member is out of the cluster (its removal applied here, or a peer refused
        it as removed): stop serving after a second, as etcd 3.4 does, so the commit of
        the removal reaches the others first; then tell the service (once)."""
        if self._removed_seen:
            return
        self._removed_seen = True
        self._log.warn("the member has been permanently removed from the cluster")
        self._reactor.callLater(REMOVED_STOP_DELAY_SECONDS, self._on_removed)

    def snapshot_installed(self, snapshot: raft_pb2.Snapshot) -> None:
        index = snapshot.metadata.index
        self._applied.applied_to(index)
        self._applied_term = snapshot.metadata.term
        self._log.info("finished applying incoming snapshot at index {index}", index=index)
        if self.leases is not None:
            self.leases.reload()
        if self.watchable is not None:
            self.watchable.restore()
        if self._store.pending_compaction():
            self._run_compaction()

    # -- raft host: disk thread (etcdd/server/entries.py) ---------------------------------

    def apply_entries(self, entries: list) -> AppliedBatch:
        return self._entries.apply(entries)

    def install_snapshot(self, snapshot: raft_pb2.Snapshot, db_path: str) -> None:
        self._entries.install_snapshot(snapshot, db_path)

    # -- compaction ------------------------------------------------------------------------

    def compact(self, req: Any) -> Deferred:
        """Schedule a compaction through raft; with `physical`, answer only once the
        superseded revisions are gone from this member's disk."""
        d = self.propose("compaction", req)

        def scheduled(resp: Any) -> Any:
            if not req.physical or not (self._compacting or self._store.pending_compaction()):
                return resp
            waiter: Deferred = Deferred()
            self._compaction_waiters.append(waiter)
            self._run_compaction()
            return waiter.addCallback(lambda _: resp)

        return d.addCallback(scheduled)

    def _run_compaction(self) -> None:
        if self._compacting or self._stopped:
            return
        self._compacting = True

        def next_step() -> None:
            self._disk.submit(self._store.compact_step).addCallbacks(step, failed)

        def step(done: bool) -> None:
            if self._stopped:
                self._compacting = False
                return
            if not done:
                next_step()
                return
            self._compacting = False
            waiters, self._compaction_waiters = self._compaction_waiters, []
            for w in waiters:
                w.callback(None)
            if self._store.pending_compaction():
                self._run_compaction()

        def failed(failure: Failure) -> None:
            self._compacting = False
            self._log.critical("compaction failed; stopping: {f}", f=failure.getTraceback())
            self.fatal(failure)

        next_step()

    def wait_applied(self, timeout_seconds: float = 1.0) -> Deferred:
        """etcd 3.4 `waitAppliedIndex`: fires once everything committed now is applied;
        fails with TimeoutWaitAppliedIndexError after `timeout_seconds`."""
        committed = self.loop.node.committed
        if committed <= self._applied.applied:
            return succeed(None)
        d: Deferred = Deferred()

        def applied(result: Any) -> None:
            if not d.called:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(None)

        def timed_out() -> None:
            if not d.called:
                d.errback(Failure(errors.TimeoutWaitAppliedIndexError()))
        # NB: the applied waiter may fire after the timeout; `applied` then ignores it.
        self._applied.wait(committed).addBoth(applied)
        return self._deadline(d, timeout_seconds, timed_out)

    # -- reads -----------------------------------------------------------------------------

    def linearizable_barrier(self) -> Deferred:
        """Fires once this member has applied everything committed when it was called
        (a ReadIndex round confirmed by a quorum). etcd `linearizableReadNotify`."""
        if self._stopped:
            return fail(StoppedError())
        d: Deferred = Deferred()
        self._read_waiters.append(d)
        if self._read_round is None:
            self._call_later(0, self._start_read_round)
        return d

    def _fail_read_round(self, error: ServerError) -> None:
        """Fail every read of the ReadIndex round in flight, if any."""
        if self._read_round is None:
            return
        _, waiters, _ = self._read_round
        self._read_round = None
        for d in waiters:
            d.errback(Failure(error))

    def _start_read_round(self) -> None:
        if self._read_round is not None or not self._read_waiters or self._stopped:
            return
        self._read_seq += 1
        ctx = self._read_seq.to_bytes(8, "big")
        waiters, self._read_waiters = self._read_waiters, []
        self._read_round = (ctx, waiters, self._reactor.seconds() + self._timeout)
        self.loop.read_index(ctx)

    def _read(self, serializable: bool, read: Callable[[], Any]) -> Any:
        """`read()` now when serializable, else after a ReadIndex round (a Deferred)."""
        if serializable:
            return read()
        return self.linearizable_barrier().addCallback(lambda _: read())

    def range(self, req: Any) -> Any:
        return self._read(req.serializable, lambda: self._applier.range(self._store, req))

    def read_txn(self, req: Any) -> Any:
        def read() -> Any:
            with self._store.read() as view:
                return self._applier.txn(view, req, is_write=False)
        return self._read(all(op.request_range.serializable
                              for op in (*req.success, *req.failure)), read)

    # -- leadership ------------------------------------------------------------------------

    def transfer_leadership_on_stop(self) -> Deferred:
        """etcd 3.4 `TransferLeadership` on a graceful stop: a leader with other voters
        hands leadership to the longest-connected one first; always fires with None."""
        me = self.identity.member_id
        transport = self.loop.transport
        voters = [m.id for m in self.cluster.members.values()
                  if m.id != me and not m.is_learner]
        if not self.loop.is_leader or not voters or transport is None:
            return succeed(None)
        target = _longest_connected(transport, voters)
        if target is None:
            return succeed(None)
        self._log.info("leadership transfer to {target:x} before stopping", target=target)

        def failed(failure: Failure) -> None:
            self._log.warn("leadership transfer failed: {e}", e=failure.getErrorMessage())
        return self.move_leader(target).addErrback(failed)

    def move_leader(self, target: int) -> Deferred:
        """Transfer leadership to `target` (etcd `MoveLeader`); fires once it leads.

        Raises NotLeaderError here on a follower, BadLeaderTransfereeError for a
        learner or unknown member, LeaderTransferTimeoutError after the timeout."""
        if not self.loop.is_leader:
            return fail(errors.NotLeaderError())
        m = self.cluster.members.get(target)
        if m is None or m.is_learner:
            return fail(errors.BadLeaderTransfereeError())
        if target == self.identity.member_id:
            return succeed(None)
        d: Deferred = Deferred()
        entry = (target, d)
        self._transfer_waiters.append(entry)

        def timed_out() -> None:
            if entry in self._transfer_waiters:
                self._transfer_waiters.remove(entry)
                d.errback(Failure(errors.LeaderTransferTimeoutError()))
        self._deadline(d, self._timeout, timed_out)
        if self._flush_call is not None:
            # NB: this turn's proposals came before the transfer (in etcd they would be in
            # raft already); a transferring leader would drop them, so propose them first.
            self._flush_call.cancel()
            self._flush()
        self.loop.transfer_leader(target)
        return d


def _longest_connected(transport: Any, ids: list[int]) -> int | None:
    since = [(transport.active_since(i), i) for i in ids]
    active = [(t, i) for t, i in since if t is not None]
    return min(active)[1] if active else None


def _fire_all(waiters: list[Deferred], result: Any) -> None:
    for w in waiters:
        if isinstance(result, Failure):
            w.errback(result)
        else:
            w.callback(result)


def _active_since(transport: Any, member_id: int, started: float) -> bool:
    since = transport.active_since(member_id)
    return since is not None and since <= started
