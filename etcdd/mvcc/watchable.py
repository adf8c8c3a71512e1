"""The watchable store: the member's watchers, fed by applied transactions and by history.

Shell around the pure `mvcc/watcher.py` core. etcd 3.4 `mvcc/watchable_store.go`:

* `notify(changes)` runs on the reactor once a Ready's entries are committed to LMDB, in
  revision order, before any client hears of them: synced watchers get each
  transaction's events at once, all of a transaction in one response.
* A watcher behind (a past start revision, or one whose stream was blocked) is unsynced;
  a sync round reads its history from LMDB in a pool thread, in bounded batches (at most
  `max_history_bytes` of records per read, whole revisions only), hands it over, and the
  watcher rejoins the synced group once caught up. Reads never run on the reactor.
* A sink (`IWatchSink`, a watch stream) that cannot take events now says so; its watcher
  becomes a victim holding those events, retried when the sink is writable again or at
  the next tick (every `tick_seconds`). Writers are never held up by a slow watcher.

Events are built as etcd builds them: a put's event carries the new record and, for
`prev_kv`, the record it replaced; a delete's carries the key and its revision only.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from functools import partial
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from etcdd.mvcc.errors import MVCCError
from etcdd.mvcc.revision import main_of, rev_to_bytes
from etcdd.mvcc.watcher import SyncPlan, WatchableCore, Watcher
from etcdd.proto.kv_pb2 import Event, KeyValue

__all__ = ["IWatchSink", "WatchableStore", "build_events"]

PUT, DELETE = Event.PUT, Event.DELETE
DEFAULT_MAX_HISTORY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_HISTORY_RECORDS = 20_000
DEFAULT_TICK_SECONDS = 0.1          # etcd: syncWatchersLoop 100 ms, victims 10 ms
# Reactor time one notification (or one victim retry) may spend sending to watchers; the
# watchers left over become victims and catch up later, in batches from history, so
# 10,000 watchers of one prefix cost writes a bounded share of the reactor.
DEFAULT_DELIVERY_BUDGET_SECONDS = 0.004
_CHECK_EVERY = 32                   # deliveries between looks at the clock


class IWatchSink(Interface):
    """Where a watcher's responses go (a gRPC watch stream, an in-process client)."""

    def deliver(watcher: Watcher, events: list, rev: int) -> bool:
        """Send `events` (revision order) with header revision `rev`; False if the sink
        cannot take them now (nothing was sent; the watcher becomes a victim)."""

    def compacted(watcher: Watcher, compact_rev: int) -> None:
        """The watcher's start revision was compacted: it is over."""

    def when_writable(callback: Callable[[], None]) -> None:
        """Call `callback` once the sink can take events again."""


def build_events(rev: int, records: list, prevs: list) -> list[Event]:
    """One applied transaction's events: PUT with the record (prev_kv the replaced one),
    DELETE with the key and `rev` (etcd `watchableStoreTxnWrite.End`)."""
    events = []
    for kv, prev in zip(records, prevs):
        if kv.create_revision:
            ev = Event(type=PUT, kv=kv) if prev is None else Event(type=PUT, kv=kv, prev_kv=prev)
        else:
            ev = Event(type=DELETE, kv=KeyValue(key=kv.key, mod_revision=rev), prev_kv=prev)
        events.append(ev)
    return events


