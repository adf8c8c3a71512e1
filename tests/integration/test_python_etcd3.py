"""The real python-etcd3 client (``etcd3`` 0.12.0 on PyPI) against a 3-member cluster,
through a follower: put/get, watch (iterator, prefix, once, callback, cancel), leases
(grant, refresh, time to live, keys, revoke) and its locks, contended.

python-etcd3 0.12 needs two things from its environment, which setup.py's test extra
provides (``etcd3==0.12.0``, ``tenacity>=6.1,<7``):

* its generated ``*_pb2`` modules predate protobuf 4 and import under today's protobuf
  only with the pure-Python backend, ``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python``;
* ``Lock.acquire`` passes tenacity an old-style wait callback that tenacity 7 dropped.

Its messages also share their protobuf names (``etcdserverpb.*``) with ``etcdd.proto``,
which this process has imported, so each scenario runs in a fresh interpreter: the
source of a ``_scenario_*`` function below, which prints one JSON object of results.
"""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import unittest
from collections.abc import Callable
from typing import Any

from tests.integration.cluster import ClusterTestCase
from tests.integration.harness import ROOT

CLIENT_ENV = {"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
NOT_FOUND = "etcdserver: requested lease not found"


def client_missing() -> str | None:
    """Why python-etcd3 0.12 cannot run here, or None if it can."""
    probe = ("import importlib.metadata as m, etcd3\n"
             "print(m.version('etcd3'), m.version('tenacity'))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env={**os.environ, **CLIENT_ENV}, timeout=120)
    if result.returncode != 0:
        return ("python-etcd3 is not importable (pip install 'etcd3==0.12.0' "
                f"'tenacity>=6.1,<7'): {result.stderr.strip().splitlines()[-1:]}")
    etcd3_version, tenacity_version = result.stdout.split()
    if etcd3_version != "0.12.0" or int(tenacity_version.split(".")[0]) >= 7:
        return (f"want etcd3 0.12.0 with tenacity<7, have etcd3 {etcd3_version}, "
                f"tenacity {tenacity_version}")
    return None


def run_scenario(scenario: Callable[[str], None], endpoint: str) -> dict[str, Any]:
    """Run `scenario(endpoint)` in a fresh interpreter; the JSON object it printed."""
    source = inspect.getsource(scenario) + f"\n{scenario.__name__}({endpoint!r})\n"
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                            env={**os.environ, **CLIENT_ENV}, cwd=ROOT, timeout=180)
    if result.returncode != 0:
        raise AssertionError(f"{scenario.__name__} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.splitlines()[-1])


# -- scenarios: each runs alone in a fresh interpreter, so it imports what it uses ---------

def _scenario_kv_and_watch(endpoint: str) -> None:
    import json
    import threading

    import etcd3

    host, port = endpoint.rsplit(":", 1)
    client = etcd3.client(host=host, port=int(port), timeout=10)
    out: dict = {}

    def event(ev: object) -> list:
        return [type(ev).__name__, ev.key.decode(), ev.value.decode(), ev.mod_revision]

    first = client.put("py/a", "1").header.revision
    value, meta = client.get("py/a")
    out["put"] = first
    out["get"] = [value.decode(), meta.key.decode(), meta.create_revision, meta.mod_revision,
                  meta.version, meta.lease_id]
    out["missing"] = list(client.get("py/missing"))
    client.put("py/b", "2")
    out["prefix"] = sorted([v.decode(), m.key.decode()] for v, m in client.get_prefix("py/"))

    events, cancel = client.watch("py/w", start_revision=first + 1)
    client.put("py/w", "1")
    client.put("py/other", "x")
    client.delete("py/w")
    out["watch"] = []
    for ev in events:
        out["watch"].append(event(ev))
        if len(out["watch"]) == 2:
            cancel()

    events, cancel = client.watch_prefix("pyp/", start_revision=first + 1)
    txn = client.transactions
    ok, _ = client.transaction(compare=[], success=[txn.put("pyp/x", "1"), txn.put("pyp/y", "2"),
                                                    txn.put("elsewhere", "3")], failure=[])
    client.delete("pyp/x")
    out["txn_ok"] = ok
    out["watch_prefix"] = []
    for ev in events:
        out["watch_prefix"].append(event(ev))
        if len(out["watch_prefix"]) == 3:
            cancel()

    once_rev = client.put("py/once", "here").header.revision
    out["watch_once"] = event(client.watch_once("py/once", timeout=10, start_revision=once_rev))
    try:
        client.watch_once("py/never", timeout=0.5)
        out["watch_once_timeout"] = "no timeout"
    except etcd3.exceptions.WatchTimedOut:
        out["watch_once_timeout"] = "WatchTimedOut"

    got, done = [], threading.Event()

    def callback(response: object) -> None:
        got.extend(event(ev) for ev in response.events)
        if len(got) >= 2:
            done.set()
    watch_id = client.add_watch_callback("py/cb", callback, start_revision=once_rev)
    client.put("py/cb", "1")
    client.put("py/cb", "2")
    out["callback_done"] = done.wait(30)
    client.cancel_watch(watch_id)
    out["callback"] = got
    print(json.dumps(out))


def _scenario_leases(endpoint: str) -> None:
    import json

    import etcd3
    import grpc

    host, port = endpoint.rsplit(":", 1)
    client = etcd3.client(host=host, port=int(port), timeout=10)
    out: dict = {}

    def failure(call: object, *args: object) -> list:
        try:
            call(*args)
        except grpc.RpcError as e:
            return [type(e).__name__, e.code().name, e.details()]
        except etcd3.exceptions.Etcd3Exception as e:   # raised while handling the grpc error
            return [type(e).__name__, e.__context__.code().name, e.__context__.details()]
        return ["no error"]

    lease = client.lease(10)
    out["id"], out["ttl"] = lease.id, lease.ttl
    client.put("pyl/a", "1", lease=lease)
    client.put("pyl/b", "2", lease=lease.id)
    out["key_lease"] = client.get("pyl/a")[1].lease_id
    out["keys"] = sorted(k.decode() for k in lease.keys)
    out["remaining"], out["granted"] = lease.remaining_ttl, lease.granted_ttl
    out["refresh"] = [[r.ID, r.TTL] for r in lease.refresh()]
    out["duplicate"] = failure(client.lease, 10, lease.id)
    short = client.lease(1)
    out["short_ttl"] = short.ttl
    short.revoke()
    lease.revoke()
    out["after_revoke"] = [list(client.get("pyl/a")), list(client.get("pyl/b"))]
    out["remaining_after_revoke"] = lease.remaining_ttl
    out["revoke_again"] = failure(lease.revoke)
    print(json.dumps(out))


def _scenario_locks(endpoint: str) -> None:
    import json
    import threading

    import etcd3

    host, port = endpoint.rsplit(":", 1)
    client = etcd3.client(host=host, port=int(port), timeout=10)
    out: dict = {}
    first = client.lock("pylock", ttl=10)
    out["acquired"] = first.acquire(timeout=10)
    out["is_acquired"] = first.is_acquired()
    out["key"] = first.key
    holder, meta = client.get(first.key)
    out["holder_is_first"] = holder == first.uuid
    out["lock_lease_granted"] = client.get_lease_info(meta.lease_id).grantedTTL
    second = client.lock("pylock", ttl=10)
    out["contended"] = second.acquire(timeout=0.5)
    order: list = []
    waiter = threading.Thread(target=lambda: order.append(["second", second.acquire(timeout=30)]))
    waiter.start()
    order.append(["first releasing", True])
    out["released"] = first.release()
    waiter.join(60)
    out["order"] = order
    out["second_holds"] = second.is_acquired() and not first.is_acquired()
    out["second_released"] = second.release()
    out["free"] = client.get(first.key)[0] is None
    print(json.dumps(out))


class PythonEtcd3Tests(ClusterTestCase):
    """python-etcd3 0.12.0 works against the cluster, through a follower."""
    shared_cluster = True

    @classmethod
    def setUpClass(cls) -> None:
        reason = client_missing()
        if reason is not None:
            raise unittest.SkipTest(reason)
        super().setUpClass()

    def run_through_follower(self, scenario: Callable[[str], None]) -> dict[str, Any]:
        leader = self.wait_leader()
        follower = next(m for m in self.cluster.members if m is not leader)
        return run_scenario(scenario, follower.endpoint)

    def test_kv_and_watch(self) -> None:
        """put/get, watch and watch_prefix (a txn's events at one revision), watch_once,
        add_watch_callback and cancel see exactly the writes made."""
        out = self.run_through_follower(_scenario_kv_and_watch)
        first = out["put"]
        self.assertEqual(out["get"], ["1", "py/a", first, first, 1, 0])
        self.assertEqual(out["missing"], [None, None])
        self.assertEqual(out["prefix"], [["1", "py/a"], ["2", "py/b"]])
        w = first + 2
        self.assertEqual(out["watch"], [["PutEvent", "py/w", "1", w],
                                        ["DeleteEvent", "py/w", "", w + 2]])
        self.assertTrue(out["txn_ok"])
        self.assertEqual(out["watch_prefix"], [["PutEvent", "pyp/x", "1", w + 3],
                                               ["PutEvent", "pyp/y", "2", w + 3],
                                               ["DeleteEvent", "pyp/x", "", w + 4]])
        self.assertEqual(out["watch_once"], ["PutEvent", "py/once", "here", w + 5])
        self.assertEqual(out["watch_once_timeout"], "WatchTimedOut")
        self.assertTrue(out["callback_done"])
        self.assertEqual(out["callback"], [["PutEvent", "py/cb", "1", w + 6],
                                           ["PutEvent", "py/cb", "2", w + 7]])

    def test_leases(self) -> None:
        """lease(ttl), keys, remaining_ttl, granted_ttl, refresh and revoke; a duplicate
        ID and a second revoke fail as etcd fails them."""
        out = self.run_through_follower(_scenario_leases)
        self.assertEqual(out["ttl"], 10)
        self.assertEqual(out["key_lease"], out["id"])
        self.assertEqual(out["keys"], ["pyl/a", "pyl/b"])
        self.assertTrue(0 < out["remaining"] <= 10, out)
        self.assertEqual(out["granted"], 10)
        self.assertEqual(out["refresh"], [[out["id"], 10]])
        self.assertEqual(out["duplicate"], ["PreconditionFailedError", "FAILED_PRECONDITION",
                                            "etcdserver: lease already exists"])
        self.assertEqual(out["short_ttl"], 2)
        self.assertEqual(out["after_revoke"], [[None, None], [None, None]])
        self.assertEqual(out["remaining_after_revoke"], -1)
        self.assertEqual(out["revoke_again"], ["_InactiveRpcError", "NOT_FOUND", NOT_FOUND])

    def test_locks(self) -> None:
        """lock(name, ttl): acquire and release; a second lock on the name gets it only
        after the first is released."""
        out = self.run_through_follower(_scenario_locks)
        self.assertEqual(out["key"], "/locks/pylock")
        self.assertTrue(out["acquired"] and out["is_acquired"] and out["holder_is_first"], out)
        self.assertEqual(out["lock_lease_granted"], 10)
        self.assertFalse(out["contended"])
        self.assertEqual(out["order"], [["first releasing", True], ["second", True]])
        self.assertTrue(out["released"] and out["second_holds"] and out["second_released"], out)
        self.assertTrue(out["free"])
