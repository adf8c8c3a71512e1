"""A grpcio client built from our own protos against etcdd, compared with etcd 3.4.

The same sequence of KV calls runs against a fresh etcd 3.4 and a fresh etcdd with the
same name, ports and token; every response's serialized bytes (or status code and
message) must be equal. Nested txns, count_only, revision filters, NUL bytes in keys,
lease compares and the request-size and txn-size limits are covered here because
etcdctl cannot express them.
"""
from __future__ import annotations

import unittest

import grpc

from etcdd.proto import rpc_pb2 as pb, rpc_pb2_grpc
from tests.integration.harness import ETCD, Member, free_port


def put(key: bytes, value: bytes = b"v", **kw) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, **kw))


def get(key: bytes, **kw) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key, **kw))


def delete(key: bytes, **kw) -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key, **kw))


def txn(compare=(), success=(), failure=()) -> pb.TxnRequest:
    return pb.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))


def cmp(key: bytes, target: str, result: str, **union) -> pb.Compare:
    return pb.Compare(key=key, target=getattr(pb.Compare, target),
                      result=getattr(pb.Compare, result), **union)


CALLS: list[tuple[str, object]] = [
    ("Put", pb.PutRequest(key=b"k1", value=b"one")),
    ("Put", pb.PutRequest(key=b"k\x00nul", value=b"\x00\xff")),
    ("Put", pb.PutRequest(key=b"k2", value=b"two", prev_kv=True)),
    ("Put", pb.PutRequest(key=b"k2", value=b"two-b", prev_kv=True)),
    ("Range", pb.RangeRequest(key=b"k", range_end=b"l", count_only=True)),
    ("Range", pb.RangeRequest(key=b"k", range_end=b"l", limit=1)),
    ("Range", pb.RangeRequest(key=b"k", range_end=b"l", min_mod_revision=4)),
    ("Range", pb.RangeRequest(key=b"k", range_end=b"l", max_create_revision=3, limit=1)),
    ("Range", pb.RangeRequest(key=b"\x00", range_end=b"\x00", keys_only=True)),
    ("Range", pb.RangeRequest(key=b"k", range_end=b"\x00", revision=3)),
    ("Range", pb.RangeRequest(key=b"k", range_end=b"l", sort_target=pb.RangeRequest.VALUE)),
    ("Txn", txn([cmp(b"k1", "VALUE", "EQUAL", value=b"one"),
                 cmp(b"k2", "LEASE", "EQUAL", lease=0),
                 cmp(b"k", "CREATE", "GREATER", create_revision=1, range_end=b"l")],
                [put(b"t1"), pb.RequestOp(request_txn=txn(
                    [cmp(b"t1", "VERSION", "EQUAL", version=1)],
                    [put(b"t2", b"nested"), get(b"t", range_end=b"u")],
                    [delete(b"k1")])), get(b"t1"), delete(b"k1", prev_kv=True)],
                [put(b"never")])),
    ("Txn", txn([cmp(b"absent", "VALUE", "EQUAL", value=b"")], [put(b"x")],
                [get(b"k", range_end=b"l"), get(b"absent")])),
    ("Txn", txn([cmp(b"absent", "CREATE", "EQUAL", create_revision=0)], [put(b"c1")])),
    ("Txn", txn([cmp(b"t2", "MOD", "LESS", mod_revision=100)], [delete(b"t", range_end=b"u"),
                                                               get(b"t2")])),
    ("Txn", txn([], [put(b"d"), put(b"d")])),
    ("Txn", txn([], [delete(b"a", range_end=b"z"), put(b"m")])),
    ("Txn", txn([], [pb.RequestOp()])),
    ("Txn", txn([], [put(b"q%d" % i) for i in range(129)])),
    ("Txn", txn([], [put(b"q%d" % i) for i in range(128)])),
    ("Txn", txn([], [get(b"k1", revision=1000)])),
    ("Txn", txn([], [put(b"z", lease=99)])),
    ("Txn", txn([], [put(b"nokey", ignore_value=True)])),
    ("Put", pb.PutRequest(key=b"big", value=b"x" * (1572864 - 100))),
    ("Put", pb.PutRequest(key=b"big", value=b"x" * (1572864 + 10))),
    ("Put", pb.PutRequest(key=b"")),
    ("DeleteRange", pb.DeleteRangeRequest(key=b"")),
    ("DeleteRange", pb.DeleteRangeRequest(key=b"q", range_end=b"r", prev_kv=True)),
    ("Compact", pb.CompactionRequest(revision=6, physical=True)),
    ("Range", pb.RangeRequest(key=b"k", range_end=b"l", revision=6)),
    ("Range", pb.RangeRequest(key=b"k", range_end=b"l", revision=5)),
]


def run_calls(endpoint: str) -> list[tuple]:
    out = []
    with grpc.insecure_channel(endpoint, options=[
            ("grpc.max_send_message_length", 8 << 20),
            ("grpc.max_receive_message_length", 8 << 20)]) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        for method, request in CALLS:
            try:
                resp = getattr(kv, method)(request, timeout=10)
                out.append(("ok", resp.SerializeToString(deterministic=True)))
            except grpc.RpcError as e:
                out.append(("error", e.code(), e.details()))
    return out


class GrpcKVTests(unittest.TestCase):
    """KV over gRPC answers exactly as etcd 3.4 does."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.client_port, cls.peer_port = free_port(), free_port()
        member = Member(name="grpctest", client_port=cls.client_port, peer_port=cls.peer_port)
        member.start()
        try:
            cls.ours = run_calls(member.endpoint)
        finally:
            member.cleanup()

    def test_matches_real_etcd(self) -> None:
        """Each response's bytes, or its status code and message, equal etcd 3.4's."""
        if ETCD is None:
            self.skipTest("etcd 3.4 (Debian etcd-server) is not installed")
        etcd = Member(name="grpctest", client_port=self.client_port, peer_port=self.peer_port,
                      real_etcd=True)
        etcd.start()
        try:
            theirs = run_calls(etcd.endpoint)
        finally:
            etcd.cleanup()
        for (method, request), a, b in zip(CALLS, self.ours, theirs):
            with self.subTest(method=method, request=str(request)[:200]):
                if a[0] == "ok" and b[0] == "ok":
                    self.assertEqual(_parse(method, a[1]), _parse(method, b[1]))
                self.assertEqual(a, b)

    def test_limits(self) -> None:
        """Too many txn ops, duplicate keys and oversize requests get etcd's errors."""
        messages = {r[2] for r in self.ours if r[0] == "error"}
        for m in ("etcdserver: too many operations in txn request",
                  "etcdserver: duplicate key given in txn request",
                  "etcdserver: request is too large", "etcdserver: key is not provided",
                  "etcdserver: key not found", "etcdserver: requested lease not found",
                  "etcdserver: mvcc: required revision is a future revision",
                  "etcdserver: mvcc: required revision has been compacted"):
            self.assertIn(m, messages)


_RESPONSES = {"Put": pb.PutResponse, "Range": pb.RangeResponse, "Txn": pb.TxnResponse,
              "DeleteRange": pb.DeleteRangeResponse, "Compact": pb.CompactionResponse}


def _parse(method: str, data: bytes) -> str:
    return str(_RESPONSES[method].FromString(data))
