"""``etcdctl lease`` against a 3-member cluster, as etcd 3.4 answers it: grant (and the
TTL floor and ceiling), list, timetolive with and without ``--keys``, revoke (its keys go
in one revision), keep-alive once and as a stream, ``put --lease``, the errors for a lease
that does not exist, expiry deleting the keys, and a leader kill -9 that live leases
survive while a lease nobody renews still expires.

etcd's lowest TTL is ceil(1.5 x election timeout) = 2 s with the default 1000 ms election
timeout, so the short TTLs here are 2 to 4 s. etcdctl prints lease IDs as 16 hex digits.
A failed unary call also makes clientv3 log a JSON warning line on stderr whose
``error`` names the gRPC code; the tests check it too.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
from typing import Any

from tests.integration.cluster import ClusterTestCase, phase
from tests.integration.watchers import b64, events_of, json_lines, start_etcdctl

GRANTED = re.compile(r"lease ([0-9a-f]{16}) granted with TTL\((\d+)s\)\n")
NOT_FOUND = "etcdserver: requested lease not found"
NOT_FOUND_RPC = f"rpc error: code = NotFound desc = {NOT_FOUND}"


class LeaseCliTestCase(ClusterTestCase):
    """The etcdctl steps the lease tests take."""

    def grant(self, ttl: int, on: Any = None) -> tuple[str, int]:
        """``lease grant ttl``: the lease ID in hex and the TTL granted."""
        out = self.ctl_ok("lease", "grant", str(ttl), on=on)
        match = GRANTED.fullmatch(out)
        self.assertIsNotNone(match, out)
        return match.group(1), int(match.group(2))

    def put_with_lease(self, lease: str, *keys: str) -> int:
        """``put --lease`` of each key (value = key); the revision of the last put."""
        revision = 0
        for key in keys:
            revision = self.ctl_json("put", "--lease", lease, key, key)["header"]["revision"]
        return revision

    def current_revision(self, on: Any = None) -> int:
        return self.ctl_json("get", "no-such-key", on=on)["header"]["revision"]

    def count(self, prefix: str, on: Any = None) -> int:
        return self.ctl_json("get", prefix, "--prefix", on=on).get("count", 0)

    def assert_fails(self, result: subprocess.CompletedProcess, status: int,
                     errors: list[str], rpc_error: str | None = None) -> None:
        """etcdctl exited with `status`, printed nothing on stdout, and printed `errors`
        on stderr, plus clientv3's warning naming `rpc_error` if given (else none)."""
        self.assertEqual((result.returncode, result.stdout), (status, ""), result.stderr)
        lines = result.stderr.splitlines()
        self.assertEqual([line for line in lines if not line.startswith("{")], errors)
        warnings = {json.loads(line)["error"] for line in lines if line.startswith("{")}
        self.assertEqual(warnings, {rpc_error} if rpc_error else set(), result.stderr)


