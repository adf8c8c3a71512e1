"""Watchers whose client does not read: writes go on, nothing is lost, nothing repeats.

A raw HTTP/2 client (`h2` over a blocking socket) opens Watch streams carrying thousands
of watchers of one prefix and then reads nothing, so TCP and HTTP/2 flow control push
back on the member. Meanwhile grpcio writers put megabytes under the prefix: every put
must be acknowledged and the member must keep answering other clients. Then the client
reads, granting window as it goes: every watcher gets every revision exactly once, in
order (etcd's watchable store parks such watchers as victims and catches them up from
the store; etcdd does the same without buffering more than a bounded queue per stream).

Runs against etcd 3.4 with ``ETCDD_CLUSTER_IMPL=etcd``.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from etcdd.proto import rpc_pb2 as pb, rpc_pb2_grpc
from ops.h2client import BlockingWatchClient
from tests.integration.cluster import ClusterTestCase

STREAMS = 10
WATCHERS_PER_STREAM = 1000
PUTS = 300
VALUE = b"v" * 16
PREFIX = b"slow/"
READ_DEADLINE_SECONDS = 120.0


class SlowReaderTests(ClusterTestCase):
    size = 1
    shared_cluster = True

    def test_unread_watchers_never_hold_writes_and_catch_up_exactly(self) -> None:
        """10,000 watchers of one prefix on streams nobody reads: 300 puts (150 MB of events) are
        all acknowledged and a range answers meanwhile; once read, every watcher has
        every revision once, in order."""
        endpoint = self.cluster.members[0].endpoint
        client = BlockingWatchClient(endpoint)
        self.addCleanup(client.close)
        sids = [client.open(WATCHERS_PER_STREAM, PREFIX) for _ in range(STREAMS)]
        # Every create is answered before the writes start (reading them is cheap).
        client.read_until(lambda: all(client.created[s] == WATCHERS_PER_STREAM for s in sids),
                          time.monotonic() + 60)
        self.assertEqual([client.created[s] for s in sids], [WATCHERS_PER_STREAM] * STREAMS,
                         client.ended)
        channel = grpc.insecure_channel(endpoint)
        self.addCleanup(channel.close)
        kv = rpc_pb2_grpc.KVStub(channel)
        revisions: list[int] = []
        lock = threading.Lock()

        def put(i: int) -> None:
            resp = kv.Put(pb.PutRequest(key=PREFIX + b"%05d" % i, value=VALUE), timeout=60)
            with lock:
                revisions.append(resp.header.revision)
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(put, i) for i in range(PUTS)]
            # While nobody reads the watch streams, other clients are served.
            self.assertEqual(kv.Range(pb.RangeRequest(key=b"other"), timeout=30).count, 0)
            for f in futures:
                f.result()
        self.assertEqual(len(revisions), PUTS)
        revisions.sort()
        last = revisions[-1]
        client.read_until(
            lambda: sum(1 for revs in client.events.values() if revs and revs[-1] == last)
            == STREAMS * WATCHERS_PER_STREAM, time.monotonic() + READ_DEADLINE_SECONDS)
        self.assertEqual(client.ended, [])
        self.assertEqual(len(client.events), STREAMS * WATCHERS_PER_STREAM)
        wrong = {k: (len(v), v[:3], v[-3:]) for k, v in client.events.items()
                 if v != revisions}
        self.assertEqual(wrong, {}, f"{len(wrong)} watchers saw another sequence")
