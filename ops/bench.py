"""`python -m ops.bench`: drive etcd v3 KV over gRPC against any endpoint (etcdd or etcd 3.4)
and report throughput, p50/p99 latency, and the CPU seconds the server and the client spent.
A shell (ops/*).

Modes:

- ``python -m ops.bench --endpoints 127.0.0.1:2379 --op put --clients 16``: a matrix of
  ``--op`` x ``--clients`` cells (both take comma lists) against running servers.
- ``python -m ops.bench --compare [--members 3]``: start an N-member etcd 3.4 cluster and
  then an N-member etcdd cluster on fresh temp dirs and 127.0.0.1 free ports, run the same
  matrix against each (load spread over every member), and print requests per server
  CPU-second (summed over every member) side by side with the ratio etcdd/etcd; the
  orchestration lives in `ops.bench_compare`.
- ``python -m ops.bench check-perf --load m --endpoints ...``: ``etcdctl check perf``.

Like etcd's ``tools/benchmark``, ``--clients`` request loops share ``--conns`` gRPC channels
(each its own TCP connection, channel j on endpoint j % endpoints), and ``put`` picks random
keys from ``--key-space``. ``range`` is a serializable Range (any member answers from its
own store), ``range-l`` a linearizable one (etcd's default: a ReadIndex round to the leader).
The matrix is ``--op`` x ``--clients``, or per op with ``--cells put:1,16/range:64``. The loops
run as asyncio coroutines on grpc.aio in ``--procs`` spawned client processes (0: in this
process). Server CPU is the utime+stime delta of the server's process tree in /proc over the
measured window; warmup and the range preload are outside it.
"""
from __future__ import annotations

import argparse
import array
import asyncio
import ipaddress
import json
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Sequence

import grpc

from etcdd.proto import rpc_pb2, rpc_pb2_grpc
from ops.local import free_port, single_member_flags, unwind_on_signals

OPS = ("put", "range", "range-l")
_KV = "/etcdserverpb.KV/"
_TCP_LISTEN = "0A"
_CALL_TIMEOUT_SECONDS = 10.0


# ------------------------------------------------------------------ pure helpers

def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) of ascending values, linearly interpolated between ranks.

    ``percentile([1, 2, 3, 4], 50) == 2.5``; an empty sequence gives ``nan``.
    """
    if not sorted_values:
        return float("nan")
    rank = (len(sorted_values) - 1) * p / 100.0
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of /proc/PID/stat we use; CPU in clock ticks (utime + stime)."""
    pid: int
    ppid: int
    cpu_ticks: int


def parse_proc_stat(text: str) -> ProcStat:
    """Parse one /proc/PID/stat line. ``comm`` may hold spaces and ``)``, so split after the
    last ``)``: then field 3 (state) is index 0, ppid 1, utime 11 and stime 12 (proc(5)).

    Raises ValueError on a line that is not a stat line.
    """
    head, paren, tail = text.rpartition(")")
    if not paren or "(" not in head:
        raise ValueError(f"not a /proc/PID/stat line: {text[:80]!r}")
    fields = tail.split()
    return ProcStat(pid=int(head.split("(", 1)[0]), ppid=int(fields[1]),
                    cpu_ticks=int(fields[11]) + int(fields[12]))


@dataclass(frozen=True, slots=True)
class TcpSocket:
    """One row of /proc/net/tcp or tcp6."""
    local_host: str
    local_port: int
    state: str
    inode: int


def _hex_address(hex_ip: str) -> str:
    # The kernel prints the address as 32-bit words in host (little-endian) order.
    raw = bytes.fromhex(hex_ip)
    address = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
    mapped = getattr(address, "ipv4_mapped", None)     # ::ffff:127.0.0.1 is 127.0.0.1
    return str(mapped or address)


