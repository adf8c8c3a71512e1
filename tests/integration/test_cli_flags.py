"""The etcdd command line as a process: exit statuses and the one-line errors on stderr.

Each entry point (``python -m etcdd``, the ``etcdd`` console script when installed, and
``twistd -n etcdd``) must answer a bad flag with exactly one line on stderr and etcd's exit
status (2 for what Go's flag parser refuses, 1 for what etcd's validation refuses). Where the
real etcd 3.4 is installed, its status and message are compared with ours. `main`'s start and
stop path runs with a stand-in ``etcdd.service`` (the real one is another room's).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

from tests.integration.harness import ETCD, ROOT, wait_for

BIN = os.path.dirname(sys.executable)
CONSOLE_SCRIPT = os.path.join(BIN, "etcdd")
TWISTD = os.path.join(BIN, "twistd")

# A stand-in MemberService: its --name says how startService behaves.
FAKE_MAIN = """
import sys, types
from twisted.application.service import Service
from twisted.internet.defer import fail

class MemberService(Service):
    def __init__(self, config, reactor=None):
        self.config = config
    def startService(self):
        Service.startService(self)
        if self.config.name == "raise":
            raise RuntimeError("boom")
        if self.config.name == "fail":
            return fail(RuntimeError("deferred boom"))
        sys.stderr.write("fake started\\n")
        sys.stderr.flush()
    def stopService(self):
        Service.stopService(self)
        sys.stderr.write("fake stopped\\n")
        sys.stderr.flush()

