"""HTTP/1.1 on the client port (/health, /version, unknown paths), compared with etcd 3.4:
status, content type and body must be equal."""
from __future__ import annotations

import http.client
import unittest

from tests.integration.harness import ETCD, Member, free_port

PATHS = [("GET", "/health"), ("GET", "/version"), ("GET", "/nope"), ("POST", "/health")]


def fetch_all(member: Member) -> list[tuple[int, str | None, bytes]]:
    out = []
    for method, path in PATHS:
        conn = http.client.HTTPConnection("127.0.0.1", member.client_port, timeout=10)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            out.append((resp.status, resp.getheader("Content-Type"), resp.read()))
        finally:
            conn.close()
    return out


class HttpSurfaceTests(unittest.TestCase):

    @classmethod
    def setUpClass(cls) -> None:
        cls.ports = free_port(), free_port()
        member = Member(name="http", client_port=cls.ports[0], peer_port=cls.ports[1]).start()
        try:
            cls.ours = fetch_all(member)
        finally:
            member.cleanup()

    def test_health_and_version(self) -> None:
        """/health is {"health":"true"} and /version names etcd 3.4.23 / cluster 3.4.0."""
        self.assertEqual(self.ours[0][0], 200)
        self.assertEqual(self.ours[0][2].strip(), b'{"health":"true"}')
        self.assertEqual(self.ours[1][2], b'{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}')
        self.assertEqual(self.ours[2][0], 404)

    def test_matches_real_etcd(self) -> None:
        """Status, content type and body equal etcd 3.4's for each path."""
        if ETCD is None:
            self.skipTest("etcd 3.4 (Debian etcd-server) is not installed")
        etcd = Member(name="http", client_port=self.ports[0], peer_port=self.ports[1],
                      real_etcd=True).start()
        try:
            theirs = fetch_all(etcd)
        finally:
            etcd.cleanup()
        for (method, path), a, b in zip(PATHS, self.ours, theirs):
            with self.subTest(method=method, path=path):
                self.assertEqual(a, b)
