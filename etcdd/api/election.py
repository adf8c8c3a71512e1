"""The v3election service: /v3electionpb.Election/Campaign, Proclaim, Leader, Observe,
Resign.

No IO of its own. Matches etcd 3.4 `etcdserver/api/v3election/election.go` over
`clientv3/concurrency/election.go`: a candidate writes `<name>/<lease %x>` with its value;
the leader is the key under `<name>/` with the lowest create revision; a leader is named
by its `LeaderKey` (key and create revision), and Proclaim/Resign act only while that key
still has that create revision. Errors travel as etcd's in-process client sends them
(code Unknown, etcd's message; see `etcdd/api/concurrency.py`).
"""
from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from etcdd.api.concurrency import (DELETE, PUT, DeletesWaiter, KeyWatch, as_client_error,
                                   created_at, first_created, get_op, log_failure, owner_key,
                                   prefix_end, put_op, session_lease)
from etcdd.api.router import CallContext, IServerStream, IStreamHandler, Router
from etcdd.api.rpctypes import GrpcError, Status
from etcdd.proto import rpc_pb2 as pb
from etcdd.proto import v3election_pb2 as epb
from etcdd.server.errors import (ElectionNoLeaderError, ElectionNotLeaderError,
                                 MissingLeaderKeyError)

_SERVICE = "/v3electionpb.Election/"


class ElectionService:
    """Handlers for /v3electionpb.Election/*, over an `ILocalClient`."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def register(self, router: Router) -> None:
        router.add_unary(_SERVICE + "Campaign", epb.CampaignRequest, self.campaign)
        router.add_unary(_SERVICE + "Proclaim", epb.ProclaimRequest, self.proclaim)
        router.add_unary(_SERVICE + "Leader", epb.LeaderRequest, self.leader)
        router.add_unary(_SERVICE + "Resign", epb.ResignRequest, self.resign)
        router.add_stream(_SERVICE + "Observe", epb.LeaderRequest, self.observe)

    def campaign(self, req: epb.CampaignRequest, context: CallContext) -> Deferred:
        """Answer once the caller leads election `req.name` through `req.lease`.

        Cancelling the Deferred (client gone, deadline) stops the wait and resigns.
        """
        return _Campaign(self._client, req).result.addErrback(as_client_error)

    def proclaim(self, req: epb.ProclaimRequest, context: CallContext) -> Deferred:
        """Replace the leader's value; `ElectionNotLeaderError` if the key is gone or
        was re-created. A lease of 0 gets a fresh session lease, as in etcd."""
        if not req.HasField("leader"):
            return fail(MissingLeaderKeyError()).addErrback(as_client_error)
        leader = req.leader
        d = session_lease(self._client, leader.lease)
        d.addCallback(lambda lease: proclaim(self._client, leader.key, leader.rev, lease,
                                             req.value))
        d.addCallback(lambda header: epb.ProclaimResponse(header=header))
        return d.addErrback(as_client_error)

    def leader(self, req: epb.LeaderRequest, context: CallContext) -> Deferred:
        """The current leader's key-value; `ElectionNoLeaderError` if there is none."""
        d = self._client.range(first_created(req.name + b"/"))
        return d.addCallback(_leader_response).addErrback(as_client_error)

    def resign(self, req: epb.ResignRequest, context: CallContext) -> Deferred:
        """Delete the leader key if it still has the leader's create revision; a stale
        leader resigns successfully without deleting anything, as in etcd.

        # NB: etcd's session also grants a lease here when `leader.lease` is 0 and never
        # uses it; we skip that stray 60 s lease.
        """
        if not req.HasField("leader"):
            return fail(MissingLeaderKeyError()).addErrback(as_client_error)
        d = resign(self._client, req.leader.key, req.leader.rev)
        d.addCallback(lambda resp: epb.ResignResponse(header=resp.header))
        return d.addErrback(as_client_error)

    def observe(self, context: CallContext, stream: IServerStream) -> IStreamHandler:
        return _Observer(self._client, stream)


def _leader_response(resp: pb.RangeResponse) -> epb.LeaderResponse:
    if not resp.kvs:
        raise ElectionNoLeaderError()
    return epb.LeaderResponse(header=resp.header, kv=resp.kvs[0])


