"""`etcdd-ops cluster up --detach | status | down`: a local cluster that outlives the command.
A shell (ops/*).

``up --detach`` starts an N-member `LocalCluster` (each member in its own session, so it
survives this process and the terminal), waits until every member is healthy, writes
the state file ``<base>/etcdd-cluster.json`` (names, pids with their start times, ports,
URLs, data dirs, logs, command lines) and returns. ``status`` reads it and prints the
`ops.status` table of the running cluster plus each member's pid and whether that
process still runs. ``down`` stops the members one by one (SIGTERM, SIGKILL after ``--timeout``,
then awaits each exit); ``--purge`` also removes the data dirs, the logs and the state
file. ``up --detach`` on a base dir whose members are all stopped starts them again on
their data dirs with their recorded command lines (same ports).

A pid is only ever signalled after checking that it is still the member that was
started: its ``/proc/<pid>/stat`` start time is the recorded one and its command line
holds ``--data-dir <its data dir>``. The signal goes through a pidfd opened before that
check, so a pid recycled meanwhile is never hit; members that are not our children are
awaited through the same pidfd.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ops.cluster import ClusterError, LocalCluster, LocalMember
from ops.grpcutil import (EXIT_ERROR, EXIT_SUCCESS, ClientConfig, CommandError, dumps, fail,
                          render_table)
from ops.local import unwind_on_signals
from ops.status import HEADER, MemberReport, collect, report_json, table_rows

STATE_FILE = "etcdd-cluster.json"
DEFAULT_BASE_DIR = "etcdd-cluster"
STATE_VERSION = 1
# process states of a recorded member
RUNNING, EXITED, REUSED = "running", "exited", "pid reused"


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """One started member as the state file keeps it; `start_ticks` is field 22 of
    ``/proc/<pid>/stat`` (clock ticks after boot), which a recycled pid does not share."""
    name: str
    pid: int
    start_ticks: int
    client_port: int
    peer_port: int
    data_dir: str
    log_path: str
    argv: tuple[str, ...]

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"


@dataclass(frozen=True, slots=True)
class ClusterState:
    """What ``up --detach`` leaves in ``<base_dir>/etcdd-cluster.json``."""
    base_dir: str
    impl: str
    token: str
    members: tuple[MemberRecord, ...]

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "base_dir": self.base_dir, "impl": self.impl,
                "token": self.token, "members": [asdict(m) for m in self.members]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ClusterState":
        """Raises KeyError, TypeError or ValueError for a file that is not ours."""
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unknown state file version {data.get('version')!r}")
        members = tuple(MemberRecord(**{**m, "argv": tuple(m["argv"])})
                        for m in data["members"])
        return cls(data["base_dir"], data["impl"], data["token"], members)


def state_path(base_dir: str) -> str:
    return os.path.join(base_dir, STATE_FILE)


def write_state(state: ClusterState) -> None:
    """Replace the state file atomically (temp file, fsync, rename)."""
    path = state_path(state.base_dir)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state.to_json(), f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_state(base_dir: str) -> ClusterState:
    """The state file of `base_dir`; raises `CommandError` if there is none or it is not
    ours."""
    path = state_path(base_dir)
    try:
        with open(path) as f:
            return ClusterState.from_json(json.load(f))
    except FileNotFoundError:
        raise CommandError(f"no cluster in {base_dir} ({STATE_FILE} not found); start one "
                           "with: etcdd-ops cluster up --detach --base-dir "
                           f"{base_dir}") from None
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise CommandError(f"{path} is not an etcdd-ops cluster state file: {e}") from None


# -- processes -------------------------------------------------------------------------


def start_ticks(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time), None if no such process or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is field 3 (state); a zombie has exited, whoever its parent is
    return None if fields[0] == b"Z" else int(fields[19])


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [arg.decode(errors="replace") for arg in f.read().split(b"\0")]
    except OSError:
        return []


def process_state(record: MemberRecord) -> str:
    """`RUNNING` if the pid is still the member started (same start time, its data dir on
    the command line), `EXITED` if no live process has the pid, else `REUSED`."""
    ticks = start_ticks(record.pid)
    if ticks is None:
        return EXITED
    argv = _cmdline(record.pid)
    owns_data_dir = any(a == "--data-dir" and b == record.data_dir
                        for a, b in zip(argv, argv[1:]))
    return RUNNING if ticks == record.start_ticks and owns_data_dir else REUSED


def _open_verified(record: MemberRecord) -> tuple[int | None, str]:
    """A pidfd for the member's process once it is verified as the member, and its state."""
    try:
        fd = os.pidfd_open(record.pid)
    except ProcessLookupError:
        return None, EXITED
    state = process_state(record)   # NB: checked after the pidfd pins the process
    if state != RUNNING:
        os.close(fd)
        return None, state
    return fd, state


