"""The watchable core: which watcher gets which events, and when.

Core (pure). Matches the in-memory parts of etcd 3.4 `mvcc/watchable_store.go` (`watch`,
`cancelWatcher`, `notify`, `syncWatchers`, `moveVictims`, `Restore`) and the
`eventBatch` limit of `mvcc/watcher_group.go`. The shell (`mvcc/watchable.py`) feeds it
the events of every applied transaction and the history it reads from LMDB, sends what
it returns, and reports streams that could not take their events.

A watcher lives in exactly one place at a time::

    synced      caught up: gets events from notify()
    unsynced    behind: waits for sync_batch() to choose it
    syncing     chosen by a SyncPlan whose history the shell is reading
    victims     its stream was blocked; holds the events still to send
    in flight   handed out by retry_victims(), awaiting victim_delivered()

Invariant: every event in a watcher's range from its start revision on is handed out for
it exactly once, in revision order (see `Watcher.min_rev`).
"""
from __future__ import annotations

import bisect
import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable

from etcdd.mvcc.errors import MVCCError
from etcdd.mvcc.watcher_group import FROM_KEY, NODELETE, NOPUT, Watcher, WatcherGroup
from etcdd.proto.kv_pb2 import Event

__all__ = ["EmptyWatcherRangeError", "NODELETE", "NOPUT", "SyncPlan", "WatchableCore",
           "Watcher", "WatcherGroup"]

# etcd 3.4 mvcc/watchable_store.go maxWatchersPerSync, watcher_group.go watchBatchMaxRevs.
MAX_WATCHERS_PER_SYNC = 512
WATCH_BATCH_MAX_REVS = 1000


class EmptyWatcherRangeError(MVCCError):
    """The watch range is empty: `key >= range_end` (etcd `ErrEmptyWatcherRange`)."""


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """Unsynced watchers chosen for one history read, and the revisions to read.

    The shell reads every event with `min_rev <= mod_revision <= max_rev` whose key
    `wants()` (etcd's `kvsToEvents`), in revision order, and hands them to
    `WatchableCore.deliver_history`. `compacted` watchers are already removed; the shell
    sends each a response with `compact_revision` set.
    """

    group: WatcherGroup
    min_rev: int
    max_rev: int
    compact_rev: int
    compacted: tuple[Watcher, ...]

    def is_empty(self) -> bool:
        """Whether there is no history to read (no watcher was chosen)."""
        return len(self.group) == 0

    def wants(self, key: bytes) -> bool:
        """Whether any chosen watcher watches `key`."""
        return self.group.wants(key)