def proclaim(client: Any, key: bytes, rev: int, lease: int, value: bytes) -> Deferred:
    """Put `value` on the leader key if its create revision is still `rev`; fires with
    the txn's header, or fails with `ElectionNotLeaderError` (election.go `Proclaim`)."""
    txn = pb.TxnRequest(compare=[created_at(key, rev)], success=[put_op(key, value, lease)])

    def check(resp: pb.TxnResponse) -> pb.ResponseHeader:
        if not resp.succeeded:
            raise ElectionNotLeaderError()
        return resp.header
    return client.txn(txn).addCallback(check)


def resign(client: Any, key: bytes, rev: int) -> Deferred:
    """Delete the leader key if its create revision is still `rev` (election.go
    `Resign`); fires with the TxnResponse whether or not it deleted."""
    delete = pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))
    return client.txn(pb.TxnRequest(compare=[created_at(key, rev)], success=[delete]))


class _Campaign:
    """One Campaign call (election.go `Campaign`).

    States: getting the session lease, the txn in flight, maybe a Proclaim of the new
    value (our key was already there), waiting (`_waiter`), over (`result` fired).
    Invariant: once cancelled, we resign as soon as the txn has answered, never before.
    """

    __slots__ = ("result", "_client", "_req", "_prefix", "_key", "_lease", "_rev",
                 "_header", "_waiter", "_cancelled")

    def __init__(self, client: Any, req: epb.CampaignRequest) -> None:
        self.result: Deferred = Deferred(self._cancel)
        self._client = client
        self._req = req
        self._prefix = req.name + b"/"
        self._key = b""
        self._lease = 0
        self._rev = 0                      # 0 until the txn answered
        self._header: pb.ResponseHeader | None = None
        self._waiter: DeletesWaiter | None = None
        self._cancelled = False
        session_lease(client, req.lease).addCallbacks(self._enter, self._failed)

    def _enter(self, lease: int) -> None:
        if self._cancelled:
            return
        self._lease = lease
        key = self._key = owner_key(self._prefix, lease)
        txn = pb.TxnRequest(compare=[created_at(key, 0)],
                            success=[put_op(key, self._req.value, lease)],
                            failure=[get_op(pb.RangeRequest(key=key))])
        self._client.txn(txn).addCallbacks(self._entered, self._failed)

    def _entered(self, resp: pb.TxnResponse) -> None:
        self._header = resp.header
        value = self._req.value
        if resp.succeeded:
            self._rev = resp.header.revision
        else:                              # our key from an earlier Campaign
            kv = resp.responses[0].response_range.kvs[0]
            self._rev, value = kv.create_revision, kv.value
        if self._cancelled:
            self._resign()
        elif value != self._req.value:
            d = proclaim(self._client, self._key, self._rev, self._lease, self._req.value)
            d.addCallbacks(self._wait, self._proclaim_failed)
        else:
            self._wait()

    def _wait(self, _: object = None) -> None:
        if self._cancelled:
            return                         # _cancel resigned
        self._waiter = DeletesWaiter(self._client, self._prefix, self._rev - 1)
        self._waiter.done.addCallbacks(self._elected, self._wait_failed)

    def _elected(self, _: pb.ResponseHeader) -> None:
        self._waiter = None
        # NB: election.go answers with the header of the first txn, not of the wait.
        self.result.callback(epb.CampaignResponse(
            header=self._header,
            leader=epb.LeaderKey(name=self._req.name, key=self._key, rev=self._rev,
                                 lease=self._lease)))

    def _proclaim_failed(self, failure: Failure) -> None:
        if self._cancelled:
            return
        # election.go: a failed Proclaim resigns, except when the key is no longer ours.
        if not failure.check(ElectionNotLeaderError):
            self._resign()
        self.result.errback(failure)

    def _wait_failed(self, failure: Failure) -> None:
        self._waiter = None
        # NB: election.go resigns only on cancel; after another failure (a compacted
        # watch, a failed read) the key stays, a candidate still.
        if not self._cancelled:
            self.result.errback(failure)

    def _failed(self, failure: Failure) -> None:
        if not self.result.called:
            self.result.errback(failure)

    def _cancel(self, result: Deferred) -> None:
        self._cancelled = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.done.cancel()
        if self._rev:
            self._resign()
        # else: the txn (if sent) resigns when it answers, or the lease never arrived.

    def _resign(self) -> None:
        resign(self._client, self._key, self._rev).addErrback(
            log_failure, "resigning", self._key)


