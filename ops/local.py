"""Members on this machine's loopback: free ports and the flags of a one-member cluster.

Shared by the benchmark, the restart benchmark and the integration tests' harness; the
place where `etcdd-ops cluster up` (a local N-member cluster) will live.
"""
from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_member_flags(name: str, data_dir: str, client_port: int, peer_port: int,
                        token: str = "etcd-cluster") -> list[str]:
    """etcd's flags (etcd and etcdd alike) for a one-member cluster on 127.0.0.1."""
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return ["--name", name, "--data-dir", data_dir,
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{name}={peer}", "--initial-cluster-token", token]
