"""Maintenance/Snapshot (`etcdd/api/snapshot.py`): a copy of the store streamed in 32 KiB
messages with a sha256 trailer, under the stream's flow control, temp file removed."""
from __future__ import annotations

import hashlib
import os

from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from etcdd.api import snapshot
from etcdd.api.router import CallContext
from etcdd.api.snapshot import SNAPSHOT_SEND_BUFFER_BYTES, SnapshotService
from etcdd.proto import rpc_pb2 as pb
from tests.unit.stores import open_store
from tests.unit.watch_fakes import FakeStream

PATH = "/etcdserverpb.Maintenance/Snapshot"


class SnapshotStreamTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.store = open_store(self)
        with self.store.write_batch() as batch:
            txn = batch.txn()
            for i in range(300):
                txn.put(b"k%04d" % i, os.urandom(512))
            txn.end()
        self.snap_dir = os.path.dirname(self.store.backend.path)
        self.clock = Clock()
        self.service = SnapshotService(self.store, self.snap_dir, self.clock, maybeDeferred)

    def start(self, block_after_send: bool = False) -> tuple[object, FakeStream]:
        fake = FakeStream()
        fake.block_after_send = block_after_send
        handler = self.service.open(CallContext(path=PATH), fake)
        handler.message_received(pb.SnapshotRequest())
        return handler, fake

    def run_out(self, fake: FakeStream) -> None:
        for _ in range(1000):
            if fake.finished:
                return
            fake.drain()
            self.clock.advance(0)
        self.fail("the snapshot stream never finished")

    def temp_files(self) -> list[str]:
        return [n for n in os.listdir(self.snap_dir) if n.startswith("tmp")]

    def test_chunks_count_down_and_end_with_the_sha256(self) -> None:
        """32 KiB blobs whose remaining_bytes count down to 0, then the sha256 of them all;
        the whole is an LMDB file (whole pages) and the temp copy is gone. Two chunks per
        reactor turn here, so the send spans turns."""
        self.patch(snapshot, "CHUNKS_PER_TURN", 2)
        _, fake = self.start()
        self.assertEqual(len(fake.sent), 2)
        self.run_out(fake)
        self.assertIsNone(fake.error)
        responses = [pb.SnapshotResponse.FromString(m) if isinstance(m, bytes) else m
                     for m in fake.sent]
        data = b"".join(r.blob for r in responses[:-1])
        self.assertEqual(responses[-1].blob, hashlib.sha256(data).digest())
        self.assertEqual(responses[-1].remaining_bytes, 0)
        self.assertTrue(all(len(r.blob) == SNAPSHOT_SEND_BUFFER_BYTES
                            for r in responses[:-2]))
        self.assertEqual([r.remaining_bytes for r in responses[:-1]],
                         [len(data) - len(b"".join(x.blob for x in responses[:i + 1]))
                          for i in range(len(responses) - 1)])
        self.assertEqual(len(data) % 4096, 0)
        self.assertGreater(len(data), 150 * 1024)
        self.assertEqual(self.temp_files(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_nothing_more_is_sent_while_the_client_does_not_read(self) -> None:
        """A stream that is not writable gets one message per drain, not the whole file."""
        _, fake = self.start(block_after_send=True)
        sent = len(fake.sent)
        self.assertEqual(sent, 1)
        for _ in range(5):
            self.clock.advance(0)
        self.assertEqual(len(fake.sent), sent)
        fake.drain()
        self.assertEqual(len(fake.sent), sent + 1)

    def test_a_cancelled_call_stops_and_removes_its_copy(self) -> None:
        """The client going away ends the sends and removes the temp file."""
        handler, fake = self.start(block_after_send=True)
        self.assertEqual(len(self.temp_files()), 1)
        handler.cancelled()
        sent = len(fake.sent)
        fake.drain()
        self.clock.advance(0)
        self.assertEqual(len(fake.sent), sent)
        self.assertEqual(self.temp_files(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
