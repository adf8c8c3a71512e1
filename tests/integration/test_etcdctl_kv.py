"""The real etcdctl 3.4 against etcdd, compared byte for byte with the real etcd 3.4.

One scenario of etcdctl commands runs against a fresh etcd 3.4 and a fresh etcdd started
with the same name, ports and cluster token (so member and cluster IDs agree); every
command's stdout, stderr and exit status must be equal. Only the backend's file sizes
(`dbSize`, `dbSizeInUse`: bbolt and LMDB lay out pages differently) and `took` timings
are masked. Where etcd is not installed the etcdd half still runs and checks key facts.
"""
from __future__ import annotations

import json
import re
import unittest

from tests.integration.harness import ETCD, ETCDCTL, Member, etcdctl, free_port

TXN_SUCCESS = """mod("foo") > "0"
value("a3") = "3"
version("a1") = "1"

put foo txn-yes
get a3
del a5

put foo txn-no

"""

TXN_FAILURE = """create("nope") > "0"
version("foo") > "1"

put foo never

put foo txn-else
get a --prefix

"""

SCENARIO: list[list[str]] = [
    ["put", "foo", "bar"],
    ["put", "foo", "bar2", "--prev-kv"],
    ["put", "foo", "bar3", "--prev-kv", "-w", "json"],
    ["put", "foo", "--ignore-value"],
    ["put", "missing", "--ignore-value"],
    ["put", "foo", "v", "--ignore-value"],
    ["put", "foo", "v", "--lease", "1234"],
    ["put", "foo", "--ignore-lease"],
    ["put", "foo", "v", "--ignore-lease", "--lease", "5"],
    ["put", "missing", "v", "--ignore-lease"],
    ["get", "foo"],
    ["get", "foo", "-w", "json"],
    ["get", "nothing-here", "-w", "json"],
    ["put", "a1", "1"], ["put", "a2", "2"], ["put", "a3", "3"], ["put", "a4", "4"],
    ["put", "a5", "5"], ["put", "a2", "2b"], ["put", "b1", "x"],
    ["get", "a1", "a4"],
    ["get", "a", "--prefix"],
    ["get", "a", "--prefix", "-w", "json"],
    ["get", "a", "--from-key"],
    ["get", "a", "--prefix", "--limit", "2", "-w", "json"],
    ["get", "a", "--prefix", "--sort-by", "MODIFY", "--order", "DESCEND"],
    ["get", "a", "--prefix", "--sort-by", "VALUE"],
    ["get", "a", "--prefix", "--sort-by", "CREATE", "--order", "ASCEND", "-w", "json"],
    ["get", "a", "--prefix", "--sort-by", "VERSION", "--order", "DESCEND", "--limit", "3"],
    ["get", "a", "--prefix", "--order", "DESCEND"],
    ["get", "foo", "--rev", "2"],
    ["get", "foo", "--rev", "3", "-w", "json"],
    ["get", "foo", "--rev", "1000"],
    ["get", "a", "--prefix", "--keys-only"],
    ["get", "a", "--prefix", "--print-value-only"],
    ["get", "a", "--prefix", "--consistency", "s", "-w", "json"],
    ["get", ""],
    ["get", "", "--prefix", "--keys-only"],
    ["txn", "-w", "json"],       # TXN_SUCCESS on stdin
    ["txn"],                     # TXN_FAILURE on stdin
    ["del", "a1"],
    ["del", "a1"],
    ["del", "a2", "a4", "--prev-kv"],
    ["del", "a", "--prefix", "--prev-kv", "-w", "json"],
    ["del", "b", "--from-key"],
    ["del", "nothing", "-w", "json"],
    ["put", "foo", "again"],
    ["compaction", "5"],
    ["get", "foo", "--rev", "4"],
    ["get", "foo", "--rev", "5", "-w", "json"],
    ["compaction", "3"],
    ["compaction", "100000"],
    ["compaction", "--physical", "8"],
    ["get", "", "--prefix", "-w", "json"],
    ["endpoint", "status", "-w", "json"],
    ["endpoint", "hashkv", "-w", "json"],
    ["endpoint", "hashkv", "--rev", "9", "-w", "json"],
    ["endpoint", "health"],
    ["endpoint", "health", "-w", "json"],
    ["member", "list", "-w", "json"],
    ["member", "list"],
]

