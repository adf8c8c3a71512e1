"""Linearizable reads without log writes: the leader's queue of pending ReadIndex requests.

Core (pure). Matches etcd 3.4 `raft/read_only.go` with `ReadOnlySafe`: a request records
the commit index when it arrives, the leader sends a heartbeat round carrying the
request's context, and once a quorum of voters acknowledged that context the request (and
every request queued before it) is answered with its recorded index.

Worked example: requests "a" (index 7) then "b" (index 9) are queued; a quorum acks "b"
first; `advance("b")` answers both, in order: a@7, b@9.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from etcdd.proto import raft_pb2


@dataclass(frozen=True, slots=True)
class ReadState:
    """A read may be served once the state machine has applied `index`."""

    index: int
    request_ctx: bytes


@dataclass(slots=True)
class ReadIndexStatus:
    """One pending request: the message that asked, its read index, who acked it."""

    req: raft_pb2.Message
    index: int
    acks: dict[int, bool] = field(default_factory=dict)


class ReadOnly:
    """Pending ReadIndex requests, keyed by context, in arrival order.

    Invariant: `queue` holds exactly the keys of `pending`, in the order they arrived.
    """

    def __init__(self) -> None:
        self.pending: dict[bytes, ReadIndexStatus] = {}
        self.queue: list[bytes] = []

    def add_request(self, index: int, m: raft_pb2.Message) -> None:
        """Queue the request `m` (context = its single entry's data) at read index `index`.

        A context already pending is ignored (etcd keeps the first).
        """
        ctx = m.entries[0].Data
        if ctx in self.pending:
            return
        self.pending[ctx] = ReadIndexStatus(req=m, index=index)
        self.queue.append(ctx)

    def recv_ack(self, id: int, context: bytes) -> dict[int, bool] | None:
        """Record that `id` acknowledged `context`; the acks so far, None if unknown."""
        rs = self.pending.get(context)
        if rs is None:
            return None
        rs.acks[id] = True
        return rs.acks

    def advance(self, context: bytes) -> list[ReadIndexStatus]:
        """Dequeue and return every request up to and including `context` (empty if unknown)."""
        if context not in self.pending:
            return []
        n = self.queue.index(context) + 1
        done, self.queue = self.queue[:n], self.queue[n:]
        return [self.pending.pop(ctx) for ctx in done]

    def last_pending_request_ctx(self) -> bytes:
        """The context of the newest pending request, b"" when none."""
        return self.queue[-1] if self.queue else b""
