"""`python -m ops.watch_bench`: issue 4's benchmark, watch fan-out and lease keep-alives,
etcd 3.4 and etcdd side by side. A shell (ops/*).

For each W of ``--watchers`` (default 0,1,100,1000) a writer puts unique keys under a
prefix at full speed (``--inflight`` Puts in flight over grpc.aio, to the leader) while W
watchers of the prefix read. Reported per W: puts acknowledged per second, events
delivered per second to all watchers together, the lag of one watcher (p50/p99 from a
put's acknowledgement to its event's arrival, negative when the event comes first),
``drain s`` (from the last acknowledgement to the last watcher's last event) and
``missed`` (watchers still behind after ``--drain-timeout``). Watchers sit
``--watchers-per-stream`` to a Watch stream, each stream its own connection, streams
spread over every member and ``--procs`` processes; the lag watcher is alone in its own
process, on the leader. Then ``--leases`` leases (default 10,000) are granted and renewed
over ``--lease-streams`` LeaseKeepAlive streams in ``--lease-procs`` processes as fast as
the server answers; reported: renewals per second.

``--compare`` benches a ``--members``-member etcd 3.4 cluster, then an etcdd one
(`ops.cluster.LocalCluster`), printing their figures side by side; ``--server`` runs one.
Server CPU is utime + stime of every member's process tree over the measured window.
Every client process and member is killed and reaped, also on Ctrl-C. Streams use
`ops.h2client` (grpcio is too slow a client); the tables are `ops.watch_report`'s.
"""
from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import grpc

from etcdd.proto import rpc_pb2 as pb
from ops.bench import cpu_seconds, process_tree
from ops.bench_compare import exited_members, keep_logs, leader_first
from ops.cluster import ClusterError, LocalCluster
from ops.h2client import H2Stream
from ops.local import unwind_on_signals
from ops.watch_report import format_report, in_window, lag_percentiles

SERVERS = ("etcd", "etcdd")
_PUT = "/etcdserverpb.KV/Put"
_WATCH = "/etcdserverpb.Watch/Watch"
_KEEPALIVE = "/etcdserverpb.Lease/LeaseKeepAlive"
_GRANT = "/etcdserverpb.Lease/LeaseGrant"
_READY_TIMEOUT_SECONDS = 120.0
_CALL_TIMEOUT_SECONDS = 10.0


# ------------------------------------------------------------------ pure helpers

