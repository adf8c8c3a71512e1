"""systemd Type=notify (issue 5 groundwork): READY=1 only once the member serves, that is
once it has joined its cluster (etcd's ReadyNotify), and STOPPING=1 when it stops.

The real etcd 3.4 sends READY=1 at the same point (`embed` waits for ReadyNotify), so the
first test also runs with ``ETCDD_CLUSTER_IMPL=etcd``.
"""
from __future__ import annotations

import os
import signal
import socket
import tempfile
import unittest
from unittest import mock

from tests.integration.cluster import REAL_ETCD, ClusterTestCase


class NotifySocket:
    """A NOTIFY_SOCKET the test reads, as systemd would."""

    def __init__(self, case: unittest.TestCase) -> None:
        self.path = os.path.join(tempfile.mkdtemp(prefix="etcdd-notify-"), "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        case.addCleanup(self.sock.close)

    def receive(self, timeout: float) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1024)
        except socket.timeout:
            return None


class ReadyAfterQuorumTests(ClusterTestCase):
    """One member of three: not ready alone; ready once a quorum lets it publish."""

    def setUp(self) -> None:
        super().setUp()
        # ClusterTestCase started every member; begin again with only `a` up.
        for member in self.cluster.members:
            self.cluster.kill(member, signal.SIGKILL)

    def test_ready_only_once_the_member_serves(self) -> None:
        """Restarted alone, a member sends nothing (no quorum, it cannot serve); with a
        second member up it sends READY=1 and answers a linearizable read at once; on
        SIGTERM it sends STOPPING=1."""
        a, b, _ = self.cluster.members
        notify = NotifySocket(self)
        with mock.patch.dict(os.environ, {"NOTIFY_SOCKET": notify.path}):
            self.cluster.start_member(a, wait=False)
        self.assertIsNone(notify.receive(3.0))
        self.cluster.start_member(b, wait=False)
        self.assertEqual(notify.receive(60.0), b"READY=1")
        self.ctl_ok("get", "anything", on=a)
        if REAL_ETCD:
            return          # etcd 3.4 sends no STOPPING=1
        self.cluster.stop(a)
        self.assertEqual(notify.receive(30.0), b"STOPPING=1")