class LeaseCliTests(LeaseCliTestCase):
    """Lease commands on one shared cluster; every test uses its own leases and keys."""
    shared_cluster = True

    def test_grant_list_and_timetolive(self) -> None:
        """A granted lease is listed; timetolive shows its granted and remaining TTL and,
        with --keys, the keys attached by put --lease."""
        lease, ttl = self.grant(10)
        self.assertEqual(ttl, 10)
        listed = self.ctl_ok("lease", "list").splitlines()
        self.assertEqual(listed[0], f"found {len(listed) - 1} leases")
        self.assertIn(lease, listed[1:])
        self.assertEqual(self.ctl_ok("put", "--lease", lease, "ttl/b", "1"), "OK\n")
        self.assertEqual(self.ctl_ok("put", "--lease", lease, "ttl/a", "2"), "OK\n")
        self.assertEqual(self.ctl_json("get", "ttl/a")["kvs"][0]["lease"], int(lease, 16))
        out = self.ctl_ok("lease", "timetolive", lease)
        match = re.fullmatch(rf"lease {lease} granted with TTL\(10s\), remaining\((\d+)s\)\n", out)
        self.assertIsNotNone(match, out)
        self.assertTrue(0 < int(match.group(1)) <= 10, out)
        out = self.ctl_ok("lease", "timetolive", "--keys", lease)
        match = re.fullmatch(rf"lease {lease} granted with TTL\(10s\), remaining\(\d+s\), "
                             r"attached keys\(\[(.*)\]\)\n", out)
        self.assertIsNotNone(match, out)
        self.assertEqual(sorted(match.group(1).split(" ")), ["ttl/a", "ttl/b"])   # map order

    def test_json_forms(self) -> None:
        """``-w json`` of grant, timetolive --keys and list: header fields inline, IDs as
        integers, keys base64."""
        grant = self.ctl_json("lease", "grant", "10")
        self.assertEqual(sorted(grant), ["Error", "ID", "TTL", "cluster_id", "member_id",
                                         "raft_term", "revision"])
        self.assertEqual((grant["TTL"], grant["Error"]), (10, ""))
        lease = f"{grant['ID']:016x}"
        self.put_with_lease(lease, "tj/x", "tj/y")
        ttl = self.ctl_json("lease", "timetolive", "--keys", lease)
        self.assertEqual(sorted(ttl), ["cluster_id", "granted-ttl", "id", "keys", "member_id",
                                       "raft_term", "revision", "ttl"])
        self.assertEqual((ttl["id"], ttl["granted-ttl"]), (grant["ID"], 10))
        self.assertTrue(0 < ttl["ttl"] <= 10, ttl)
        self.assertEqual(sorted(ttl["keys"]), [b64("tj/x"), b64("tj/y")])
        self.assertEqual(ttl["revision"], self.current_revision())
        leases = self.ctl_json("lease", "list")["leases"]
        self.assertIn({"id": grant["ID"]}, leases)

    def test_ttl_floor_and_ceiling(self) -> None:
        """A TTL under etcd's minimum is raised to 2 s; 9,000,000,000 s is the largest;
        one more is refused (OutOfRange)."""
        self.assertEqual(self.grant(1)[1], 2)
        self.assertEqual(self.grant(0)[1], 2)
        big, ttl = self.grant(9_000_000_000)
        self.assertEqual(ttl, 9_000_000_000)
        self.assertEqual(self.ctl_ok("lease", "revoke", big), f"lease {big} revoked\n")
        self.assert_fails(self.ctl("lease", "grant", "9000000001"), 1,
                          ["Error: failed to grant lease (etcdserver: too large lease TTL)"],
                          "rpc error: code = OutOfRange desc = etcdserver: too large lease TTL")

    def test_revoke_deletes_its_keys_in_one_revision(self) -> None:
        """Revoking a lease deletes all its keys in one revision, in key order, in one
        watch response; the lease is then gone."""
        lease, _ = self.grant(60)
        before = self.put_with_lease(lease, "rk/c", "rk/a", "rk/b")
        self.ctl_ok("put", "rk/free", "no lease")
        watch = start_etcdctl(self, self.cluster.endpoints, "watch", "-w", "json",
                              "--rev", str(before + 2), "--prefix", "rk/")
        self.assertEqual(self.ctl_ok("lease", "revoke", lease), f"lease {lease} revoked\n")
        revoked = self.current_revision()
        self.assertEqual(revoked, before + 2)
        responses = json_lines(watch.read(1))
        self.assertEqual(events_of(responses), [("DELETE", key, "", 0, revoked, 0)
                                                for key in ("rk/a", "rk/b", "rk/c")])
        self.assertEqual(responses[0]["Header"]["revision"], revoked)
        self.assertEqual(self.ctl_ok("get", "rk/", "--prefix"), "rk/free\nno lease\n")
        self.assertEqual(self.ctl_ok("lease", "timetolive", lease),
                         f"lease {lease} already expired\n")
        self.assertNotIn(lease, self.ctl_ok("lease", "list").splitlines())

    def test_keep_alive_once(self) -> None:
        """``keep-alive --once`` renews the lease once and prints the granted TTL."""
        lease, _ = self.grant(10)
        self.assertEqual(self.ctl_ok("lease", "keep-alive", "--once", lease),
                         f"lease {lease} keepalived with TTL(10)\n")

    def test_keep_alive_stream_until_revoked(self) -> None:
        """``keep-alive`` prints a line per renewal past the TTL, and when the lease is
        revoked says so and exits 0."""
        lease, ttl = self.grant(2)
        self.put_with_lease(lease, "ka/x")
        keeper = start_etcdctl(self, self.cluster.endpoints, "lease", "keep-alive", lease)
        renewed = f"lease {lease} keepalived with TTL({ttl})"
        self.assertEqual(keeper.read(5), [renewed] * 5)    # renewals every TTL/3: past the TTL
        self.assertEqual(self.ctl_ok("get", "ka/x", "--print-value-only"), "ka/x\n")
        self.assertEqual(self.ctl_ok("lease", "revoke", lease), f"lease {lease} revoked\n")
        tail = keeper.read_until(lambda line: line != renewed)
        self.assertEqual(tail[-1], f"lease {lease} expired or revoked.")
        self.assertEqual(keeper.wait_exit(), 0)
        self.assertEqual(keeper.rest(), [])
        self.assertEqual(keeper.error_lines(), [])

    def test_unknown_lease(self) -> None:
        """Each command's answer for a lease that does not exist."""
        unknown = "000000001234abcd"
        self.assert_fails(self.ctl("lease", "revoke", "1234abcd"), 1,
                          [f"Error: failed to revoke lease ({NOT_FOUND})"], NOT_FOUND_RPC)
        self.assert_fails(self.ctl("put", "--lease", "1234abcd", "unknown/k", "v"), 1,
                          [f"Error: {NOT_FOUND}"], NOT_FOUND_RPC)
        self.assert_fails(self.ctl("lease", "keep-alive", "--once", "1234abcd"), 2,
                          [f"Error: {NOT_FOUND}"])
        for args in (("1234abcd",), ("--keys", "1234abcd")):
            self.assertEqual(self.ctl_ok("lease", "timetolive", *args),
                             f"lease {unknown} already expired\n")
        self.assertEqual(self.ctl_json("lease", "timetolive", "1234abcd")["ttl"], -1)
        self.assertEqual(self.ctl_ok("lease", "keep-alive", "1234abcd"),
                         f"lease {unknown} expired or revoked.\n")
        self.assertEqual(self.count("unknown/"), 0)

    def test_expiry_deletes_keys_in_one_revision(self) -> None:
        """A lease nobody renews expires after its TTL: its keys go in one revision."""
        lease, ttl = self.grant(1)
        self.assertEqual(ttl, 2)
        last = self.put_with_lease(lease, "exp/a", "exp/b")
        watch = start_etcdctl(self, self.cluster.endpoints, "watch", "-w", "json",
                              "--rev", str(last + 1), "--prefix", "exp/")
        responses = json_lines(watch.read(1, timeout=30))
        gone = responses[0]["Header"]["revision"]
        self.assertEqual(events_of(responses), [("DELETE", "exp/a", "", 0, gone, 0),
                                                ("DELETE", "exp/b", "", 0, gone, 0)])
        self.assertEqual(self.count("exp/"), 0)
        self.assertEqual(self.ctl_ok("lease", "timetolive", lease),
                         f"lease {lease} already expired\n")