def parse_proc_net_tcp_line(line: str) -> TcpSocket | None:
    """Parse a /proc/net/tcp(6) row; the header row (and junk) gives None.

    ``"0: 0100007F:0953 00000000:0000 0A ... 0 12345 ..."`` is 127.0.0.1:2387, LISTEN, inode
    12345 (columns: sl local rem st queues tr:when retrnsmt uid timeout inode).
    """
    fields = line.split()
    if len(fields) < 10 or not fields[0].rstrip(":").isdigit():
        return None
    hex_ip, hex_port = fields[1].split(":")
    return TcpSocket(_hex_address(hex_ip), int(hex_port, 16), fields[3].upper(), int(fields[9]))


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``"http://127.0.0.1:2379"``, ``"127.0.0.1:2379"`` or ``"[::1]:2379"`` -> (host, port)."""
    hostport = endpoint.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"endpoint {endpoint!r} is not host:port")
    return host.strip("[]"), int(port)


def make_key(index: int, key_size: int) -> bytes:
    """Key ``index`` of the key space: zero-padded decimal, exactly ``key_size`` bytes."""
    key = str(index).zfill(key_size).encode()
    if len(key) != key_size:
        raise ValueError(f"key {index} does not fit in {key_size} bytes")
    return key


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What one client process runs: ``clients[j]`` request loops on channel ``targets[j]``.

    Times are ``time.monotonic()`` (CLOCK_MONOTONIC, the same in every process).
    """
    targets: tuple[str, ...]
    clients: tuple[int, ...]
    op: str
    key_space: int
    key_size: int
    val_size: int
    total: int | None
    seed: int
    start_at: float = 0.0
    measure_at: float = 0.0
    end_at: float | None = None


