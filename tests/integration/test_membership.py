"""Membership changes through the real etcdctl, as an operator makes them (issue 5):
`member add [--learner]`, starting the new member with `--initial-cluster-state existing`
from the lines etcdctl prints, `member promote`, `member update`, `member remove` (the
leader's own removal included), and the strict reconfiguration check's refusals.

Every scenario is also run against etcd 3.4.23 (``ETCDD_CLUSTER_IMPL=etcd``): the
outputs, refusals and exit behaviour asserted here are etcd's.
"""
from __future__ import annotations

import os
import re
import signal
import time

import grpc

from etcdd.proto import rpc_pb2 as pb, rpc_pb2_grpc
from ops.cluster import LocalMember
from ops.local import cluster_flags, free_port
from tests.integration.cluster import (REAL_ETCD, ClusterTestCase, load_keys, log_phase,
                                       phase)

PROGRAM = ["/usr/bin/etcd"] if REAL_ETCD else None


def _env_lines(output: str) -> dict[str, str]:
    """`member add`'s ETCD_* lines: name -> value (quotes removed)."""
    return dict(re.findall(r'^(ETCD_[A-Z_]+)="(.*)"$', output, re.M))


class MembershipTests(ClusterTestCase):
    size = 3
    # Small snapshots: a member added late catches up from a snapshot, not the log.
    extra_flags = ("--snapshot-count", "1000")

    def setUp(self) -> None:
        super().setUp()
        self.started_at = time.monotonic()

    def wait_health_interval(self) -> None:
        """The strict reconfig check wants every voter connected for 5 s (etcd's
        `HealthInterval`) before a voter is added or removed: let the new cluster age."""
        time.sleep(max(0.0, self.started_at + 6.0 - time.monotonic()))

    def new_member(self, name: str, added: str) -> LocalMember:
        """A member started as `member add` told the operator to (its env lines)."""
        env = _env_lines(added)
        self.assertEqual(env["ETCD_NAME"], name)
        self.assertEqual(env["ETCD_INITIAL_CLUSTER_STATE"], "existing")
        peer_port = int(env["ETCD_INITIAL_ADVERTISE_PEER_URLS"].rsplit(":", 1)[1])
        client_port = free_port()
        base = self.cluster.base_dir
        data_dir = os.path.join(base, f"{name}.etcd")
        program = self.cluster.members[0].argv[:self.cluster.members[0].argv.index("--name")]
        argv = [*program, *cluster_flags(name, data_dir, client_port, peer_port,
                                         env["ETCD_INITIAL_CLUSTER"], self.token,
                                         state="existing"), *self.extra_flags]
        member = LocalMember(name, data_dir, os.path.join(base, f"{name}.log"), client_port,
                             peer_port, argv)
        self.cluster.members.append(member)     # so the cluster's cleanup reaps it
        return member

    def member_ids(self, on: list[LocalMember] | None = None) -> dict[str, tuple[int, bool]]:
        listed = self.ctl_json("member", "list", on=on or self.cluster.running())
        return {m.get("name", ""): (m["ID"], bool(m.get("isLearner")))
                for m in listed["members"]}

    def linearizable_get(self, member: LocalMember, key: bytes) -> pb.RangeResponse:
        with grpc.insecure_channel(member.endpoint) as channel:
            return rpc_pb2_grpc.KVStub(channel).Range(pb.RangeRequest(key=key), timeout=10)

    def test_learner_joins_from_a_snapshot_is_promoted_and_serves(self) -> None:
        """A learner added with etcdctl joins with `existing`, catches up from a snapshot,
        refuses linearizable reads, is refused promotion while behind, then is promoted."""
        first, voters = self.cluster.members[0], list(self.cluster.members)
        with phase("6000 keys before the learner exists"):
            load_keys(first.endpoint, 6000, prefix=b"early/")
        peer = f"http://127.0.0.1:{free_port()}"
        self.wait_health_interval()
        added = self.ctl_ok("member", "add", "d", "--peer-urls", peer, "--learner")
        self.assertRegex(added, r"Member +[0-9a-f]+ added to cluster +[0-9a-f]+")
        new_id = int(re.search(r"Member +([0-9a-f]+) added", added).group(1), 16)
        self.assertIn("d=" + peer, _env_lines(added)["ETCD_INITIAL_CLUSTER"].split(","))
        listed = self.ctl_ok("member", "list")
        self.assertIn(f"{new_id:x}, unstarted, , {peer}, , true", listed)
        # Not started: its log matches nothing of the leader's.
        r = self.ctl("member", "promote", f"{new_id:x}")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("etcdserver: can only promote a learner member which is in sync "
                      "with leader", r.stderr)
        learner = self.new_member("d", added)
        self.cluster.start_member(learner, wait=False)
        self.wait_ready([learner], timeout=60)
        status = self.ctl_json("endpoint", "status", on=learner)[0]["Status"]
        self.assertTrue(status["isLearner"])
        with self.assertRaises(grpc.RpcError) as refused:
            self.linearizable_get(learner, b"early/1")
        self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(refused.exception.details(), "etcdserver: rpc not supported for learner")
        self.wait(lambda: self.serializable_count(learner, b"early/") == 6000, 60,
                  "the learner has every key")

        def promoted() -> bool:
            # NB: not through the learner: it answers nothing but Status and
            # serializable Range (etcdctl would retry there until it gives up).
            r = self.ctl("member", "promote", f"{new_id:x}", on=voters)
            if r.returncode != 0:
                self.assertIn("in sync with leader", r.stderr)
                return False
            self.assertRegex(r.stdout, rf"Member +{new_id:x} promoted in cluster")
            return True
        self.wait(promoted, 30, "the learner promoted")
        self.assertEqual(self.member_ids(voters)["d"], (new_id, False))
        self.wait(lambda: not self.ctl_json("endpoint", "status", on=learner)[0]["Status"]
                  .get("isLearner"), 30, "the promotion applied on the new member")
        self.ctl_ok("put", "after-promote", "yes", on=learner)
        self.assertEqual(self.linearizable_get(learner, b"after-promote").kvs[0].value, b"yes")
        self.wait_converged()
        if not REAL_ETCD:
            self.assertTrue(learner.log_contains("applying snapshot"),
                            "the learner did not catch up from a snapshot")

    def test_removing_the_leader_stops_it_and_the_rest_goes_on(self) -> None:
        """`member remove` of the leader, sent to a follower: the old leader exits 0, the
        two others elect a leader and keep every key."""
        leader = self.wait_leader()
        follower = next(m for m in self.cluster.members if m is not leader)
        self.ctl_ok("put", "before", "1")
        ids = self.member_ids()
        self.wait_health_interval()
        out = self.ctl_ok("member", "remove", f"{ids[leader.name][0]:x}", on=follower)
        self.assertRegex(out, rf"Member +{ids[leader.name][0]:x} removed from cluster")
        self.assertEqual(leader.proc.wait(timeout=30), 0)
        rest = [m for m in self.cluster.members if m is not leader]
        self.wait_leader(not_in=[leader])
        self.assertEqual(sorted(self.member_ids()), sorted(m.name for m in rest))
        self.ctl_ok("put", "after", "2", on=rest)
        self.assertIn("before", self.ctl_ok("get", "--prefix", "", "--keys-only", on=rest))
        self.cluster.members.remove(leader)
        self.wait_converged(rest)

    def test_strict_reconfig_check_refuses_unsafe_changes(self) -> None:
        """With a member down: adding a voter or removing a live one is refused (unhealthy
        cluster); removing the stopped one works, and it stops when it comes back. An
        unstarted voter then blocks another add; a second learner is refused; update
        changes a member's peer URLs."""
        a, b, c = self.cluster.members
        self.wait_leader()
        ids = self.member_ids()
        self.wait_health_interval()
        self.cluster.kill(c, signal.SIGKILL)
        live = [a, b]
        self.wait_leader(not_in=[c])
        r = self.ctl("member", "add", "x", "--peer-urls", f"http://127.0.0.1:{free_port()}",
                     on=live)
        self.assertIn("etcdserver: unhealthy cluster", r.stderr)
        r = self.ctl("member", "remove", f"{ids['b'][0]:x}", on=live)
        self.assertIn("etcdserver: unhealthy cluster", r.stderr)
        self.ctl_ok("member", "remove", f"{ids['c'][0]:x}", on=live)
        with phase("the removed member restarts and stops"):
            self.cluster.start_member(c, wait=False)
            code = c.proc.wait(timeout=60)
            log_phase(f"removed member exited with {code}")
        self.assertEqual(code, 0, "etcd 3.4 exits 0 once it learns it was removed")
        self.cluster.members.remove(c)
        added = self.ctl_ok("member", "add", "e", "--peer-urls",
                            f"http://127.0.0.1:{free_port()}", on=live)
        e_id = int(re.search(r"Member +([0-9a-f]+) added", added).group(1), 16)
        r = self.ctl("member", "add", "f", "--peer-urls", f"http://127.0.0.1:{free_port()}",
                     on=live)
        self.assertIn("etcdserver: re-configuration failed due to not enough started "
                      "members", r.stderr)
        new_peer = f"http://127.0.0.1:{free_port()}"
        out = self.ctl_ok("member", "update", f"{e_id:x}", "--peer-urls", new_peer, on=live)
        self.assertRegex(out, rf"Member +{e_id:x} updated in cluster")
        self.assertIn(f"{e_id:x}, unstarted, , {new_peer}, , false",
                      self.ctl_ok("member", "list", on=live))
        r = self.ctl("member", "update", f"{e_id:x}", "--peer-urls", a.peer_url, on=live)
        self.assertIn("etcdserver: Peer URLs already exists", r.stderr)
        self.ctl_ok("member", "remove", f"{e_id:x}", on=live)
        r = self.ctl("member", "remove", f"{e_id:x}", on=live)
        self.assertIn("etcdserver: member not found", r.stderr)
        self.ctl_ok("member", "add", "l1", "--learner", "--peer-urls",
                    f"http://127.0.0.1:{free_port()}", on=live)
        r = self.ctl("member", "add", "l2", "--learner", "--peer-urls",
                     f"http://127.0.0.1:{free_port()}", on=live)
        self.assertIn("etcdserver: too many learner members in cluster", r.stderr)
        r = self.ctl("member", "add", "dup", "--peer-urls", a.peer_url, on=live)
        self.assertIn("etcdserver: Peer URLs already exists", r.stderr)
        r = self.ctl("member", "promote", f"{ids['a'][0]:x}", on=live)
        self.assertIn("etcdserver: can only promote a learner member", r.stderr)
        r = self.ctl("member", "add", "bad", "--peer-urls", "127.0.0.1:1", on=live)
        self.assertNotEqual(r.returncode, 0)