def _int_list(text: str) -> list[int]:
    """``"0,1,100"`` -> ``[0, 1, 100]``; ``""`` -> ``[]`` (no watch cells)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = [-1]
    if values and min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: want counts of 0 or more, e.g. 0,1,100")
    return values


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command line; raises SystemExit (argparse) on a bad one."""
    p = argparse.ArgumentParser(prog="ops.watch_bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--compare", action="store_true", help="etcd 3.4, then etcdd")
    mode.add_argument("--server", choices=SERVERS, default="etcdd",
                      help="the one server to start without --compare (default etcdd)")
    p.add_argument("--members", type=int, default=3, help="members per cluster (default 3)")
    p.add_argument("--watchers", type=_int_list, default=[0, 1, 100, 1000],
                   help="watcher counts, one cell each (default 0,1,100,1000)")
    p.add_argument("--watchers-per-stream", type=int, default=100)
    p.add_argument("--procs", type=int, default=2,
                   help="client processes for the watchers besides the lag watcher's")
    p.add_argument("--inflight", type=int, default=64, help="puts in flight (default 64)")
    p.add_argument("--val-size", type=int, default=256, help="bytes per put value")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    p.add_argument("--drain-timeout", type=float, default=60.0,
                   help="seconds the watchers get to catch up after the writer stops")
    p.add_argument("--leases", type=int, default=10000, help="leases to renew (0: skip)")
    p.add_argument("--lease-ttl", type=int, default=600, help="granted TTL in seconds")
    p.add_argument("--lease-streams", type=int, default=8, help="LeaseKeepAlive streams")
    p.add_argument("--lease-procs", type=int, default=2, help="keep-alive client processes")
    p.add_argument("--lease-window", type=int, default=256,
                   help="keep-alives in flight per stream")
    p.add_argument("--etcd", default="/usr/bin/etcd")
    p.add_argument("--etcdd", default=f"{sys.executable} -m etcdd",
                   help="the etcdd command line (default: this python -m etcdd)")
    p.add_argument("--data-root", default=None, help="where clusters get their data dirs")
    p.add_argument("-w", "--write-out", choices=("table", "json"), default="table")
    args = p.parse_args(list(argv))
    for name in ("members", "watchers_per_stream", "procs", "inflight", "val_size",
                 "lease_streams", "lease_procs", "lease_window", "lease_ttl"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.duration <= 0 or args.warmup < 0 or args.drain_timeout <= 0 or args.leases < 0:
        p.error("--duration and --drain-timeout must be positive, --warmup and --leases "
                "not negative")
    args.servers = list(SERVERS) if args.compare else [args.server]
    return args


@dataclass(frozen=True, slots=True)
class WatchPlan:
    """One watcher client process: ``streams[j] = (endpoint, watchers on it)``; with
    `record_lag`, the arrival time of every event of its first watcher is kept."""
    streams: tuple[tuple[str, int], ...]
    prefix: bytes
    record_lag: bool = False


def plan_watchers(watchers: int, per_stream: int, procs: int, endpoints: Sequence[str],
                  prefix: bytes) -> list[WatchPlan]:
    """The lag watcher alone in the first process on ``endpoints[0]`` (the leader), the
    other ``watchers - 1`` in ``ceil(n / per_stream)`` even streams, stream j on endpoint
    j % len and in process j % procs.

    ``plan_watchers(250, 100, 2, ["a", "b"], p)`` gives the lag plan ``(("a", 1),)``, then
    ``(("a", 83), ("a", 83))`` and ``(("b", 83),)``.
    """
    if watchers == 0:
        return []
    plans = [WatchPlan(((endpoints[0], 1),), prefix, record_lag=True)]
    rest = watchers - 1
    if rest == 0:
        return plans
    streams = math.ceil(rest / per_stream)
    sizes = [rest // streams + (1 if j < rest % streams else 0) for j in range(streams)]
    for w in range(min(procs, streams)):
        plans.append(WatchPlan(tuple((endpoints[j % len(endpoints)], sizes[j])
                                     for j in range(w, streams, procs)), prefix))
    return plans


# ------------------------------------------------------------------ client processes

def _channel(target: str) -> grpc.aio.Channel:
    # Own subchannel pool: every channel its own TCP connection, like separate clients.
    return grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


class _Parent:
    """A child's end of its pipe: report ready, then receive the parent's orders."""

    def __init__(self, conn) -> None:
        self._conn = conn

    async def recv(self) -> dict:
        return await asyncio.get_running_loop().run_in_executor(None, self._conn.recv)

    async def ready(self) -> dict:
        self._conn.send("ready")
        return await self.recv()


class _WindowCpu:
    """This process's CPU seconds inside the measured window (sampled at its edges)."""

    def __init__(self, times: dict) -> None:
        self._marks: dict[str, float] = {}
        for name in ("measure_at", "end_at"):
            asyncio.get_running_loop().call_at(times[name], self._mark, name)

    def _mark(self, name: str) -> None:
        self._marks[name] = time.process_time()

    def seconds(self) -> float:
        end = self._marks.get("end_at", time.process_time())
        return end - self._marks.get("measure_at", end)


@dataclass(frozen=True, slots=True)
class WritePlan:
    endpoint: str
    prefix: bytes
    inflight: int
    val_size: int


async def _write(plan: WritePlan, parent: _Parent) -> dict:
    """Put ``prefix + n`` for n = 0, 1, ... from `inflight` loops until ``end_at``;
    every acknowledged put's revision, send and acknowledgement times."""
    channel = _channel(plan.endpoint)
    await asyncio.wait_for(channel.channel_ready(), _CALL_TIMEOUT_SECONDS)
    put = channel.unary_unary(_PUT)
    value, numbers, clock = b"v" * plan.val_size, itertools.count(), time.monotonic
    out = {"revs": array.array("q"), "sent": array.array("d"), "acked": array.array("d")}
    errors: Counter = Counter()
    times = await parent.ready()

    async def loop() -> None:
        while (start := clock()) < times["end_at"]:
            request = pb.PutRequest(key=b"%s%010d" % (plan.prefix, next(numbers)), value=value)
            try:
                answer = await put(request.SerializeToString(), timeout=_CALL_TIMEOUT_SECONDS)
            except grpc.aio.AioRpcError as e:
                errors[e.code().name] += 1
                continue
            out["acked"].append(clock())
            out["sent"].append(start)
            out["revs"].append(pb.PutResponse.FromString(answer).header.revision)
    await asyncio.sleep(max(0.0, times["start_at"] - clock()))
    cpu = _WindowCpu(times)
    await asyncio.gather(*(loop() for _ in range(plan.inflight)))
    await channel.close()
    return {**{k: v.tobytes() for k, v in out.items()}, "errors": dict(errors),
            "client_cpu_seconds": cpu.seconds()}


class _Arrivals:
    """Events counted as they arrive; each watcher's last revision and when it came."""

    def __init__(self, times: dict, watchers: int) -> None:
        self.measure_at, self.end_at = times["measure_at"], times["end_at"]
        self.watchers, self.in_window, self.total = watchers, 0, 0
        self.last: dict[tuple[int, int], tuple[int, float]] = {}
        self.target: int | None = None
        self.caught_up, self.closing = asyncio.Event(), False

    def add(self, stream: int, response: pb.WatchResponse, now: float) -> None:
        if not (events := response.events):
            return
        self.total += len(events)
        if self.measure_at <= now <= self.end_at:
            self.in_window += len(events)
        self.last[stream, response.watch_id] = (events[-1].kv.mod_revision, now)
        if self.target is not None and events[-1].kv.mod_revision >= self.target:
            self.check()

    def behind(self) -> int:
        return self.watchers - sum(1 for rev, _ in self.last.values() if rev >= self.target)

    def check(self) -> None:
        if self.behind() == 0:
            self.caught_up.set()


async def _watch(plan: WatchPlan, parent: _Parent) -> dict:
    """Create the plan's watchers (from the next revision), count what they receive until
    the parent names the last revision and every watcher has it, or the drain deadline."""
    create = pb.WatchRequest(create_request=pb.WatchCreateRequest(
        key=plan.prefix, range_end=_prefix_end(plan.prefix))).SerializeToString()
    streams = await asyncio.gather(*(_open_watchers(endpoint, n, create)
                                     for endpoint, n in plan.streams))
    times = await parent.ready()
    arrivals, lag = _Arrivals(times, sum(n for _, n in plan.streams)), []
    cpu = _WindowCpu(times)
    readers = [asyncio.ensure_future(_read_watch(s, i, arrivals, lag if plan.record_lag
                                                 and i == 0 else None))
               for i, s in enumerate(streams)]
    final = await parent.recv()
    arrivals.target = final["last_rev"]
    arrivals.check()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(arrivals.caught_up.wait(),
                               max(0.0, final["deadline"] - time.monotonic()))
    arrivals.closing = True
    for stream in streams:
        stream.close()
    failed = [r for r in await asyncio.gather(*readers, return_exceptions=True) if r]
    return {"events_in_window": arrivals.in_window, "events": arrivals.total,
            "missed_watchers": arrivals.behind(),
            "last_arrival": max((at for _, at in arrivals.last.values()), default=None),
            "lag": lag, "errors": _error_counts(failed),
            "client_cpu_seconds": cpu.seconds()}


async def _open_watchers(endpoint: str, watchers: int, create: bytes) -> H2Stream:
    stream = await H2Stream.open(endpoint, _WATCH)
    await stream.send([create] * watchers)
    created = 0
    while created < watchers:
        for message in await stream.receive():
            answer = pb.WatchResponse.FromString(message)
            if not answer.created or answer.canceled:
                raise RuntimeError(f"watch create refused: {answer}")
            created += 1
    return stream


async def _read_watch(stream: H2Stream, index: int, arrivals: _Arrivals,
                      lag: list | None) -> Exception | None:
    """Count a stream's events until it is closed; the error that ended it early, if any."""
    clock, parse = time.monotonic, pb.WatchResponse.FromString
    while arrivals.target is None or not arrivals.caught_up.is_set():
        try:
            messages = await stream.receive()
        except RuntimeError as e:      # the server ended the call, or we closed it
            return None if arrivals.closing else e
        now = clock()
        for message in messages:
            response = parse(message)
            if lag is not None:
                lag += [(e.kv.mod_revision, now) for e in response.events]
            arrivals.add(index, response, now)
    return None


@dataclass(frozen=True, slots=True)
class KeepAlivePlan:
    endpoint: str
    streams: tuple[tuple[int, ...], ...]      # the lease IDs each stream renews
    window: int


async def _keep_alive(plan: KeepAlivePlan, parent: _Parent) -> dict:
    """Renew each stream's leases round and round, `window` renewals in flight per
    stream, until ``end_at``; count the answers inside the window."""
    streams = [await H2Stream.open(plan.endpoint, _KEEPALIVE) for _ in plan.streams]
    times = await parent.ready()
    counts: Counter = Counter()
    await asyncio.sleep(max(0.0, times["start_at"] - time.monotonic()))
    cpu = _WindowCpu(times)
    outcomes = await asyncio.gather(*(_renew(s, ids, plan.window, times, counts)
                                      for s, ids in zip(streams, plan.streams)),
                                    return_exceptions=True)
    for stream in streams:
        stream.close()
    return {"renewals": counts["window"], "expired": counts["expired"],
            "errors": _error_counts(e for e in outcomes if e),
            "client_cpu_seconds": cpu.seconds()}


async def _renew(stream: H2Stream, ids: Sequence[int], window: int, times: dict,
                 counts: Counter) -> None:
    requests = itertools.cycle([pb.LeaseKeepAliveRequest(ID=i).SerializeToString()
                                for i in ids])
    clock, parse, end_at = time.monotonic, pb.LeaseKeepAliveResponse.FromString, times["end_at"]
    await stream.send([next(requests) for _ in range(window)])
    while (now := clock()) < end_at:
        answers = await asyncio.wait_for(stream.receive(), _CALL_TIMEOUT_SECONDS)
        expired = sum(1 for a in answers if parse(a).TTL <= 0)
        counts["expired"] += expired
        if times["measure_at"] <= now:
            counts["window"] += len(answers) - expired
        await stream.send([next(requests) for _ in answers])


def _error_counts(errors: Iterable[BaseException]) -> dict[str, int]:
    return dict(Counter(f"{type(e).__name__}: {e}"[:160] for e in errors))


_ROLES = {"write": _write, "watch": _watch, "keep-alive": _keep_alive}


def _child(conn, role: str, plan: object) -> None:
    """Entry point of a spawned client process: run `role`, send its result (or error)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the parent handles Ctrl-C and kills us
    try:
        conn.send(asyncio.run(_ROLES[role](plan, _Parent(conn))))
    except Exception as e:                          # report, so the parent does not hang
        conn.send({"error": f"{role}: {type(e).__name__}: {e}"})


# ------------------------------------------------------------------ the parent

class _Children:
    """Spawned client processes (grpc does not survive fork); all killed and reaped on
    exit from the ``with`` block."""

    def __init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: list = []

    def start(self, role: str, plan: object):
        parent_end, child_end = self._ctx.Pipe()
        proc = self._ctx.Process(target=_child, args=(child_end, role, plan), daemon=True)
        proc.start()
        self._procs.append(proc)
        return parent_end

    def __enter__(self) -> "_Children":
        return self

    def __exit__(self, *exc_info: object) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
            proc.join()


def _receive(conn, deadline: float, what: str) -> object:
    """The next message from a child by `deadline`; RuntimeError if it failed or hung."""
    if not conn.poll(max(0.0, deadline - time.monotonic())):
        raise RuntimeError(f"{what}: no answer by the deadline")
    try:
        message = conn.recv()
    except EOFError:
        raise RuntimeError(f"{what} exited without a result") from None
    if isinstance(message, dict) and "error" in message:
        raise RuntimeError(message["error"])
    return message


def _go(conns: Sequence, args: argparse.Namespace) -> dict:
    """Wait for every child to be ready, then send them all the same start, measure and
    end times (CLOCK_MONOTONIC is the same in every process)."""
    for conn in conns:
        if _receive(conn, time.monotonic() + _READY_TIMEOUT_SECONDS, "a client") != "ready":
            raise RuntimeError("a client process did not report ready")
    start_at = time.monotonic() + 0.1
    times = {"start_at": start_at, "measure_at": start_at + args.warmup,
             "end_at": start_at + args.warmup + args.duration}
    for conn in conns:
        conn.send(times)
    return times


def _server_cpu(pids: set[int], times: dict) -> float | None:
    """Server CPU seconds between ``measure_at`` and ``end_at`` (sleeps until then)."""
    if not pids:
        return None
    time.sleep(max(0.0, times["measure_at"] - time.monotonic()))
    before = cpu_seconds(pids)
    time.sleep(max(0.0, times["end_at"] - time.monotonic()))
    return cpu_seconds(pids) - before


def run_watch_cell(args: argparse.Namespace, endpoints: Sequence[str], watchers: int,
                   pids: set[int]) -> dict:
    """One writer and `watchers` watchers of its prefix; the cell's figures."""
    prefix = b"watch-bench/%d/" % watchers
    plans = plan_watchers(watchers, args.watchers_per_stream, args.procs, endpoints, prefix)
    with _Children() as kids:
        watch_conns = [kids.start("watch", plan) for plan in plans]
        writer = kids.start("write", WritePlan(endpoints[0], prefix, args.inflight,
                                               args.val_size))
        times = _go([*watch_conns, writer], args)
        server_cpu = _server_cpu(pids, times)
        wrote = _receive(writer, times["end_at"] + 60, "the writer")
        revs, sent, acked = array.array("q"), array.array("d"), array.array("d")
        for name, values in (("revs", revs), ("sent", sent), ("acked", acked)):
            values.frombytes(wrote[name])
        deadline = time.monotonic() + args.drain_timeout
        for conn in watch_conns:
            conn.send({"last_rev": max(revs, default=0), "deadline": deadline})
        watched = [_receive(c, deadline + 60, "a watcher process") for c in watch_conns]
    errors = Counter(wrote["errors"])
    for w in watched:
        errors.update(w["errors"])
    arrivals = [w["last_arrival"] for w in watched]
    missed = sum(w["missed_watchers"] for w in watched)
    cell = {"kind": "watch", "watchers": watchers, "client_procs": len(plans) + 1,
            "streams": sum(len(p.streams) for p in plans),
            "puts_per_second": in_window(acked, times["measure_at"], times["end_at"])
            / args.duration,
            "events_per_second": sum(w["events_in_window"] for w in watched) / args.duration,
            "events": sum(w["events"] for w in watched), "missed_watchers": missed,
            "drain_seconds": max(arrivals) - max(acked) if watched and not missed else None,
            "server_cpu_seconds": server_cpu, "errors": dict(errors),
            "client_cpu_seconds": wrote["client_cpu_seconds"]
            + sum(w["client_cpu_seconds"] for w in watched)}
    if watched:
        cell.update(lag_percentiles(revs, sent, acked, watched[0]["lag"],
                                    times["measure_at"], times["end_at"]))
    return cell


async def _grant(endpoint: str, count: int, ttl: int, inflight: int) -> list[int]:
    async with _channel(endpoint) as channel:
        grant, ids = channel.unary_unary(_GRANT), []
        request = pb.LeaseGrantRequest(TTL=ttl).SerializeToString()

        async def loop(n: int) -> None:
            for _ in range(n):
                answer = await grant(request, timeout=_CALL_TIMEOUT_SECONDS * 3)
                ids.append(pb.LeaseGrantResponse.FromString(answer).ID)
        await asyncio.gather(*(loop(count // inflight + (i < count % inflight))
                               for i in range(inflight)))
        return ids


def run_lease_cell(args: argparse.Namespace, endpoint: str, pids: set[int]) -> dict:
    """Grant ``--leases`` leases, then renew them over keep-alive streams; the figures."""
    started = time.monotonic()
    ids = asyncio.run(_grant(endpoint, args.leases, args.lease_ttl, args.inflight))
    grant_seconds = time.monotonic() - started
    streams = [tuple(ids[s::args.lease_streams]) for s in range(args.lease_streams)]
    procs = min(args.lease_procs, args.lease_streams)
    with _Children() as kids:
        conns = [kids.start("keep-alive", KeepAlivePlan(endpoint, tuple(streams[p::procs]),
                                                        args.lease_window))
                 for p in range(procs)]
        times = _go(conns, args)
        server_cpu = _server_cpu(pids, times)
        results = [_receive(c, times["end_at"] + 60, "a keep-alive process") for c in conns]
    errors = Counter()
    for r in results:
        errors.update(r["errors"])
        if r["expired"]:
            errors["expired"] += r["expired"]
    return {"kind": "lease", "leases": args.leases, "client_procs": procs,
            "grants_per_second": len(ids) / grant_seconds,
            "renewals_per_second": sum(r["renewals"] for r in results) / args.duration,
            "server_cpu_seconds": server_cpu, "errors": dict(errors),
            "client_cpu_seconds": sum(r["client_cpu_seconds"] for r in results)}


def run_cells(args: argparse.Namespace, endpoints: Sequence[str], pids: set[int], label: str,
              problem: Callable[[], str | None] = lambda: None) -> list[dict]:
    """Every watch cell, then the lease cell; a failed cell records its problem, and a
    member that exits ends the run."""
    jobs = [("watch", w) for w in args.watchers] + ([("lease", args.leases)] if args.leases
                                                     else [])
    cells = []
    for kind, n in jobs:
        tree = process_tree(pids) if pids else set()
        try:
            cell = (run_watch_cell(args, endpoints, n, tree) if kind == "watch"
                    else run_lease_cell(args, endpoints[0], tree))
        except (RuntimeError, grpc.RpcError, OSError) as e:
            cell = {"kind": kind, "watchers" if kind == "watch" else "leases": n,
                    "problem": str(e).splitlines()[0][:300]}
        cell["server"] = label
        cells.append(cell)
        _note(f"{label}: " + json.dumps({k: v for k, v in cell.items()
                                          if not isinstance(v, (list, bytes))}, default=str))
        if (trouble := problem()) is not None:
            cell["problem"] = trouble
            break
    return cells


def bench_server(label: str, args: argparse.Namespace, root: str) -> tuple[list[dict], list]:
    """Start `label`'s cluster, run every cell, stop it: (cells, notes)."""
    cluster = LocalCluster(args.members, base_dir=os.path.join(root, label),
                           real_etcd=label == "etcd")
    cluster.use_program([args.etcd] if label == "etcd" else args.etcdd.split())
    try:
        try:
            cluster.start(wait=True, timeout=60.0)
            leader = cluster.wait_leader(timeout=30.0)
        except ClusterError as e:
            return [], [(label, f"cluster did not start: {str(e).splitlines()[0]}")]
        endpoints = leader_first(cluster.members, leader)
        _note(f"{label}: {args.members} member(s), leader {leader.name}; {' '.join(leader.argv)}")
        pids = {m.proc.pid for m in cluster.members if m.proc is not None}
        cells = run_cells(args, endpoints, pids, label, lambda: exited_members(cluster.members))
        notes = []
        if (trouble := exited_members(cluster.members)) is not None:
            notes.append((label, f"{trouble}; member logs kept in {keep_logs(label, cluster)}"))
        return cells, notes
    finally:
        cluster.cleanup()


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)          # progress; stdout holds the report


def _client_note(cells: Sequence[dict]) -> tuple[str, str]:
    shown = {}
    for c in cells:
        if "client_procs" in c:
            shown.setdefault(f"{c['kind']} {c.get('watchers', c.get('leases'))}",
                             c["client_procs"])
    return ("client processes", ", ".join(f"{k}: {v}" for k, v in shown.items()))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 1 if any cell failed, else 0."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    unwind_on_signals()
    cells, notes = [], []
    try:
        root = tempfile.mkdtemp(prefix="etcdd-watch-bench-", dir=args.data_root)
        try:
            for label in args.servers:
                got, said = bench_server(label, args, root)
                cells, notes = cells + got, notes + said
        finally:
            shutil.rmtree(root, ignore_errors=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    failed = bool(notes) or any(c.get("problem") for c in cells)
    if cells:
        notes.append(_client_note(cells))
    report = {"servers": args.servers, "cells": cells, "notes": notes,
              "settings": {k: v for k, v in vars(args).items() if k != "servers"}}
    if args.write_out == "json":
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_report(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