def plan_workers(endpoints: Sequence[str], clients: int, conns: int, procs: int,
                 **common: object) -> list[WorkerPlan]:
    """Spread ``clients`` over ``conns`` channels (client i on channel i % conns), channels
    over endpoints (j % len) and over ``max(procs, 1)`` processes (j % procs); split
    ``total`` in proportion to each process's clients.

    ``plan_workers(["a"], clients=5, conns=2, procs=2)`` gives ``(3,)`` and ``(2,)`` loops.
    """
    conns = max(1, min(conns, clients))
    procs = max(1, min(procs, conns))
    per_channel = [clients // conns + (1 if j < clients % conns else 0) for j in range(conns)]
    total = common.pop("total", None)
    seed = int(common.pop("seed", 0))
    plans, assigned = [], 0
    for w in range(procs):
        channels = range(w, conns, procs)
        n = sum(per_channel[j] for j in channels)
        share = None
        if total is not None:
            share = total - assigned if w == procs - 1 else total * n // clients
            assigned += share
        plans.append(WorkerPlan(targets=tuple(endpoints[j % len(endpoints)] for j in channels),
                                clients=tuple(per_channel[j] for j in channels),
                                total=share, seed=seed * 1000 + w, **common))
    return plans


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse_cells(text: str) -> list[tuple[str, tuple[int, ...]]]:
    """A per-op matrix: ``"put:1,16/range-l:64"`` -> ``[("put", (1, 16)), ("range-l", (64,))]``.

    Ops are separated by ``/`` or whitespace, in the order they will run. Raises ValueError
    for an unknown or repeated op, a missing client list, or a count below 1.
    """
    cells: list[tuple[str, tuple[int, ...]]] = []
    for item in text.replace("/", " ").split():
        op, sep, counts = item.partition(":")
        if op not in OPS:
            raise ValueError(f"unknown op {op!r} (choose from {', '.join(OPS)})")
        if op in (seen for seen, _ in cells):
            raise ValueError(f"op {op!r} appears twice")
        clients = tuple(int(v) for v in counts.split(",") if v) if sep else ()
        if not clients or min(clients) < 1:
            raise ValueError(f"{item!r} needs client counts of at least 1, e.g. {op}:1,16")
        cells.append((op, clients))
    if not cells:
        raise ValueError("no cells given")
    return cells


def _cells_arg(text: str) -> list[tuple[str, tuple[int, ...]]]:
    try:
        return parse_cells(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _op_list(text: str) -> list[str]:
    ops = [v for v in text.split(",") if v]
    for op in ops:
        if op not in OPS:
            raise argparse.ArgumentTypeError(f"unknown op {op!r} (choose from {', '.join(OPS)})")
    return ops


_EXAMPLES = """examples:
  python -m ops.bench --endpoints 127.0.0.1:2379 --op put,range --clients 1,16,64
  python -m ops.bench --compare                 # etcd vs etcdd, put,range x 1,16,64
  python -m ops.bench --compare --members 3 --cells put:1,16,64,256/range:64/range-l:64
  python -m ops.bench check-perf --load m --endpoints 127.0.0.1:2379
"""


def _common_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, epilog=_EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoints", default="127.0.0.1:2379",
                   help="comma-separated host:port list (default 127.0.0.1:2379)")
    p.add_argument("--server-pid", type=_int_list, default=None,
                   help="server PIDs for CPU accounting (default: who listens on the ports)")
    p.add_argument("-w", "--write-out", choices=("table", "json"), default="table")
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the bench command line; ``check-perf`` as the first word selects that mode.

    Defaults: one run is ``put`` with 16 clients; ``--compare`` runs put,range x 1,16,64
    against one member each. Neither ``--total`` nor ``--duration`` means 5 s per cell.
    ``args.cells`` is always the matrix to run, from ``--cells`` or ``--op`` x ``--clients``.
    """
    argv = list(argv)
    if argv[:1] == ["check-perf"]:
        p = _common_parser("ops.bench check-perf")
        p.add_argument("--load", choices=("s", "m", "l", "xl"), default="s")
        p.add_argument("--etcdctl", default="/usr/bin/etcdctl")
        args = p.parse_args(argv[1:])
        args.command = "check-perf"
        return args
    p = _common_parser("ops.bench")
    p.add_argument("--clients", type=_int_list, default=None,
                   help="concurrent request loops, a comma list (default 16)")
    p.add_argument("--conns", type=int, default=None,
                   help="gRPC channels, each its own TCP connection (default min(clients, 16))")
    p.add_argument("--procs", type=int, default=2,
                   help="client processes; 0 runs the loops in this process (default 2)")
    p.add_argument("--op", type=_op_list, default=None,
                   help="put, range (serializable) or range-l (linearizable); a comma list")
    p.add_argument("--cells", type=_cells_arg, default=None,
                   help="clients per op instead of --op x --clients, e.g. "
                        "put:1,16,64,256/range:64/range-l:64")
    p.add_argument("--key-space", type=int, default=100000, help="keys to pick from")
    p.add_argument("--key-size", type=int, default=8, help="bytes per key")
    p.add_argument("--val-size", type=int, default=256, help="bytes per put value")
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--total", type=int, default=None, help="measured requests per cell")
    amount.add_argument("--duration", type=float, default=None, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-preload", action="store_true", help="skip the range preload")
    p.add_argument("--compare", action="store_true",
                   help="start etcd and etcdd in turn and run the matrix against each")
    p.add_argument("--members", type=int, default=1,
                   help="with --compare: members per cluster (default 1)")
    p.add_argument("--check-perf", action="store_true", help="with --compare: also check perf")
    p.add_argument("--load", choices=("s", "m", "l", "xl"), default="s")
    p.add_argument("--etcd", default="/usr/bin/etcd")
    p.add_argument("--etcdctl", default="/usr/bin/etcdctl")
    p.add_argument("--etcdd", default=f"{sys.executable} -m etcdd",
                   help="the etcdd command line (default: this python -m etcdd)")
    p.add_argument("--data-root", default=None, help="where --compare makes its data dirs")
    args = p.parse_args(argv)
    args.command = "bench"
    if args.cells and (args.op or args.clients):
        p.error("--cells replaces --op and --clients")
    if not 1 <= args.members <= 26 or (args.members > 1 and not args.compare):
        p.error("--members must be 1..26, and more than 1 needs --compare")
    if args.cells:
        args.op = [op for op, _ in args.cells]
        args.clients = sorted({c for _, counts in args.cells for c in counts})
    args.op = args.op or (["put", "range"] if args.compare else ["put"])
    args.clients = args.clients or ([1, 16, 64] if args.compare else [16])
    args.cells = args.cells or [(op, tuple(args.clients)) for op in args.op]
    if args.total is None and args.duration is None:
        args.duration = 5.0
    for name in ("key_space", "key_size", "val_size", "conns", "total"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if any(c < 1 for c in args.clients):
        p.error("--clients must be at least 1")
    if args.procs < 0 or args.warmup < 0 or (args.duration is not None and args.duration <= 0):
        p.error("--procs and --warmup must not be negative, --duration must be positive")
    try:
        make_key(args.key_space - 1, args.key_size)
    except ValueError:
        p.error(f"--key-space {args.key_space} needs keys longer than --key-size {args.key_size}")
    return args


# ------------------------------------------------------------------ /proc

def _read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return parse_proc_stat(f.read())
    except (OSError, ValueError, IndexError):
        return None


def process_tree(roots: Iterable[int]) -> set[int]:
    """The given PIDs and every live descendant (a server that forks workers counts them)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _read_stat(int(name))) is not None:
            children.setdefault(st.ppid, []).append(st.pid)
    tree, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo.extend(children.get(pid, ()))
    return tree


