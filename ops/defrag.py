"""`etcdd-ops defrag`: etcdctl's `defrag`, with the sizes and the write hold reported. A
shell (ops/*); `format_reports` and `report_json` are pure.

Online (etcdctl 3.4 ``command/defrag_command.go``): for each of ``--endpoints``, or with
``--cluster`` every client URL of ``MemberList``, one after the other (never two members
holding writes at once): ``Maintenance.Status`` (dbSize), ``Maintenance.Defragment``,
``Status`` again. A member holds its writes for the whole Defragment call, so the call's
time is the write hold plus the RPC's overhead; reads pause only while the file is
swapped. Offline, ``--data-dir DIR`` defragments ``DIR/member/snap/db`` of a stopped
member, refusing one a process holds (its WAL segments are flock'ed, or LMDB's lock
file is held).

``-w table`` (default), ``-w simple`` (etcdctl's lines exactly: ``Finished defragmenting
etcd member[<ep>]`` on stdout, ``Failed to defragment etcd member[<ep>] (<error>)`` on
stderr) or ``-w json`` (a list of ``{"Endpoint", "DbSizeBefore", "DbSize",
"DbSizeInUse", "TookSeconds", "Error"}``, empty fields omitted). Exit status 1 if any
member failed, as etcdctl.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import grpc
import lmdb

from etcdd.mvcc.backend import BackendInUseError, defrag_offline
from etcdd.proto import rpc_pb2 as pb, rpc_pb2_grpc
from ops.grpcutil import (EXIT_ERROR, EXIT_SUCCESS, ArgumentParser, ClientConfig, CommandError,
                          add_client_flags, client_config, connect, dumps, fail, human_bytes,
                          render_table, rpc_error_message, url_to_target)

HEADER = ("ENDPOINT", "DB SIZE BEFORE", "DB SIZE AFTER", "IN USE AFTER", "TOOK", "ERROR")
HOLD_NOTE = ("TOOK: the Defragment call; the member held writes about that long "
             "(RPC overhead included), reads only while it swapped the file.")
DEFAULT_COMMAND_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class DefragReport:
    """One member (or data dir): sizes in bytes, `took_seconds` the Defragment call (or
    the offline defrag); `error` is empty on success."""
    endpoint: str
    size_before: int = 0
    size_after: int = 0
    in_use_after: int = 0
    took_seconds: float = 0.0
    error: str = ""


def report_json(r: DefragReport) -> dict[str, Any]:
    """One report as `-w json` writes it (empty fields omitted, as Go's omitempty)."""
    out: dict[str, Any] = {"Endpoint": r.endpoint}
    if not r.error:
        out.update(DbSizeBefore=r.size_before, DbSize=r.size_after,
                   DbSizeInUse=r.in_use_after, TookSeconds=round(r.took_seconds, 6))
    else:
        out["Error"] = r.error
    return out


def format_reports(reports: Sequence[DefragReport], write_out: str) -> str:
    """The reports as a table (with a note on what TOOK means) or a json list."""
    if write_out == "json":
        return dumps([report_json(r) for r in reports])
    rows = [[r.endpoint, "", "", "", "", r.error] if r.error else
            [r.endpoint, human_bytes(r.size_before), human_bytes(r.size_after),
             human_bytes(r.in_use_after), f"{r.took_seconds:.3f}s", ""] for r in reports]
    return render_table(HEADER, rows) + "\n" + HOLD_NOTE


def defrag_member(endpoint: str, config: ClientConfig,
                  clock: Callable[[], float] = time.monotonic) -> DefragReport:
    """Status, Defragment, Status on `endpoint`; a failure is the report's `error`."""
    try:
        channel, _ = connect(ClientConfig((endpoint,), config.dial_timeout_seconds,
                                          config.command_timeout_seconds))
    except CommandError as e:
        return DefragReport(endpoint, error=str(e))
    timeout = config.command_timeout_seconds
    try:
        stub = rpc_pb2_grpc.MaintenanceStub(channel)
        before = stub.Status(pb.StatusRequest(), timeout=timeout)
        started = clock()
        stub.Defragment(pb.DefragmentRequest(), timeout=timeout)
        took = clock() - started
        after = stub.Status(pb.StatusRequest(), timeout=timeout)
    except grpc.RpcError as e:
        return DefragReport(endpoint, error=rpc_error_message(e))
    finally:
        channel.close()
    return DefragReport(endpoint, before.dbSize, after.dbSize, after.dbSizeInUse, took)


def cluster_endpoints(config: ClientConfig) -> list[str]:
    """Every client URL of every member (etcdctl `endpointsFromCluster`), as host:port."""
    try:
        channel, _ = connect(config)
    except CommandError as e:
        raise CommandError(f"failed to fetch endpoints from etcd cluster member list: {e}")
    try:
        members = rpc_pb2_grpc.ClusterStub(channel).MemberList(
            pb.MemberListRequest(), timeout=config.command_timeout_seconds).members
    except grpc.RpcError as e:
        raise CommandError("failed to fetch endpoints from etcd cluster member list: "
                           + rpc_error_message(e)) from None
    finally:
        channel.close()
    return [url_to_target(url) for m in members for url in m.clientURLs]


@contextlib.contextmanager
def wal_locked(data_dir: str) -> Iterator[None]:
    """Hold an exclusive flock on every WAL segment of `data_dir` (a running member holds
    them, etcd fileutil.TryLockFile) so none can start meanwhile; raises
    BackendInUseError if one is held."""
    fds: list[int] = []
    try:
        for path in sorted(glob.glob(os.path.join(data_dir, "member", "wal", "*.wal"))):
            fd = os.open(path, os.O_RDONLY)
            fds.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BackendInUseError(f"{path} is locked by another process (is the "
                                        "member running?)") from None
        yield
    finally:
        for fd in fds:
            os.close(fd)


def defrag_data_dir(data_dir: str, clock: Callable[[], float] = time.monotonic) -> DefragReport:
    """Defragment a stopped member's backend offline; a refusal is the report's `error`."""
    db = os.path.join(data_dir, "member", "snap", "db")
    started = clock()
    try:
        with wal_locked(data_dir):
            stats = defrag_offline(db)
    except BackendInUseError as e:
        return DefragReport(data_dir, error=f"{e}; to defrag a running member, omit "
                                            "--data-dir")
    except lmdb.InvalidError:
        return DefragReport(data_dir, error=f"{db} is not an etcdd (LMDB) backend; etcd's "
                                            "bbolt files are defragmented by etcdctl")
    except (OSError, lmdb.Error) as e:
        return DefragReport(data_dir, error=str(e))
    return DefragReport(data_dir, stats.size_before, stats.size_after, stats.in_use_after,
                        clock() - started)


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="etcdd-ops defrag",
                       description="defragment members' backends (online) or a stopped "
                                   "member's data dir (offline); sizes and write hold. "
                                   "--command-timeout defaults to 10m here: a defrag "
                                   "takes as long as copying the database.")
    p.add_argument("--cluster", action="store_true",
                   help="every member of the member list, not only --endpoints")
    p.add_argument("--data-dir", default="",
                   help="defragment this data dir of a stopped member, offline")
    add_client_flags(p, ("table", "simple", "json"), "table")
    p.set_defaults(command_timeout=DEFAULT_COMMAND_TIMEOUT_SECONDS)
    return p


