"""A healthy 3-member cluster under the real etcdctl: KV on any member, membership, status.

Every KV command works through all endpoints and through each member alone, and every
member then answers the same. `member list` names and URLs match the flags, and member and
cluster IDs equal etcd's derivation computed here, independently (etcd 3.4
`etcdserver/api/membership/member.go` NewMember and `cluster.go` genID). `endpoint status`
agrees on leader and term and has etcd's table columns.
"""
from __future__ import annotations

import hashlib
import struct

from tests.integration.cluster import ClusterTestCase

STATUS_COLUMNS = ["ENDPOINT", "ID", "VERSION", "DB SIZE", "IS LEADER", "IS LEARNER",
                  "RAFT TERM", "RAFT INDEX", "RAFT APPLIED INDEX", "ERRORS"]


def derived_member_id(peer_urls: list[str], token: str) -> int:
    """etcd's member ID: the first 8 bytes, big-endian, of sha1(sorted peer URLs ‖ token)."""
    digest = hashlib.sha1(("".join(sorted(peer_urls)) + token).encode()).digest()
    return struct.unpack(">Q", digest[:8])[0]


def derived_cluster_id(member_ids: list[int]) -> int:
    """etcd's cluster ID: the first 8 bytes of sha1 over the sorted 8-byte member IDs."""
    digest = hashlib.sha1(b"".join(struct.pack(">Q", i) for i in sorted(member_ids))).digest()
    return struct.unpack(">Q", digest[:8])[0]


def table_rows(text: str) -> list[list[str]]:
    """The cells of an etcdctl ``-w table`` (header row first), borders dropped."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|")]


TXN = """value("{p}k1") = "v2"

put {p}k2 from-txn
get {p}k1

put {p}k2 txn-failed

