"""Maintenance/Snapshot: the member's database streamed to a client, as etcd 3.4 streams it.

Shell. etcd 3.4 `etcdserver/api/v3rpc/maintenance.go` `Snapshot`: the whole backend in
messages of 32 KiB (`remaining_bytes` counting down to 0), then one more message whose
blob is the sha256 of everything sent, so `etcdctl snapshot save` can check the file
(it also wants the size to be 32 bytes past a multiple of 512: an LMDB file is whole
pages). No response header is filled, as in etcd.

The copy is a consistent, compacted LMDB copy taken in one read transaction in a pool
thread (`Backend.copy_to`), written to `snap/tmp-client-<n>.db` (removed when the call
ends; a crash leaves a `tmp*` file that the next start removes). Sending follows the
stream's flow control: at most `CHUNKS_PER_TURN` messages per reactor turn, and nothing
while the client does not read.
"""
from __future__ import annotations

import hashlib
import itertools
import os
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from etcdd.api.router import CallContext, IServerStream, IStreamHandler, Router
from etcdd.proto import rpc_pb2 as pb

SNAPSHOT_SEND_BUFFER_BYTES = 32 * 1024      # etcd snapshotSendBufferSize
CHUNKS_PER_TURN = 64                        # 2 MiB read and hashed per reactor turn
_serial = itertools.count(1)


class SnapshotService:
    """Handler for /etcdserverpb.Maintenance/Snapshot (server streaming)."""

    def __init__(self, store: Any, snap_dir: str, reactor: IReactorTime,
                 run_read: Callable[..., Deferred]) -> None:
        self._store = store
        self._snap_dir = snap_dir
        self._reactor = reactor
        self._run_read = run_read

    def register(self, router: Router) -> None:
        router.add_stream("/etcdserverpb.Maintenance/Snapshot", pb.SnapshotRequest, self.open)

    def open(self, context: CallContext, stream: IServerStream) -> IStreamHandler:
        path = os.path.join(self._snap_dir, f"tmp-client-{os.getpid()}-{next(_serial)}.db")
        return SnapshotStream(self._store, path, self._reactor, self._run_read, stream)


@implementer(IStreamHandler)
class SnapshotStream:
    """One Snapshot call. Invariant: the temp file exists from the copy until the call
    ends (answered, failed or cancelled), then it is removed."""

    _log = Logger()

    def __init__(self, store: Any, path: str, reactor: IReactorTime,
                 run_read: Callable[..., Deferred], stream: IServerStream) -> None:
        self._store = store
        self._path = path
        self._reactor = reactor
        self._run_read = run_read
        self._stream = stream
        self._file: Any = None
        self._total = self._sent = 0
        self._sha = hashlib.sha256()
        self._started = self._done = self._waiting = False
        self._call: Any = None

    # IStreamHandler

    def message_received(self, request: Any) -> None:
        if self._started or self._done:
            return
        self._started = True
        self._run_read(self._copy).addCallbacks(self._copied, self._fail)

    def end_of_input(self) -> None:
        """The client sent its one request and half-closed: nothing to do."""

    def cancelled(self) -> None:
        self._end()

    # the copy (pool thread) and the send loop (reactor)

    def _copy(self) -> int:
        self._store.copy_to(self._path)
        return os.path.getsize(self._path)

    def _copied(self, size: int) -> None:
        if self._done:
            _remove(self._path)
            return
        self._total = size
        self._file = open(self._path, "rb")
        self._log.info("sending database snapshot to client [{size} bytes]", size=size)
        self._pump()

    def _pump(self) -> None:
        self._call = None
        stream = self._stream
        for _ in range(CHUNKS_PER_TURN):
            if self._done:
                return
            if not stream.is_writable():
                if not self._waiting:
                    self._waiting = True
                    stream.on_writable(self._writable)
                return
            if self._sent >= self._total:
                stream.send(pb.SnapshotResponse(remaining_bytes=0, blob=self._sha.digest()))
                stream.finish()
                self._end()
                return
            chunk = self._file.read(SNAPSHOT_SEND_BUFFER_BYTES)
            if not chunk:
                self._fail(Failure(IOError(f"{self._path} ended at {self._sent} of "
                                           f"{self._total} bytes")))
                return
            self._sent += len(chunk)
            self._sha.update(chunk)
            stream.send(pb.SnapshotResponse(remaining_bytes=self._total - self._sent,
                                            blob=chunk))
        self._call = self._reactor.callLater(0, self._pump)

    def _writable(self) -> None:
        self._waiting = False
        if self._call is None and not self._done:
            self._pump()

    def _fail(self, failure: Failure) -> None:
        if not self._done:
            self._log.failure("snapshot for a client failed", failure=failure)
            self._stream.finish(failure.value)
        self._end()

    def _end(self) -> None:
        self._done = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._started:
            _remove(self._path)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