def parse_proc_stat_busy(text: str) -> int:
    """Clock ticks all CPUs spent in processes, from /proc/stat's first (``cpu``) line:
    user + nice + system (guest time is inside user).

    NB: irq and softirq are left out: loopback TCP is largely processed in softirq, which
    /proc/PID/stat charges to no process, so it would count our own traffic as other work.
    Raises ValueError if the text does not start with that line.
    """
    fields = text.split("\n", 1)[0].split()
    if len(fields) < 4 or fields[0] != "cpu":
        raise ValueError(f"not /proc/stat: {text[:80]!r}")
    return int(fields[1]) + int(fields[2]) + int(fields[3])


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used since boot (all CPUs summed)."""
    with open("/proc/stat") as f:
        return parse_proc_stat_busy(f.read(4096)) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of the PIDs (threads included), in seconds."""
    ticks = sum(st.cpu_ticks for pid in pids if (st := _read_stat(pid)) is not None)
    return ticks / os.sysconf("SC_CLK_TCK")


def find_listening_pids(host: str, port: int) -> set[int]:
    """PIDs holding a socket that listens on host:port (or the wildcard) on this machine.

    Match /proc/net/tcp{,6} LISTEN rows to inodes, then inodes to /proc/*/fd links; reading
    other users' fds needs root, so the result may be empty.
    """
    hosts = {"0.0.0.0", "::"}
    for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP):
        hosts.add(info[4][0])
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = [parse_proc_net_tcp_line(line) for line in f]
        except OSError:
            continue
        inodes |= {r.inode for r in rows if r is not None and r.state == _TCP_LISTEN
                   and r.local_port == port and r.local_host in hosts and r.inode}
    wanted = {f"socket:[{inode}]" for inode in inodes}
    pids = set()
    for name in os.listdir("/proc") if wanted else ():
        if not name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{name}/fd")
            if any(os.readlink(f"/proc/{name}/fd/{fd}") in wanted for fd in fds):
                pids.add(int(name))
        except OSError:
            continue
    return pids


def resolve_server_pids(endpoints: Sequence[str], given: Sequence[int] | None) -> set[int]:
    """``--server-pid`` if given, else the local listeners of every endpoint (maybe none)."""
    if given:
        return set(given)
    pids: set[int] = set()
    for endpoint in endpoints:
        pids |= find_listening_pids(*parse_endpoint(endpoint))
    return pids


# ------------------------------------------------------------------ load generation

