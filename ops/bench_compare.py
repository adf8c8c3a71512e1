"""`ops.bench --compare` and `ops.bench check-perf`: the parts of the benchmark that start
servers and run etcdctl. A shell (ops/*).

``--compare --members N`` starts an N-member etcd 3.4 cluster, runs the cell matrix against
it, stops it, then does the same with an N-member etcdd cluster (`ops.cluster.LocalCluster`
on 127.0.0.1 free ports, fresh data dirs under one temp root). Like etcd's
``tools/benchmark --endpoints`` with every member, channel j goes to endpoint j % N; the
endpoints are ordered leader first, so the single-channel cells of both servers measure the
same path (client -> leader) rather than wherever the election happened to land. Server
CPU is summed over every member's process tree.
"""
from __future__ import annotations

import argparse
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

from ops.bench import _note, cpu_seconds, process_tree, run_matrix
from ops.cluster import ClusterError, LocalCluster, LocalMember


def leader_first(members: Sequence[LocalMember], leader: LocalMember) -> list[str]:
    """The members' endpoints with the leader's first, the rest in member order.

    Members ``a b c`` led by ``b`` give ``[b, a, c]``'s endpoints.
    """
    return [m.endpoint for m in (leader, *(m for m in members if m is not leader))]


def _start_cluster(label: str, args: argparse.Namespace,
                   root: str) -> tuple[LocalCluster, LocalMember]:
    """An N-member cluster of `label` (etcd or etcdd), started, and its leader; raises
    RuntimeError (with the failing member's log) if it does not get there."""
    cluster = LocalCluster(args.members, base_dir=os.path.join(root, label),
                           real_etcd=label == "etcd")
    cluster.use_program([args.etcd] if label == "etcd" else args.etcdd.split())
    try:
        cluster.start(wait=True, timeout=60.0)
        leader = cluster.wait_leader(timeout=30.0)
    except ClusterError as e:
        cluster.cleanup()
        raise RuntimeError(f"{label} cluster: {e}") from None
    except BaseException:
        cluster.cleanup()
        raise
    return cluster, leader


def exited_members(members: Sequence[LocalMember]) -> str | None:
    """``"member b exited with -11"`` (one clause per member) if any started member has
    exited, else None."""
    gone = [f"member {m.name} exited with {m.proc.returncode}" for m in members
            if m.proc is not None and m.proc.poll() is not None]
    return "; ".join(gone) or None


def keep_logs(label: str, cluster: LocalCluster) -> str:
    """Copy every member's log to a new temp dir (the cluster's dir is about to go)."""
    kept = tempfile.mkdtemp(prefix=f"etcdd-{label}-logs-")
    for member in cluster.members:
        if os.path.exists(member.log_path):
            shutil.copy(member.log_path, kept)
    return kept


def _bench_cluster(label: str, args: argparse.Namespace, root: str) -> tuple[list[dict], dict]:
    """Start `label`'s cluster, run the matrix (and check perf), stop it: (cells, info).

    A member that exits ends the matrix and skips check perf; ``info["problem"]`` says
    which, and the members' logs are kept (``info["logs"]``).
    """
    cluster, leader = _start_cluster(label, args, root)
    try:
        endpoints = leader_first(cluster.members, leader)
        pids = {m.proc.pid for m in cluster.members if m.proc is not None}
        _note(f"{label}: {len(cluster.members)} member(s), leader {leader.name}, endpoints "
              f"{','.join(endpoints)}; {' '.join(leader.argv)}")
        cells = run_matrix(args, endpoints, pids, label,
                           problem=lambda: exited_members(cluster.members))
        info: dict = {"members": len(cluster.members), "leader": leader.name}
        if args.check_perf and exited_members(cluster.members) is None:
            info["check_perf"] = check_perf(args.etcdctl, endpoints, args.load, pids,
                                            echo=args.write_out != "json",
                                            problem=lambda: exited_members(cluster.members))
        after = cluster.leader()
        info["leader_after"] = after.name if after else None
        if (problem := exited_members(cluster.members)) is not None:
            info["problem"], info["logs"] = problem, keep_logs(label, cluster)
            _note(f"{label}: {problem}; member logs kept in {info['logs']}")
        return cells, info
    finally:
        cluster.cleanup()


def add_ratios(cells: list[dict]) -> None:
    """Set ``ratio`` on each etcdd cell: its requests per server CPU-second over etcd's."""
    etcd = {(c["op"], c["clients"]): c for c in cells if c.get("server") == "etcd"}
    for cell in cells:
        base = etcd.get((cell["op"], cell["clients"]))
        if cell.get("server") == "etcdd" and base:
            mine, theirs = (cell.get("requests_per_server_cpu_second"),
                            base.get("requests_per_server_cpu_second"))
            cell["ratio"] = mine / theirs if mine and theirs else None


def compare(args: argparse.Namespace) -> dict:
    """Bench an etcd cluster, then an etcdd cluster, on the same matrix; ratios per cell.

    The report: ``cells`` (sorted op, clients, etcd before etcdd), ``check_perf`` by server
    (if asked) and ``clusters`` (members and leader by server).
    """
    root = tempfile.mkdtemp(prefix="etcdd-bench-", dir=args.data_root)
    cells, perf, clusters = [], {}, {}
    try:
        for label in ("etcd", "etcdd"):
            got, info = _bench_cluster(label, args, root)
            cells += got
            if "check_perf" in info:
                perf[label] = info.pop("check_perf")
            clusters[label] = info
    finally:
        shutil.rmtree(root, ignore_errors=True)
    add_ratios(cells)
    order = [op for op, _ in args.cells]
    cells.sort(key=lambda c: (order.index(c["op"]), c["clients"], c["server"] != "etcd"))
    return {"cells": cells, "check_perf": perf, "clusters": clusters}