class WatchableCore:
    """The synced and unsynced watcher groups, the victims, and the current revision.

    Invariants: each watcher is in at most one of synced, unsynced, syncing, a victim
    batch, in flight; a synced watcher has received every event in its range below
    `current_rev + 1`; an unsynced watcher has `min_rev <= current_rev` unless it came
    from `restore`.
    """

    def __init__(self, current_rev: int = 0, *,
                 max_revs_per_batch: int = WATCH_BATCH_MAX_REVS,
                 rand: random.Random | None = None) -> None:
        self._rand = rand if rand is not None else random.Random(0)
        self.synced = WatcherGroup(self._rand)
        self.unsynced = WatcherGroup(self._rand)
        # Oldest first; each victim once, with the events it still has to get.
        self.victims: OrderedDict[Watcher, list[Event]] = OrderedDict()
        self.current_rev = current_rev
        self.max_revs_per_batch = max_revs_per_batch
        self._syncing: dict[Watcher, None] = {}
        self._in_flight: dict[Watcher, list[Event]] = {}

    def _observe(self, rev: int) -> int:
        if rev > self.current_rev:
            self.current_rev = rev
        return self.current_rev

    def watch(self, key: bytes, range_end: bytes, start_rev: int, cur_rev: int, *,
              watch_id: int, filters: Iterable[int] = (), prev_kv: bool = False,
              stream: object = None) -> Watcher:
        """Create a watcher on [key, range_end) from `start_rev` (0: from now on).

        Synced when `start_rev` is 0 or beyond `cur_rev` (it waits for future revisions),
        else unsynced: its history comes through `sync_batch`. A start revision already
        compacted is reported by the next `sync_batch`. Raises EmptyWatcherRangeError when
        a finite `range_end` is not after `key` (etcd 3.4 `watchStream.Watch`).
        """
        if range_end and range_end != FROM_KEY and key >= range_end:
            raise EmptyWatcherRangeError("mvcc: watcher range is empty")
        cur = self._observe(cur_rev)
        w = Watcher(id=watch_id, key=key, range_end=range_end, start_rev=start_rev,
                    filters=frozenset(filters), prev_kv=prev_kv, stream=stream,
                    min_rev=start_rev)
        if start_rev == 0 or start_rev > cur:
            w.min_rev = max(cur + 1, start_rev)
            self.synced.add(w)
        else:
            self.unsynced.add(w)
        return w

    def cancel(self, watcher: Watcher) -> bool:
        """Forget a watcher wherever it is; returns whether it was still there."""
        if self.synced.remove(watcher) or self.unsynced.remove(watcher):
            return True
        if self._syncing.pop(watcher, 0) is None:
            return True
        if self._in_flight.pop(watcher, None) is not None:
            return True
        return self.victims.pop(watcher, None) is not None

    def is_synced(self, watcher: Watcher) -> bool:
        """Whether the watcher is caught up (etcd sends progress notifies only then)."""
        return self.synced.contains(watcher)

    def notify(self, rev: int, events: list[Event]) -> dict[Watcher, list[Event]]:
        """The events of the transaction applied at `rev`, per synced watcher to send now.

        Every event's `kv.mod_revision` is `rev`. Each matched watcher's `min_rev` becomes
        `rev + 1` even if its filters leave nothing to send; a watcher with nothing left
        is not in the result. If a watcher's stream cannot take its events, the shell
        calls `add_victim(watcher, events)` with the events returned here. Lists and
        events may be shared between watchers: do not mutate them.
        """
        self._observe(rev)
        if not len(self.synced) or not events:
            return {}
        if len(events) == 1:
            return self._notify_one(rev, events[0])
        batch: dict[Watcher, list[Event]] = {}
        sets_for = self.synced.sets_for
        for ev in events:
            for ws in sets_for(ev.kv.key):
                for w in ws:
                    if w.min_rev > rev:
                        continue    # a watcher created for a future start revision
                    evs = batch.get(w)
                    if evs is None:
                        batch[w] = [ev]
                    else:
                        evs.append(ev)
        for w in batch:
            w.min_rev = rev + 1
        return _shape(batch, events)

    def _notify_one(self, rev: int, ev: Event) -> dict[Watcher, list[Event]]:
        """`notify` for the common one-event transaction: every watcher shares one list."""
        full = [ev]
        bare = [Event(type=ev.type, kv=ev.kv)] if ev.HasField("prev_kv") else full
        out: dict[Watcher, list[Event]] = {}
        for ws in self.synced.sets_for(ev.kv.key):
            for w in ws:
                if w.min_rev > rev:
                    continue
                w.min_rev = rev + 1
                if ev.type not in w.dropped_types:
                    out[w] = full if w.prev_kv else bare
        return out

    def add_victim(self, watcher: Watcher, events: list[Event]) -> None:
        """Park a watcher whose stream was blocked, with the events it still has to get.

        Call with events just returned by `notify` or `deliver_history`. The watcher
        leaves synced or unsynced until `retry_victims` hands it out again. Raises
        ValueError if it is already a victim.
        """
        if watcher.victim:
            raise ValueError(f"watcher {watcher.id} is already a victim")
        if not (self.synced.remove(watcher) or self.unsynced.remove(watcher)):
            raise ValueError(f"watcher {watcher.id} is neither synced nor unsynced")
        watcher.victim = True
        self.victims[watcher] = events

    def retry_victims(self) -> dict[Watcher, list[Event]]:
        """Hand out every victim's pending events for another send (etcd `moveVictims`).

        Report each watcher back with `victim_delivered` (one still blocked goes to the
        back of the line).
        """
        retry = dict(self.victims)
        self.victims.clear()
        self._in_flight.update(retry)
        return retry

    def take_victim(self, watcher: Watcher) -> list[Event] | None:
        """Hand out one victim's pending events (None if it is not a victim any more,
        e.g. canceled); report it back with `victim_delivered`."""
        events = self.victims.pop(watcher, None)
        if events is not None:
            self._in_flight[watcher] = events
        return events

    def victim_count(self) -> int:
        """Watchers parked as victims (not counting those handed out)."""
        return len(self.victims)

    def victim_delivered(self, watcher: Watcher, ok: bool) -> None:
        """Record whether a victim's events were sent: if so it rejoins synced or unsynced.

        A watcher canceled meanwhile is ignored. One still blocked becomes a victim again.
        """
        events = self._in_flight.pop(watcher, None)
        if events is None:
            return
        if not ok:
            self.victims[watcher] = events
            return
        watcher.victim = False
        if watcher.min_rev > self.current_rev:
            self.synced.add(watcher)
        else:
            self.unsynced.add(watcher)

    def sync_batch(self, cur_rev: int, compact_rev: int,
                   max_watchers: int = MAX_WATCHERS_PER_SYNC) -> SyncPlan:
        """Choose unsynced watchers to catch up and the revisions to read for them.

        Like etcd 3.4 `syncWatchers`: at most `max_watchers` are chosen; those whose
        `min_rev` is below `compact_rev` are marked compacted, dropped and listed in the
        plan. Chosen watchers stay out of every group until `deliver_history` (or
        `abandon_sync`) is called with the plan.
        """
        cur = self._observe(cur_rev)
        chosen, min_rev, compacted = self.unsynced.choose(max_watchers, cur, compact_rev)
        if chosen is self.unsynced:
            self.unsynced = WatcherGroup(self._rand)
        else:
            for w in chosen:
                self.unsynced.remove(w)
        self._syncing.update(dict.fromkeys(chosen))
        return SyncPlan(chosen, min_rev, cur, compact_rev, tuple(compacted))

    def abandon_sync(self, plan: SyncPlan) -> None:
        """Put a plan's watchers back in unsynced, unchanged (the history read failed)."""
        for w in plan.group:
            if self._syncing.pop(w, 0) is None:
                self.unsynced.add(w)

    def deliver_history(self, plan: SyncPlan,
                        events: list[Event]) -> dict[Watcher, list[Event]]:
        """Assign history events to the plan's watchers; returns what to send to each.

        `events` are in revision order, as read for the plan (events after
        `plan.max_rev` are ignored). Each watcher takes the events at or after its own
        `min_rev`, at most `max_revs_per_batch` distinct revisions of them (etcd
        `eventBatch`); one cut short stays unsynced from its first untaken revision. The
        rest are caught up to `plan.max_rev`: synced, unless the core has applied newer
        revisions meanwhile, in which case they stay unsynced for another round.
        """
        batch, more = self._collect_history(plan, events)
        for w in plan.group:
            if self._syncing.pop(w, 0) is not None:
                batch.pop(w, None)          # canceled while the history was read
                continue
            if w in more:
                w.min_rev = more[w]
            elif w.min_rev <= plan.max_rev:
                w.min_rev = plan.max_rev + 1
            if w.min_rev > self.current_rev:
                self.synced.add(w)
            else:
                self.unsynced.add(w)
        return _shape(batch, events)

    def _collect_history(self, plan: SyncPlan, events: list[Event]
                         ) -> tuple[dict[Watcher, list[Event]], dict[Watcher, int]]:
        """Each watcher's share of `events`: from its `min_rev`, at most
        `max_revs_per_batch` distinct revisions (`more[w]` is the first revision left).

        Watchers on the same interval share one set, so the events are matched once per
        set, and watchers of a set with the same `min_rev` share one list: 1,000 watchers
        of one prefix cost one pass over the events, not 1,000."""
        max_rev, sets_for = plan.max_rev, plan.group.sets_for
        per_set: dict[int, tuple[dict[Watcher, None], list[Event]]] = {}
        for ev in events:
            if ev.kv.mod_revision > max_rev:
                break
            for ws in sets_for(ev.kv.key):
                entry = per_set.get(id(ws))
                if entry is None:
                    per_set[id(ws)] = (ws, [ev])
                else:
                    entry[1].append(ev)
        batch: dict[Watcher, list[Event]] = {}
        more: dict[Watcher, int] = {}
        limit = self.max_revs_per_batch
        for ws, evs in per_set.values():
            revs = [ev.kv.mod_revision for ev in evs]
            shares: dict[int, tuple[list[Event], int | None]] = {}
            for w in ws:
                share = shares.get(w.min_rev)
                if share is None:
                    share = shares[w.min_rev] = _cut(evs, revs, w.min_rev, limit)
                if share[0]:
                    batch[w] = share[0]
                if share[1] is not None:
                    more[w] = share[1]
        return batch, more

    def restore(self, cur_rev: int) -> None:
        """After a snapshot install every synced watcher catches up from history.

        etcd 3.4 `watchableStore.Restore`. A watcher waiting for a future start revision
        may then sit in unsynced with `min_rev > cur_rev`; it is synced again by the next
        plan that chooses it, without events.
        """
        self.current_rev = cur_rev
        for w in self.synced:
            self.unsynced.add(w)
        self.synced = WatcherGroup(self._rand)