def _await_exit(fd: int, timeout_seconds: float) -> bool:
    """Whether the process behind the pidfd exited within `timeout_seconds`."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout_seconds) * 1000))


def stop_members(records: Iterable[MemberRecord],
                 timeout_seconds: float = 30.0) -> dict[str, str]:
    """Stop the members one after the other: SIGTERM, SIGKILL if still running after
    `timeout_seconds`, then await the exit; name -> what happened (for the operator).

    NB: one at a time, as an operator would: etcd 3.4's leader, stopped while its
    followers stop too, waits out its leadership transfer (7 s) before exiting."""
    return {record.name: _stop(record, timeout_seconds) for record in records}


def _stop(record: MemberRecord, timeout_seconds: float) -> str:
    fd, state = _open_verified(record)
    if fd is None:
        return ("had already exited" if state == EXITED else
                f"pid {record.pid} is now another process: not signalled")
    try:
        signal.pidfd_send_signal(fd, signal.SIGTERM)
        if _await_exit(fd, timeout_seconds):
            return f"stopped (pid {record.pid}, SIGTERM)"
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        if _await_exit(fd, 30.0):
            return f"killed (pid {record.pid}, SIGKILL after {timeout_seconds:g}s)"
        return f"still running after SIGKILL (pid {record.pid})"
    finally:
        os.close(fd)


# -- commands --------------------------------------------------------------------------


def add_commands(sub: argparse._SubParsersAction, up: argparse.ArgumentParser) -> None:
    """``up --detach`` and the ``status`` and ``down`` subcommands on `ops.cluster`'s parser."""
    up.add_argument("--detach", action="store_true",
                    help=f"start in the background and return once healthy; the base dir "
                         f"(default ./{DEFAULT_BASE_DIR}) keeps the state for status/down")
    st = sub.add_parser("status", help="the member table of a detached cluster, with pids")
    st.add_argument("--base-dir", default=DEFAULT_BASE_DIR,
                    help=f"where up --detach put the cluster (default ./{DEFAULT_BASE_DIR})")
    st.add_argument("-w", "--write-out", choices=("table", "json"), default="table")
    down = sub.add_parser("down", help="stop every member of a detached cluster")
    down.add_argument("--base-dir", default=DEFAULT_BASE_DIR,
                      help=f"where up --detach put the cluster (default ./{DEFAULT_BASE_DIR})")
    down.add_argument("--purge", action="store_true",
                      help="also remove the data dirs, logs and the state file")
    down.add_argument("--timeout", type=float, default=30.0,
                      help="seconds after SIGTERM before SIGKILL (default 30)")


def run(args: argparse.Namespace) -> int:
    """Run ``up --detach``, ``status`` or ``down``; the exit status."""
    command = {"up": up_detached, "status": status, "down": down}[args.command]
    try:
        return command(args)
    except (CommandError, OSError) as e:
        return fail(e)


def up_detached(args: argparse.Namespace) -> int:
    """Start (or restart) the cluster in the background, wait until it is healthy, record
    it and print how to reach it; raises `CommandError`."""
    base_dir = os.path.abspath(args.base_dir or DEFAULT_BASE_DIR)
    unwind_on_signals()
    if os.path.exists(state_path(base_dir)):
        cluster = _resume(read_state(base_dir), args.timeout)
    else:
        cluster = _fresh(base_dir, args)
    try:
        state = ClusterState(base_dir, "etcd" if cluster.real_etcd else "etcdd",
                             cluster.token, tuple(_record(m) for m in cluster.members))
        write_state(state)
    except (CommandError, OSError, KeyboardInterrupt):
        for member in cluster.members:     # NB: nothing may run that no state file names
            cluster.kill(member)
        raise
    leader = cluster.leader()
    print(_describe(state, [RUNNING] * len(state.members)))
    print(f"leader: {leader.name if leader else 'none yet'}")
    print(f"endpoints: {state.endpoints}")
    print(f"try: ETCDCTL_API=3 etcdctl --endpoints={state.endpoints} member list -w table")
    print(f"stop: etcdd-ops cluster down --base-dir {base_dir} [--purge]", flush=True)
    return EXIT_SUCCESS


def _fresh(base_dir: str, args: argparse.Namespace) -> LocalCluster:
    """A new cluster in `base_dir`, started and healthy; on failure every member is killed
    and its data removed (the logs stay for diagnosis)."""
    cluster = LocalCluster(args.size, base_dir, args.etcd, args.extra, args.token)
    taken = [m.data_dir for m in cluster.members if os.path.exists(m.data_dir)]
    if taken:
        raise CommandError(f"{taken[0]} already exists (data of another cluster?); use "
                           "another --base-dir or remove it")
    _start(cluster, args.timeout, remove_data=True)
    return cluster


