"""kill -9 under load: no acknowledged put is lost, whichever members die.

Eight writers put unique keys through all three members and record every put answered
OK. One member (a random follower, then the leader) or all three at once are killed with
SIGKILL mid-load and restarted; once every member has caught up, each one holds every
acknowledged key at the revision its put was answered with, and ``endpoint hashkv``
agrees. A put that failed may or may not be stored. ``ETCDD_TEST_SEED`` picks the
follower (the seed is printed).
"""
from __future__ import annotations

import os
import random

from tests.integration.cluster import ClusterTestCase, WriteLoad, log_phase, phase

SEED = int(os.environ.get("ETCDD_TEST_SEED", "11500"))
STEP_ACKS = 1000   # acknowledged puts between faults, so each fault hits a busy cluster


class KillUnderLoadTests(ClusterTestCase):
    """Acknowledged writes survive SIGKILL of any member, or of all of them."""

    def start_load(self) -> WriteLoad:
        load = WriteLoad(self.cluster.members, writers=8, prefix=b"load/").start()
        self.addCleanup(load.stop)
        return load

    def wait_more_acks(self, load: WriteLoad, what: str, timeout: float = 60) -> None:
        """Wait until `STEP_ACKS` more puts have been acknowledged."""
        target = load.acked_count() + STEP_ACKS
        self.wait(lambda: load.acked_count() >= target, timeout,
                  f"{STEP_ACKS} more acknowledged puts {what} (errors: {load.errors[-3:]})")

    def test_kill_9_a_follower_then_the_leader_under_load(self) -> None:
        """SIGKILL of a random follower, then of the leader, mid-load: writes go on
        through the others, and after restarts every acknowledged put is everywhere."""
        rng = random.Random(SEED)
        log_phase(f"ETCDD_TEST_SEED={SEED}")
        load = self.start_load()
        self.wait_more_acks(load, "before any fault")
        leader = self.wait_leader()
        follower = rng.choice([m for m in self.cluster.members if m is not leader])
        with phase(f"kill -9 follower {follower.name}, load on, restart it"):
            self.cluster.kill(follower)
            self.wait_more_acks(load, f"with {follower.name} down")
            self.cluster.start_member(follower, wait=True)
            self.wait_more_acks(load, f"after {follower.name} restarted")
        leader = self.wait_leader()
        with phase(f"kill -9 leader {leader.name}, load on, restart it"):
            self.cluster.kill(leader)
            self.wait_leader(15, not_in=[leader])
            self.wait_more_acks(load, f"with {leader.name} down")
            self.cluster.start_member(leader, wait=True)
            self.wait_more_acks(load, f"after {leader.name} restarted")
        load.stop()
        log_phase(f"{len(load.acked)} puts acknowledged, {len(load.errors)} failed: "
                  f"{sorted(set(e[1:] for e in load.errors))[:5]}")
        with phase("converge and check"):
            self.wait_converged()
            self.assert_acked_everywhere(load)
            self.assert_hashkv_cluster_agrees()

    def test_kill_9_all_members_under_load(self) -> None:
        """SIGKILL of all three members at once mid-load: after a restart every
        acknowledged put is on every member and their hashes agree."""
        load = self.start_load()
        self.wait_more_acks(load, "before the crash")
        self.wait_more_acks(load, "before the crash")
        with phase("kill -9 all three, restart"):
            self.cluster.kill_all()
            load.stop()
            self.cluster.start(wait=True)
        log_phase(f"{len(load.acked)} puts acknowledged before the crash, "
                  f"{len(load.errors)} failed")
        with phase("converge and check"):
            self.wait_converged()
            self.assert_acked_everywhere(load)
            self.assert_hashkv_cluster_agrees()
