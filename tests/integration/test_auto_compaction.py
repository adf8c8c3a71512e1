"""`--auto-compaction-mode periodic --auto-compaction-retention 2s` on a running member
(issue 5 groundwork): the leader compacts by itself, through raft, on every member.
Validated against etcd 3.4 with ``ETCDD_CLUSTER_IMPL=etcd``."""
from __future__ import annotations

from tests.integration.cluster import ClusterTestCase, load_keys


class PeriodicAutoCompactionTests(ClusterTestCase):
    extra_flags = ("--auto-compaction-mode", "periodic", "--auto-compaction-retention", "2s")

    def compact_revision(self, member: object) -> int:
        out = self.ctl_json("endpoint", "hashkv", on=member)
        return int(out[0]["HashKV"].get("compact_revision", 0))

    def test_the_leader_compacts_by_itself_on_every_member(self) -> None:
        """Writes over a few seconds: every member's compact revision moves past 1 on its
        own, and reading below it fails with etcd's compacted error."""
        self.wait_leader()
        first, _ = load_keys(self.cluster.members[0].endpoint, 200, prefix=b"auto/")
        self.wait(lambda: all(self.compact_revision(m) >= first for m in self.cluster.members),
                  60, "every member compacted past the first writes")
        r = self.ctl("get", "auto/", "--prefix", "--rev", "2")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("etcdserver: mvcc: required revision has been compacted", r.stderr)