def _resume(state: ClusterState, timeout: float) -> LocalCluster:
    """The recorded cluster, each member started again on its data dir with its recorded
    command line; refused while any of them still runs."""
    states = [process_state(m) for m in state.members]
    if RUNNING in states:
        raise CommandError(f"a cluster is already running in {state.base_dir}; stop it "
                           f"with: etcdd-ops cluster down --base-dir {state.base_dir}")
    cluster = LocalCluster(len(state.members), state.base_dir, state.impl == "etcd",
                           token=state.token)
    # NB: the recorded members replace the new ports LocalCluster chose: same URLs as before.
    cluster.members = [LocalMember(m.name, m.data_dir, m.log_path, m.client_port,
                                   m.peer_port, list(m.argv)) for m in state.members]
    print(f"restarting the {len(state.members)} members recorded in "
          f"{state_path(state.base_dir)}", flush=True)
    _start(cluster, timeout, remove_data=False)
    return cluster


def _start(cluster: LocalCluster, timeout: float, remove_data: bool) -> None:
    try:
        cluster.start(wait=True, timeout=timeout)
    except (ClusterError, KeyboardInterrupt) as e:
        for member in cluster.members:
            cluster.kill(member)
        if remove_data:
            for member in cluster.members:
                shutil.rmtree(member.data_dir, ignore_errors=True)
        raise CommandError(f"the cluster did not start: {e or 'interrupted'} (logs in "
                           f"{cluster.base_dir})") from None


def _record(member: LocalMember) -> MemberRecord:
    pid = member.proc.pid
    ticks = start_ticks(pid)
    if ticks is None:
        raise CommandError(f"member {member.name} (pid {pid}) exited; log: {member.log_path}")
    return MemberRecord(member.name, pid, ticks, member.client_port, member.peer_port,
                        member.data_dir, member.log_path, tuple(member.argv))


def _describe(state: ClusterState, processes: Sequence[str]) -> str:
    header = ("NAME", "PID", "PROCESS", "CLIENT URL", "PEER URL", "DATA DIR", "LOG")
    rows = [[m.name, str(m.pid), process, f"http://{m.endpoint}",
             f"http://127.0.0.1:{m.peer_port}", m.data_dir, m.log_path]
            for m, process in zip(state.members, processes)]
    return render_table(header, rows)


def status(args: argparse.Namespace) -> int:
    """The `ops.status` table of the recorded cluster plus each member's pid and process
    state; 0 when every member runs, answers and is healthy."""
    state = read_state(os.path.abspath(args.base_dir))
    processes = {m.endpoint: (m, process_state(m)) for m in state.members}
    reports = _reports(state, [p for _, p in processes.values()])
    rows = []
    for report, row in zip(reports, table_rows(reports)):
        record, process = processes.get(report.endpoint, (None, ""))
        rows.append((report, row, record, process))
    if args.write_out == "json":
        print(dumps([{**report_json(report), **({"Pid": record.pid, "Process": process}
                                                 if record else {})}
                     for report, _, record, process in rows]))
    else:
        print(render_table((*HEADER, "PID", "PROCESS"),
                           [[*row, str(record.pid) if record else "", process]
                            for _, row, record, process in rows]))
    fine = all(r.is_ok for r in reports) and all(p == RUNNING for _, p in processes.values())
    return EXIT_SUCCESS if fine else EXIT_ERROR


def _reports(state: ClusterState, processes: Sequence[str]) -> list[MemberReport]:
    """Every member's report: through the member list while any recorded member runs
    (members added since are rows too), else one row per record saying it is down."""
    if RUNNING not in processes:
        return [MemberReport(m.endpoint, name=m.name, error=f"process {p}")
                for m, p in zip(state.members, processes)]
    config = ClientConfig(tuple(m.endpoint for m in state.members))
    try:
        return collect(config, cluster=True)
    except CommandError:
        return collect(config, cluster=False)


def down(args: argparse.Namespace) -> int:
    """Stop every recorded member; with ``--purge`` remove what the cluster left behind.
    1 if a member could not be stopped."""
    base_dir = os.path.abspath(args.base_dir)
    state = read_state(base_dir)
    outcome = stop_members(state.members, args.timeout)
    for record in state.members:
        print(f"{record.name}: {outcome[record.name]}")
    still = [r for r in state.members if outcome[r.name].startswith("still running")]
    if still:
        return fail(CommandError("not stopped: " + ", ".join(r.name for r in still)))
    if args.purge:
        _purge(state)
        print(f"removed the data dirs, logs and {STATE_FILE} from {base_dir}")
    return EXIT_SUCCESS


def _purge(state: ClusterState) -> None:
    """Remove every member's data dir and log and the state file, only inside the base dir
    (a state file naming paths elsewhere is not followed), then the base dir if empty."""
    base = state.base_dir
    for record in state.members:
        for path in (record.data_dir, record.log_path):
            if os.path.commonpath([base, os.path.abspath(path)]) != base:
                raise CommandError(f"{path} is outside {base}: nothing removed")
    for record in state.members:
        shutil.rmtree(record.data_dir, ignore_errors=True)
        if os.path.exists(record.log_path):
            os.remove(record.log_path)
    os.remove(state_path(base))
    try:
        os.rmdir(base)
    except OSError:
        pass   # NB: the operator's own files stay, and so does the dir