# ------------------------------------------------------------------ etcdctl check perf

def without_redraws(text: bytes) -> bytes:
    """Each line as a terminal would leave it: only what follows its last ``\\r``.

    etcdctl's progress bar redraws itself with carriage returns, which fill a log file
    with one long line: ``b"\\r 1 / 60\\r 2 / 60\\nPASS\\n"`` gives ``b" 2 / 60\\nPASS\\n"``.
    """
    return b"\n".join(line.rstrip(b"\r").rpartition(b"\r")[2] for line in text.split(b"\n"))


class _Echo:
    """Copies etcdctl's output to our stdout: as it comes to a terminal, else whole lines
    without progress-bar redraws."""

    def __init__(self, enabled: bool) -> None:
        self._enabled, self._tty = enabled, sys.stdout.isatty()
        self._pending = b""

    def feed(self, chunk: bytes) -> None:
        if not self._enabled:
            return
        if self._tty:
            self._write(chunk)
            return
        lines, _, self._pending = (self._pending + chunk).rpartition(b"\n")
        if lines:
            self._write(without_redraws(lines + b"\n"))

    def close(self) -> None:
        if self._enabled and self._pending:
            self._write(without_redraws(self._pending) + b"\n")
        self._pending = b""

    @staticmethod
    def _write(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


# etcdctl check perf: 60 s of puts at every load, then a Delete of its prefix (30 s at most);
# its puts have no deadline, so with every member gone it would wait forever.
CHECK_PERF_TIMEOUT_SECONDS = 60 + 30 + 60


def check_perf(etcdctl: str, endpoints: Sequence[str], load: str, pids: set[int],
               echo: bool = True, problem: Callable[[], str | None] | None = None) -> dict:
    """Run ``etcdctl check perf --load=LOAD``, echoing its output as it comes.

    etcdctl is killed after `CHECK_PERF_TIMEOUT_SECONDS`, or as soon as ``problem()``
    (asked every second) names one; the result's ``stopped`` then says why.
    """
    env = {**os.environ, "ETCDCTL_API": "3"}
    argv = [etcdctl, f"--endpoints={','.join(endpoints)}", "check", "perf", f"--load={load}"]
    tree = process_tree(pids) if pids else set()
    cpu0, out = cpu_seconds(tree), bytearray()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        stopped = _read_until_eof(proc.stdout.fileno(), out, _Echo(echo), problem)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    return {"command": " ".join(argv), "exit_status": proc.returncode, "stopped": stopped,
            "output": without_redraws(bytes(out)).decode(errors="replace"),
            "server_cpu_seconds": cpu_seconds(tree) - cpu0 if tree else None}


def _read_until_eof(fd: int, out: bytearray, shown: _Echo,
                    problem: Callable[[], str | None] | None) -> str | None:
    """Collect `fd` into `out` until EOF (None), the deadline or a problem (the reason)."""
    deadline = time.monotonic() + CHECK_PERF_TIMEOUT_SECONDS
    try:
        while True:
            if select.select([fd], [], [], 1.0)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:
                    return None
                out += chunk
                shown.feed(chunk)
            elif (trouble := problem() if problem else None) is not None:
                return trouble
            elif time.monotonic() > deadline:
                return f"no result after {CHECK_PERF_TIMEOUT_SECONDS}s"
    finally:
        shown.close()


def footer(report: dict, load: str) -> list[str]:
    """The lines under the table: each check perf's verdict, then each cluster's problem.

    A check perf is PASS or FAIL by etcdctl's exit status, with the server CPU it cost:
    ``{"etcdd": {"exit_status": 0, "server_cpu_seconds": 41.5}}`` gives
    ``"check perf --load=m: etcdd PASS, server CPU 41.50 s"``.
    """
    lines = []
    for label, result in report.get("check_perf", {}).items():
        status = result["exit_status"]
        verdict = "PASS" if status == 0 else f"FAIL (exit {status})"
        if result.get("stopped"):
            verdict += f", stopped: {result['stopped']}"
        cpu = result.get("server_cpu_seconds")
        lines.append(f"check perf --load={load}: {label} {verdict}"
                     + (f", server CPU {cpu:.2f} s" if cpu is not None else ""))
    for label, info in report.get("clusters", {}).items():
        if info.get("problem"):
            lines.append(f"{label}: {info['problem']} (member logs: {info['logs']})")
    return lines


def compare_status(report: dict) -> int:
    """1 if etcdd failed check perf or lost a member, else 0.

    The issue's bar is on etcdd; etcd's verdicts are reported, not required (on a small
    machine a 3-member etcd 3.4 can miss check perf --load=m's 900 writes/s).
    """
    perf = report.get("check_perf", {}).get("etcdd")
    failed = perf is not None and perf["exit_status"] != 0
    return 1 if failed or report.get("clusters", {}).get("etcdd", {}).get("problem") else 0
