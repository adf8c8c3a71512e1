"""Watchers and the groups that find them by key: who watches which keys.

Core (pure). Matches etcd 3.4 `mvcc/watcher_group.go` (`watcherGroup`, `choose`,
`chooseAll`, `watcherSetByKey`) and the `watcher` record of `mvcc/watchable_store.go`.
`etcdd/mvcc/watcher.py` (the watchable core) keeps two groups, synced and unsynced.

A watcher's range follows etcd's convention::

    range_end == b""        the single key `key`
    range_end == b"\\x00"    every key >= key (a "from-key" watcher)
    otherwise               the half-open interval [key, range_end)

Single-key watchers sit in a dict by key; from-key watchers in a sorted list of distinct
starts (every start <= key matches, so a bisect finds exactly the matches); finite ranges
in a treap ordered by (start, end) and augmented with the largest end in each subtree, so
a stabbing query visits only subtrees that can hold a match: O(log n + matches) in the
number of distinct intervals. Watchers with the same interval share one set, so 10,000
watchers on one prefix cost one interval.
"""
from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from typing import Any, Iterator

from etcdd.proto.kv_pb2 import Event

# etcd 3.4 etcdserverpb.WatchCreateRequest.FilterType values.
NOPUT = 0
NODELETE = 1
_DROPPED_TYPE = {NOPUT: Event.PUT, NODELETE: Event.DELETE}

FROM_KEY = b"\x00"


