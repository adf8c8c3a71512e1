"""The v3 Watch service: one bidirectional stream carrying many watchers.

Shell glue over `mvcc/watchable.py`. Matches etcd 3.4 `etcdserver/api/v3rpc/watch.go`
(`serverWatchStream.recvLoop`/`sendLoop`) and `mvcc/watcher.go` (`watchStream`):

* create: an empty key means `\\x00`; `range_end` `\\x00` means every key >= key. The
  `created` response carries the revision the watch starts after (its header) and the
  watch ID: the client's `watch_id` when non-zero, else the lowest free ID of the stream
  counting from 0. A duplicate ID or an empty range answers `created` + `canceled` with
  watch ID -1 and etcd's reason.
* cancel: a `canceled` response for a known ID; an unknown ID is ignored.
* progress request: a header-only response with watch ID -1 at the current revision.
* progress_notify: every `--experimental-watch-progress-notify-interval` a synced watcher
  that got no events since the last tick gets an empty response at the current revision.
* events: header revision of the transaction (or of the sync round for history); with
  `fragment`, a response over `fragment_bytes` (etcd: `--max-request-bytes` + 512 KiB)
  is split as etcd's `sendFragments`.
* a compacted start revision: `compact_revision` set and `canceled`, header revision 0.

Responses with events are encoded by hand from events serialized once per notification,
so 1,000 watchers of one key cost one serialization of the event, not 1,000.
"""
from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from etcdd.api.kv import HeaderFiller
from etcdd.api.router import CallContext, IServerStream, IStreamHandler, Router
from etcdd.mvcc.watchable import IWatchSink, WatchableStore
from etcdd.mvcc.watcher import EmptyWatcherRangeError, Watcher
from etcdd.proto import rpc_pb2 as pb

INVALID_WATCH_ID = -1
DUPLICATE_ID_REASON = "mvcc: duplicate watch ID provided on the WatchStream"
EMPTY_RANGE_REASON = "mvcc: watcher range is empty"
# etcd 3.4 mvcc watchStream: watchers per stream are unbounded there; we bound them.
MAX_WATCHERS_PER_STREAM = 100_000


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _events_blob(events: list, cache: dict[int, tuple[Any, bytes]]) -> bytes:
    """`events` as repeated field 11 of WatchResponse, each event serialized once.

    The cache maps `id(event)` to (event, bytes): holding the event keeps its id from
    being reused by another object while the entry lives."""
    parts = []
    for ev in events:
        hit = cache.get(id(ev))
        if hit is None or hit[0] is not ev:
            data = ev.SerializeToString()
            hit = cache[id(ev)] = (ev, b"\x5a" + _varint(len(data)) + data)
        parts.append(hit[1])
    return b"".join(parts)


def _response_bytes(header: bytes, watch_id: int, blob: bytes, fragment: bool = False) -> bytes:
    """A serialized WatchResponse: header, watch_id, fragment, then the events."""
    out = b"\x0a" + _varint(len(header)) + header
    if watch_id:
        out += b"\x10" + _varint(watch_id)
    if fragment:
        out += b"\x38\x01"
    return out + blob


class WatchService:
    """Handler for /etcdserverpb.Watch/Watch."""

    def __init__(self, watchable: WatchableStore, header: HeaderFiller, reactor: IReactorTime,
                 fragment_bytes: int, progress_interval_seconds: float = 600.0) -> None:
        self.watchable = watchable
        self.header = header
        self.reactor = reactor
        self.fragment_bytes = fragment_bytes
        self.progress_interval_seconds = progress_interval_seconds
        self._header_key: tuple[int, int] = (-1, -1)
        self._header_raw = b""
        # Serialized events shared by every stream (see `_events_blob`).
        self.blob_cache: dict[int, tuple[Any, bytes]] = {}
        self.list_cache: dict[int, tuple[list, bytes]] = {}

    def register(self, router: Router) -> None:
        router.add_stream("/etcdserverpb.Watch/Watch", pb.WatchRequest, self.open)

    def open(self, context: CallContext, stream: IServerStream) -> IStreamHandler:
        return WatchStream(self, stream)

    def header_bytes(self, rev: int) -> bytes:
        """The serialized ResponseHeader at `rev` (cached while rev and term stay)."""
        term = self.header.raft_term()
        if (rev, term) != self._header_key:
            header = pb.ResponseHeader(revision=rev, raft_term=term)
            self.header.fill_identity(header)
            self._header_key, self._header_raw = (rev, term), header.SerializeToString()
            self.blob_cache = {}         # a new revision: the events of the last are done
            self.list_cache = {}
        return self._header_raw


