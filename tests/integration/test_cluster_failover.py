"""Leader failure in a 3-member cluster: kill -9 the leader, a new one is elected and
every live member takes writes; the old leader restarts as a follower and catches up
(same revision and ``endpoint hashkv`` as the others).
"""
from __future__ import annotations

from tests.integration.cluster import ClusterTestCase, phase


class LeaderFailoverTests(ClusterTestCase):
    """The cluster survives losing its leader and takes it back as a follower."""

    def test_new_leader_after_kill_9_and_old_leader_rejoins(self) -> None:
        """kill -9 of the leader: another member leads, writes go through both live
        members, and the restarted old leader follows and catches up."""
        for i in range(10):
            self.ctl_ok("put", f"before/{i}", str(i))
        old = self.wait_leader()
        with phase("kill -9 leader, elect a new one"):
            self.cluster.kill(old)
            new = self.wait_leader(15, not_in=[old])
        live = self.cluster.running()
        self.assertEqual(len(live), 2)
        self.wait_ready(live)
        for member in live:
            for i in range(5):
                self.assertEqual(self.ctl_ok("put", f"during/{member.name}/{i}", "x",
                                             on=member), "OK\n")
        self.assertEqual(self.ctl_ok("put", "during/all", "y", on=live), "OK\n")
        with phase("restart the old leader, catch up"):
            self.cluster.start_member(old, wait=True)
            revision = self.wait_converged()
        status = self.ctl_json("endpoint", "status", on=old)[0]["Status"]
        self.assertNotEqual(status["leader"], status["header"]["member_id"])
        self.assertEqual(status["leader"], new.member_id)
        for member in self.cluster.members:
            got = self.ctl_json("get", "during/", "--prefix", "--consistency=s", on=member)
            self.assertEqual(got["count"], 11, member.name)
            self.assertEqual(got["header"]["revision"], revision)
            self.assertEqual(self.ctl_ok("get", "before/9", on=member), "before/9\n9\n")


class FiveMemberTests(ClusterTestCase):
    """A 5-member cluster keeps serving through the loss of two members."""
    size = 5

    def test_two_of_five_down_including_the_leader(self) -> None:
        """kill -9 of the leader and one follower: the other three elect a leader and take
        writes; both return as followers and converge on the same revision and hashkv."""
        for i in range(10):
            self.ctl_ok("put", f"five/before/{i}", str(i))
        old = self.wait_leader()
        follower = next(m for m in self.cluster.members if m is not old)
        with phase("kill -9 the leader and a follower"):
            self.cluster.kill(old)
            self.cluster.kill(follower)
            self.wait_leader(15, not_in=[old, follower])
        live = self.cluster.running()
        self.assertEqual(len(live), 3)
        self.wait_ready(live)
        for member in live:
            self.assertEqual(self.ctl_ok("put", f"five/during/{member.name}", "x", on=member),
                             "OK\n")
        with phase("restart both, catch up"):
            self.cluster.start_member(old, wait=False)
            self.cluster.start_member(follower, wait=False)
            self.wait_ready()
            revision = self.wait_converged()
        for member in self.cluster.members:
            got = self.ctl_json("get", "five/", "--prefix", "--consistency=s", on=member)
            self.assertEqual(got["count"], 13, member.name)
            self.assertEqual(got["header"]["revision"], revision)
