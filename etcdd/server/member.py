"""The member: turns client requests into proposals, applies them in order, answers.

Shell. For a single member (before Raft, issue 3) a proposal is committed by applying it:
every proposal that arrived during one reactor turn goes to the disk thread as one batch,
applied in one LMDB write transaction with the consistent index, committed durably (one
fsync), and only then answered. Reads are served on the reactor thread from LMDB read
transactions, which see committed batches only, so an answered write is always visible.

Raft indexes and terms follow a real etcd 3.4.23 single member, as measured: a fresh
member serves at term 2 with raft index 5 (ConfChange, the leader's empty entry, the
member's attribute publish, the cluster version ...); each restart is a new term and
four more entries. Every proposal takes one index, whether its apply succeeds or not.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from etcdd.mvcc.errors import MVCCError
from etcdd.proto import rpc_pb2 as pb
from etcdd.server.apply import Applier
from etcdd.server.errors import (RequestTooLargeError, ServerError, StoppedError,
                                 TooManyRequestsError)

# etcd 3.4 etcdserver/server.go maxGapBetweenApplyAndCommitIndex
MAX_PENDING_PROPOSALS = 5000
# The InternalRaftRequest envelope around a request: tag, length and the header with its ID.
_ENVELOPE_BYTES = 16


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this member is; stable across restarts."""
    cluster_id: int
    member_id: int
    name: str


