"""A local N-member cluster on 127.0.0.1, of etcdd or of the real etcd 3.4. A shell.

`LocalCluster` starts one process per member with etcd's static-bootstrap flags
(``--initial-cluster a=http://127.0.0.1:p1,b=...``, ``--initial-cluster-state new``), each
member in its own data dir under one base dir, stdout and stderr to ``<base>/<name>.log``.
It is the test harness of the multi-member integration tests and the body of
``etcdd-ops cluster up [--size 3] [--base-dir D] [--etcd] [--keep] [-- extra etcd flags]``,
which runs a cluster in the foreground, prints its endpoints and stops it on Ctrl-C;
``cluster up --detach``, ``cluster status`` and ``cluster down`` (a cluster that outlives
the command) are `ops.clusterctl`.

Every process it starts is reaped (`kill`, `cleanup`); members run in their own session,
so a Ctrl-C at the terminal reaches only this process, which then stops them. Member IDs
are learnt from each member's own ``Maintenance.Status`` (never derived here), so tests
can check etcd's derivation against what the members say.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import grpc

from etcdd.proto import rpc_pb2 as pb, rpc_pb2_grpc
from ops.local import cluster_flags, free_port, signal_and_reap, unwind_on_signals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
MEMBER_NAMES = "abcdefghijklmnopqrstuvwxyz"


class ClusterError(Exception):
    """A member exited while awaited, or a wait ran past its deadline."""


@dataclass(eq=False)
class LocalMember:
    """One member: its fixed ports, data dir and command line, and its process if started.

    `member_id` is 0 until the member has answered a ``Status``; the data dir and the log
    survive `LocalCluster.kill` so the member can be started again.
    """
    name: str
    data_dir: str
    log_path: str
    client_port: int
    peer_port: int
    argv: list[str]
    proc: subprocess.Popen | None = None
    member_id: int = 0

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client listener, as etcdctl's ``--endpoints`` takes it."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def is_running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def log(self, chars: int = 4000) -> str:
        """The last `chars` characters of the member's stdout and stderr."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4 * chars))
                return f.read().decode(errors="replace")[-chars:]
        except OSError:
            return ""

    def log_contains(self, *needles: str) -> bool:
        """Whether the whole log holds any of `needles` (read in full: logs stay small)."""
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return False
        return any(needle in text for needle in needles)


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.05) -> None:
    """Poll `condition` until it holds; raises `ClusterError` naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() >= deadline:
            raise ClusterError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def is_healthy(member: LocalMember, timeout: float = 1.0) -> bool:
    """Whether the member's ``/health`` says ``"health": "true"`` (it sees a leader)."""
    try:
        with urllib.request.urlopen(f"{member.client_url}/health", timeout=timeout) as r:
            return json.loads(r.read()).get("health") == "true"
    except (OSError, ValueError):
        return False


def member_status(member: LocalMember, timeout: float = 1.0) -> pb.StatusResponse:
    """``Maintenance.Status`` of one member over a fresh channel; raises `grpc.RpcError`."""
    with grpc.insecure_channel(member.endpoint) as channel:
        resp = rpc_pb2_grpc.MaintenanceStub(channel).Status(pb.StatusRequest(), timeout=timeout)
    member.member_id = resp.header.member_id
    return resp


