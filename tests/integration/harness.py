"""Real processes on loopback for integration tests: etcdd members, the real etcd 3.4
when installed (to compare answers), and the real etcdctl.

Every process a test starts is stopped and reaped (`Popen.wait()`), killed or not.
Waits poll a condition with a deadline; nothing sleeps a fixed time to be "sure".
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Callable

from ops.local import free_port, single_member_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ETCDCTL = shutil.which("etcdctl")
ETCD = shutil.which("etcd")


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")


@dataclass
class Member:
    """One etcdd (or etcd) process. `data_dir` survives restarts; `stop()` reaps."""
    name: str = "default"
    data_dir: str = ""
    client_port: int = 0
    peer_port: int = 0
    token: str = "etcd-cluster"
    extra: list[str] = field(default_factory=list)
    real_etcd: bool = False
    proc: subprocess.Popen | None = None
    log_path: str = ""

    def __post_init__(self) -> None:
        if not self.data_dir:
            self.data_dir = os.path.join(tempfile.mkdtemp(prefix="etcdd-test-"), f"{self.name}.etcd")
        self.client_port = self.client_port or free_port()
        self.peer_port = self.peer_port or free_port()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def argv(self) -> list[str]:
        flags = [*single_member_flags(self.name, self.data_dir, self.client_port,
                                      self.peer_port, self.token), *self.extra]
        if self.real_etcd:
            return [ETCD, *flags]
        return [sys.executable, "-m", "etcdd", *flags]

    def start(self, wait: bool = True) -> "Member":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.log_path = os.path.join(os.path.dirname(self.data_dir), f"{self.name}.log")
        log = open(self.log_path, "ab")
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                     env=env, cwd=os.path.dirname(self.data_dir))
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"member exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.client_url}/health", timeout=1) as r:
                    return json.loads(r.read()).get("health") == "true"
            except OSError:
                return False
        wait_for(ready, timeout, f"{self.name} to serve on {self.endpoint}")

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")[-4000:]
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Send `sig` and reap; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def stop(self) -> int:
        return self.kill(signal.SIGTERM)

    def cleanup(self) -> None:
        self.kill(signal.SIGKILL)
        shutil.rmtree(os.path.dirname(self.data_dir), ignore_errors=True)


def etcdctl(endpoint: str, *args: str, stdin: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, ETCDCTL_API="3")
    return subprocess.run([ETCDCTL, "--endpoints", endpoint, *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=timeout)