class WatchableStore:
    """Invariants: at most one history read in flight; the core's `current_rev` is the
    newest revision handed to `notify` (or found at start/restore)."""

    _log = Logger()

    def __init__(self, store: Any, reactor: IReactorTime, run_read: Callable[..., Deferred], *,
                 tick_seconds: float = DEFAULT_TICK_SECONDS,
                 max_history_bytes: int = DEFAULT_MAX_HISTORY_BYTES,
                 max_history_records: int = DEFAULT_MAX_HISTORY_RECORDS,
                 delivery_budget_seconds: float = DEFAULT_DELIVERY_BUDGET_SECONDS) -> None:
        self._store = store
        self._reactor = reactor
        self._run_read = run_read
        self._tick_seconds = tick_seconds
        self._max_bytes = max_history_bytes
        self._max_records = max_history_records
        self._budget = delivery_budget_seconds
        self.core = WatchableCore(store.current_revision())
        self._reading = False
        self._sync_call: Any = None
        self._ticker: Any = None
        self._retry_scheduled = False
        self._stopped = False
        # Victims by sink, oldest first; sinks to retry next turn; one callback per sink.
        self._sink_victims: dict[Any, OrderedDict[Watcher, None]] = {}
        self._ready_sinks: dict[Any, None] = {}
        self._sink_callbacks: dict[Any, Callable[[], None]] = {}

    @property
    def current_revision(self) -> int:
        """The newest revision whose events were handed out (etcd `watchStream.Rev()`)."""
        return self.core.current_rev

    def start(self) -> None:
        self._ticker = self._reactor.callLater(self._tick_seconds, self._tick)

    def stop(self) -> None:
        self._stopped = True
        for call in (self._ticker, self._sync_call):
            if call is not None and call.active():
                call.cancel()

    # -- watchers -------------------------------------------------------------------------

    def watch(self, key: bytes, range_end: bytes, start_rev: int, *, watch_id: int,
              sink: Any, filters: tuple[int, ...] = (), prev_kv: bool = False) -> Watcher:
        """Start a watcher (see `WatchableCore.watch`); raises EmptyWatcherRangeError."""
        w = self.core.watch(key, range_end, start_rev, self.core.current_rev, watch_id=watch_id,
                            filters=filters, prev_kv=prev_kv, stream=sink)
        if not self.core.is_synced(w):
            self._schedule_sync()
        return w

    def cancel(self, watcher: Watcher) -> bool:
        return self.core.cancel(watcher)

    def is_synced(self, watcher: Watcher) -> bool:
        return self.core.is_synced(watcher)

    # -- new revisions --------------------------------------------------------------------

    def notify(self, changes: list[tuple[int, list, list]]) -> None:
        """Hand the events of applied transactions `(rev, records, prevs)` to synced
        watchers, within the delivery budget; the rest become victims."""
        core = self.core
        deadline = None
        for rev, records, prevs in changes:
            if not len(core.synced):
                core.notify(rev, [])             # only moves the revision
                continue
            batch = core.notify(rev, build_events(rev, records, prevs))
            if not batch:
                continue
            if deadline is None:
                deadline = self._reactor.seconds() + self._budget
            deadline = self._deliver(batch, rev, deadline)

    def _deliver(self, batch: dict[Watcher, list], rev: int, deadline: float) -> float:
        """Send each watcher its events until `deadline`; returns the deadline, or -1 once
        it has passed (every later watcher is parked as a victim at once)."""
        seconds = self._reactor.seconds
        n = 0
        for w, evs in batch.items():
            if deadline < 0:
                self._park(w, evs, ready=True)     # retried next turn, then history
                continue
            if not w.stream.deliver(w, evs, rev):
                self._park(w, evs, ready=False)
            n += 1
            if n % _CHECK_EVERY == 0 and seconds() > deadline:
                deadline = -1
        return deadline

    def restore(self) -> None:
        """After a snapshot install: every watcher catches up from the new store."""
        self.core.restore(self._store.current_revision())
        self._schedule_sync()

    # -- victims --------------------------------------------------------------------------
    # The core holds each victim's events; here each sink keeps its victims in order, so
    # a sink that drains retries only its own, and a full sink costs one failed send per
    # retry, not one per victim.

    def _park(self, watcher: Watcher, events: list, ready: bool) -> None:
        """Make `watcher` a victim; retry it next turn (`ready`) or when its sink drains."""
        self.core.add_victim(watcher, events)
        self._requeue(watcher, ready)

    def _requeue(self, watcher: Watcher, ready: bool) -> None:
        sink = watcher.stream
        queue = self._sink_victims.get(sink)
        if queue is None:
            queue = self._sink_victims[sink] = OrderedDict()
        queue[watcher] = None
        if ready:
            self._ready_sinks[sink] = None
            self._schedule_retry()
        else:
            self._wait_writable(sink)

    def _wait_writable(self, sink: Any) -> None:
        callback = self._sink_callbacks.get(sink)
        if callback is None:
            callback = self._sink_callbacks[sink] = partial(self._sink_ready, sink)
        sink.when_writable(callback)

    def _sink_ready(self, sink: Any) -> None:
        self._ready_sinks[sink] = None
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if not self._retry_scheduled and not self._stopped:
            self._retry_scheduled = True
            self._reactor.callLater(0, self._retry_victims)

    def _retry_victims(self) -> None:
        """Send ready sinks' victims their parked events, oldest first, until a sink is
        full again (it calls back when it drains) or the delivery budget is spent (the
        rest go on next turn)."""
        self._retry_scheduled = False
        core, seconds = self.core, self._reactor.seconds
        deadline = seconds() + self._budget
        ready, self._ready_sinks = self._ready_sinks, {}
        n = 0
        for sink in ready:
            queue = self._sink_victims.get(sink)
            while queue:
                if n % _CHECK_EVERY == 0 and n and seconds() > deadline:
                    self._ready_sinks[sink] = None
                    break
                w = next(iter(queue))
                events = core.take_victim(w)
                if events is None:               # canceled meanwhile
                    del queue[w]
                    continue
                n += 1
                ok = sink.deliver(w, events, events[-1].kv.mod_revision) if events else True
                core.victim_delivered(w, ok)
                if not ok:
                    self._wait_writable(sink)
                    break
                del queue[w]
            if not queue:
                self._sink_victims.pop(sink, None)
                self._sink_callbacks.pop(sink, None)
        if self._ready_sinks:
            self._schedule_retry()
        if len(core.unsynced):
            self._schedule_sync()

    # -- history --------------------------------------------------------------------------

    def _tick(self) -> None:
        self._ticker = self._reactor.callLater(self._tick_seconds, self._tick)
        if self._sink_victims:
            self._ready_sinks.update(dict.fromkeys(self._sink_victims))
            self._retry_victims()
        if len(self.core.unsynced):
            self._schedule_sync()

    def _schedule_sync(self) -> None:
        if self._sync_call is None and not self._reading and not self._stopped:
            self._sync_call = self._reactor.callLater(0, self._sync)

    def _sync(self) -> None:
        """Choose unsynced watchers (etcd `syncWatchers`) and read their history."""
        self._sync_call = None
        core = self.core
        if self._reading or self._stopped or not len(core.unsynced):
            return
        plan = core.sync_batch(core.current_rev, self._store.compact_revision())
        for w in plan.compacted:
            w.stream.compacted(w, plan.compact_rev)
        if plan.is_empty():
            return
        self._reading = True
        want_prev = any(w.prev_kv for w in plan.group)
        d = self._run_read(read_history, self._store, plan, want_prev, self._max_bytes,
                           self._max_records)
        d.addCallbacks(self._history_read, self._history_failed,
                       callbackArgs=(plan,), errbackArgs=(plan,))

    def _history_read(self, result: tuple[list[Event], int], plan: SyncPlan) -> None:
        self._reading = False
        if self._stopped:
            return
        events, last_rev = result
        rev = plan.max_rev
        if last_rev < plan.max_rev:
            plan = dataclasses.replace(plan, max_rev=last_rev)
        core = self.core
        for w, evs in core.deliver_history(plan, events).items():
            if not w.stream.deliver(w, evs, rev):
                self._park(w, evs, ready=False)
        if len(core.unsynced):
            self._schedule_sync()

    def _history_failed(self, failure: Failure, plan: SyncPlan) -> None:
        self._reading = False
        self.core.abandon_sync(plan)
        if not self._stopped:
            self._log.failure("reading watch history failed; retrying", failure=failure)


