"""systemd Type=notify (issue 5 groundwork): READY=1 only once the member serves, that is
once it has joined its cluster (etcd's ReadyNotify), and STOPPING=1 when it stops.

The real etcd 3.4 sends READY=1 at the same point (`embed` waits for ReadyNotify), so the
tests also run with ``ETCDD_CLUSTER_IMPL=etcd`` (which sends no STOPPING=1).
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
    """A NOTIFY_SOCKET the test reads, as systemd would: a file, or with `abstract` a
    name in Linux's abstract namespace (NOTIFY_SOCKET=@name)."""

    def __init__(self, case: unittest.TestCase, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        case.addCleanup(self.sock.close)
        if abstract:
            name = f"etcdd-notify-{os.getpid()}-{id(self):x}"
            self.sock.bind("\0" + name)
            self.path = "@" + name
        else:
            self.path = os.path.join(tempfile.mkdtemp(prefix="etcdd-notify-"), "notify")
            self.sock.bind(self.path)

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


class ReadyOnceTests(ClusterTestCase):
    """A one-member cluster told to notify an abstract socket (NOTIFY_SOCKET=@name)."""
    size = 1

    def setUp(self) -> None:
        super().setUp()
        self.cluster.kill(self.cluster.members[0], signal.SIGKILL)

    def test_ready_once_then_stopping(self) -> None:
        """A lone member sends READY=1 exactly once, serves a write as soon as it has, and
        on SIGTERM sends STOPPING=1 and exits 0."""
        (a,) = self.cluster.members
        notify = NotifySocket(self, abstract=True)
        with mock.patch.dict(os.environ, {"NOTIFY_SOCKET": notify.path}):
            self.cluster.start_member(a, wait=False)
        self.assertEqual(notify.receive(60.0), b"READY=1")
        self.ctl_ok("put", "ready", "yes", on=a)
        self.assertIsNone(notify.receive(1.0))      # nothing more while it serves
        if REAL_ETCD:
            return          # etcd 3.4 sends no STOPPING=1 and dies by the re-raised signal
        self.assertEqual(self.cluster.stop(a), 0)
        self.assertEqual(notify.receive(5.0), b"STOPPING=1")
        self.assertIsNone(notify.receive(0.5))