module = types.ModuleType("etcdd.service")
module.MemberService = MemberService
sys.modules["etcdd.service"] = module
from etcdd.tap import main
main(sys.argv[1:])
"""

# argv etcd 3.4.23 refuses, with its exit status
BAD_ARGS: list[tuple[list[str], int]] = [
    (["--bogus"], 2),
    (["--name"], 2),
    (["--snapshot-count", "abc"], 2),
    (["--initial-cluster-state", "foo"], 2),
    (["--pre-vote=maybe"], 2),
    (["--heartbeat-interval=-1"], 2),
    (["--max-concurrent-streams=5000000000"], 2),
    (["--listen-client-urls", "ftp://x:1"], 2),
    (["--listen-client-urls", "http://127.0.0.1"], 2),
    (["--listen-client-urls", "http://localhost:9/path"], 2),
    (["--election-timeout", "100"], 1),
    (["--election-timeout", "60000"], 1),
    (["--listen-client-urls", "http://127.0.0.1:1"], 1),
    (["--auto-compaction-mode", "x"], 1),
    (["extra"], 1),
]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, env=clean_env(**env),
                          cwd=tempfile.gettempdir(), timeout=60)


def entry_points() -> list[list[str]]:
    points = [[sys.executable, "-m", "etcdd"], [TWISTD, "-n", "etcdd"]]
    if os.path.exists(CONSOLE_SCRIPT):
        points.append([CONSOLE_SCRIPT])
    return points


class BadFlagTests(unittest.TestCase):

    def assertOneLine(self, argv: list[str], status: int, line: str) -> None:
        result = run(argv)
        self.assertEqual((result.returncode, result.stdout, result.stderr),
                         (status, "", line + "\n"), argv)

    def test_unknown_flag_exits_2_with_one_line(self) -> None:
        """``--bogus`` prints one line and exits 2 from every entry point."""
        for point in entry_points():
            self.assertOneLine([*point, "--bogus"], 2,
                               "etcdd: flag provided but not defined: -bogus")

    def test_malformed_value_exits_2(self) -> None:
        """A malformed value is one line and status 2."""
        for point in entry_points():
            self.assertOneLine([*point, "--snapshot-count=x"], 2,
                               'etcdd: invalid value "x" for flag -snapshot-count: parse error')

    def test_invalid_configuration_exits_1(self) -> None:
        """A well-formed but invalid configuration is one line and status 1, as in etcd."""
        for point in entry_points():
            self.assertOneLine([*point, "--election-timeout", "10"], 1,
                               "etcdd: --election-timeout[10ms] should be at least as 5 times "
                               "as --heartbeat-interval[100ms]")

    def test_malformed_env_exits_1(self) -> None:
        """A malformed ETCD_* variable names the variable."""
        result = run([sys.executable, "-m", "etcdd"], ETCD_MAX_TXN_OPS="many")
        self.assertEqual((result.returncode, result.stderr),
                         (1, 'etcdd: invalid value "many" for ETCD_MAX_TXN_OPS: parse error\n'))

    def test_version_and_help(self) -> None:
        """--version and --help print on stdout and exit 0."""
        for point in entry_points():
            version = run([*point, "--version"])
            self.assertEqual((version.returncode, version.stderr), (0, ""))
            self.assertEqual(version.stdout.splitlines()[0], "etcd Version: 3.4.23")
            self.assertIn("etcdd Version: ", version.stdout)
            usage = run([*point, "--help"])
            self.assertEqual(usage.returncode, 0)
            self.assertIn("  --initial-cluster 'default=http://localhost:2380'", usage.stdout)


@unittest.skipUnless(ETCD, "the real etcd 3.4 is not installed")
class SameAsEtcdTests(unittest.TestCase):

    def etcd_says(self, argv: list[str], data_dir: str) -> tuple[int, str]:
        """etcd's exit status and its one reason, from the usage dump or the error log line."""
        result = run([ETCD, "--data-dir", data_dir, *argv])
        verifying = re.search(r"error verifying flags, (.*)\. See 'etcd --help'\.", result.stderr)
        reason = verifying.group(1) if verifying else result.stderr.splitlines()[0]
        return result.returncode, reason

    def test_same_status_and_reason(self) -> None:
        """For each bad command line etcdd exits as etcd does, giving etcd's reason."""
        data_dir = tempfile.mkdtemp(prefix="etcdd-flags-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        for argv, status in BAD_ARGS:
            expected = self.etcd_says(argv, os.path.join(data_dir, "etcd"))
            self.assertEqual(expected[0], status, argv)
            ours = run([sys.executable, "-m", "etcdd", "--data-dir",
                        os.path.join(data_dir, "etcdd"), *argv])
            self.assertEqual((ours.returncode, ours.stderr), (status, f"etcdd: {expected[1]}\n"),
                             argv)


class MainLifecycleTests(unittest.TestCase):
    """`etcdd.tap.main` around a stand-in MemberService."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="etcdd-main-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.script = os.path.join(self.dir, "fake_main.py")
        with open(self.script, "w") as f:
            f.write(FAKE_MAIN)
        self.stderr_path = os.path.join(self.dir, "stderr")

    def start(self, name: str) -> subprocess.Popen:
        with open(self.stderr_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, self.script, "--name", name,
                                     "--data-dir", os.path.join(self.dir, "data")],
                                    stdout=subprocess.DEVNULL, stderr=err, env=clean_env(),
                                    cwd=self.dir)
        self.addCleanup(self.reap, proc)
        return proc

    def reap(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def stderr(self) -> str:
        with open(self.stderr_path) as f:
            return f.read()

    def test_start_failure_exits_1(self) -> None:
        """A service that raises or fails in startService is logged critical; status 1."""
        for name, error in (("raise", "RuntimeError: boom"),
                            ("fail", "RuntimeError: deferred boom")):
            proc = self.start(name)
            self.assertEqual(proc.wait(timeout=60), 1)
            log = self.stderr()
            self.assertIn("[etcdd#critical] etcdd failed to start", log)
            self.assertIn(error, log)

    def test_signal_stops_service_and_exits_0(self) -> None:
        """SIGTERM and SIGINT stop the service before the reactor ends; status 0."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            proc = self.start("ok")
            wait_for(lambda: "fake started" in self.stderr(), 60, "the fake service to start")
            proc.send_signal(sig)
            self.assertEqual(proc.wait(timeout=60), 0)
            self.assertIn("fake stopped", self.stderr())


if __name__ == "__main__":
    unittest.main()
