"""Member and cluster IDs (etcdd/server/membership.py) against numbers measured from etcd.

Every expected ID below was read from a real etcd 3.4.23 (``etcdctl endpoint status -w
json`` / ``member list -w json`` / ``member add -w json``) started with the flags shown.
"""
from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from etcdd.config import ConfigError, parse_args
from etcdd.server.membership import (Member, cluster_id, initial_cluster_id, initial_members,
                                     local_member_id, member_id)

# etcd --name m1|m2|m3 --initial-cluster-token tok3 --initial-cluster THREE (m1 advertising
# both of its URLs)
THREE = ("m1=http://127.0.0.1:23831,m1=http://127.0.0.1:23821,"
         "m2=http://127.0.0.1:23822,m3=http://127.0.0.1:23823")
M1, M2, M3 = 9451994190242248230, 7405623836410202494, 3267279636406613394
THREE_CLUSTER = 13134403243402032323


class MemberIdTests(SynchronousTestCase):

    def test_default_member(self) -> None:
        """``etcd`` with no flags: default=http://localhost:2380, token etcd-cluster."""
        mid = member_id(["http://localhost:2380"], "etcd-cluster")
        self.assertEqual(mid, 10276657743932975437)
        self.assertEqual(f"{mid:x}", "8e9e05c52164694d")
        self.assertEqual(cluster_id([mid]), 14841639068965178418)

    def test_single_member_with_token(self) -> None:
        """``etcd --initial-cluster x=http://127.0.0.1:23811 --initial-cluster-token tok``."""
        mid = member_id(["http://127.0.0.1:23811"], "tok")
        self.assertEqual(mid, 8145455945784099648)
        self.assertEqual(cluster_id([mid]), 5203874671960074782)
        other = member_id(["http://127.0.0.1:23851"], "tokadd")
        self.assertEqual(other, 3072568649343126677)
        self.assertEqual(cluster_id([other]), 58634658764025020)

    def test_several_peer_urls_are_sorted(self) -> None:
        """A member's peer URLs are hashed in sorted order, whatever order they were given in."""
        urls = ["http://127.0.0.1:23831", "http://127.0.0.1:23821"]
        self.assertEqual(member_id(urls, "tok3"), M1)
        self.assertEqual(member_id(urls[::-1], "tok3"), M1)
        self.assertEqual(member_id(["http://127.0.0.1:23822"], "tok3"), M2)
        self.assertEqual(member_id(["http://127.0.0.1:23823"], "tok3"), M3)

    def test_cluster_id_ignores_member_order(self) -> None:
        """The cluster ID hashes member IDs in ascending order."""
        self.assertEqual(cluster_id([M1, M2, M3]), THREE_CLUSTER)
        self.assertEqual(cluster_id([M3, M1, M2]), THREE_CLUSTER)

    def test_runtime_added_member(self) -> None:
        """``member add`` hashes the URLs with an empty token and the leader's Unix seconds."""
        # etcdctl member add m9 --peer-urls http://127.0.0.1:23899 at 1795435097
        self.assertEqual(member_id(["http://127.0.0.1:23899"], "", now_unix=1795435097),
                         9994834756040078864)


class InitialMembersTests(SynchronousTestCase):

    def test_three_members(self) -> None:
        """--initial-cluster becomes members in ID order, each with its sorted peer URLs."""
        config = parse_args(["--name", "m1", "--initial-cluster", THREE,
                             "--initial-cluster-token", "tok3"], {})
        self.assertEqual(initial_members(config), [
            Member(M3, "m3", ("http://127.0.0.1:23823",)),
            Member(M2, "m2", ("http://127.0.0.1:23822",)),
            Member(M1, "m1", ("http://127.0.0.1:23821", "http://127.0.0.1:23831")),
        ])
        self.assertEqual(initial_cluster_id(config), THREE_CLUSTER)
        self.assertEqual(local_member_id(config), M1)

    def test_defaults(self) -> None:
        """With no flags the one member and the cluster get etcd's default IDs."""
        config = parse_args([], {})
        self.assertEqual([m.id for m in initial_members(config)], [10276657743932975437])
        self.assertEqual(initial_cluster_id(config), 14841639068965178418)
        self.assertFalse(initial_members(config)[0].is_learner)

    def test_name_is_not_hashed(self) -> None:
        """Only peer URLs and the token make an ID: ``--name x`` keeps the default ID."""
        self.assertEqual(local_member_id(parse_args(["--name", "x"], {})), 10276657743932975437)

    def test_identical_ids_refused(self) -> None:
        """Two names with the same URLs would share an ID; etcd refuses that."""
        config = parse_args(["--initial-cluster",
                             "default=http://127.0.0.1:1,b=http://127.0.0.1:1"], {})
        e = self.assertRaises(ConfigError, initial_members, config)
        self.assertEqual(str(e), f"member exists with identical ID "
                                 f"{member_id(['http://127.0.0.1:1'], 'etcd-cluster'):x}")

    def test_local_name_missing(self) -> None:
        """The local member must be in --initial-cluster."""
        config = parse_args(["--initial-cluster", "y=http://127.0.0.1:1"], {})
        self.assertRaises(ConfigError, local_member_id, config)