STDIN = {SCENARIO.index(["txn", "-w", "json"]): TXN_SUCCESS, SCENARIO.index(["txn"]): TXN_FAILURE}
MASKS = [(re.compile(r'"dbSize(InUse)?":\d+'), r'"dbSize\1":N'),
         (re.compile(r"took = [^\s,]+"), "took = T"),
         (re.compile(r'"took":"[^"]*"'), '"took":T'),
         # etcdctl's own retry warning carries a timestamp and a random client target
         (re.compile(r'"ts":"[^"]*"'), '"ts":T'), (re.compile(r'"target":"[^"]*"'), '"target":T')]


def run_scenario(member: Member) -> list[tuple[int, str, str]]:
    out = []
    for i, args in enumerate(SCENARIO):
        r = etcdctl(member.endpoint, *args, stdin=STDIN.get(i))
        stdout, stderr = r.stdout, r.stderr
        for pattern, repl in MASKS:
            stdout, stderr = pattern.sub(repl, stdout), pattern.sub(repl, stderr)
        out.append((r.returncode, stdout, stderr))
    return out


@unittest.skipIf(ETCDCTL is None, "etcdctl (Debian etcd-client) is not installed")
class EtcdctlKVTests(unittest.TestCase):
    """etcdctl's KV commands behave on etcdd exactly as on etcd 3.4."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.client_port, cls.peer_port = free_port(), free_port()
        cls.etcdd = Member(name="kvtest", client_port=cls.client_port,
                           peer_port=cls.peer_port, token="kv-token")
        cls.etcdd.start()
        try:
            cls.etcdd_out = run_scenario(cls.etcdd)
        finally:
            cls.etcdd.cleanup()

    def test_scenario_matches_real_etcd(self) -> None:
        """Every command's stdout, stderr and exit status equal etcd 3.4's."""
        if ETCD is None:
            self.skipTest("etcd 3.4 (Debian etcd-server) is not installed")
        etcd = Member(name="kvtest", client_port=self.client_port, peer_port=self.peer_port,
                      token="kv-token", real_etcd=True)
        etcd.start()
        try:
            etcd_out = run_scenario(etcd)
        finally:
            etcd.cleanup()
        for i, (ours, theirs) in enumerate(zip(self.etcdd_out, etcd_out)):
            with self.subTest(command=SCENARIO[i]):
                self.assertEqual(ours, theirs, f"etcdctl {' '.join(SCENARIO[i])}")

    def out(self, *args: str) -> tuple[int, str, str]:
        return self.etcdd_out[SCENARIO.index(list(args))]

    def test_put_and_get(self) -> None:
        """put answers OK, get prints key and value lines."""
        self.assertEqual(self.out("put", "foo", "bar"), (0, "OK\n", ""))
        self.assertEqual(self.out("get", "foo"), (0, "foo\nbar3\n", ""))

    def test_revisions_in_json(self) -> None:
        """The first put is revision 2; create/mod revision and version follow etcd."""
        kv = json.loads(self.out("get", "foo", "-w", "json")[1])["kvs"][0]
        self.assertEqual((kv["create_revision"], kv["mod_revision"], kv["version"]), (2, 5, 4))

    def test_errors(self) -> None:
        """Refusals come back with etcd's exact messages and exit status 1."""
        cases = {("put", "missing", "--ignore-value"): "etcdserver: key not found",
                 ("put", "foo", "v", "--lease", "1234"): "etcdserver: requested lease not found",
                 ("put", "foo", "v", "--ignore-lease", "--lease", "5"):
                     "etcdserver: lease is provided",
                 ("get", "",): "etcdserver: key is not provided",
                 ("get", "foo", "--rev", "1000"):
                     "etcdserver: mvcc: required revision is a future revision",
                 ("get", "foo", "--rev", "4"):
                     "etcdserver: mvcc: required revision has been compacted"}
        for args, message in cases.items():
            status, _, stderr = self.out(*args)
            self.assertEqual((status, stderr.splitlines()[-1]), (1, f"Error: {message}"), args)
