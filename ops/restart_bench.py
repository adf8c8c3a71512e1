"""How long a restarted member takes to serve its first request with N keys stored.

`python -m ops.restart_bench --keys 1000000 [--compare]` loads N keys (in txns of 128 puts,
values of 100 bytes) into a fresh etcdd (and, with --compare, a fresh etcd 3.4), kills it
with SIGKILL, restarts it three times and prints the seconds from exec to the first
answered Range. etcd 3.4 rebuilds its in-memory key index on start; etcdd's is on disk.
"""
from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Sequence

import grpc

from etcdd.proto import rpc_pb2 as pb, rpc_pb2_grpc
from ops.bench import Server


def load(endpoint: str, keys: int) -> float:
    started = time.monotonic()
    with grpc.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        pending = []
        for start in range(0, keys, 128):
            ops = [pb.RequestOp(request_put=pb.PutRequest(
                key=b"/registry/pods/default/pod-%07d" % i, value=b"x" * 100))
                for i in range(start, min(start + 128, keys))]
            pending.append(kv.Txn.future(pb.TxnRequest(success=ops), timeout=300))
            if len(pending) >= 32:
                for f in pending:
                    f.result()
                pending = []
        for f in pending:
            f.result()
    return time.monotonic() - started


def first_answer_seconds(argv: Sequence[str], endpoint: str, cwd: str) -> float:
    """Start `argv`, return the seconds until a Range is answered; the process is killed."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        with grpc.insecure_channel(endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            while proc.poll() is None:
                try:
                    kv.Range(pb.RangeRequest(key=b"/registry/pods/default/pod-0000001"),
                             timeout=1, wait_for_ready=True)
                    return time.monotonic() - started
                except grpc.RpcError:
                    continue
        raise RuntimeError(f"server exited with {proc.returncode}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def measure(label: str, command: Sequence[str], keys: int, restarts: int) -> None:
    root = tempfile.mkdtemp(prefix="etcdd-restart-")
    try:
        server = Server(label, command, root)
        try:
            server.wait_ready()
            print(f"{label}: loaded {keys} keys in {load(server.endpoint, keys):.1f}s",
                  flush=True)
        finally:
            server.stop()
        for i in range(restarts):
            seconds = first_answer_seconds(server.argv, server.endpoint, root)
            print(f"{label}: restart {i + 1}: first Range answered {seconds:.3f}s after exec",
                  flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="etcdd-ops restart-bench", description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--compare", action="store_true", help="also run /usr/bin/etcd")
    parser.add_argument("--etcd", default="/usr/bin/etcd")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    measure("etcdd", [sys.executable, "-m", "etcdd"], args.keys, args.restarts)
    if args.compare:
        measure("etcd", [args.etcd], args.keys, args.restarts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