def read_history(store: Any, plan: SyncPlan, want_prev: bool, max_bytes: int,
                 max_records: int) -> tuple[list[Event], int]:
    """Events of the plan's revisions (off the reactor): whole revisions from
    `plan.min_rev` until about `max_bytes` / `max_records` are read or `plan.max_rev`.
    Returns (events for keys the plan wants, the last revision read completely)."""
    view = store.read()
    try:
        txn = view.txn
        cur = txn.cursor(store.backend.dbs[b"key"])
        events: list[Event] = []
        if not cur.set_range(rev_to_bytes(max(plan.min_rev, 1), 0)):
            return events, plan.max_rev
        wants, size, count, max_rev = plan.wants, 0, 0, plan.max_rev
        prev_rev = plan.min_rev - 1
        for k, v in cur.iternext():
            rev = main_of(k)
            if rev > max_rev:
                break
            if rev != prev_rev:
                # every record of prev_rev is read: a batch may end here
                if size >= max_bytes or count >= max_records:
                    return events, prev_rev
                prev_rev = rev
            size += len(v)
            count += 1
            kv = KeyValue.FromString(v)
            if wants(kv.key):
                events.append(_history_event(view, k, kv, rev, want_prev))
        return events, max_rev
    finally:
        view.end()


def _history_event(view: Any, k: bytes, kv: KeyValue, rev: int, want_prev: bool) -> Event:
    """etcd `kvsToEvents`: a tombstone is a DELETE with the revision patched in."""
    if len(k) > 17:
        ev = Event(type=DELETE, kv=KeyValue(key=kv.key, mod_revision=rev))
    else:
        ev = Event(type=PUT, kv=kv)
    if want_prev and not (ev.type == PUT and kv.create_revision == kv.mod_revision):
        try:
            found = view.range(kv.key, b"", rev=rev - 1).kvs
        except MVCCError:
            found = []
        if found:
            ev.prev_kv.CopyFrom(found[0])
    return ev
