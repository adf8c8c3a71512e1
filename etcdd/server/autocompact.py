"""Auto compaction on the leader: proposes Compaction requests as `server/compactor.py`
decides. Shell (reactor timers, the member's raft proposals).

etcd 3.4 runs the compactor on every member and pauses it on followers
(`updateLeadership`); here each tick asks whether this member leads. A compaction goes
through raft like `etcdctl compaction`; `required revision has been compacted` counts as
done, as in etcd.
"""
from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from etcdd.mvcc.errors import CompactedError
from etcdd.proto import rpc_pb2 as pb
from etcdd.server.compactor import (PeriodicCompactor, RevisionCompactor,
                                    parse_retention)


class AutoCompactor:
    """Invariant: at most one compaction proposed at a time; no timer after `stop()`."""

    _log = Logger()

    def __init__(self, member: Any, store: Any, reactor: IReactorTime, mode: str,
                 retention: str) -> None:
        """Raises ValueError for a retention that does not parse (config checked it)."""
        self._member = member
        self._store = store
        self._reactor = reactor
        self._mode = mode
        amount = parse_retention(mode, retention)
        self.core: PeriodicCompactor | RevisionCompactor | None = None
        if amount > 0:
            self.core = (PeriodicCompactor(amount, reactor.seconds(), store.current_revision())
                         if mode == "periodic" else RevisionCompactor(int(amount)))
        self._call: Any = None
        self._busy = False

    @property
    def enabled(self) -> bool:
        return self.core is not None

    def start(self) -> None:
        if self.core is not None:
            self._call = self._reactor.callLater(self.core.interval_seconds, self._tick)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self.core = None

    def _tick(self) -> None:
        core = self.core
        if core is None:
            return
        self._call = self._reactor.callLater(core.interval_seconds, self._tick)
        paused = self._busy or not self._member.is_leader
        target = core.tick(self._reactor.seconds(), self._store.current_revision(), paused)
        if target is None:
            return
        self._busy = True
        self._log.info("starting auto {mode} compaction at revision {rev}", mode=self._mode,
                       rev=target)
        d = self._member.compact(pb.CompactionRequest(revision=target))
        d.addCallbacks(self._done, self._failed, callbackArgs=(target,),
                       errbackArgs=(target,))

    def _done(self, _: Any, target: int) -> None:
        self._busy = False
        if self.core is not None:
            self.core.succeeded(self._reactor.seconds())
        self._log.info("completed auto {mode} compaction at revision {rev}", mode=self._mode,
                       rev=target)

    def _failed(self, failure: Failure, target: int) -> None:
        self._busy = False
        if failure.check(CompactedError):
            self._done(None, target)
            return
        self._log.warn("failed auto {mode} compaction at revision {rev}: {e}",
                       mode=self._mode, rev=target, e=failure.getErrorMessage())