@dataclass(eq=False)
class Watcher:
    """One watch: a key range, the next revision it needs, and how its events are shaped.

    Invariant: every event with `mod_revision < min_rev` in its range has been handed out
    for it exactly once, in revision order; none at or after `min_rev` has. Identity is
    the object itself (`eq=False`), as etcd keys its maps by `*watcher`.
    """

    id: int
    key: bytes
    range_end: bytes
    start_rev: int
    filters: frozenset[int] = frozenset()
    prev_kv: bool = False
    stream: Any = None
    min_rev: int = 0
    compacted: bool = False
    victim: bool = False
    dropped_types: frozenset[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.dropped_types = frozenset(_DROPPED_TYPE[f] for f in self.filters)

    def is_single_key(self) -> bool:
        return not self.range_end

    def covers(self, key: bytes) -> bool:
        """Whether `key` lies in this watcher's range (the brute-force definition)."""
        if not self.range_end:
            return key == self.key
        if self.range_end == FROM_KEY:
            return key >= self.key
        return self.key <= key < self.range_end


class _Node:
    """A treap node: one distinct finite interval and the watchers on it."""

    __slots__ = ("start", "end", "watchers", "prio", "left", "right", "max_end")

    def __init__(self, start: bytes, end: bytes, prio: float) -> None:
        self.start, self.end, self.prio = start, end, prio
        self.watchers: dict[Watcher, None] = {}
        self.left: _Node | None = None
        self.right: _Node | None = None
        self.max_end = end

    def update(self) -> None:
        m = self.end
        if self.left is not None and self.left.max_end > m:
            m = self.left.max_end
        if self.right is not None and self.right.max_end > m:
            m = self.right.max_end
        self.max_end = m


def _split(node: _Node | None, start: bytes, end: bytes) -> tuple[_Node | None, _Node | None]:
    """Split into (nodes ordered before (start, end), the rest)."""
    if node is None:
        return None, None
    if (node.start, node.end) < (start, end):
        node.right, right = _split(node.right, start, end)
        node.update()
        return node, right
    left, node.left = _split(node.left, start, end)
    node.update()
    return left, node


def _merge(left: _Node | None, right: _Node | None) -> _Node | None:
    """Join two treaps whose every key on the left orders before every key on the right."""
    if left is None:
        return right
    if right is None:
        return left
    if left.prio > right.prio:
        left.right = _merge(left.right, right)
        left.update()
        return left
    right.left = _merge(left, right.left)
    right.update()
    return right


class _IntervalTreap:
    """Distinct finite intervals [start, end) with a stabbing query."""

    def __init__(self, rand: random.Random) -> None:
        self._root: _Node | None = None
        self._rand = rand

    def find(self, start: bytes, end: bytes) -> _Node | None:
        node, want = self._root, (start, end)
        while node is not None:
            here = (node.start, node.end)
            if want == here:
                return node
            node = node.left if want < here else node.right
        return None

    def insert(self, start: bytes, end: bytes) -> _Node:
        """Add the interval (which must be absent) and return its node."""
        new = _Node(start, end, self._rand.random())
        self._root = self._insert(self._root, new)
        return new

    def _insert(self, node: _Node | None, new: _Node) -> _Node:
        if node is None:
            return new
        if new.prio > node.prio:
            new.left, new.right = _split(node, new.start, new.end)
            new.update()
            return new
        if (new.start, new.end) < (node.start, node.end):
            node.left = self._insert(node.left, new)
        else:
            node.right = self._insert(node.right, new)
        node.update()
        return node

    def delete(self, start: bytes, end: bytes) -> None:
        self._root = self._delete(self._root, (start, end))

    def _delete(self, node: _Node | None, want: tuple[bytes, bytes]) -> _Node | None:
        if node is None:
            return None
        here = (node.start, node.end)
        if want == here:
            return _merge(node.left, node.right)
        if want < here:
            node.left = self._delete(node.left, want)
        else:
            node.right = self._delete(node.right, want)
        node.update()
        return node

    def stab(self, key: bytes, out: list[dict[Watcher, None]]) -> None:
        """Append the watcher set of every interval holding `key` to `out`."""
        stack = [self._root] if self._root is not None else []
        while stack:
            node = stack.pop()
            if node.max_end <= key:
                continue        # nothing below ends after key
            if node.left is not None:
                stack.append(node.left)
            if node.start <= key:
                if key < node.end:
                    out.append(node.watchers)
                if node.right is not None:
                    stack.append(node.right)

    def any_holds(self, key: bytes) -> bool:
        found: list[dict[Watcher, None]] = []
        self.stab(key, found)
        return bool(found)


class WatcherGroup:
    """A set of watchers indexed by key range.

    Invariant: every watcher is in `_all` and in exactly one of the single-key dict, the
    from-key index or the interval treap, under its own range.
    """

    def __init__(self, rand: random.Random | None = None) -> None:
        # Treap priorities only shape the tree, never results; seeded for determinism.
        self._rand = rand if rand is not None else random.Random(0)
        self._all: dict[Watcher, None] = {}
        self._keys: dict[bytes, dict[Watcher, None]] = {}
        self._from_starts: list[bytes] = []
        self._from_sets: dict[bytes, dict[Watcher, None]] = {}
        self._ranges = _IntervalTreap(self._rand)

    def __len__(self) -> int:
        return len(self._all)

    def __iter__(self) -> Iterator[Watcher]:
        return iter(self._all)

    def contains(self, watcher: Watcher) -> bool:
        return watcher in self._all

    def add(self, watcher: Watcher) -> None:
        """Put a watcher in the group; raises ValueError if it is already there."""
        if watcher in self._all:
            raise ValueError(f"watcher {watcher.id} added twice")
        self._all[watcher] = None
        end = watcher.range_end
        if not end:
            self._keys.setdefault(watcher.key, {})[watcher] = None
        elif end == FROM_KEY:
            ws = self._from_sets.get(watcher.key)
            if ws is None:
                ws = self._from_sets[watcher.key] = {}
                bisect.insort(self._from_starts, watcher.key)
            ws[watcher] = None
        else:
            node = self._ranges.find(watcher.key, end)
            if node is None:
                node = self._ranges.insert(watcher.key, end)
            node.watchers[watcher] = None

    def remove(self, watcher: Watcher) -> bool:
        """Take a watcher out of the group; returns whether it was there."""
        if watcher not in self._all:
            return False
        del self._all[watcher]
        end = watcher.range_end
        if not end:
            _discard(self._keys, watcher.key, watcher)
        elif end == FROM_KEY:
            if _discard(self._from_sets, watcher.key, watcher):
                del self._from_starts[bisect.bisect_left(self._from_starts, watcher.key)]
        else:
            node = self._ranges.find(watcher.key, end)
            if node is None:
                raise RuntimeError(f"watcher {watcher.id} missing from the interval index")
            del node.watchers[watcher]
            if not node.watchers:
                self._ranges.delete(watcher.key, end)
        return True

    def sets_for(self, key: bytes) -> list[dict[Watcher, None]]:
        """The disjoint watcher sets whose ranges hold `key` (shared: do not mutate)."""
        out: list[dict[Watcher, None]] = []
        ws = self._keys.get(key)
        if ws is not None:
            out.append(ws)
        starts = self._from_starts
        if starts:
            from_sets = self._from_sets
            out.extend(from_sets[s] for s in starts[:bisect.bisect_right(starts, key)])
        self._ranges.stab(key, out)
        return out

    def watchers_for(self, key: bytes) -> set[Watcher]:
        """Every watcher in the group whose range holds `key`."""
        found: set[Watcher] = set()
        for ws in self.sets_for(key):
            found.update(ws)
        return found

    def wants(self, key: bytes) -> bool:
        """Whether any watcher in the group watches `key` (etcd `contains`)."""
        if key in self._keys:
            return True
        if self._from_starts and self._from_starts[0] <= key:
            return True
        return self._ranges.any_holds(key)

    def choose(self, max_watchers: int, cur_rev: int,
               compact_rev: int) -> tuple[WatcherGroup, int, list[Watcher]]:
        """Pick up to `max_watchers` watchers to sync, like etcd 3.4 `choose`/`chooseAll`.

        Returns (chosen, min_rev, compacted). A watcher whose `min_rev` is below
        `compact_rev` can no longer be served from history: it is marked `compacted`,
        removed from this group and listed in `compacted`, never in `chosen`. `chosen` is
        this group itself when every remaining watcher fits, else a new group whose
        watchers are still also in this one. `min_rev` is the smallest `min_rev` among the
        chosen (`cur_rev + 1` when none is chosen).
        """
        compacted = [w for w in self._all if w.min_rev < compact_rev]
        for w in compacted:
            w.compacted = True
            self.remove(w)
        if len(self._all) <= max_watchers:
            chosen = self
        else:
            chosen = WatcherGroup(self._rand)
            for w in self._all:
                if len(chosen) >= max_watchers:
                    break
                chosen.add(w)
        min_rev = min((w.min_rev for w in chosen._all), default=cur_rev + 1)
        return chosen, min_rev, compacted


def _discard(index: dict[bytes, dict[Watcher, None]], key: bytes, watcher: Watcher) -> bool:
    """Remove `watcher` from `index[key]`; returns whether that emptied the key's set."""
    ws = index[key]
    del ws[watcher]
    if ws:
        return False
    del index[key]
    return True