"""


class ClusterKVTests(ClusterTestCase):
    """KV through every endpoint and each member singly; all members agree afterwards."""
    shared_cluster = True
    token = "cluster-kv-token"

    def targets(self) -> dict[str, object]:
        return {"all": None, **{m.name: m for m in self.cluster.members}}

    def assert_members_agree(self, prefix: str) -> dict:
        """Every member gives the same linearizable `get --prefix -w json` (but member_id)."""
        answers = {}
        for member in self.cluster.members:
            answer = self.ctl_json("get", prefix, "--prefix", on=member)
            self.assertEqual(answer["header"]["member_id"], member.member_id)
            del answer["header"]["member_id"]
            answers[member.name] = answer
        first = answers[self.cluster.members[0].name]
        for name, answer in answers.items():
            self.assertEqual(answer, first, f"member {name} disagrees")
        return first

    def test_put_get_del_txn_on_any_member(self) -> None:
        """put, get (plain, --prefix, --rev, -w json), txn and del work through all
        endpoints and through each member alone, and every member then reads the same."""
        self.cluster.statuses()   # learn every member's ID
        for label, on in self.targets().items():
            with self.subTest(endpoints=label):
                p = f"kv/{label}/"
                self.assertEqual(self.ctl_ok("put", p + "k1", "v1", on=on), "OK\n")
                first = self.ctl_json("get", p + "k1", on=on)["kvs"][0]["mod_revision"]
                self.assertEqual(self.ctl_ok("put", p + "k1", "v2", on=on), "OK\n")
                self.assertEqual(self.ctl_ok("put", p + "k3", "v3", on=on), "OK\n")
                self.assertEqual(self.ctl_ok("get", p + "k1", on=on), f"{p}k1\nv2\n")
                self.assertEqual(self.ctl_ok("get", p + "k1", "--rev", str(first), on=on),
                                 f"{p}k1\nv1\n")
                self.assertEqual(self.ctl_ok("txn", on=on, stdin=TXN.format(p=p)),
                                 f"SUCCESS\n\nOK\n\n{p}k1\nv2\n")
                got = self.ctl_json("get", p, "--prefix", on=on)
                self.assertEqual(got["count"], 3)
                self.assertEqual(self.ctl_ok("del", p + "k3", on=on), "1\n")
                self.assertEqual(self.ctl_ok("get", p, "--prefix", "--keys-only", on=on),
                                 f"{p}k1\n\n{p}k2\n\n")
                agreed = self.assert_members_agree(p)
                self.assertEqual(agreed["count"], 2)

    def test_compaction_on_any_member(self) -> None:
        """A compaction through any member is seen by all: older revisions are refused."""
        for label, on in self.targets().items():
            with self.subTest(endpoints=label):
                key = f"compact/{label}"
                self.ctl_ok("put", key, "old", on=on)
                old = self.ctl_json("get", key, on=on)["kvs"][0]["mod_revision"]
                self.ctl_ok("put", key, "new", on=on)
                rev = self.ctl_json("get", key, on=on)["kvs"][0]["mod_revision"]
                self.assertEqual(self.ctl_ok("compaction", str(rev), on=on),
                                 f"compacted revision {rev}\n")
                for member in self.cluster.members:
                    r = self.ctl("get", key, "--rev", str(old), on=member)
                    self.assertEqual((r.returncode, r.stderr.splitlines()[-1:]),
                                     (1, ["Error: etcdserver: mvcc: required revision has "
                                          "been compacted"]), member.name)
                    self.assertEqual(self.ctl_ok("get", key, "--rev", str(rev), on=member),
                                     f"{key}\nnew\n")

    def test_member_list(self) -> None:
        """member list -w json: three started members with their names, URLs and IDs as
        etcd derives them, in a cluster whose ID etcd's derivation gives."""
        listing = self.ctl_json("member", "list")
        members = {m["name"]: m for m in listing["members"]}
        self.assertEqual(sorted(members), [m.name for m in self.cluster.members])
        ids = []
        for member in self.cluster.members:
            got = members[member.name]
            self.assertEqual(got["peerURLs"], [member.peer_url])
            self.assertEqual(got["clientURLs"], [member.client_url])
            self.assertEqual(got["ID"], derived_member_id([member.peer_url], self.token))
            self.assertFalse(got.get("isLearner", False))
            ids.append(got["ID"])
        self.assertEqual(listing["header"]["cluster_id"], derived_cluster_id(ids))
        for member in self.cluster.members:
            header = self.ctl_json("member", "list", on=member)["header"]
            self.assertEqual((header["cluster_id"], header["member_id"]),
                             (derived_cluster_id(ids),
                              derived_member_id([member.peer_url], self.token)))

    def test_endpoint_status_json(self) -> None:
        """endpoint status --cluster -w json: one leader and one term named by all three
        (once every member applied the leader's entries: the reported term is the last
        applied entry's, in etcd 3.4 as here)."""
        statuses = self.agreed_statuses()
        self.assertEqual(sorted(s["Endpoint"] for s in statuses),
                         sorted(m.client_url for m in self.cluster.members))
        ids = {derived_member_id([m.peer_url], self.token) for m in self.cluster.members}
        self.assertEqual({s["Status"]["header"]["member_id"] for s in statuses}, ids)
        self.assertEqual(len({s["Status"]["leader"] for s in statuses}), 1, statuses)
        self.assertIn(statuses[0]["Status"]["leader"], ids)
        self.assertEqual(len({s["Status"]["raftTerm"] for s in statuses}), 1, statuses)
        self.assertEqual(len({s["Status"]["header"]["cluster_id"] for s in statuses}), 1)
        for s in statuses:
            status = s["Status"]
            self.assertGreater(status["raftIndex"], 0)
            self.assertGreaterEqual(status["raftIndex"], status["raftAppliedIndex"])
            self.assertEqual(status["header"]["raft_term"], status["raftTerm"])
            self.assertRegex(status["version"], r"^3\.4\.\d+$")
            self.assertFalse(status.get("errors"))

    def agreed_statuses(self) -> list:
        """`endpoint status --cluster -w json` once all members name one leader and term."""
        found: list = []

        def agreed() -> bool:
            found[:] = self.ctl_json("endpoint", "status", "--cluster")
            return (len({s["Status"]["leader"] for s in found}) == 1
                    and len({s["Status"]["raftTerm"] for s in found}) == 1)
        self.wait(agreed, 15, "the members to agree on leader and term")
        return found

    def test_endpoint_status_table(self) -> None:
        """endpoint status --cluster -w table: etcd's columns, exactly one leader row."""
        self.agreed_statuses()
        rows = table_rows(self.ctl_ok("endpoint", "status", "--cluster", "-w", "table"))
        self.assertEqual(rows[0], STATUS_COLUMNS)
        body = rows[1:]
        self.assertEqual(len(body), 3)
        leader_column = STATUS_COLUMNS.index("IS LEADER")
        self.assertEqual(sorted(row[leader_column] for row in body), ["false", "false", "true"])
        ids = {f"{derived_member_id([m.peer_url], self.token):x}" for m in self.cluster.members}
        self.assertEqual({row[1] for row in body}, ids)
        self.assertEqual({row[STATUS_COLUMNS.index("IS LEARNER")] for row in body}, {"false"})
        self.assertEqual(len({row[STATUS_COLUMNS.index("RAFT TERM")] for row in body}), 1)