class Member:
    """Invariants: `applied_index <= committed_index`; proposals are applied in the
    order `propose()` was called; a Deferred from `propose()` fires only after its
    batch is durable."""

    _log = Logger()

    def __init__(self, identity: Identity, store: Any, disk: Any, reactor: IReactorTime,
                 max_request_bytes: int = 1572864,
                 on_fatal: Callable[[Failure], None] | None = None) -> None:
        self.identity = identity
        self._store = store
        self._disk = disk
        self._reactor = reactor
        self._max_request_bytes = max_request_bytes
        self._on_fatal = on_fatal or (lambda failure: None)
        self._applier = Applier()
        self._pending: list[tuple[Callable[[Any, Any], Any], Any, Deferred]] = []
        self._flush_call: Any = None
        self._in_flight = False
        self._stopped = False
        self._compacting = False
        self._compaction_waiters: list[Deferred] = []
        self.term = 0
        self.applied_index = 0
        self.committed_index = 0
        self._apply_kind: dict[str, Callable[[Any, Any], Any]] = {
            "put": partial(self._in_txn, self._checked_put),
            "delete_range": partial(self._in_txn, self._applier.delete_range),
            "txn": partial(self._in_txn, self._applier.txn),
            "compaction": self._apply_compaction,
        }

    # -- life ------------------------------------------------------------------------------

    def start_synchronously(self) -> None:
        """Begin a new term, as a restarted etcd member elects itself: fresh store -> term 2,
        index 5; each restart +1 term, +4 index (measured on etcd 3.4.23). Durable before the first request; runs
        once, before the reactor serves anyone, so it may block."""
        index, term = self._store.consistent_index(), self._store.term()
        if index == 0:
            term, index = 2, 5
        else:
            term, index = term + 1, index + 4
        batch = self._store.write_batch()
        batch.set_consistent_index(index, term)
        batch.commit()
        self.term = term
        self.applied_index = self.committed_index = index
        self._log.info("{name} became leader at term {term}; raft index {index}",
                       name=self.identity.name, term=term, index=index)
        if self._store.pending_compaction():
            self._reactor.callLater(0, self._run_compaction)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        """Refuse new proposals; queued ones still apply (the disk thread drains)."""
        self._stopped = True

    # -- proposals -------------------------------------------------------------------------

    def propose(self, kind: str, request: Any) -> Deferred:
        """Queue `request` for the next batch; the Deferred fires with its response.

        Raises (as a failed Deferred) StoppedError, TooManyRequestsError,
        RequestTooLargeError."""
        if self._stopped:
            return fail(StoppedError())
        if request.ByteSize() + _ENVELOPE_BYTES > self._max_request_bytes:
            return fail(RequestTooLargeError())
        if len(self._pending) >= MAX_PENDING_PROPOSALS:
            return fail(TooManyRequestsError())
        d: Deferred = Deferred()
        self._pending.append((self._apply_kind[kind], request, d))
        self._schedule_flush()
        return d

    def _schedule_flush(self) -> None:
        if self._flush_call is None and not self._in_flight:
            self._flush_call = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        if self._in_flight or not self._pending:
            return
        batch_items, self._pending = self._pending, []
        self._in_flight = True
        first_index = self.committed_index + 1
        self.committed_index += len(batch_items)
        work = [(fn, req) for fn, req, _ in batch_items]
        d = self._disk.submit(self._apply_batch, work, first_index, self.term)
        d.addCallbacks(self._batch_applied, self._batch_failed,
                       callbackArgs=(batch_items,), errbackArgs=(batch_items,))

    def _apply_batch(self, work: list, first_index: int, term: int) -> list:
        """Disk thread: apply every request of the batch in one LMDB transaction."""
        batch = self._store.write_batch()
        results: list = []
        try:
            for fn, req in work:
                try:
                    results.append(fn(batch, req))
                except (ServerError, MVCCError) as e:
                    results.append(e)
            batch.set_consistent_index(first_index + len(work) - 1, term)
            batch.commit()
        except BaseException:
            batch.abort()
            raise
        return results

    def _batch_applied(self, results: list, batch_items: list) -> None:
        self._in_flight = False
        self.applied_index += len(batch_items)
        for (_, _, d), result in zip(batch_items, results):
            if isinstance(result, BaseException):
                d.errback(Failure(result))
            else:
                d.callback(result)
        if self._pending:
            self._flush()

    def _batch_failed(self, failure: Failure, batch_items: list) -> None:
        # STYLE.md §6.4: a failed commit is a durability failure: stop, never carry on.
        self._log.critical("applying a batch failed; stopping: {f}", f=failure.getTraceback())
        self._stopped = True
        for _, _, d in batch_items:
            d.errback(Failure(StoppedError()))
        for _, _, d in self._pending:
            d.errback(Failure(StoppedError()))
        self._pending = []
        waiters, self._compaction_waiters = self._compaction_waiters, []
        for w in waiters:
            w.errback(Failure(StoppedError()))
        self._on_fatal(failure)

    # -- appliers (disk thread) ------------------------------------------------------------

    def _in_txn(self, apply: Callable[[Any, Any], Any], batch: Any, req: Any) -> Any:
        """Apply one request as one etcd txn of the batch (ended even when refused)."""
        txn = batch.txn()
        try:
            return apply(txn, req)
        finally:
            txn.end()

    def _checked_put(self, txn: Any, req: Any) -> Any:
        self._applier.check_put(txn, req)
        return self._applier.put(txn, req)

    def _apply_compaction(self, batch: Any, req: Any) -> Any:
        batch.schedule_compaction(req.revision)
        resp = pb.CompactionResponse()
        resp.header.revision = batch.current_revision()
        return resp

    # -- compaction ------------------------------------------------------------------------

    def compact(self, req: Any) -> Deferred:
        """Schedule a compaction through the proposal path; with `physical`, answer only
        once the superseded revisions are gone from the disk."""
        d = self.propose("compaction", req)

        def scheduled(resp: Any) -> Any:
            self._run_compaction()
            if not req.physical or not self._compacting:
                return resp
            waiter: Deferred = Deferred()
            self._compaction_waiters.append(waiter)
            return waiter.addCallback(lambda _: resp)

        return d.addCallback(scheduled)

    def _run_compaction(self) -> None:
        if self._compacting:
            return
        self._compacting = True

        def next_step() -> None:
            self._disk.submit(self._store.compact_step).addCallbacks(step, failed)

        def step(done: bool) -> None:
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
            self._batch_failed(failure, [])

        next_step()

    # -- reads (reactor thread) ------------------------------------------------------------

    def range(self, req: Any) -> Any:
        return self._applier.range(self._store, req)

    def read_txn(self, req: Any) -> Any:
        with self._store.read() as view:
            return self._applier.txn(view, req, is_write=False)