class LocalCluster:
    """`size` members named a, b, c, ... under `base_dir` (a fresh temp dir by default).

    Ports are chosen once, so a killed member restarts on the same URLs. `real_etcd`
    runs ``/usr/bin/etcd`` with the same flags instead of ``python -m etcdd``.
    """

    def __init__(self, size: int = 3, base_dir: str | None = None, real_etcd: bool = False,
                 extra_flags: Sequence[str] = (), token: str = "etcd-cluster") -> None:
        if not 1 <= size <= len(MEMBER_NAMES):
            raise ValueError(f"size must be 1..{len(MEMBER_NAMES)}, not {size}")
        self._owns_base_dir = base_dir is None
        self.base_dir = base_dir or tempfile.mkdtemp(prefix="etcdd-cluster-")
        os.makedirs(self.base_dir, exist_ok=True)
        self.real_etcd, self.token = real_etcd, token
        names = MEMBER_NAMES[:size]
        ports = [(free_port(), free_port()) for _ in names]
        self.initial_cluster = ",".join(
            f"{name}=http://127.0.0.1:{peer}" for name, (_, peer) in zip(names, ports))
        program = [ETCD] if real_etcd else [sys.executable, "-m", "etcdd"]
        self.members = [self._member(name, client, peer, program, extra_flags)
                        for name, (client, peer) in zip(names, ports)]

    def _member(self, name: str, client_port: int, peer_port: int, program: list[str],
                extra_flags: Sequence[str]) -> LocalMember:
        data_dir = os.path.join(self.base_dir, f"{name}.etcd")
        flags = cluster_flags(name, data_dir, client_port, peer_port, self.initial_cluster,
                              self.token)
        return LocalMember(name, data_dir, os.path.join(self.base_dir, f"{name}.log"),
                           client_port, peer_port, [*program, *flags, *extra_flags])

    @property
    def endpoints(self) -> str:
        """Every member's ``host:port``, comma-joined (etcdctl's ``--endpoints``)."""
        return ",".join(m.endpoint for m in self.members)

    def running(self) -> list[LocalMember]:
        """The members whose process is alive."""
        return [m for m in self.members if m.is_running()]

    def start(self, wait: bool = True, timeout: float = 60.0) -> "LocalCluster":
        """Start every member not running (all at once: bootstrap needs a quorum), then
        wait for all to be healthy if `wait`; raises `ClusterError` if one exits."""
        for member in self.members:
            if not member.is_running():
                self.start_member(member, wait=False)
        if wait:
            self.wait_ready(timeout)
        return self

    def start_member(self, member: LocalMember, wait: bool = True,
                     timeout: float = 60.0) -> LocalMember:
        """Start one member with its data dir as it is; with `wait`, until it is healthy."""
        if member.is_running():
            raise ClusterError(f"member {member.name} is already running")
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        with open(member.log_path, "ab") as log:
            member.proc = subprocess.Popen(member.argv, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, env=env,
                                           cwd=self.base_dir, start_new_session=True)
        if wait:
            self.wait_ready(timeout, [member])
        return member

    def wait_ready(self, timeout: float = 60.0,
                   members: Iterable[LocalMember] | None = None) -> None:
        """Wait until every given (default: every running) member answers ``/health``
        with health true; raises `ClusterError` with its log if one of them exits."""
        pending = list(self.running() if members is None else members)

        def all_healthy() -> bool:
            for member in pending:
                if not member.is_running():
                    raise ClusterError(f"member {member.name} exited with "
                                       f"{member.proc and member.proc.returncode}:\n{member.log()}")
            pending[:] = [m for m in pending if not is_healthy(m)]
            return not pending
        wait_until(all_healthy, timeout, "members to be healthy: " +
                   ", ".join(m.name for m in pending))

    def statuses(self, timeout: float = 1.0) -> dict[str, pb.StatusResponse]:
        """``Status`` of every running member that answers, by member name."""
        out = {}
        for member in self.running():
            try:
                out[member.name] = member_status(member, timeout)
            except grpc.RpcError:
                continue
        return out

    def leader(self) -> LocalMember | None:
        """The running member whose own ``Status`` names itself leader (the highest
        term's if several do), or None while no member does."""
        best: tuple[int, str] | None = None
        for name, status in self.statuses().items():
            if status.leader and status.leader == status.header.member_id:
                if best is None or status.raftTerm > best[0]:
                    best = (status.raftTerm, name)
        return None if best is None else self.member(best[1])

    def wait_leader(self, timeout: float = 30.0,
                    not_in: Iterable[LocalMember] = ()) -> LocalMember:
        """Wait until some member (not one of `not_in`) leads; returns it."""
        excluded = set(map(id, not_in))
        found: list[LocalMember] = []

        def has_leader() -> bool:
            leader = self.leader()
            if leader is not None and id(leader) not in excluded:
                found.append(leader)
                return True
            return False
        wait_until(has_leader, timeout, "a leader")
        return found[-1]

    def member(self, name: str) -> LocalMember:
        """The member called `name`; raises KeyError."""
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(name)

    def member_by_id(self, member_id: int) -> LocalMember | None:
        """The member with this raft ID (asking running members not yet asked), or None."""
        for member in self.members:
            if member.member_id == 0 and member.is_running():
                try:
                    member_status(member)
                except grpc.RpcError:
                    pass
        return next((m for m in self.members if m.member_id == member_id), None)

    def followers(self) -> list[LocalMember]:
        """The running members other than the current leader."""
        leader = self.leader()
        return [m for m in self.running() if m is not leader]

    def kill(self, member: LocalMember, sig: int = signal.SIGKILL,
             timeout: float = 30.0) -> int | None:
        """Send `sig` and reap (SIGKILL after `timeout`); the exit status, None if not started."""
        if member.proc is None:
            return None
        return signal_and_reap(member.proc, sig, timeout)

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to every running member at once, then reap them all."""
        running = self.running()
        for member in running:
            member.proc.send_signal(sig)
        for member in running:
            self.kill(member, sig)

    def stop(self, member: LocalMember, timeout: float = 30.0) -> int | None:
        """SIGTERM (etcd's graceful stop) and reap."""
        return self.kill(member, signal.SIGTERM, timeout)

    def cleanup(self, remove_data: bool = True) -> None:
        """Kill and reap every member; remove the data dirs and logs unless told not to."""
        for member in self.members:
            self.kill(member, signal.SIGKILL)
        if not remove_data:
            return
        if self._owns_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            return
        for member in self.members:
            shutil.rmtree(member.data_dir, ignore_errors=True)
            try:
                os.remove(member.log_path)
            except OSError:
                pass

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def use_program(self, program: Sequence[str]) -> None:
        """Run `program` (e.g. ``["/opt/etcd-3.4/etcd"]`` or ``["etcdd"]``) instead of the
        default on each member's next start; the member flags stay as they are."""
        for member in self.members:
            member.argv = [*program, *member.argv[member.argv.index("--name"):]]

    def set_flag(self, flag: str, value: str) -> None:
        """Give every member ``flag value`` from its next start on (replacing the value if
        its command line has the flag), e.g. the new ``--initial-cluster-token`` of data
        dirs restored from a snapshot."""
        for member in self.members:
            if flag in member.argv:
                member.argv[member.argv.index(flag) + 1] = value
            else:
                member.argv += [flag, value]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="etcdd-ops cluster",
        description="Run a local N-member cluster on 127.0.0.1 in the foreground; Ctrl-C "
                    "stops it (or 'up --detach', then 'status' and 'down'). Flags after "
                    "'--' go to every member (e.g. --snapshot-count).")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a cluster and wait for Ctrl-C (or --detach)")
    up.add_argument("--size", type=int, default=3, help="number of members (default 3)")
    up.add_argument("--base-dir", default=None,
                    help="where the data dirs and logs go (default: a new temp dir)")
    up.add_argument("--etcd", action="store_true", help="run the real etcd, not etcdd")
    up.add_argument("--keep", action="store_true",
                    help="keep data dirs and logs after stopping")
    up.add_argument("--token", default="etcd-cluster", help="--initial-cluster-token")
    up.add_argument("--timeout", type=float, default=60.0,
                    help="seconds to wait for every member to be healthy")
    up.add_argument("extra", nargs="*", help="flags passed to every member (after '--')")
    from ops import clusterctl
    clusterctl.add_commands(sub, up)
    return parser


