"""The daemon as an operator meets it: started as `etcdd` and as `twistd -n etcdd`,
stopped by SIGINT and SIGTERM, refusing a data dir that is not its own without damage.
"""
from __future__ import annotations

import hashlib
import os
import signal
import sys
import unittest

from tests.integration.harness import ETCDCTL, Member, etcdctl


def tree_digest(path: str) -> str:
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith("-lock"):
                continue   # NB: LMDB's lock file holds the reader table, not data
            full = os.path.join(root, name)
            h.update(full.encode())
            with open(full, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


class TwistdMember(Member):
    def argv(self) -> list[str]:
        twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        return [*twistd, "-n", "--pidfile=", "etcdd",
                *super().argv()[3:]]


@unittest.skipIf(ETCDCTL is None, "etcdctl is not installed")
class DaemonTests(unittest.TestCase):

    def test_sigterm_and_sigint_stop_cleanly(self) -> None:
        """SIGTERM and SIGINT stop the member with exit status 0; data stays."""
        member = Member(name="sig").start()
        self.addCleanup(member.cleanup)
        self.assertEqual(etcdctl(member.endpoint, "put", "a", "1").stdout, "OK\n")
        self.assertEqual(member.kill(signal.SIGTERM), 0, member.log())
        member.start()
        self.assertEqual(etcdctl(member.endpoint, "get", "a", "--print-value-only").stdout,
                         "1\n")
        self.assertEqual(member.kill(signal.SIGINT), 0, member.log())

    def test_twistd_plugin_serves(self) -> None:
        """`twistd -n etcdd` takes the same flags and serves etcdctl."""
        member = TwistdMember(name="tw").start()
        self.addCleanup(member.cleanup)
        self.assertEqual(etcdctl(member.endpoint, "put", "a", "1").stdout, "OK\n")
        self.assertEqual(etcdctl(member.endpoint, "get", "a").stdout, "a\n1\n")
        # NB: twistd re-raises the stopping signal at exit, so its status is -SIGTERM
        # (systemd counts SIGTERM as a clean stop).
        self.assertIn(member.kill(signal.SIGTERM), (0, -signal.SIGTERM), member.log())
        self.assertIn("Server Shut Down.", member.log())

    def test_data_dir_of_another_member_is_refused_untouched(self) -> None:
        """A data dir written by another member (other name/token) is refused, unchanged."""
        first = Member(name="one", token="tok-a").start()
        self.addCleanup(first.cleanup)
        etcdctl(first.endpoint, "put", "k", "v")
        first.stop()
        digest = tree_digest(first.data_dir)
        other = Member(name="one", token="tok-b", data_dir=first.data_dir)
        other.start(wait=False)
        status = other.proc.wait(timeout=30)
        self.assertNotEqual(status, 0)
        self.assertIn("belongs to", other.log())
        self.assertEqual(tree_digest(first.data_dir), digest)

    def test_corrupt_backend_is_refused_untouched(self) -> None:
        """A backend file that is not a database gives a clear error and stays as it was."""
        member = Member(name="bad").start()
        self.addCleanup(member.cleanup)
        member.stop()
        db = os.path.join(member.data_dir, "member", "snap", "db")
        target = os.path.join(db, "data.mdb") if os.path.isdir(db) else db
        with open(target, "r+b") as f:
            f.write(b"garbage!" * 512)
        digest = tree_digest(member.data_dir)
        member.start(wait=False)
        self.assertNotEqual(member.proc.wait(timeout=30), 0)
        self.assertIn("cannot open", member.log())
        self.assertEqual(tree_digest(member.data_dir), digest)


class NotifyTests(unittest.TestCase):

    def test_sd_notify_ready(self) -> None:
        """Under systemd (NOTIFY_SOCKET set) the member sends READY=1 once it serves."""
        import socket
        import tempfile
        path = os.path.join(tempfile.mkdtemp(prefix="etcdd-notify-"), "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(30)
        self.addCleanup(sock.close)
        os.environ["NOTIFY_SOCKET"] = path
        try:
            member = Member(name="notify").start()
        finally:
            del os.environ["NOTIFY_SOCKET"]
        self.addCleanup(member.cleanup)
        self.assertEqual(sock.recv(1024), b"READY=1")


class MissingBackendTests(unittest.TestCase):

    def test_missing_backend_is_refused(self) -> None:
        """A member whose backend file was removed refuses to start instead of starting empty."""
        member = Member(name="gone").start()
        self.addCleanup(member.cleanup)
        etcdctl(member.endpoint, "put", "k", "v")
        member.stop()
        os.remove(os.path.join(member.data_dir, "member", "snap", "db"))
        member.start(wait=False)
        self.assertNotEqual(member.proc.wait(timeout=30), 0)
        self.assertIn("of the backend is missing", member.log())
        self.assertFalse(os.path.exists(os.path.join(member.data_dir, "member", "snap", "db")))