def _channel(target: str):
    # A local subchannel pool gives every channel its own TCP connection, as etcd's
    # benchmark gives every --conns its own grpc.ClientConn.
    return grpc.aio.insecure_channel(target.split("://", 1)[-1], options=[
        ("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)])


def _request_maker(plan: WorkerPlan):
    """A function rng -> serialized request for the plan's op; serializations are cached."""
    value = random.Random(plan.seed).randbytes(plan.val_size)
    cache: list[bytes | None] = [None] * plan.key_space
    if plan.op == "put":
        def build(i: int) -> bytes:
            key = make_key(i, plan.key_size)
            return rpc_pb2.PutRequest(key=key, value=value).SerializeToString()
    else:
        serializable = plan.op == "range"
        def build(i: int) -> bytes:
            return rpc_pb2.RangeRequest(key=make_key(i, plan.key_size),
                                        serializable=serializable).SerializeToString()

    def make(rng: random.Random) -> bytes:
        i = rng.randrange(plan.key_space)
        req = cache[i]
        if req is None:
            req = cache[i] = build(i)
        return req
    return make


@dataclass(slots=True)
class _LoopState:
    remaining: int | None
    latencies: array.array = field(default_factory=lambda: array.array("d"))
    errors: Counter = field(default_factory=Counter)
    last_end: float = 0.0


async def _client_loop(call, make, rng: random.Random, plan: WorkerPlan, st: _LoopState) -> None:
    clock = time.monotonic
    while True:
        start = clock()
        if plan.end_at is not None and start >= plan.end_at:
            return
        if st.remaining is not None and start >= plan.measure_at:
            if st.remaining <= 0:
                return
            st.remaining -= 1
        error = None
        try:
            await call(make(rng), timeout=_CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as e:
            error = e.code().name
        end = clock()
        # --duration counts what completes inside the window, so in-flight requests at the
        # two edges balance out; --total counts exactly the requests started after warmup.
        if plan.end_at is None:
            if start < plan.measure_at:
                continue
        elif not plan.measure_at <= end <= plan.end_at:
            continue
        if error is None:
            st.latencies.append(end - start)
            st.last_end = end
        else:
            st.errors[error] += 1


async def run_worker(plan: WorkerPlan, ready=None) -> dict:
    """Run the plan's request loops; return latencies (array bytes), errors, client CPU.

    ``ready``, if given, is awaited after the channels connect and returns the final plan
    (the parent fills in the start, measure and end times once every process is ready).
    """
    channels = [_channel(t) for t in plan.targets]
    try:
        for target, ch in zip(plan.targets, channels):
            try:
                await asyncio.wait_for(ch.channel_ready(), _CALL_TIMEOUT_SECONDS)
            except asyncio.TimeoutError:
                raise RuntimeError(f"cannot connect to {target} within "
                                   f"{_CALL_TIMEOUT_SECONDS:g}s") from None
        if ready is not None:
            plan = await ready()
        method = _KV + ("Put" if plan.op == "put" else "Range")
        calls = [ch.unary_unary(method) for ch in channels]   # bytes in, bytes out
        make, rng = _request_maker(plan), random.Random(plan.seed)
        st = _LoopState(remaining=plan.total)
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, plan.start_at - time.monotonic()))
        cpu0 = [time.process_time()]
        loop.call_at(plan.measure_at, lambda: cpu0.__setitem__(0, time.process_time()))
        await asyncio.gather(*(_client_loop(call, make, random.Random(rng.random()), plan, st)
                               for call, n in zip(calls, plan.clients) for _ in range(n)))
        return {"latencies": st.latencies.tobytes(), "errors": dict(st.errors),
                "last_end": st.last_end, "client_cpu_seconds": time.process_time() - cpu0[0]}
    finally:
        for ch in channels:
            await ch.close()


def _worker_process(conn, plan: WorkerPlan) -> None:
    """Entry point of a spawned client process: connect, report ready, run, send results."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the parent handles Ctrl-C and kills us

    async def ready() -> WorkerPlan:
        conn.send("ready")
        return await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    try:
        conn.send(asyncio.run(run_worker(plan, ready)))
    except Exception as e:                          # report, so the parent does not hang
        conn.send({"error": f"{type(e).__name__}: {e}"})


def _timed(times: dict, plan: WorkerPlan, start_at: float) -> WorkerPlan:
    measure_at = start_at + times["warmup"]
    end_at = None if times["duration"] is None else measure_at + times["duration"]
    return replace(plan, start_at=start_at, measure_at=measure_at, end_at=end_at)


def _run_processes(plans: list[WorkerPlan], times: dict, sampler) -> list[dict]:
    ctx = multiprocessing.get_context("spawn")      # grpc does not survive fork
    procs, pipes = [], []
    try:
        for plan in plans:
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=_worker_process, args=(child_end, plan), daemon=True)
            proc.start()
            procs.append(proc)
            pipes.append(parent_end)
        for pipe in pipes:
            msg = _receive(pipe)
            if msg != "ready":
                raise RuntimeError(f"client process failed: {msg['error']}")
        start_at = time.monotonic() + 0.05
        plans = [_timed(times, plan, start_at) for plan in plans]
        sampler.start(plans[0])
        for pipe, plan in zip(pipes, plans):
            pipe.send(plan)
        return [_receive(pipe) for pipe in pipes]
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join()


def _receive(pipe) -> object:
    try:
        return pipe.recv()
    except EOFError:
        raise RuntimeError("a client process exited without a result") from None


def _run_in_process(plan: WorkerPlan, times: dict, sampler) -> list[dict]:
    async def ready() -> WorkerPlan:
        timed = _timed(times, plan, time.monotonic() + 0.05)
        sampler.start(timed)
        return timed
    return [asyncio.run(run_worker(plan, ready))]


class _CpuSampler:
    """Samples server and machine CPU at the measure start and (duration mode) end, from a
    thread."""

    def __init__(self, pids: set[int]) -> None:
        self.pids = process_tree(pids) if pids else set()
        self.samples: dict[str, tuple[float, float]] = {}
        self.measure_at = 0.0
        self._thread: threading.Thread | None = None

    def start(self, plan: WorkerPlan) -> None:
        self.measure_at = plan.measure_at
        def run() -> None:
            time.sleep(max(0.0, plan.measure_at - time.monotonic()))
            self.samples["start"] = self._sample()
            if plan.end_at is not None:
                time.sleep(max(0.0, plan.end_at - time.monotonic()))
                self.samples["end"] = self._sample()
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def _sample(self) -> tuple[float, float]:
        return cpu_seconds(self.pids), machine_busy_seconds()

    def finish(self) -> tuple[float | None, float]:
        """(server CPU seconds or None without PIDs, the whole machine's busy CPU seconds)."""
        if self._thread is not None:
            self._thread.join()
        if "end" not in self.samples:
            self.samples["end"] = self._sample()
        (server0, machine0), (server1, machine1) = self.samples["start"], self.samples["end"]
        return (server1 - server0 if self.pids else None), machine1 - machine0


def summarize(results: list[dict], duration: float | None, measure_at: float) -> dict:
    """Merge worker results into count, requests/s, latency percentiles (ms), errors."""
    lat = array.array("d")
    errors: Counter = Counter()
    for r in results:
        lat.frombytes(r["latencies"])
        errors.update(r["errors"])
    ordered = sorted(lat)
    last_end = max((r["last_end"] for r in results), default=measure_at)
    elapsed = duration if duration is not None else max(last_end - measure_at, 1e-9)
    ms = {f"p{p}_ms": percentile(ordered, p) * 1000 if ordered else None for p in (50, 90, 99)}
    return {"requests": len(ordered), "seconds": elapsed,
            "requests_per_second": len(ordered) / elapsed,
            **ms, "max_ms": ordered[-1] * 1000 if ordered else None,
            "errors": dict(errors),
            "client_cpu_seconds": sum(r["client_cpu_seconds"] for r in results)}


def run_cell(args: argparse.Namespace, endpoints: list[str], op: str, clients: int,
             server_pids: set[int]) -> dict:
    """One measured cell: ``clients`` loops of ``op`` for ``--total``/``--duration``."""
    conns = args.conns or min(clients, 16)
    plans = plan_workers(endpoints, clients, conns, args.procs, op=op, key_space=args.key_space,
                         key_size=args.key_size, val_size=args.val_size, total=args.total,
                         seed=args.seed)
    times = {"warmup": args.warmup, "duration": args.duration}
    sampler = _CpuSampler(server_pids)
    results = (_run_in_process(plans[0], times, sampler) if args.procs == 0
               else _run_processes(plans, times, sampler))
    failed = [r["error"] for r in results if "error" in r]
    if failed:
        raise RuntimeError(f"client process failed: {failed[0]}")
    server_cpu, machine_cpu = sampler.finish()
    cell = {"op": op, "clients": clients, "conns": sum(len(p.targets) for p in plans),
            "procs": len(plans) if args.procs else 0,
            **summarize(results, args.duration, sampler.measure_at),
            "server_cpu_seconds": server_cpu}
    # What neither the server nor our clients used: other work skewing this cell.
    cell["other_cpu_seconds"] = (max(0.0, machine_cpu - server_cpu - cell["client_cpu_seconds"])
                                 if server_cpu is not None else None)
    cell["requests_per_server_cpu_second"] = (cell["requests"] / server_cpu
                                              if server_cpu else None)
    return cell


async def _preload(endpoint: str, key_space: int, key_size: int, val_size: int, seed: int) -> None:
    value = random.Random(seed).randbytes(val_size)
    channel = _channel(endpoint)
    try:
        stub, pending = rpc_pb2_grpc.KVStub(channel), asyncio.Semaphore(8)

        async def txn(lo: int) -> None:
            ops = [rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(
                key=make_key(i, key_size), value=value))
                for i in range(lo, min(lo + 100, key_space))]
            async with pending:
                await stub.Txn(rpc_pb2.TxnRequest(success=ops), timeout=60)
        await asyncio.gather(*(txn(lo) for lo in range(0, key_space, 100)))
    finally:
        await channel.close()


def preload(endpoints: Sequence[str], args: argparse.Namespace) -> float:
    """Put the whole key space, 100 puts per Txn, before range cells; returns seconds."""
    started = time.monotonic()
    asyncio.run(_preload(endpoints[0], args.key_space, args.key_size, args.val_size, args.seed))
    return time.monotonic() - started


# ------------------------------------------------------------------ one server

class Server:
    """One single-member etcd or etcdd on 127.0.0.1 free ports and a fresh data dir (for
    `ops.restart_bench`; ``--compare`` starts `ops.cluster.LocalCluster`s instead).

    `stop()` kills the process and reaps it (``Popen.wait()``); it is safe to call twice.
    """

    def __init__(self, label: str, command: Sequence[str], root: str) -> None:
        client_port = free_port()
        self.label, self.endpoint = label, f"127.0.0.1:{client_port}"
        data_dir = os.path.join(root, f"{label}.etcd")
        self.argv = [*command, *single_member_flags(label, data_dir, client_port, free_port())]
        self.log_path = os.path.join(root, f"{label}.log")
        with open(self.log_path, "wb") as log:
            # Own session: a Ctrl-C on the terminal reaches us, and we stop the server.
            self.proc = subprocess.Popen(self.argv, cwd=root, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout_seconds: float = 60.0) -> None:
        """Poll a linearizable Range until it answers; raises RuntimeError with the log tail."""
        deadline = time.monotonic() + timeout_seconds
        with grpc.insecure_channel(self.endpoint) as channel:
            stub = rpc_pb2_grpc.KVStub(channel)
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    stub.Range(rpc_pb2.RangeRequest(key=b"ready"), timeout=1)
                    return
                except grpc.RpcError:
                    time.sleep(0.1)
        with open(self.log_path, "rb") as f:
            tail = f.read()[-2000:].decode(errors="replace")
        raise RuntimeError(f"{self.label} did not become ready (exit {self.proc.poll()}):\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


# ------------------------------------------------------------------ output

_COLUMNS = (("op", "op", "{}"), ("clients", "clients", "{}"), ("server", "server", "{}"),
            ("req/s", "requests_per_second", "{:.0f}"), ("p50 ms", "p50_ms", "{:.2f}"),
            ("p99 ms", "p99_ms", "{:.2f}"), ("srv CPU s", "server_cpu_seconds", "{:.2f}"),
            ("req/srv-CPU-s", "requests_per_server_cpu_second", "{:.0f}"),
            ("cli CPU s", "client_cpu_seconds", "{:.2f}"),
            ("other CPU s", "other_cpu_seconds", "{:.2f}"), ("errors", "errors", "{}"),
            ("etcdd/etcd", "ratio", "{:.2f}"))


def format_table(cells: Sequence[dict]) -> str:
    """Cells as an aligned text table; absent values print as ``-``."""
    columns = [c for c in _COLUMNS if any(key in cell for cell in cells for key in [c[1]])]

    def show(cell: dict, key: str, fmt: str) -> str:
        value = cell.get(key)
        if value is None or value == {}:
            return "-"
        if isinstance(value, dict):
            return ",".join(f"{k}:{v}" for k, v in sorted(value.items()))
        return fmt.format(value)
    rows = [[title for title, _, _ in columns]]
    rows += [[show(cell, key, fmt) for _, key, fmt in columns] for cell in cells]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join("  ".join(v.rjust(w) if i > 2 else v.ljust(w)
                               for i, (v, w) in enumerate(zip(row, widths))).rstrip()
                     for row in rows)


# ------------------------------------------------------------------ modes

def run_matrix(args: argparse.Namespace, endpoints: list[str], pids: set[int],
               label: str | None = None,
               problem: Callable[[], str | None] | None = None) -> list[dict]:
    """Every cell of ``args.cells`` in order; range ops preload the key space once.

    ``problem``, if given, is asked after each cell; an answer (e.g. "member b exited")
    is stored in that cell as ``problem`` and ends the matrix early.
    """
    cells, preloaded = [], args.no_preload
    amount = f"{args.total} requests" if args.total else f"{args.duration:g}s"
    _note(f"{amount} per cell after {args.warmup:g}s warmup; client processes: "
          f"{args.procs or 'this one'}; conns: {args.conns or 'min(clients, 16)'}")
    for op, clients in ((op, c) for op, counts in args.cells for c in counts):
        if op != "put" and not preloaded:
            seconds = preload(endpoints, args)
            _note(f"preloaded {args.key_space} keys in {seconds:.1f}s")
            preloaded = True
        cell = run_cell(args, endpoints, op, clients, pids)
        if label:
            cell["server"] = label
        cells.append(cell)
        _note(format_table([cell]).splitlines()[-1])
        trouble = problem() if problem is not None else None
        if trouble is not None:
            cell["problem"] = trouble
            _note(f"stopping the matrix: {trouble}")
            break
    return cells


def settings(args: argparse.Namespace) -> dict:
    """The knobs a reader needs to reproduce a report."""
    return {k: getattr(args, k) for k in ("endpoints", "cells", "conns", "procs", "key_space",
                                          "key_size", "val_size", "total", "duration",
                                          "warmup", "seed", "compare", "members")}


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)          # progress; stdout holds the report


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark mode the arguments select; return the exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    unwind_on_signals()
    endpoints = [e for e in args.endpoints.split(",") if e]
    from ops.bench_compare import check_perf, compare, compare_status, footer  # they import us
    try:
        if args.command == "check-perf":
            pids = resolve_server_pids(endpoints, args.server_pid)
            result = check_perf(args.etcdctl, endpoints, args.load, pids,
                                echo=args.write_out != "json")
            if args.write_out == "json":
                print(json.dumps(result, indent=2))
            elif result["server_cpu_seconds"] is not None:
                print(f"server CPU seconds: {result['server_cpu_seconds']:.2f}")
            return result["exit_status"]
        if args.compare:
            report = compare(args)
        else:
            pids = resolve_server_pids(endpoints, args.server_pid)
            if not pids:
                _note("no server PID found (pass --server-pid); server CPU not measured")
            report = {"cells": run_matrix(args, endpoints, pids), "check_perf": {}}
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, grpc.RpcError, OSError) as e:
        print(f"ops.bench: {e}", file=sys.stderr)
        return 1
    report["settings"] = settings(args)
    if args.write_out == "json":
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report["cells"]))
        for line in footer(report, args.load):
            print(line)
    return compare_status(report)


if __name__ == "__main__":
    sys.exit(main())
