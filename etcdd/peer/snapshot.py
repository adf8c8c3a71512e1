"""Snapshot streams: the received db's temp file and the sending side of a snapshot stream.

Shell. A snapshot stream is its own connection, client first (`>`) and server (`<`)::

    > HELLO(stream=SNAP)  < HELLO   > SNAP_HEADER > SNAP_CHUNK ... > SNAP_END   < ACK | ERROR

The receiver (`protocol.PeerServerProtocol`) writes the chunks to `IncomingSnapshot`, a
`.part` file in the snapshot dir, and hands it to the server only complete and
sha256-verified (etcd 3.4 `rafthttp/http.go snapshotHandler`, `snap/db.go`). The sender,
`SnapshotStreamClient`, reads the db one chunk each time TCP drains, and gives up on a
peer that stops draining or never answers SNAP_END.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, BinaryIO, Callable

from twisted.internet.interfaces import IPullProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from etcdd.peer.connection import OutboundProtocol, PeerLimits
from etcdd.peer.framing import SNAP_CHUNK_BYTES, FrameKind, Hello, encode_frame, frame_header
from etcdd.proto import raft_pb2


def snapshot_part_path(snapshot_dir: str, index: int) -> str:
    """Where the snapshot db at raft `index` is received: `tmp-<index %016x>.snap.db.part`."""
    return os.path.join(snapshot_dir, f"tmp-{index:016x}.snap.db.part")


def remove_if_exists(path: str) -> None:
    """Delete the file at `path`; one already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class IncomingSnapshot:
    """A snapshot db being written to its temp file; `sha256` covers every chunk so far.

    Invariant: `size` is the bytes written so far, all of them hashed into `sha256`.
    """

    __slots__ = ("message", "path", "file", "sha256", "size")

    def __init__(self, message: raft_pb2.Message, path: str) -> None:
        """Create the temp file at `path`; raises `OSError` if it cannot be created."""
        self.message, self.path = message, path
        try:
            self.file: BinaryIO = open(path, "xb")
        except FileExistsError:         # left by a receive this process no longer runs
            os.unlink(path)
            self.file = open(path, "xb")
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        """Append `chunk`; raises `OSError` from the file."""
        self.file.write(chunk)
        self.sha256.update(chunk)
        self.size += len(chunk)

    def discard(self) -> None:
        """Close and delete the temp file (already gone is fine)."""
        self.file.close()
        remove_if_exists(self.path)


@implementer(IPullProducer)
class SnapshotStreamClient(OutboundProtocol):
    """The outbound stream of one snapshot: header, chunks read as TCP drains, sha256.

    Invariant: `on_done` is called exactly once: with None after the receiver's ACK, with
    the reason after its ERROR, a local failure, a deadline passed (no HELLO answer, TCP
    not draining for `snapshot_idle_seconds`, no ACK within `snapshot_ack_timeout_seconds`
    of SNAP_END) or the loss of the connection.
    """

    def __init__(self, hello: Hello, header: bytes, source: BinaryIO, max_frame_bytes: int,
                 on_done: Callable[[str | None], None], *,
                 reactor: IReactorTime | None = None,
                 limits: PeerLimits = PeerLimits()) -> None:
        """Without `reactor` nothing times out (for tests of the wire format only)."""
        super().__init__(hello, max_frame_bytes, reactor, limits)
        self._header, self._source, self._on_done = header, source, on_done
        self._sha256 = hashlib.sha256()
        self._producing = False
        self.sent_bytes = 0

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self._source.close()
        self._finish(f"connection lost before ACK: {reason.getErrorMessage()}")

    def _accepted(self) -> None:
        self._expect("nothing while sending", {})
        self.transport.write(encode_frame(FrameKind.SNAP_HEADER, self._header))
        seconds = self._limits.snapshot_idle_seconds
        self._set_deadline(seconds, f"snapshot send stalled for {seconds:g} s")
        self._producing = True
        self.transport.registerProducer(self, False)

    # IPullProducer: one chunk each time TCP's buffer empties

    def resumeProducing(self) -> None:
        if self.closed or not self._producing:
            return
        try:
            chunk = self._source.read(SNAP_CHUNK_BYTES)
        except OSError as e:
            self._refuse(f"cannot read the snapshot: {e.strerror}")
            return
        if chunk:
            self._made_progress()
            self._sha256.update(chunk)
            self.sent_bytes += len(chunk)
            self.transport.writeSequence((frame_header(FrameKind.SNAP_CHUNK, len(chunk)), chunk))
            return
        self._stop_producing()
        self._source.close()
        self.transport.write(encode_frame(FrameKind.SNAP_END, self._sha256.digest()))
        self._expect("ACK", {FrameKind.ACK: self._on_ack})
        # NB: the receiver answers only after installing the db on its disk thread
        seconds = self._limits.snapshot_ack_timeout_seconds
        self._set_deadline(seconds, f"no ACK within {seconds:g} s of SNAP_END")

    def stopProducing(self) -> None:
        self._producing = False

    def _on_ack(self, payload: bytes) -> None:
        self._finish(None)
        self.close()

    def _timed_out(self, reason: str) -> None:
        stalled = self._producing
        super()._timed_out(reason)
        if stalled:
            # NB: TCP is not draining, so a graceful close would wait for it forever
            self.transport.abortConnection()

    def _stop_producing(self) -> None:
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()

    def _closing(self) -> None:
        self._stop_producing()     # NB: TCP closes only once no pull producer is registered

    def _log_refusal(self, reason: str, log_format: str, fields: dict[str, Any]) -> None:
        super()._log_refusal(reason, log_format, fields)
        self._finish(reason)

    def _peer_refused(self, reason: str) -> None:
        self._finish(f"refused by the peer: {reason}")

    def _finish(self, failure_reason: str | None) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(failure_reason)