class LeaseFailoverTests(LeaseCliTestCase):
    """Leases across a kill -9 of the leader."""

    def test_kept_alive_leases_survive_leader_kill(self) -> None:
        """Leases renewed by ``etcdctl lease keep-alive`` (through a follower, and through
        all endpoints) keep their keys across a leader kill -9; a lease nobody renews
        expires after the failover."""
        old = self.wait_leader()
        follower, _ = [m for m in self.cluster.members if m is not old]
        via_follower, ttl = self.grant(3)
        via_all, _ = self.grant(3)
        self.put_with_lease(via_follower, "fo/follower")
        self.put_with_lease(via_all, "fo/all")
        keepers = [start_etcdctl(self, follower.endpoint, "lease", "keep-alive", via_follower),
                   start_etcdctl(self, self.cluster.endpoints, "lease", "keep-alive", via_all)]
        for keeper, lease in zip(keepers, (via_follower, via_all)):
            self.assertEqual(keeper.read(1), [f"lease {lease} keepalived with TTL({ttl})"])
        orphan, _ = self.grant(3)
        self.put_with_lease(orphan, "fo/orphan")
        with phase("kill -9 the leader, elect another"):
            self.cluster.kill(old, signal.SIGKILL)
            self.wait_leader(30, not_in=[old])
        live = self.cluster.running()
        self.wait(lambda: self.count("fo/orphan", on=live) == 0, 60, "the orphan lease to expire")
        self.assertEqual(self.ctl_ok("lease", "timetolive", orphan, on=live),
                         f"lease {orphan} already expired\n")
        for keeper, lease in zip(keepers, (via_follower, via_all)):
            keeper.drain()
            self.assertEqual(keeper.read(3), [f"lease {lease} keepalived with TTL({ttl})"] * 3)
        for lease, key in ((via_follower, "fo/follower"), (via_all, "fo/all")):
            out = self.ctl_ok("lease", "timetolive", "--keys", lease, on=live)
            self.assertRegex(out, rf"^lease {lease} granted with TTL\({ttl}s\), "
                                  rf"remaining\(\d+s\), attached keys\(\[{key}\]\)\n$")
            self.assertEqual(self.ctl_ok("get", key, "--print-value-only", on=live), f"{key}\n")
        self.assertEqual([k.proc.poll() for k in keepers], [None, None])
