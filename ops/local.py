"""Members on this machine's loopback: free ports and the flags of a one-member cluster.

Shared by the benchmark, the restart benchmark, the integration tests' harness and
`ops.cluster` (the local N-member cluster behind `etcdd-ops cluster up`).
"""
from __future__ import annotations

import signal
import socket
import subprocess


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_member_flags(name: str, data_dir: str, client_port: int, peer_port: int,
                        token: str = "etcd-cluster") -> list[str]:
    """etcd's flags (etcd and etcdd alike) for a one-member cluster on 127.0.0.1."""
    return cluster_flags(name, data_dir, client_port, peer_port,
                         f"{name}=http://127.0.0.1:{peer_port}", token)


def cluster_flags(name: str, data_dir: str, client_port: int, peer_port: int,
                  initial_cluster: str, token: str = "etcd-cluster",
                  state: str = "new") -> list[str]:
    """etcd's static-bootstrap flags (etcd and etcdd alike) for one member on 127.0.0.1.

    `initial_cluster` is etcd's ``--initial-cluster`` value, every member's
    ``name=peer-url`` joined by commas, e.g. ``a=http://127.0.0.1:5001,b=http://...``.
    """
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return ["--name", name, "--data-dir", data_dir,
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", initial_cluster, "--initial-cluster-token", token,
            "--initial-cluster-state", state]


def unwind_on_signals() -> None:
    """Make Ctrl-C and SIGTERM raise KeyboardInterrupt in the main thread, so a tool that
    started members unwinds through its cleanup and reaps them.

    NB: a shell without job control starts background jobs with SIGINT ignored; this
    restores it."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def signal_and_reap(proc: subprocess.Popen, sig: int = signal.SIGKILL,
                    timeout: float = 30.0) -> int:
    """Send `sig` unless `proc` has exited, then reap it (SIGKILL after `timeout`); its
    exit status (negative: killed by that signal). An unreaped child would still answer
    `kill -0`."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
