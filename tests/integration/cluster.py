"""Helpers for the multi-member integration tests (``test_cluster_*.py``).

`ClusterTestCase` gives each test (or, with ``shared_cluster = True``, each class) a fresh
`ops.cluster.LocalCluster` of etcdd, or of the real etcd 3.4 when the environment says
``ETCDD_CLUSTER_IMPL=etcd``: the tests are validated against etcd itself, then judge
etcdd. Every process is killed and reaped by a cleanup registered before it starts, so
a failing test leaves nothing running; ``ETCDD_CLUSTER_KEEP=1`` keeps the data dirs and
logs and prints where they are.

Waits poll a condition with a deadline and fail with every member's log tail; nothing
sleeps a fixed time. `WriteLoad` runs concurrent writers that record exactly which puts
were acknowledged; `load_keys` writes many keys fast over ``grpc.aio``.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import unittest
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc

from etcdd.proto import rpc_pb2 as pb, rpc_pb2_grpc
from ops.cluster import ClusterError, LocalCluster, LocalMember, member_status, wait_until
from tests.integration.harness import ETCD, ETCDCTL, etcdctl

IMPL = os.environ.get("ETCDD_CLUSTER_IMPL", "etcdd")
REAL_ETCD = IMPL == "etcd"
KEEP = os.environ.get("ETCDD_CLUSTER_KEEP") == "1"
UNLIMITED_RECEIVE = [("grpc.max_receive_message_length", -1)]
Target = LocalMember | Sequence[LocalMember] | None


def log_phase(text: str) -> None:
    """One progress line on stderr (shown by ``pytest -s`` or on failure)."""
    print(f"[cluster {IMPL}] {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Time a phase of a scenario and print how long it took."""
    started = time.monotonic()
    try:
        yield
    finally:
        log_phase(f"{name}: {time.monotonic() - started:.2f}s")


