"""A follower that falls too far behind catches up from a snapshot.

With ``--snapshot-count 2000`` the leader snapshots every 2,000 applied entries and keeps
only 5,000 entries behind each snapshot (etcd 3.4 ``SnapshotCatchUpEntries``), so a
follower stopped during 200,000 puts cannot be sent the entries it missed: it must
receive a snapshot, then the tail of the log. It ends with the others' revision and
``endpoint hashkv``, and its log says it applied an incoming snapshot.
"""
from __future__ import annotations

import os
import time

from tests.integration.cluster import ClusterTestCase, load_keys, log_phase, phase

KEYS = int(os.environ.get("ETCDD_SNAPSHOT_TEST_KEYS", "200000"))
# etcd 3.4 etcdserver/server.go logs the first; etcdd logs it with the same wording
SNAPSHOT_LOG_LINES = ("finished applying incoming snapshot at index", "applied snapshot at index")


class SnapshotCatchUpTests(ClusterTestCase):
    """A lagging follower is brought up to date by a snapshot."""
    extra_flags = ("--snapshot-count", "2000")

    def test_follower_catches_up_from_snapshot(self) -> None:
        """A follower stopped through 200,000 puts restarts, applies a snapshot from the
        leader and ends with the same revision and hashkv as the others."""
        leader = self.wait_leader()
        follower = next(m for m in self.cluster.members if m is not leader)
        self.cluster.stop(follower)
        started = time.monotonic()
        with phase(f"load {KEYS} keys through the leader, 64 in flight"):
            last, retried = load_keys(leader.endpoint, KEYS, concurrency=64, prefix=b"bulk/")
        log_phase(f"{KEYS / (time.monotonic() - started):.0f} puts/s, last revision {last}, "
                  f"{retried} failed puts retried")
        if not retried:
            self.assertEqual(last, KEYS + 1)
        self.assertFalse(follower.log_contains(*SNAPSHOT_LOG_LINES))
        with phase("restart the follower, catch up"):
            self.cluster.start_member(follower, wait=False)
            revision = self.wait_converged(timeout=180)
        self.assertGreaterEqual(revision, last)
        self.assertTrue(follower.log_contains(*SNAPSHOT_LOG_LINES), follower.log())
        for line in follower.log(1 << 20).splitlines():
            if any(needle in line for needle in SNAPSHOT_LOG_LINES):
                log_phase(f"{follower.name}: {line}")
        self.assertEqual(self.serializable_count(follower, b"bulk/"), KEYS)