def _cut(events: list[Event], revs: list[int], min_rev: int,
         limit: int) -> tuple[list[Event], int | None]:
    """The events at or after `min_rev`, at most `limit` distinct revisions of them, and
    the first revision left out (None if none was)."""
    start = bisect.bisect_left(revs, min_rev)
    distinct, last = 0, -1
    for i in range(start, len(revs)):
        rev = revs[i]
        if rev != last:
            if distinct >= limit:
                return events[start:i], rev
            distinct, last = distinct + 1, rev
    return events[start:], None


def _shape(batch: dict[Watcher, list[Event]],
           events: list[Event]) -> dict[Watcher, list[Event]]:
    """Apply each watcher's filters and drop `prev_kv` it did not ask for.

    Filters run after matching, as etcd 3.4 `watcher.send` does; a watcher whose events
    are all filtered out is left out of the result. A stripped copy of an event is made
    once and shared by every watcher that needs it.
    """
    any_prev = any(ev.HasField("prev_kv") for ev in events)
    stripped: dict[int, Event] = {}
    out: dict[Watcher, list[Event]] = {}
    for w, evs in batch.items():
        if w.dropped_types:
            dropped = w.dropped_types
            evs = [ev for ev in evs if ev.type not in dropped]
            if not evs:
                continue
        if any_prev and not w.prev_kv:
            evs = [_without_prev_kv(ev, stripped) for ev in evs]
        out[w] = evs
    return out


def _without_prev_kv(ev: Event, cache: dict[int, Event]) -> Event:
    bare = cache.get(id(ev))
    if bare is None:
        bare = Event(type=ev.type, kv=ev.kv) if ev.HasField("prev_kv") else ev
        cache[id(ev)] = bare
    return bare