def _describe(cluster: LocalCluster) -> str:
    lines = [f"{'NAME':<5} {'PID':>8}  {'CLIENT URL':<24} {'PEER URL':<24} LOG"]
    lines += [f"{m.name:<5} {m.proc.pid if m.proc else '-':>8}  {m.client_url:<24} "
              f"{m.peer_url:<24} {m.log_path}" for m in cluster.members]
    return "\n".join(lines)


def _serve(cluster: LocalCluster) -> None:
    """Block until Ctrl-C, reporting each member that exits on its own once."""
    reported: set[str] = set()
    while True:
        for member in cluster.members:
            if member.name not in reported and not member.is_running():
                reported.add(member.name)
                print(f"member {member.name} exited with {member.proc.returncode}; "
                      f"log: {member.log_path}", flush=True)
        time.sleep(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    """``etcdd-ops cluster up``: start, print the endpoints, stop every member on Ctrl-C."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command != "up" or args.detach:
        from ops import clusterctl
        return clusterctl.run(args)
    unwind_on_signals()
    cluster = LocalCluster(args.size, args.base_dir, args.etcd, args.extra, args.token)
    try:
        cluster.start(wait=True, timeout=args.timeout)
        leader = cluster.leader()
        print(_describe(cluster))
        print(f"leader: {leader.name if leader else 'none yet'}")
        print(f"ETCDCTL_API=3 etcdctl --endpoints={cluster.endpoints} member list", flush=True)
        print(f"endpoints: {cluster.endpoints}", flush=True)
        _serve(cluster)
    except ClusterError as e:
        print(f"etcdd-ops cluster: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping", flush=True)
        for member in cluster.members:
            cluster.stop(member)
    finally:
        cluster.cleanup(remove_data=not args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
