"""The WAL and the peer port as a user meets them, with real processes: a member whose
WAL was corrupted before its tail refuses to start, naming the file and offset, and
changes nothing; a torn write at the tail is cut and every acknowledged key survives;
garbage on the peer port is refused while the member keeps serving.
"""
from __future__ import annotations

import glob
import hashlib
import os
import socket
import subprocess
import unittest

from tests.integration.harness import ETCDCTL, Member, etcdctl


def dir_digests(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if name.endswith("-lock"):
                continue
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@unittest.skipIf(ETCDCTL is None, "etcdctl is not installed")
class WALDaemonTests(unittest.TestCase):

    def setUp(self) -> None:
        self.member = Member(name="walcheck").start()
        self.addCleanup(self.member.cleanup)
        for i in range(50):
            out = etcdctl(self.member.endpoint, "put", f"key-{i:02d}", f"value-{i:02d}")
            self.assertEqual(out.returncode, 0, out.stderr)
        self.member.stop()
        [self.segment] = glob.glob(os.path.join(self.member.data_dir, "member", "wal", "*.wal"))

    def start_and_fail(self) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.member.argv(), capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, PYTHONPATH=os.getcwd()))
        return proc

    def test_corruption_before_the_tail_refuses_to_start(self) -> None:
        """A flipped byte in a record with records after it: exit 1, a message naming the
        segment and byte offset, and the data dir left exactly as it was."""
        with open(self.segment, "r+b") as f:
            data = f.read(1 << 20)
            offset = data.index(b"key-10")
            f.seek(offset)
            f.write(b"KEY-10")
        before = dir_digests(self.member.data_dir)
        proc = self.start_and_fail()
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        output = proc.stdout + proc.stderr
        self.assertIn(self.segment, output)
        self.assertIn("offset", output)
        self.assertEqual(dir_digests(self.member.data_dir), before)

    def test_torn_tail_is_cut_and_acknowledged_keys_survive(self) -> None:
        """A half-written record after the last good one (a crash mid-write) is cut on
        start; every acknowledged key is still there and new writes work."""
        with open(self.segment, "r+b") as f:
            data = f.read(1 << 20)
            end = len(data.rstrip(b"\0"))
            end += (-end) % 8
            f.seek(end)
            # A length word announcing 600 bytes, then only a few of them: the rest of
            # the frame is the preallocated zeros, as after a crash mid-write.
            f.write((600).to_bytes(8, "little") + b"\x08\x02\x10\x99")
        self.member.start()
        out = etcdctl(self.member.endpoint, "get", "key-", "--prefix", "--keys-only")
        self.assertEqual(out.stdout.split(), [f"key-{i:02d}" for i in range(50)])
        self.assertEqual(etcdctl(self.member.endpoint, "put", "after", "x").returncode, 0)
        self.member.stop()
        self.member.start()
        out = etcdctl(self.member.endpoint, "get", "after", "--print-value-only")
        self.assertEqual(out.stdout, "x\n")

    def test_garbage_on_the_peer_port_is_refused(self) -> None:
        """Bytes that are not our peer protocol get the connection closed; the member
        keeps serving clients."""
        self.member.start()
        for garbage in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\xff" * 4096,
                        b"\x02\x00\x00\x00\x05hello"):
            with socket.create_connection(("127.0.0.1", self.member.peer_port), timeout=5) as s:
                s.sendall(garbage)
                s.settimeout(5)
                try:
                    while s.recv(65536):
                        pass
                except ConnectionResetError:
                    pass
        out = etcdctl(self.member.endpoint, "put", "still", "here")
        self.assertEqual(out.returncode, 0, out.stderr)