def _print_simple(reports: Sequence[DefragReport], offline: bool) -> None:
    for r in reports:
        if r.error:
            what = "data" if offline else "member"
            print(f"Failed to defragment etcd {what}[{r.endpoint}] ({r.error})",
                  file=sys.stderr)
        elif not offline:      # NB: etcdctl prints nothing for a data dir that worked
            print(f"Finished defragmenting etcd member[{r.endpoint}]", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``etcdd-ops defrag``: 0 if every member (or the data dir) was defragmented, else 1."""
    args = parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    offline = bool(args.data_dir)
    if offline:
        reports = [defrag_data_dir(args.data_dir)]
    else:
        try:
            config = client_config(args)
            endpoints = cluster_endpoints(config) if args.cluster else list(config.endpoints)
        except CommandError as e:
            return fail(e)
        reports = []
        for endpoint in endpoints:
            reports.append(defrag_member(endpoint, config))
            if args.write_out == "simple":
                _print_simple(reports[-1:], offline)
    if offline and args.write_out == "simple":
        _print_simple(reports, offline)
    elif args.write_out != "simple":
        print(format_reports(reports, args.write_out))
    return EXIT_ERROR if any(r.error for r in reports) else EXIT_SUCCESS


if __name__ == "__main__":
    sys.exit(main())
