"""Quorum loss in a 3-member cluster (etcd issue 11500, the "voting loop").

With the leader and one follower stopped, the survivor refuses writes and linearizable
reads with etcd's errors once etcd's request timeout (5 s + 2 election timeouts) passes,
still answers serializable reads, and, thanks to pre-vote (``--pre-vote=true``), does not
inflate its raft term while alone: its reported term holds, and the quorum comes back at
the next term or so, not at one term per election timeout spent alone. (etcd 3.4 reports
the term of the last applied entry in ``endpoint status``, so only the second check sees
a voting loop on etcd.) Starting one stopped member restores a quorum and every
acknowledged key; starting the last brings all three to one revision and one
``endpoint hashkv``.

Real etcd 3.4.23, with the survivor already knowing it has no leader, answers a put with
``Error: rpc error: code = Unknown desc = context deadline exceeded`` (raft takes no
proposal while leaderless, so it waits out the server's request context, whose bare
error reaches the client as Unknown) and a linearizable read with
``etcdserver: request timed out`` (Unavailable) after etcd's request timeout, which
etcdctl logs and retries until its own ``--command-timeout``.
"""
from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable

import grpc

from ops.cluster import LocalMember, member_status
from tests.integration.cluster import ClusterTestCase, log_phase, phase
from tests.integration.harness import ETCDCTL

# What etcd 3.4 prints for a put on a member that knows it has no leader. (Had it still
# believed in the dead leader when proposing, it would say "etcdserver: request timed out".)
PUT_ERRORS = {"Error: rpc error: code = Unknown desc = context deadline exceeded"}
# etcdctl retries a read refused as Unavailable, logging each refusal, until its deadline
READ_ERROR = '"error":"rpc error: code = Unavailable desc = etcdserver: request timed out"'
MAX_ELECTIONS_TO_RECOVER = 3    # one election, allowing for split votes
ELECTION_TIMEOUT_SECONDS = 1.0                   # etcd's default --election-timeout
REQUEST_TIMEOUT_SECONDS = 5 + 2 * ELECTION_TIMEOUT_SECONDS


class NoQuorumTests(ClusterTestCase):
    """A lone survivor refuses what needs a quorum and keeps its term; quorum returns."""
    # NB: etcd 3.4 defaults to --pre-vote=false (etcdd and etcd 3.5 to true); without it
    # the survivor campaigns alone every election timeout, raising its term each time
    # (etcd 3.4.23 here: term 2 before, 12 after the quorum came back).
    extra_flags = ("--pre-vote=true",)

    def test_survivor_without_quorum_then_recovery(self) -> None:
        """With two of three members down, writes and linearizable reads fail with etcd's
        errors, serializable reads work, the term holds; restarts recover everything."""
        for i in range(20):
            self.ctl_ok("put", f"acked/{i:02d}", str(i))
        leader = self.wait_leader()
        stopped_follower, survivor = [m for m in self.cluster.members if m is not leader]
        with phase("stop a follower (SIGTERM) and the leader (SIGKILL)"):
            self.cluster.stop(stopped_follower)
            self.cluster.kill(leader)
            self.wait(lambda: self.has_no_leader(survivor), 15, "the survivor to lose its leader")
        term = member_status(survivor).raftTerm
        with phase("refusals on the survivor"):
            put, get, terms = self.refusals(survivor)
        log_phase(f"put: {put.stderr.splitlines()[-1:]!r}; get: {get.stderr!r}")
        self.assertEqual(put.returncode, 1)
        self.assertIn(put.stderr.splitlines()[-1], PUT_ERRORS)
        self.assertEqual(get.returncode, 1)
        self.assertIn(READ_ERROR, get.stderr)
        self.assertEqual(set(terms), {term}, "the survivor's raft term moved while alone")
        self.assertGreaterEqual(len(terms), 3)
        self.assertEqual(self.ctl_ok("get", "acked/07", "--consistency=s", on=survivor),
                         "acked/07\n7\n")
        with phase("restart one stopped member: quorum"):
            self.cluster.start_member(stopped_follower, wait=False)
            self.wait_leader(15)
            self.wait_ready([survivor, stopped_follower])
        live = [survivor, stopped_follower]
        self.assertEqual(self.ctl_ok("put", "after", "quorum", on=live), "OK\n")
        # etcd reports the term of the last applied entry; the new leader's empty entry
        # and the put above carry the term of the election that restored the quorum
        new_terms = {self.ctl_json("endpoint", "status", on=m)[0]["Status"]["raftTerm"]
                     for m in live}
        log_phase(f"raft term {term} before, {new_terms} after the quorum came back")
        self.assertEqual(len(new_terms), 1)
        self.assertLessEqual(new_terms.pop(), term + MAX_ELECTIONS_TO_RECOVER,
                             "the survivor's term grew while it was alone (no pre-vote?)")
        for member in live:
            got = self.ctl_ok("get", "acked/", "--prefix", "--keys-only", on=member).split()
            self.assertEqual(got, [f"acked/{i:02d}" for i in range(20)], member.name)
        with phase("restart the last member, converge"):
            self.cluster.start_member(leader, wait=True)
            self.wait_converged()

    def has_no_leader(self, member: LocalMember) -> bool:
        """Whether the member answers Status naming no leader."""
        try:
            return member_status(member).leader == 0
        except grpc.RpcError:
            return False

    def refusals(self, survivor: LocalMember) -> tuple[subprocess.CompletedProcess,
                                                       subprocess.CompletedProcess, list[int]]:
        """An etcdctl put and linearizable get side by side on the survivor, sampling its
        raft term until both have answered."""
        put = self.popen("--command-timeout", f"{REQUEST_TIMEOUT_SECONDS + 20:.0f}s",
                         "put", "refused", "v", on=survivor)
        get = self.popen("--command-timeout", f"{REQUEST_TIMEOUT_SECONDS + 3:.0f}s",
                         "get", "acked/00", on=survivor)
        terms = self.sample_terms(survivor, lambda: put.poll() is None or get.poll() is None)
        return self.finish(put), self.finish(get), terms

    def sample_terms(self, member: LocalMember, busy: Callable[[], bool]) -> list[int]:
        """The member's raft term every 0.25 s while `busy()` (at most 60 s)."""
        terms, deadline = [], time.monotonic() + 60
        while busy() and time.monotonic() < deadline:
            terms.append(member_status(member).raftTerm)
            time.sleep(0.25)   # NB: the sampling period of the term, not a wait for state
        return terms

    def popen(self, *args: str, on: LocalMember) -> subprocess.Popen:
        """Start etcdctl against `on`; killed and reaped at cleanup if still running."""
        env = dict(os.environ, ETCDCTL_API="3")
        proc = subprocess.Popen([ETCDCTL, "--endpoints", self.endpoints(on), *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        return proc

    def finish(self, proc: subprocess.Popen) -> subprocess.CompletedProcess:
        """Wait for `proc`; its status and output."""
        stdout, stderr = proc.communicate(timeout=60)
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
