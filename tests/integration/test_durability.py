"""Crash safety and scale with real processes: every acknowledged put survives kill -9
with its revision, `hashkv` is stable across restarts, and 100,000 keys page through
Range with `limit`.
"""
from __future__ import annotations

import threading
import unittest

import grpc

from etcdd.proto import rpc_pb2 as pb, rpc_pb2_grpc
from tests.integration.harness import Member, wait_for


class CrashSafetyTests(unittest.TestCase):

    def setUp(self) -> None:
        self.member = Member(name="crash").start()
        self.addCleanup(self.member.cleanup)

    def test_acknowledged_puts_survive_kill_9(self) -> None:
        """kill -9 during a stream of puts loses no put that got an OK."""
        acked: dict[bytes, int] = {}
        lock = threading.Lock()
        stop = threading.Event()

        def writer(worker: int) -> None:
            with grpc.insecure_channel(self.member.endpoint) as channel:
                kv = rpc_pb2_grpc.KVStub(channel)
                i = 0
                while not stop.is_set():
                    key = b"w%d-%06d" % (worker, i)
                    try:
                        resp = kv.Put(pb.PutRequest(key=key, value=key), timeout=5)
                    except grpc.RpcError:
                        return
                    with lock:
                        acked[key] = resp.header.revision
                    i += 1

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        wait_for(lambda: len(acked) >= 2000, 60, "2000 acknowledged puts")
        self.member.kill()
        stop.set()
        for t in threads:
            t.join(30)
        self.member.start()
        with grpc.insecure_channel(self.member.endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            resp = kv.Range(pb.RangeRequest(key=b"w", range_end=b"x"), timeout=30)
            stored = {item.key: item.mod_revision for item in resp.kvs}
            for key, rev in acked.items():
                self.assertEqual(stored.get(key), rev, key)
            revs = sorted(stored.values())
            self.assertEqual(revs, list(range(2, 2 + len(revs))), "no revision gaps")
            hash_before = rpc_pb2_grpc.MaintenanceStub(channel).HashKV(
                pb.HashKVRequest(), timeout=10)
        self.member.kill()
        self.member.start()
        with grpc.insecure_channel(self.member.endpoint) as channel:
            hash_after = rpc_pb2_grpc.MaintenanceStub(channel).HashKV(
                pb.HashKVRequest(), timeout=10)
        self.assertEqual((hash_after.hash, hash_after.header.revision),
                         (hash_before.hash, hash_before.header.revision))


class ScaleTests(unittest.TestCase):

    def test_range_pages_through_100000_keys(self) -> None:
        """A Range with limit pages through 100,000 keys in order, each page counting all."""
        member = Member(name="scale").start()
        self.addCleanup(member.cleanup)
        total = 100_000
        with grpc.insecure_channel(member.endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            futures = []
            for start in range(0, total, 100):
                ops = [pb.RequestOp(request_put=pb.PutRequest(key=b"key/%07d" % i, value=b"v"))
                       for i in range(start, min(start + 100, total))]
                futures.append(kv.Txn.future(pb.TxnRequest(success=ops), timeout=120))
                if len(futures) >= 64:
                    for f in futures:
                        f.result()
                    futures = []
            for f in futures:
                f.result()
            seen = []
            key = b"key/"
            while True:
                resp = kv.Range(pb.RangeRequest(key=key, range_end=b"key0", limit=1000),
                                timeout=30)
                self.assertEqual(resp.count, total - len(seen))
                seen.extend(item.key for item in resp.kvs)
                if not resp.more:
                    break
                key = resp.kvs[-1].key + b"\x00"
            self.assertEqual(seen, [b"key/%07d" % i for i in range(total)])