@implementer(IStreamHandler)
class _Observer:
    """One Observe stream (election.go `observe`): the current leader, then every
    change of it, waiting while there is none.

    Loop: read the first-created key; none -> watch the prefix for the first PUT; then
    watch the leader key from the revision after it: each PUT is a new value, its DELETE
    starts the loop again.

    Backpressure: while the stream is not writable only the newest response is kept
    (`_pending`), replacing older ones, and sent when the stream drains. Invariant: at
    most one watch is live, none once `_over`.
    """

    _log = Logger()

    __slots__ = ("_client", "_stream", "_request", "_watch", "_pending",
                 "_waiting_writable", "_over")

    def __init__(self, client: Any, stream: IServerStream) -> None:
        self._client = client
        self._stream = stream
        self._request: pb.RangeRequest | None = None
        self._watch: KeyWatch | None = None
        self._pending: epb.LeaderResponse | None = None
        self._waiting_writable = False
        self._over = False

    # IStreamHandler

    def message_received(self, message: epb.LeaderRequest) -> None:
        if self._request is not None or self._over:
            return                         # server-streaming: the first request counts
        self._request = first_created(message.name + b"/")
        self._find_leader()

    def end_of_input(self) -> None:
        if self._request is None:
            # grpc-go: the handler's RecvMsg meets io.EOF, which travels as Unknown.
            self._end(GrpcError(Status.UNKNOWN, "EOF"))

    def cancelled(self) -> None:
        self._stop()

    # the loop

    def _find_leader(self) -> None:
        self._client.range(self._request).addCallbacks(self._found, self._read_failed)

    def _found(self, resp: pb.RangeResponse) -> None:
        if self._over:
            return
        if resp.kvs:
            kv = resp.kvs[0]
            self._emit(resp.header, kv)
            self._follow(kv.key, resp.header.revision + 1)
        else:
            prefix = self._request.key
            self._watch = KeyWatch(self._client, prefix, resp.header.revision + 1,
                                   self._first_put, self._compacted, prefix_end(prefix))

    def _first_put(self, events: list[Any]) -> bool:
        for event in events:
            if event.type == PUT:
                kv = event.kv
                header = self._client.header()
                header.revision = kv.mod_revision    # election.go: the kv's, not the batch's
                self._emit(header, kv)
                self._follow(kv.key, kv.mod_revision + 1)
                return True
        return False

    def _follow(self, key: bytes, start_rev: int) -> None:
        self._watch = KeyWatch(self._client, key, start_rev, self._leader_events,
                               self._compacted)

    def _leader_events(self, events: list[Any]) -> bool:
        for event in events:
            if event.type == DELETE:
                self._watch = None
                self._find_leader()
                return True
            self._emit(self._client.header(), event.kv)
        return False

    def _compacted(self, compact_revision: int) -> None:
        # NB: election.go's observe closes its channel and Observe returns nil: the
        # stream ends with OK.
        self._watch = None
        self._end(None)

    def _read_failed(self, failure: Failure) -> None:
        if self._over:
            return
        self._log.info("observe of {prefix!r} ends: {error}", prefix=self._request.key,
                       error=failure.getErrorMessage())
        self._end(None)                    # NB: OK, as election.go's observe ends

    # sending

    def _emit(self, header: pb.ResponseHeader, kv: Any) -> None:
        self._send(epb.LeaderResponse(header=header, kv=kv))

    def _send(self, resp: epb.LeaderResponse) -> None:
        if self._pending is None and self._stream.is_writable():
            self._stream.send(resp)
            return
        self._pending = resp               # collapse: only the newest leader value
        if not self._waiting_writable:
            self._waiting_writable = True
            self._stream.on_writable(self._writable)

    def _writable(self) -> None:
        self._waiting_writable = False
        resp, self._pending = self._pending, None
        if resp is not None and not self._over:
            self._send(resp)

    def _end(self, error: BaseException | None) -> None:
        self._stop()
        self._stream.finish(error)

    def _stop(self) -> None:
        self._over = True
        self._pending = None
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
