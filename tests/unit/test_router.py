"""The router (`etcdd/api/router.py`): paths to methods, and the guard that runs before
every etcd handler as etcd 3.4's v3rpc interceptors do (e.g. `hasleader` refusals)."""
from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from etcdd.api.router import CallContext, Router
from etcdd.proto import rpc_pb2 as pb
from etcdd.server.errors import NoLeaderError


class RouterGuardTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.has_leader = False
        self.guarded: list[Any] = []

        def require_leader(context: CallContext, request: Any) -> None:
            self.guarded.append(request)
            if context.metadata.get("hasleader") == "true" and not self.has_leader:
                raise NoLeaderError()
        self.router = Router(guard=require_leader)
        self.calls: list[Any] = []
        self.router.add_unary("/etcdserverpb.KV/Range", pb.RangeRequest,
                              lambda req, ctx: self.calls.append(req) or "ok")
        self.router.add_unary("/grpc.health.v1.Health/Check", pb.RangeRequest,
                              lambda req, ctx: "serving")
        self.router.add_stream("/etcdserverpb.Watch/Watch", pb.RangeRequest,
                               lambda ctx, stream: "handler")

    def call(self, path: str, metadata: dict[str, str]) -> Any:
        method = self.router.lookup(path)
        ctx = CallContext(path=path, metadata=metadata)
        if path.endswith("/Watch"):
            return method.handler(ctx, None)
        return method.handler(pb.RangeRequest(key=b"k"), ctx)

    def test_guard_refuses_before_the_handler_runs(self) -> None:
        """A call the guard refuses never reaches its handler; others do."""
        self.assertRaises(NoLeaderError, self.call, "/etcdserverpb.KV/Range",
                          {"hasleader": "true"})
        self.assertEqual(self.calls, [])
        self.assertEqual(self.call("/etcdserverpb.KV/Range", {}), "ok")
        self.has_leader = True
        self.assertEqual(self.call("/etcdserverpb.KV/Range", {"hasleader": "true"}), "ok")

    def test_guard_covers_streams_but_not_grpc_health(self) -> None:
        """Streaming etcd methods are guarded; grpc.health.v1 is not (it is not etcd's)."""
        self.assertRaises(NoLeaderError, self.call, "/etcdserverpb.Watch/Watch",
                          {"hasleader": "true"})
        self.assertEqual(self.call("/grpc.health.v1.Health/Check", {"hasleader": "true"}),
                         "serving")

    def test_guard_sees_the_request_of_a_unary_call(self) -> None:
        """The guard gets a unary call's request (learners refuse by request) and None
        for a stream."""
        self.call("/etcdserverpb.KV/Range", {})
        self.call("/etcdserverpb.Watch/Watch", {})
        self.assertEqual(self.guarded, [pb.RangeRequest(key=b"k"), None])

    def test_no_guard_leaves_handlers_unwrapped(self) -> None:
        """Without a guard the registered handler is the one looked up."""
        router = Router()

        def handler(req: Any, ctx: CallContext) -> str:
            return "ok"
        router.add_unary("/etcdserverpb.KV/Range", pb.RangeRequest, handler)
        self.assertIs(router.lookup("/etcdserverpb.KV/Range").handler, handler)