class ClusterTestCase(unittest.TestCase):
    """A started cluster in ``self.cluster``: per test, or per class if `shared_cluster`."""
    size = 3
    extra_flags: tuple[str, ...] = ()
    token = "etcd-cluster"
    shared_cluster = False
    cluster: LocalCluster

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        if ETCDCTL is None:
            raise unittest.SkipTest("etcdctl (Debian etcd-client) is not installed")
        if IMPL not in ("etcd", "etcdd"):
            raise ValueError(f"ETCDD_CLUSTER_IMPL must be etcd or etcdd, not {IMPL!r}")
        if REAL_ETCD and ETCD is None:
            raise unittest.SkipTest("etcd 3.4 (Debian etcd-server) is not installed")
        if cls.shared_cluster:
            cls.cluster = cls._new_cluster()
            cls.addClassCleanup(_release, cls.cluster)
            _start(cls.cluster)

    def setUp(self) -> None:
        super().setUp()
        if not self.shared_cluster:
            self.cluster = self._new_cluster()
            self.addCleanup(_release, self.cluster)
            _start(self.cluster)

    @classmethod
    def _new_cluster(cls) -> LocalCluster:
        return LocalCluster(cls.size, real_etcd=REAL_ETCD, extra_flags=cls.extra_flags,
                            token=cls.token)

    # -- etcdctl -------------------------------------------------------------------------

    def endpoints(self, on: Target = None) -> str:
        """etcdctl's ``--endpoints`` for one member, some members, or (None) all of them."""
        if on is None:
            return self.cluster.endpoints
        if isinstance(on, LocalMember):
            return on.endpoint
        return ",".join(m.endpoint for m in on)

    def ctl(self, *args: str, on: Target = None, stdin: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        """Run the real etcdctl (v3) against `on`; the finished process, whatever its status."""
        return etcdctl(self.endpoints(on), *args, stdin=stdin, timeout=timeout)

    def ctl_ok(self, *args: str, on: Target = None, stdin: str | None = None) -> str:
        """Run etcdctl, fail the test unless it exits 0; its stdout."""
        r = self.ctl(*args, on=on, stdin=stdin)
        self.assertEqual(r.returncode, 0, f"etcdctl {' '.join(args)} on {self.endpoints(on)}"
                                          f" failed:\n{r.stderr}")
        return r.stdout

    def ctl_json(self, *args: str, on: Target = None, stdin: str | None = None) -> Any:
        """`ctl_ok` with ``-w json``, parsed."""
        return json.loads(self.ctl_ok(*args, "-w", "json", on=on, stdin=stdin))

    # -- waits and checks ----------------------------------------------------------------

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `condition` until it holds; at the deadline fail with every member's log."""
        try:
            wait_until(condition, timeout, what)
        except ClusterError as e:
            self.fail(f"{e}\n{self.logs()}")

    def logs(self, chars: int = 3000) -> str:
        """The tail of every member's log, for failure messages."""
        return "\n".join(f"----- {m.name} ({'running' if m.is_running() else 'stopped'}) "
                         f"{m.log_path}\n{m.log(chars)}" for m in self.cluster.members)

    def wait_leader(self, timeout: float = 15.0,
                    not_in: Sequence[LocalMember] = ()) -> LocalMember:
        """Wait for a leader (not one of `not_in`), failing with the logs at the deadline."""
        try:
            return self.cluster.wait_leader(timeout, not_in)
        except ClusterError as e:
            self.fail(f"{e}\n{self.logs()}")

    def wait_ready(self, members: Sequence[LocalMember] | None = None,
                   timeout: float = 30.0) -> None:
        """Wait until the members (default: the running ones) are healthy."""
        try:
            self.cluster.wait_ready(timeout, members)
        except ClusterError as e:
            self.fail(f"{e}\n{self.logs()}")

    def revision(self, member: LocalMember) -> int:
        """The member's store revision (``Status``, answered locally); -1 if it is down."""
        try:
            return member_status(member).header.revision
        except grpc.RpcError:
            return -1

    def wait_converged(self, members: Sequence[LocalMember] | None = None,
                       timeout: float = 60.0) -> int:
        """Wait until the members (default: all) report one revision, then check that
        ``etcdctl endpoint hashkv --rev`` agrees on every one; returns the revision."""
        members = list(self.cluster.members if members is None else members)
        revisions: list[int] = []

        def same_revision() -> bool:
            revisions[:] = [self.revision(m) for m in members]
            return revisions[0] > 0 and len(set(revisions)) == 1
        self.wait(same_revision, timeout, f"one revision on every member (have {revisions})")
        hashes = self.hashkv(members, revisions[0])
        self.assertEqual(len(set(hashes.values())), 1, f"hashkv at {revisions[0]}: {hashes}")
        return revisions[0]

    def hashkv(self, members: Sequence[LocalMember], rev: int) -> dict[str, int]:
        """``etcdctl endpoint hashkv --rev rev -w json`` on `members`: endpoint -> hash."""
        answers = self.ctl_json("endpoint", "hashkv", "--rev", str(rev), on=members)
        self.assertEqual(len(answers), len(members), answers)
        return {a["Endpoint"]: a["HashKV"]["hash"] for a in answers}

    def assert_hashkv_cluster_agrees(self) -> None:
        """``etcdctl endpoint hashkv --cluster``: one hash from every member."""
        answers = self.ctl_json("endpoint", "hashkv", "--cluster")
        hashes = {a["Endpoint"]: a["HashKV"]["hash"] for a in answers}
        self.assertEqual(len(hashes), len(self.cluster.members), answers)
        self.assertEqual(len(set(hashes.values())), 1, hashes)

    def assert_acked_everywhere(self, load: "WriteLoad") -> None:
        """Every key `load` saw acknowledged is on every member (serializable range) at
        the revision its Put answered; no two acknowledged puts share a revision."""
        self.assertEqual(len(set(load.acked.values())), len(load.acked), "shared revisions")
        for member in self.cluster.members:
            stored = self.serializable_range(member, load.prefix)
            missing = [k for k, rev in load.acked.items() if stored.get(k) != rev]
            self.assertEqual(missing[:10], [], f"{len(missing)} acknowledged puts missing "
                                               f"or at another revision on {member.name}")
            log_phase(f"{member.name}: {len(load.acked)} acknowledged keys present "
                      f"({len(stored) - len(load.acked)} unacknowledged puts stored too)")

    def serializable_range(self, member: LocalMember, prefix: bytes) -> dict[bytes, int]:
        """Every key under `prefix` as `member` alone has it (``--consistency=s``):
        key -> mod_revision."""
        resp = self._serializable_range(member, prefix, keys_only=True)
        return {kv.key: kv.mod_revision for kv in resp.kvs}

    def serializable_count(self, member: LocalMember, prefix: bytes) -> int:
        """How many keys under `prefix` `member` alone has (``--consistency=s --count-only``)."""
        return self._serializable_range(member, prefix, count_only=True).count

    def _serializable_range(self, member: LocalMember, prefix: bytes,
                            **flags: bool) -> pb.RangeResponse:
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        with grpc.insecure_channel(member.endpoint, options=UNLIMITED_RECEIVE) as channel:
            return rpc_pb2_grpc.KVStub(channel).Range(
                pb.RangeRequest(key=prefix, range_end=end, serializable=True, **flags),
                timeout=60)


def _start(cluster: LocalCluster) -> None:
    with phase(f"start {len(cluster.members)} members"):
        try:
            cluster.start(wait=True, timeout=60)
        except ClusterError as e:
            logs = "\n".join(f"----- {m.name}\n{m.log()}" for m in cluster.members)
            raise AssertionError(f"{e}\n{logs}") from None


def _release(cluster: LocalCluster) -> None:
    cluster.cleanup(remove_data=not KEEP)
    if KEEP:
        log_phase(f"kept data dirs and logs in {cluster.base_dir}")


class WriteLoad:
    """`writers` threads putting unique keys ``<prefix>w<i>/<n>``, writer i through member
    ``i % len(members)`` and on to the next member after any error.

    `acked` maps every key whose Put answered OK to the revision in that answer; a key
    whose Put failed is in neither `acked` nor a promise (it may or may not be stored).
    `errors` lists ``(member name, status code name, details)`` of every failed Put.
    """

    def __init__(self, members: Sequence[LocalMember], writers: int = 8,
                 prefix: bytes = b"load/", timeout_seconds: float = 10.0,
                 value: bytes = b"v" * 64) -> None:
        self.members, self.prefix, self.value = list(members), prefix, value
        self.timeout_seconds = timeout_seconds
        self.acked: dict[bytes, int] = {}
        self.errors: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._write, args=(i,), daemon=True)
                         for i in range(writers)]

    def start(self) -> "WriteLoad":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop every writer and wait for their last Put to answer."""
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def _write(self, writer: int) -> None:
        target, n = writer % len(self.members), 0
        while not self._stop.is_set():
            member = self.members[target]
            with grpc.insecure_channel(member.endpoint) as channel:
                kv = rpc_pb2_grpc.KVStub(channel)
                while not self._stop.is_set():
                    key = b"%sw%d/%08d" % (self.prefix, writer, n)
                    n += 1
                    try:
                        resp = kv.Put(pb.PutRequest(key=key, value=self.value),
                                      timeout=self.timeout_seconds)
                    except grpc.RpcError as e:
                        with self._lock:
                            self.errors.append((member.name, e.code().name, e.details() or ""))
                        break
                    with self._lock:
                        self.acked[key] = resp.header.revision
            target = (target + 1) % len(self.members)
            self._stop.wait(0.05)   # NB: a back-off while members are down, not a wait for state


def load_keys(endpoint: str, count: int, concurrency: int = 64, prefix: bytes = b"bulk/",
              value: bytes = b"v" * 32, attempts: int = 5) -> tuple[int, int]:
    """Put `count` keys ``<prefix><n>`` through `endpoint`, `concurrency` unary Puts in
    flight (``grpc.aio``), retrying a failed Put up to `attempts` times in all (a busy
    machine can cost the cluster its leader); raises the last error after that.

    Returns the highest revision answered and how many Puts failed and were retried.
    """
    async def run() -> tuple[int, int]:
        async with grpc.aio.insecure_channel(endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            next_key, last, retried = iter(range(count)), 0, 0

            async def put(key: bytes) -> int:
                nonlocal retried
                for attempt in range(attempts):
                    try:
                        resp = await kv.Put(pb.PutRequest(key=key, value=value), timeout=30)
                        return resp.header.revision
                    except grpc.aio.AioRpcError:
                        if attempt == attempts - 1:
                            raise
                        retried += 1
                        await asyncio.sleep(0.1 * (attempt + 1))   # NB: back-off
                raise AssertionError("unreachable")

            async def worker() -> None:
                nonlocal last
                for n in next_key:
                    revision = await put(b"%s%08d" % (prefix, n))
                    last = max(last, revision)   # NB: not max(last, await ...): stale `last`
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return last, retried
    return asyncio.run(run())
