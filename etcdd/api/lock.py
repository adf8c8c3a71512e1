"""The v3lock service: /v3lockpb.Lock/Lock and /Unlock.

No IO of its own. Matches etcd 3.4 `etcdserver/api/v3lock/lock.go` over
`clientv3/concurrency/mutex.go`: Lock writes `<name>/<lease %x>` (or finds it already
there), and owns the lock once every key under `<name>/` created before it is gone;
Unlock deletes the key. Errors travel as etcd's in-process client sends them (code
Unknown, etcd's message; see `etcdd/api/concurrency.py`).
"""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from etcdd.api.concurrency import (DeletesWaiter, as_client_error, created_at, first_created,
                                   get_op, log_failure, owner_key, put_op, session_lease)
from etcdd.api.router import CallContext, Router
from etcdd.proto import rpc_pb2 as pb
from etcdd.proto import v3lock_pb2 as lockpb


class LockService:
    """Handlers for /v3lockpb.Lock/*, over an `ILocalClient`."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def register(self, router: Router) -> None:
        router.add_unary("/v3lockpb.Lock/Lock", lockpb.LockRequest, self.lock)
        router.add_unary("/v3lockpb.Lock/Unlock", lockpb.UnlockRequest, self.unlock)

    def lock(self, req: lockpb.LockRequest, context: CallContext) -> Deferred:
        """Answer once the caller owns the lock `req.name` through `req.lease`.

        Cancelling the Deferred (client gone, deadline) stops the wait and deletes the
        key this call wrote, so the next waiter gets the lock.
        """
        return _LockAttempt(self._client, req).result.addErrback(as_client_error)

    def unlock(self, req: lockpb.UnlockRequest, context: CallContext) -> Deferred:
        d = self._client.delete_range(pb.DeleteRangeRequest(key=req.key))
        d.addCallback(lambda resp: lockpb.UnlockResponse(header=resp.header))
        return d.addErrback(as_client_error)


class _LockAttempt:
    """One Lock call (mutex.go `Lock`).

    States: getting the session lease, then the txn in flight, then waiting
    (`_waiter`), then over (`result` fired). Invariant: once cancelled, the key is
    deleted as soon as the txn has answered (it may have created the key), never before.
    """

    __slots__ = ("result", "_client", "_prefix", "_key", "_waiter", "_cancelled")

    def __init__(self, client: Any, req: lockpb.LockRequest) -> None:
        self.result: Deferred = Deferred(self._cancel)
        self._client = client
        self._prefix = req.name + b"/"
        self._key = b""
        self._waiter: DeletesWaiter | None = None
        self._cancelled = False
        session_lease(client, req.lease).addCallbacks(self._enter, self._failed)

    def _enter(self, lease: int) -> None:
        """Join the waiters (or find our key from an earlier Lock) and read the owner in
        the same txn, so an uncontended lock costs one round."""
        if self._cancelled:
            return
        key = self._key = owner_key(self._prefix, lease)
        owner = get_op(first_created(self._prefix))
        txn = pb.TxnRequest(compare=[created_at(key, 0)],
                            success=[put_op(key, b"", lease), owner],
                            failure=[get_op(pb.RangeRequest(key=key)), owner])
        self._client.txn(txn).addCallbacks(self._entered, self._failed)

    def _entered(self, resp: pb.TxnResponse) -> None:
        if self._cancelled:
            self._release()
            return
        if resp.succeeded:
            my_rev = resp.header.revision
        else:
            my_rev = resp.responses[0].response_range.kvs[0].create_revision
        owner = resp.responses[1].response_range.kvs
        if not owner or owner[0].create_revision == my_rev:
            self._acquired(resp.header)
            return
        self._waiter = DeletesWaiter(self._client, self._prefix, my_rev - 1)
        self._waiter.done.addCallbacks(self._acquired, self._wait_failed)

    def _acquired(self, header: pb.ResponseHeader) -> None:
        self._waiter = None
        self.result.callback(lockpb.LockResponse(header=header, key=self._key))

    def _wait_failed(self, failure: Failure) -> None:
        self._waiter = None
        if self._cancelled:
            return
        # mutex.go: "release lock key if wait failed"
        self._release()
        self.result.errback(failure)

    def _failed(self, failure: Failure) -> None:
        if not self.result.called:
            self.result.errback(failure)

    def _cancel(self, result: Deferred) -> None:
        self._cancelled = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.done.cancel()
            self._release()
        # else: the txn (if sent) releases when it answers, or the lease never arrived.

    def _release(self) -> None:
        """Delete our key (mutex.go `Unlock`), for a Lock that will not answer."""
        d = self._client.delete_range(pb.DeleteRangeRequest(key=self._key))
        d.addErrback(log_failure, "releasing lock key", self._key)