@implementer(IStreamHandler, IWatchSink)
class WatchStream:
    """One Watch call. Invariant: `watchers` holds every live watcher of this stream by
    ID; each is registered in the watchable store until canceled or the stream ends."""

    _log = Logger()

    def __init__(self, service: WatchService, stream: IServerStream) -> None:
        self._service = service
        self._stream = stream
        self._watchable = service.watchable
        self.watchers: dict[int, Watcher] = {}
        self._next_id = 0
        self._fragment: set[int] = set()
        self._progress: dict[int, bool] = {}     # watch ID -> no events since last tick
        self._progress_timer: Any = None
        self._on_writable: list[Callable[[], None]] = []
        self._closed = False

    # IStreamHandler

    def message_received(self, request: Any) -> None:
        kind = request.WhichOneof("request_union")
        if kind == "create_request":
            self._create(request.create_request)
        elif kind == "cancel_request":
            self._cancel(request.cancel_request.watch_id)
        elif kind == "progress_request":
            self._send_control(pb.WatchResponse(watch_id=INVALID_WATCH_ID),
                               self._watchable.current_revision)

    def end_of_input(self) -> None:
        """etcd keeps serving a stream whose client half-closed."""

    def cancelled(self) -> None:
        self._close()

    # requests

    def _create(self, creq: Any) -> None:
        key = creq.key or b"\x00"
        watchable = self._watchable
        wsrev = watchable.current_revision
        start = creq.start_revision or wsrev + 1
        watch_id = creq.watch_id
        # etcd 3.4 mvcc/watcher.go Watch: the range first, then the ID; a refused create
        # takes no ID.
        reason = None
        if creq.range_end not in (b"", b"\x00") and key >= creq.range_end:
            reason = EMPTY_RANGE_REASON
        elif watch_id != 0 and watch_id in self.watchers:
            reason = DUPLICATE_ID_REASON
        elif len(self.watchers) >= MAX_WATCHERS_PER_STREAM:
            reason = "etcdd: too many watchers on this stream"
        if reason is not None:
            self._send_control(pb.WatchResponse(watch_id=INVALID_WATCH_ID, created=True,
                                                canceled=True, cancel_reason=reason), wsrev)
            return
        if watch_id == 0:
            while self._next_id in self.watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        # NB: the created response goes first; events can only follow it.
        self._send_control(pb.WatchResponse(watch_id=watch_id, created=True), wsrev)
        try:
            w = watchable.watch(key, creq.range_end, start, watch_id=watch_id, sink=self,
                                filters=tuple(creq.filters), prev_kv=creq.prev_kv)
        except EmptyWatcherRangeError:      # checked above; kept for the core's own rule
            return
        self.watchers[watch_id] = w
        if creq.fragment:
            self._fragment.add(watch_id)
        if creq.progress_notify:
            self._progress[watch_id] = True
            self._start_progress_timer()

    def _cancel(self, watch_id: int) -> None:
        w = self.watchers.pop(watch_id, None)
        if w is None:
            return
        self._watchable.cancel(w)
        self._fragment.discard(watch_id)
        self._progress.pop(watch_id, None)
        self._send_control(pb.WatchResponse(watch_id=watch_id, canceled=True),
                           self._watchable.current_revision)

    # IWatchSink

    def deliver(self, watcher: Watcher, events: list, rev: int) -> bool:
        stream = self._stream
        if self._closed or stream.finished:
            return True                  # gone: drop (cancelled() cleans up)
        if not stream.is_writable():
            return False
        wid = watcher.id
        service = self._service
        header = service.header_bytes(rev)      # first: it may start a new cache
        if wid in self._fragment:
            self._send_fragments(wid, events, rev)
        else:
            hit = service.list_cache.get(id(events))
            if hit is None or hit[0] is not events:
                # watchers sharing a list (one interval, one start) share its bytes
                hit = service.list_cache[id(events)] = (
                    events, _events_blob(events, service.blob_cache))
            stream.send(_response_bytes(header, wid, hit[1]))
        if wid in self._progress:
            self._progress[wid] = False
        return True

    def compacted(self, watcher: Watcher, compact_rev: int) -> None:
        # NB: etcd keeps the ID on the stream until the client cancels it: a cancel is
        # answered, and the ID is not handed out again meanwhile.
        self._send_control(pb.WatchResponse(watch_id=watcher.id, compact_revision=compact_rev,
                                            canceled=True), 0)

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the stream drains; one registration with the stream
        however many watchers (or ticks) ask."""
        if callback in self._on_writable:
            return
        self._on_writable.append(callback)
        if len(self._on_writable) == 1:
            self._stream.on_writable(self._writable_again)

    def _writable_again(self) -> None:
        callbacks, self._on_writable = self._on_writable, []
        for callback in callbacks:
            callback()

    # responses

    def _send_fragments(self, watch_id: int, events: list, rev: int) -> None:
        """etcd `sendFragments`: split only a response of 2+ events over the limit; each
        fragment holds events while under the limit (at least one); all but the last
        are marked `fragment`."""
        service = self._service
        limit = service.fragment_bytes
        header = service.header_bytes(rev)
        blobs = [_events_blob([ev], service.blob_cache) for ev in events]
        base = len(_response_bytes(header, watch_id, b"", True))
        # NB: etcd sizes the unfragmented response without the fragment field (2 bytes).
        if len(events) < 2 or base - 2 + sum(map(len, blobs)) < limit:
            self._stream.send(_response_bytes(header, watch_id, b"".join(blobs)))
            return
        i = 0
        while i < len(blobs):
            size, j = base + len(blobs[i]), i + 1
            while j < len(blobs) and size + len(blobs[j]) < limit:
                size += len(blobs[j])
                j += 1
            self._stream.send(_response_bytes(header, watch_id, b"".join(blobs[i:j]),
                                              fragment=j < len(blobs)))
            i = j

    def _send_control(self, resp: Any, rev: int) -> None:
        if self._closed or self._stream.finished:
            return
        self._service.header.fill_without_revision(resp)
        resp.header.revision = rev
        self._stream.send(resp)

    # progress notifications

    def _start_progress_timer(self) -> None:
        if self._progress_timer is None and not self._closed:
            self._progress_timer = self._service.reactor.callLater(
                self._service.progress_interval_seconds, self._progress_tick)

    def _progress_tick(self) -> None:
        self._progress_timer = None
        if self._closed:
            return
        rev = self._watchable.current_revision
        for wid, idle in list(self._progress.items()):
            w = self.watchers.get(wid)
            if idle and w is not None and self._watchable.is_synced(w):
                self._send_control(pb.WatchResponse(watch_id=wid), rev)
            self._progress[wid] = True
        if self._progress:
            self._start_progress_timer()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in self.watchers.values():
            self._watchable.cancel(w)
        self.watchers.clear()
        if self._progress_timer is not None and self._progress_timer.active():
            self._progress_timer.cancel()
        self._progress_timer = None
