"""Distributed locks and elections on a 3-member cluster, as etcd 3.4 answers them.

``etcdctl lock`` and ``etcdctl elect`` are clientv3's concurrency recipes run by etcdctl
(a session lease, a key ``<name>/<lease hex>``, waiting on the deletion of earlier keys);
the server-side ``v3lock.Lock`` and ``v3election.Election`` services run the same recipes
inside the server and answer grpcio clients here. Their errors are plain Go errors, so
they reach the client as gRPC UNKNOWN with the error's text.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from typing import Any

import grpc

from etcdd.proto import (kv_pb2, rpc_pb2 as pb, rpc_pb2_grpc, v3election_pb2 as epb,
                         v3election_pb2_grpc, v3lock_pb2 as lpb, v3lock_pb2_grpc)
from ops.cluster import LocalMember
from tests.integration.cluster import ClusterTestCase
from tests.integration.watchers import start_etcdctl, unb64

NOT_FOUND = "etcdserver: requested lease not found"
NO_LEADER = "election: no leader"
NOT_LEADER = "election: not leader"
MISSING_LEADER = '"leader" field must be provided'


def lease_hex(key: str) -> str:
    """The session lease of a lock or election key ``<name>/<lease hex>``."""
    return key.rsplit("/", 1)[1]


class LockElectTestCase(ClusterTestCase):
    """A shared cluster; the etcdctl and grpcio steps of the lock and election tests."""
    shared_cluster = True

    def setUp(self) -> None:
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix="etcdd-lock-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def keys(self, prefix: str) -> list[dict[str, Any]]:
        """The keys under `prefix` (``get --prefix -w json``), oldest creation first."""
        kvs = self.ctl_json("get", prefix, "--prefix", "--sort-by", "CREATE").get("kvs", [])
        return [{**kv, "key": unb64(kv["key"])} for kv in kvs]

    def wait_keys(self, prefix: str, count: int) -> list[dict[str, Any]]:
        """Wait until exactly `count` keys are under `prefix`; those keys."""
        found: list[dict[str, Any]] = []

        def counted() -> bool:
            found[:] = self.keys(prefix)
            return len(found) == count
        self.wait(counted, 60, f"{count} keys under {prefix} (have {found})")
        return found

    def log_lines(self) -> list[str]:
        try:
            with open(os.path.join(self.tmp, "log")) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def channel(self, member: LocalMember) -> grpc.Channel:
        channel = grpc.insecure_channel(member.endpoint)
        self.addCleanup(channel.close)
        return channel

    def assert_rpc_error(self, call: Callable[..., Any], request: Any, details: str,
                         code: grpc.StatusCode = grpc.StatusCode.UNKNOWN) -> None:
        with self.assertRaises(grpc.RpcError) as caught:
            call(request, timeout=10)
        self.assertEqual((caught.exception.code(), caught.exception.details()), (code, details))


class LockElectTests(LockElectTestCase):
    """``etcdctl lock`` and ``etcdctl elect`` across members, then the server-side
    services; every test uses its own lock and election names."""

    def test_lock_runs_commands_one_at_a_time(self) -> None:
        """The second ``lock -- cmd`` runs its command only after the first command has
        finished and released the lock; each sees its own lock key."""
        a_member, b_member, _ = self.cluster.members
        hold = ('echo "A $ETCD_LOCK_KEY" >> log; '
                'while [ ! -e release ]; do sleep 0.05; done; echo "A done" >> log')
        first = start_etcdctl(self, a_member.endpoint, "lock", "mylock", "--", "sh", "-c", hold,
                              cwd=self.tmp)
        self.wait(lambda: len(self.log_lines()) == 1, 60, "the first command to start")
        second = start_etcdctl(self, b_member.endpoint, "lock", "mylock", "--", "sh", "-c",
                               'echo "B $ETCD_LOCK_KEY" >> log; echo "B done" >> log; '
                               'echo "B out"', cwd=self.tmp)
        key_a, key_b = self.wait_keys("mylock/", 2)
        self.assertEqual(self.log_lines(), [f"A {key_a['key']}"])
        self.assertEqual(key_a["key"], f"mylock/{key_a['lease']:x}")
        self.assertNotIn("value", key_a)   # the lock key's value is empty
        self.assertRegex(self.ctl_ok("lease", "timetolive", f"{key_a['lease']:x}"),
                         r"granted with TTL\(10s\)")   # etcdctl lock's default --ttl
        open(os.path.join(self.tmp, "release"), "w").close()
        self.assertEqual(first.wait_exit(), 0)
        self.assertEqual(second.wait_exit(), 0)
        self.assertEqual(self.log_lines(), [f"A {key_a['key']}", "A done",
                                            f"B {key_b['key']}", "B done"])
        self.assertEqual((first.rest(), second.rest()), ([], ["B out"]))
        self.assertEqual(self.keys("mylock/"), [])

    def test_lock_without_command_holds_until_stopped(self) -> None:
        """``lock name`` prints its key and holds the lock: SIGINT unlocks at once;
        after kill -9 the lock passes on when the session lease (``--ttl``) expires."""
        holder = start_etcdctl(self, self.cluster.endpoints, "lock", "--ttl", "2", "held")
        key, value = holder.read(2)
        self.assertRegex(key, r"^held/[0-9a-f]+$")
        self.assertEqual(value, "")
        self.assertEqual([kv["key"] for kv in self.keys("held/")], [key])
        waiter = start_etcdctl(self, self.cluster.endpoints, "lock", "held", "--",
                               "echo", "got it")
        self.wait_keys("held/", 2)
        self.assertEqual(holder.stop(signal.SIGINT), 0)
        self.assertEqual(waiter.wait_exit(), 0)
        self.assertEqual(waiter.rest(), ["got it"])
        self.assertEqual((holder.rest(), holder.error_lines()), ([], []))

        killed = start_etcdctl(self, self.cluster.endpoints, "lock", "--ttl", "2", "held")
        key, _ = killed.read(2)
        waiter = start_etcdctl(self, self.cluster.endpoints, "lock", "held", "--",
                               "echo", "got it after expiry")
        self.wait_keys("held/", 2)
        self.assertEqual(killed.stop(signal.SIGKILL), -signal.SIGKILL)
        self.assertEqual(waiter.wait_exit(60), 0)
        self.assertEqual(waiter.rest(), ["got it after expiry"])
        self.assertEqual(self.ctl_ok("lease", "timetolive", lease_hex(key).zfill(16)),
                         f"lease {lease_hex(key).zfill(16)} already expired\n")
        self.assertEqual(self.keys("held/"), [])

    def test_elect_campaign_listen_and_takeover(self) -> None:
        """``elect name proposal`` prints the leader key and value once elected;
        ``elect --listen`` prints each new leader; the next candidate takes over when
        the leader is stopped (it resigns) or killed (once its lease is revoked)."""
        a, b, c = self.cluster.members
        listener = start_etcdctl(self, c.endpoint, "elect", "--listen", "myelection")
        first = start_etcdctl(self, a.endpoint, "elect", "myelection", "candidate1")
        key1, value1 = first.read(2)
        self.assertRegex(key1, r"^myelection/[0-9a-f]+$")
        self.assertEqual(value1, "candidate1")
        self.assertEqual(listener.read(2), [key1, "candidate1"])
        second = start_etcdctl(self, b.endpoint, "elect", "myelection", "candidate2")
        self.wait_keys("myelection/", 2)
        self.assertEqual(first.stop(signal.SIGINT), 0)
        key2, value2 = second.read(2)
        self.assertEqual(value2, "candidate2")
        self.assertEqual(listener.read(2), [key2, "candidate2"])
        third = start_etcdctl(self, c.endpoint, "elect", "myelection", "candidate3")
        self.wait_keys("myelection/", 2)
        self.assertEqual(second.stop(signal.SIGKILL), -signal.SIGKILL)
        orphaned = lease_hex(key2).zfill(16)
        self.assertEqual(self.ctl_ok("lease", "revoke", orphaned), f"lease {orphaned} revoked\n")
        key3, value3 = third.read(2)
        self.assertEqual(value3, "candidate3")
        self.assertEqual(listener.read(2), [key3, "candidate3"])
        self.assertEqual(len({key1, key2, key3}), 3)
        self.assertEqual(third.stop(signal.SIGINT), 0)
        self.assertEqual(listener.stop(signal.SIGINT), 0)
        self.assertEqual(listener.rest(), [])
        self.assertEqual(self.keys("myelection/"), [])
        for proc in (first, third, listener):
            self.assertEqual(proc.error_lines(), [])


    # -- the server-side Lock and Election services through grpcio ------------------------

    def grant(self, channel: grpc.Channel, ttl: int = 60) -> int:
        return rpc_pb2_grpc.LeaseStub(channel).LeaseGrant(pb.LeaseGrantRequest(TTL=ttl),
                                                          timeout=10).ID

    def test_lock_and_unlock(self) -> None:
        """Lock with a lease makes ``<name>/<lease hex>`` and waits behind older keys;
        Unlock (or revoking the holder's lease) lets the next one in; unknown leases
        fail; a Lock without a lease gets a fresh 60 s lease."""
        a, b, _ = self.cluster.members
        on_a, on_b = self.channel(a), self.channel(b)
        lock_a, lock_b = v3lock_pb2_grpc.LockStub(on_a), v3lock_pb2_grpc.LockStub(on_b)
        lease1, lease2 = self.grant(on_a), self.grant(on_b)
        held = lock_a.Lock(lpb.LockRequest(name=b"glock", lease=lease1), timeout=10)
        self.assertEqual(held.key, b"glock/%x" % lease1)
        (first,) = self.keys("glock/")
        self.assertEqual((held.header.revision, first["lease"]), (first["create_revision"], lease1))
        waiting = lock_b.Lock.future(lpb.LockRequest(name=b"glock", lease=lease2), timeout=60)
        self.wait_keys("glock/", 2)
        self.assertFalse(waiting.done())
        unlocked = lock_a.Unlock(lpb.UnlockRequest(key=held.key), timeout=10)
        got = waiting.result()
        self.assertEqual(got.key, b"glock/%x" % lease2)
        self.assertEqual(got.header.revision, unlocked.header.revision)   # NB: the wait's read
        again = lock_a.Lock.future(lpb.LockRequest(name=b"glock", lease=lease1), timeout=60)
        self.wait_keys("glock/", 2)
        revoked = rpc_pb2_grpc.LeaseStub(on_a).LeaseRevoke(pb.LeaseRevokeRequest(ID=lease2),
                                                            timeout=10)
        self.assertEqual(again.result().key, b"glock/%x" % lease1)
        self.assertEqual(again.result().header.revision, revoked.header.revision)
        current = lock_b.Unlock(lpb.UnlockRequest(key=b"glock/none"), timeout=10)
        self.assertEqual(current.header.revision, revoked.header.revision)   # nothing deleted
        self.assert_rpc_error(lock_b.Lock, lpb.LockRequest(name=b"glock2", lease=0x1234abcd),
                              NOT_FOUND)
        fresh = lock_b.Lock(lpb.LockRequest(name=b"glock3"), timeout=10)
        lease = int(fresh.key.rsplit(b"/", 1)[1], 16)
        ttl = rpc_pb2_grpc.LeaseStub(on_b).LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease),
                                                          timeout=10)
        self.assertEqual(ttl.grantedTTL, 60)
        rpc_pb2_grpc.LeaseStub(on_b).LeaseRevoke(pb.LeaseRevokeRequest(ID=lease), timeout=10)
        self.assertEqual(self.keys("glock3/"), [])

    def elections(self) -> tuple[Any, Any, Any]:
        """An Election stub on each member."""
        return tuple(v3election_pb2_grpc.ElectionStub(self.channel(m))
                     for m in self.cluster.members)

    def test_election_campaign_proclaim_and_errors(self) -> None:
        """Campaign, Leader and Proclaim across members, with etcd's "election: no
        leader" / "election: not leader" errors (gRPC UNKNOWN); a stale Resign is a no-op."""
        elect_a, elect_b, elect_c = self.elections()
        self.assert_rpc_error(elect_c.Leader, epb.LeaderRequest(name=b"gel"), NO_LEADER)
        lease = self.grant(self.channel(self.cluster.members[0]))
        won = elect_a.Campaign(epb.CampaignRequest(name=b"gel", lease=lease, value=b"one"),
                               timeout=10)
        key = b"gel/%x" % lease
        self.assertEqual(won.leader, epb.LeaderKey(name=b"gel", key=key, rev=won.header.revision,
                                                   lease=lease))
        leader = elect_c.Leader(epb.LeaderRequest(name=b"gel"), timeout=10)
        self.assertEqual(leader.kv, kv(key, b"one", won.leader.rev, won.leader.rev, 1, lease))
        self.assertEqual(leader.header.revision, won.leader.rev)
        proclaimed = elect_b.Proclaim(epb.ProclaimRequest(leader=won.leader, value=b"two"),
                                      timeout=10)
        self.assertEqual(elect_c.Leader(epb.LeaderRequest(name=b"gel"), timeout=10).kv,
                         kv(key, b"two", won.leader.rev, proclaimed.header.revision, 2, lease))
        stale = epb.LeaderKey(name=b"gel", key=key, rev=won.leader.rev + 100, lease=lease)
        self.assert_rpc_error(elect_b.Proclaim, epb.ProclaimRequest(leader=stale, value=b"x"),
                              NOT_LEADER)
        self.assert_rpc_error(elect_b.Proclaim, epb.ProclaimRequest(value=b"x"), MISSING_LEADER)
        self.assert_rpc_error(elect_b.Resign, epb.ResignRequest(), MISSING_LEADER)
        self.assert_rpc_error(elect_b.Campaign,
                              epb.CampaignRequest(name=b"gel", lease=0x1234abcd, value=b"x"),
                              NOT_FOUND)
        not_resigned = elect_b.Resign(epb.ResignRequest(leader=stale), timeout=10)
        self.assertEqual(not_resigned.header.revision, proclaimed.header.revision)
        resigned = elect_c.Resign(epb.ResignRequest(leader=won.leader), timeout=10)
        self.assertEqual(resigned.header.revision, proclaimed.header.revision + 1)
        self.assert_rpc_error(elect_a.Leader, epb.LeaderRequest(name=b"gel"), NO_LEADER)

    def test_election_observe_and_handover(self) -> None:
        """Observe streams each leader value; a waiting Campaign wins when the leader
        resigns; campaigning again on the same lease proclaims the new value."""
        a, b, _ = self.cluster.members
        elect_a, elect_b, elect_c = self.elections()
        lease1, lease2 = self.grant(self.channel(a)), self.grant(self.channel(b))
        won = elect_a.Campaign(epb.CampaignRequest(name=b"obs", lease=lease1, value=b"one"),
                               timeout=10)
        observe = elect_c.Observe(epb.LeaderRequest(name=b"obs"), timeout=60)
        self.addCleanup(observe.cancel)
        self.assertEqual(next(observe).kv.value, b"one")
        proclaimed = elect_a.Proclaim(epb.ProclaimRequest(leader=won.leader, value=b"two"),
                                      timeout=10)
        two = next(observe)
        self.assertEqual((two.header.revision, two.kv),
                         (proclaimed.header.revision, kv(b"obs/%x" % lease1, b"two",
                                                         won.leader.rev,
                                                         proclaimed.header.revision, 2, lease1)))
        waiting = elect_b.Campaign.future(
            epb.CampaignRequest(name=b"obs", lease=lease2, value=b"three"), timeout=60)
        self.wait_keys("obs/", 2)
        self.assertFalse(waiting.done())
        resigned = elect_a.Resign(epb.ResignRequest(leader=won.leader), timeout=10)
        self.assertEqual(resigned.header.revision, proclaimed.header.revision + 2)
        second = waiting.result()
        key2 = b"obs/%x" % lease2
        self.assertEqual(second.leader, epb.LeaderKey(name=b"obs", key=key2,
                                                      rev=resigned.header.revision - 1,
                                                      lease=lease2))
        self.assertEqual(second.header.revision, second.leader.rev)   # its own put's
        three = next(observe)
        self.assertEqual((three.header.revision, three.kv),
                         (resigned.header.revision, kv(key2, b"three", second.leader.rev,
                                                       second.leader.rev, 1, lease2)))
        # NB: the answer's header is the campaign read's, the revision before the proclaim
        again = elect_b.Campaign(epb.CampaignRequest(name=b"obs", lease=lease2, value=b"four"),
                                 timeout=10)
        self.assertEqual((again.leader, again.header.revision),
                         (second.leader, resigned.header.revision))
        four = elect_a.Leader(epb.LeaderRequest(name=b"obs"), timeout=10).kv
        self.assertEqual(four, kv(key2, b"four", second.leader.rev, again.header.revision + 1,
                                  2, lease2))
        self.assertEqual(next(observe).kv, four)
        for lease in (lease1, lease2):
            rpc_pb2_grpc.LeaseStub(self.channel(a)).LeaseRevoke(pb.LeaseRevokeRequest(ID=lease),
                                                                timeout=10)
        self.assert_rpc_error(elect_a.Leader, epb.LeaderRequest(name=b"obs"), NO_LEADER)

def kv(key: bytes, value: bytes, create: int, mod: int, version: int,
       lease: int) -> kv_pb2.KeyValue:
    """A KeyValue as the election services answer it."""
    return kv_pb2.KeyValue(key=key, value=value, create_revision=create, mod_revision=mod,
                           version=version, lease=lease)

