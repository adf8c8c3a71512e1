"""`etcdd-ops maint-bench`: snapshot save, restore and defrag of a large store, etcdd side
by side with etcd 3.4 in the same run (issue 5 "Performance"). A shell (ops/*);
`parse_args`, `key_count`, `churn_indexes`, `write_hold`, `format_table` and `footer`
are pure.

For each of ``--servers`` (default etcdd, then etcd), one at a time so they never share
the two cores: a one-member `LocalCluster` with the same flags (``--quota-backend-bytes``
4 GiB) in a temp dir, then

1. load ``--size-mb`` MiB as keys ``maint/<n>`` of ``--value-bytes`` (64 KiB) over
   ``grpc.aio``, ``--concurrency`` Puts in flight;
2. ``etcdctl snapshot save FILE`` of that store (wall time, file size, MiB/s), then the
   restore of FILE into a new data dir: ``etcdctl snapshot restore`` for etcd, ``etcdd-ops
   snapshot restore`` for etcdd (MiB/s of the snapshot file); both removed afterwards;
3. delete ``--churn`` of the keys, spread evenly, and compact (physical) to the current
   revision, so defrag has pages to give back;
4. ``etcdctl defrag`` while ``--writers`` grpcio threads put small keys continuously and
   record every put's start and end: the longest put that overlapped the defrag, the
   longest stretch of it in which no put finished, and how many finished during it say
   how long writes were held. ``etcdctl endpoint status -w json`` gives dbSize and
   dbSizeInUse before and after.

A step that fails (an older etcdd without restore or online defrag, say) reports n/a with
its error and the run goes on. MiB are 2^20 bytes. Members, data dirs and snapshot files
are removed at the end, also on Ctrl-C (``--keep`` keeps the dirs).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable

import grpc

from etcdd.proto import rpc_pb2 as pb, rpc_pb2_grpc
from ops.cluster import ROOT, ClusterError, LocalCluster, LocalMember
from ops.local import free_port, unwind_on_signals

MIB = 1 << 20
SERVERS = ("etcdd", "etcd")
KEY_PREFIX = b"maint/"
WRITER_KEYS = 1000                 # each background writer cycles over this many keys
WRITER_VALUE = b"w" * 100
WRITER_TIMEOUT_SECONDS = 600.0
TAIL_SECONDS = 0.5                 # writers keep going this long after the defrag
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1),
                    ("grpc.max_receive_message_length", -1)]


# ------------------------------------------------------------------ pure helpers

def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value
    return parse


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0..1, not {text}")
    return value


def _servers(text: str) -> tuple[str, ...]:
    names = tuple(n for n in text.split(",") if n)
    if not names or any(n not in SERVERS for n in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a comma list of {' and '.join(SERVERS)}, "
                                         f"each once, not {text!r}")
    return names


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line; argparse exits 2 with a message on a bad flag.

    ``--value-bytes`` stays at most 1 MiB (etcd's ``--max-request-bytes`` is 1.5 MiB) and
    ``--writers`` within 1..4.
    """
    p = argparse.ArgumentParser(prog="etcdd-ops maint-bench",
                                description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--size-mb", type=_positive(int), default=1024,
                   help="MiB of values to load (default 1024)")
    p.add_argument("--value-bytes", type=_positive(int), default=64 * 1024,
                   help="bytes per value (default 65536)")
    p.add_argument("--churn", type=_fraction, default=0.5,
                   help="fraction of the keys deleted before compact and defrag (default 0.5)")
    p.add_argument("--concurrency", type=_positive(int), default=16,
                   help="Puts/Deletes in flight while loading (default 16)")
    p.add_argument("--writers", type=int, default=2,
                   help="background put threads during defrag, 1..4 (default 2)")
    p.add_argument("--baseline-seconds", type=_positive(float), default=2.0,
                   help="seconds the writers run before defrag starts (default 2)")
    p.add_argument("--servers", type=_servers, default=SERVERS,
                   help="comma list, run in this order (default etcdd,etcd)")
    p.add_argument("--quota-backend-bytes", type=_positive(int), default=4 << 30,
                   help="given to both servers (default 4 GiB)")
    p.add_argument("--timeout", type=_positive(float), default=1800.0,
                   help="seconds any one step may take (default 1800)")
    p.add_argument("--data-root", default=None, help="where the temp dir goes (default $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep data dirs and logs")
    p.add_argument("--etcdctl", default=ETCDCTL, help=f"etcdctl 3.4 (default {ETCDCTL})")
    p.add_argument("--seed", type=int, default=1, help="seeds the value bytes (default 1)")
    p.add_argument("-w", "--write-out", choices=("table", "json"), default="table")
    args = p.parse_args(list(argv))
    if args.value_bytes > MIB:
        p.error("--value-bytes must be at most 1048576 (etcd refuses requests over 1.5 MiB)")
    if not 1 <= args.writers <= 4:
        p.error("--writers must be within 1..4")
    return args


def key_count(size_mb: int, value_bytes: int) -> int:
    """How many values of `value_bytes` make `size_mb` MiB (at least one key)."""
    return max(1, size_mb * MIB // value_bytes)


def churn_indexes(count: int, churn: float) -> list[int]:
    """The indexes, of ``range(count)``, to delete: ``round(count * churn)`` spread evenly.

    Index i goes when ``floor((i + 1) * churn) > floor(i * churn)`` (exact fractions, so
    ``0.1`` is a tenth): ``churn_indexes(6, 0.5) == [1, 3, 5]``,
    ``churn_indexes(5, 0.4) == [2, 4]``.
    """
    step = Fraction(str(churn))
    return [i for i in range(count) if math.floor((i + 1) * step) > math.floor(i * step)]


@dataclass(frozen=True, slots=True)
class WriteHold:
    """What the background puts saw during one window (the defrag call), in seconds.

    `puts_completed`: puts that finished inside the window; `longest_put_seconds`: the
    longest latency of a put, failed or not, that overlapped it (0 if none did);
    `longest_gap_seconds`:
    the longest stretch of it in which no put finished (all of it if none did);
    `baseline_p50_seconds`: median latency of the puts that finished before it (NaN if
    none).
    """
    puts_completed: int
    longest_put_seconds: float
    longest_gap_seconds: float
    baseline_p50_seconds: float


def write_hold(samples: Sequence[tuple[float, float]], start: float, end: float,
               failed: Sequence[tuple[float, float]] = ()) -> WriteHold:
    """Summarise put samples ``(started, finished)`` against the window ``[start, end]``.

    `failed` are the puts that ended in an error (etcd answers "request timed out" after
    7 s): they count as stalls, never as puts finished.

    Worked example, window [10, 20] and puts (9, 11), (11, 11.1), (11.1, 19), (19, 19.5),
    (19.5, 21): four finish inside (at 11, 11.1, 19, 19.5); the longest gap is 11.1 -> 19
    (7.9 s), and so is the longest overlapping put; none finished before 10, so the
    baseline is NaN.
    """
    finished = sorted(f for s, f in samples if start <= f <= end)
    edges = [start, *finished, end]
    gap = max(b - a for a, b in zip(edges, edges[1:]))
    longest = max((f - s for batch in (samples, failed) for s, f in batch
                   if s <= end and f >= start), default=0.0)
    before = sorted(f - s for s, f in samples if f < start)
    p50 = before[len(before) // 2] if before else math.nan
    return WriteHold(len(finished), longest, gap, p50)


def _mib(n: float) -> str:
    return f"{n / MIB:.1f}"


def _fixed(places: int) -> Callable[[float], str]:
    return lambda v: f"{v:.{places}f}"


# (label, result key, formatter); a missing or None value shows as n/a
ROWS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("keys loaded", "keys", str),
    ("load s", "load_seconds", _fixed(1)),
    ("load MiB/s", "load_mib_per_second", _fixed(1)),
    ("db size after load MiB", "db_size_loaded", _mib),
    ("snapshot save s", "snapshot_seconds", _fixed(2)),
    ("snapshot file MiB", "snapshot_bytes", _mib),
    ("snapshot save MiB/s", "snapshot_mib_per_second", _fixed(1)),
    ("restore s", "restore_seconds", _fixed(2)),
    ("restore MiB/s", "restore_mib_per_second", _fixed(1)),
    ("keys deleted", "deleted_keys", str),
    ("delete + compact s", "churn_seconds", _fixed(1)),
    ("db size before defrag MiB", "db_size_before", _mib),
    ("db in use before defrag MiB", "db_in_use_before", _mib),
    ("defrag s", "defrag_seconds", _fixed(2)),
    ("db size after defrag MiB", "db_size_after", _mib),
    ("db in use after defrag MiB", "db_in_use_after", _mib),
    ("puts finished during defrag", "puts_during_defrag", str),
    ("longest put stall s", "longest_put_seconds", _fixed(3)),
    ("longest gap without a put s", "longest_gap_seconds", _fixed(3)),
    ("put p50 before defrag ms", "baseline_put_p50_ms", _fixed(2)),
    ("background puts failed", "writer_errors", str),
)
NOTES = (
    "MiB = 2^20 bytes. Snapshot and restore MiB/s are of the snapshot file's size.",
    "defrag s is etcdctl's run (its start and dial included); puts finished during it "
    "count from etcdctl's start.",
    "longest put stall: the slowest background put that overlapped it; longest gap: the "
    "longest part of it in which no put finished (the write hold).",
)


def _cell(results: dict[str, Any], key: str, show: Callable[[Any], str]) -> str:
    value = results.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return show(value)


def _ratio(a: Any, b: Any) -> str:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                  for v in (a, b))
    return f"{a / b:.2f}" if numbers and b > 0 else ""


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """The servers' figures side by side (in `results`' order), with etcdd/etcd when both
    ran; labels left-aligned, figures right-aligned."""
    names = list(results)
    both = "etcdd" in results and "etcd" in results
    header = ["", *names, *(["etcdd/etcd"] if both else [])]
    rows = [header]
    for label, key, show in ROWS:
        row = [label, *(_cell(results[n], key, show) for n in names)]
        if both:
            row.append(_ratio(results["etcdd"].get(key), results["etcd"].get(key)))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip()
                     for row in rows)


def footer(results: dict[str, dict[str, Any]], machine: dict[str, Any]) -> list[str]:
    """The lines under the table: why a figure is n/a, why background puts failed, the
    machine and its load, notes."""
    lines = [f"{name} {step}: n/a ({error})" for name, r in results.items()
             for step, error in r.get("errors", {}).items()]
    lines += [f"{name} background puts failed: {count} x {kind}" for name, r in results.items()
              for kind, count in r.get("writer_error_kinds", {}).items()]
    lines.append(f"machine: {machine['cpus']} CPUs; load average {machine['load_start']:.2f} "
                 f"at start, {machine['load_end']:.2f} at end")
    return lines + list(NOTES)


# ------------------------------------------------------------------ processes

def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)          # progress; stdout holds the report


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def timed(argv: Sequence[str], timeout: float, cwd: str | None = None) -> tuple[float, str]:
    """Run `argv` to its end; its wall seconds and "" on exit 0, else its last stderr line."""
    env = dict(os.environ, ETCDCTL_API="3")
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        return seconds, f"exit {done.returncode}: {_last_line(done.stderr or done.stdout)}"
    return seconds, ""


def endpoint_status(args: argparse.Namespace, endpoint: str) -> dict[str, int]:
    """dbSize and dbSizeInUse from ``etcdctl endpoint status -w json``."""
    done = subprocess.run([args.etcdctl, "--endpoints", endpoint, "--command-timeout=60s",
                           "-w", "json", "endpoint", "status"], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, ETCDCTL_API="3"))
    if done.returncode != 0:
        raise RuntimeError(f"etcdctl endpoint status: {_last_line(done.stderr)}")
    status = json.loads(done.stdout)[0]["Status"]
    return {"dbSize": int(status["dbSize"]), "dbSizeInUse": int(status.get("dbSizeInUse", 0))}


async def _unary_all(endpoint: str, method: str, requests: Iterator[Any],
                     concurrency: int, timeout: float) -> int:
    """Send every request of `requests` as KV `method`, `concurrency` in flight; the
    highest revision answered. Raises the first `grpc.aio.AioRpcError`."""
    async with grpc.aio.insecure_channel(endpoint, options=_CHANNEL_OPTIONS) as channel:
        call = getattr(rpc_pb2_grpc.KVStub(channel), method)
        last = 0

        async def worker() -> None:
            nonlocal last
            for request in requests:       # NB: one iterator shared by every worker
                revision = (await call(request, timeout=timeout)).header.revision
                last = max(last, revision)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return last


def load(endpoint: str, args: argparse.Namespace, count: int) -> dict[str, Any]:
    """Put `count` keys of ``--value-bytes``; the seconds and MiB/s it took."""
    value = random.Random(args.seed).randbytes(args.value_bytes)
    requests = (pb.PutRequest(key=b"%s%08d" % (KEY_PREFIX, i), value=value)
                for i in range(count))
    started = time.monotonic()
    asyncio.run(_unary_all(endpoint, "Put", requests, args.concurrency, args.timeout))
    seconds = time.monotonic() - started
    return {"keys": count, "load_seconds": seconds,
            "load_mib_per_second": count * args.value_bytes / MIB / seconds}


def churn(endpoint: str, args: argparse.Namespace, count: int) -> dict[str, Any]:
    """Delete ``--churn`` of the keys, then compact (physical) to the revision reached."""
    doomed = churn_indexes(count, args.churn)
    requests = (pb.DeleteRangeRequest(key=b"%s%08d" % (KEY_PREFIX, i)) for i in doomed)
    started = time.monotonic()
    revision = asyncio.run(_unary_all(endpoint, "DeleteRange", requests, args.concurrency,
                                      args.timeout))
    with grpc.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        if not revision:               # nothing deleted: compact where the store is
            revision = kv.Range(pb.RangeRequest(key=KEY_PREFIX), timeout=60).header.revision
        kv.Compact(pb.CompactionRequest(revision=revision, physical=True), timeout=args.timeout)
    return {"deleted_keys": len(doomed), "churn_seconds": time.monotonic() - started}


class BackgroundWriters:
    """`count` grpcio threads putting small keys through `endpoint` until `stop()`.

    Each thread cycles over `WRITER_KEYS` keys of its own; `samples()` gives the
    ``(started, finished)`` monotonic seconds of every answered put, `failed()` those of
    the puts that ended in an error (the thread goes on) and `error_kinds()` what the
    errors said.
    """

    def __init__(self, endpoint: str, count: int) -> None:
        self._endpoint = endpoint
        self._stop = threading.Event()
        self._samples: list[list[tuple[float, float]]] = [[] for _ in range(count)]
        self._failed: list[list[tuple[float, float]]] = [[] for _ in range(count)]
        self._error_kinds: list[list[str]] = [[] for _ in range(count)]
        self._threads = [threading.Thread(target=self._write, args=(i,), daemon=True)
                         for i in range(count)]

    def start(self) -> "BackgroundWriters":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop every writer and wait for its last put to answer."""
        self._stop.set()
        for thread in self._threads:
            thread.join(WRITER_TIMEOUT_SECONDS + 10)

    def samples(self) -> list[tuple[float, float]]:
        return [s for own in self._samples for s in own]

    def failed(self) -> list[tuple[float, float]]:
        return [s for own in self._failed for s in own]

    def error_kinds(self) -> dict[str, int]:
        """``"<code>: <details>"`` -> how many puts failed so."""
        return dict(Counter(kind for own in self._error_kinds for kind in own))

    def _write(self, writer: int) -> None:
        own, n = self._samples[writer], 0
        with grpc.insecure_channel(self._endpoint) as channel:
            put = rpc_pb2_grpc.KVStub(channel).Put
            while not self._stop.is_set():
                request = pb.PutRequest(key=b"writer/%d/%04d" % (writer, n % WRITER_KEYS),
                                        value=WRITER_VALUE)
                n += 1
                started = time.monotonic()
                try:
                    put(request, timeout=WRITER_TIMEOUT_SECONDS)
                except grpc.RpcError as e:
                    self._failed[writer].append((started, time.monotonic()))
                    self._error_kinds[writer].append(f"{e.code().name}: {e.details()}")
                    self._stop.wait(0.01)    # NB: a back-off, not a wait for state
                    continue
                own.append((started, time.monotonic()))


# ------------------------------------------------------------------ steps

def snapshot_and_restore(impl: str, endpoint: str, args: argparse.Namespace,
                         root: str) -> dict[str, Any]:
    """``etcdctl snapshot save``, then the restore of that file; both files removed."""
    out: dict[str, Any] = {"errors": {}}
    path = os.path.join(root, f"{impl}.snapshot.db")
    seconds, error = timed([args.etcdctl, "--endpoints", endpoint, "snapshot", "save", path],
                           args.timeout)
    if error:
        out["errors"]["snapshot save"] = error
        out["errors"]["restore"] = "no snapshot to restore"
        return out
    size = os.path.getsize(path)
    out.update(snapshot_seconds=seconds, snapshot_bytes=size,
               snapshot_mib_per_second=size / MIB / seconds)
    _note(f"{impl}: snapshot save {size / MIB:.1f} MiB in {seconds:.2f}s")
    restored = os.path.join(root, f"{impl}-restored.etcd")
    peer = f"http://127.0.0.1:{free_port()}"
    flags = ["--data-dir", restored, "--name", "r", "--initial-cluster", f"r={peer}",
             "--initial-cluster-token", "maint-bench-restored",
             "--initial-advertise-peer-urls", peer]
    program = ([args.etcdctl] if impl == "etcd" else [sys.executable, "-m", "ops.cli"])
    try:
        seconds, error = timed([*program, "snapshot", "restore", path, *flags], args.timeout,
                               cwd=ROOT)
    finally:
        os.remove(path)
        shutil.rmtree(restored, ignore_errors=True)
    if error:
        out["errors"]["restore"] = error
    else:
        out.update(restore_seconds=seconds, restore_mib_per_second=size / MIB / seconds)
        _note(f"{impl}: snapshot restore in {seconds:.2f}s")
    return out


def defrag(impl: str, endpoint: str, args: argparse.Namespace) -> dict[str, Any]:
    """``etcdctl defrag`` under the background writers; sizes before and after."""
    before = endpoint_status(args, endpoint)
    out: dict[str, Any] = {"errors": {}, "db_size_before": before["dbSize"],
                           "db_in_use_before": before["dbSizeInUse"]}
    writers = BackgroundWriters(endpoint, args.writers).start()
    try:
        time.sleep(args.baseline_seconds)   # NB: the baseline's length, not a wait for state
        start = time.monotonic()
        seconds, error = timed([args.etcdctl, "--endpoints", endpoint,
                                f"--command-timeout={args.timeout:.0f}s", "defrag"],
                               args.timeout + 60)
        end = time.monotonic()
        time.sleep(TAIL_SECONDS)
    finally:
        writers.stop()
    after = endpoint_status(args, endpoint)
    failed = writers.failed()
    out.update(db_size_after=after["dbSize"], db_in_use_after=after["dbSizeInUse"],
               writer_errors=len(failed), writer_error_kinds=writers.error_kinds())
    if error:
        out["errors"]["defrag"] = error
        return out
    hold = write_hold(writers.samples(), start, end, failed)
    out.update(defrag_seconds=seconds, puts_during_defrag=hold.puts_completed,
               longest_put_seconds=hold.longest_put_seconds,
               longest_gap_seconds=hold.longest_gap_seconds,
               baseline_put_p50_ms=None if math.isnan(hold.baseline_p50_seconds)
               else hold.baseline_p50_seconds * 1000)
    _note(f"{impl}: defrag {before['dbSize'] / MIB:.1f} -> {after['dbSize'] / MIB:.1f} MiB "
          f"in {seconds:.2f}s; {hold.puts_completed} puts finished meanwhile")
    return out


def _steps(impl: str, member: LocalMember, args: argparse.Namespace, root: str,
           result: dict[str, Any]) -> None:
    """Fill `result` step by step, so a failure keeps the figures measured before it."""
    endpoint, count = member.endpoint, key_count(args.size_mb, args.value_bytes)
    result.update(load(endpoint, args, count))
    result["db_size_loaded"] = endpoint_status(args, endpoint)["dbSize"]
    _note(f"{impl}: loaded {count} keys in {result['load_seconds']:.1f}s")
    for step in (lambda: snapshot_and_restore(impl, endpoint, args, root),
                 lambda: churn(endpoint, args, count),
                 lambda: defrag(impl, endpoint, args)):
        part = step()
        result["errors"].update(part.pop("errors", {}))
        result.update(part)


def bench_server(impl: str, args: argparse.Namespace, root: str) -> dict[str, Any]:
    """Every step on a fresh one-member `impl`; a failure ends the steps and is reported
    in ``errors["run"]``, with the figures measured before it.

    The member is killed, reaped and (unless ``--keep``) removed before this returns."""
    cluster = LocalCluster(1, base_dir=os.path.join(root, impl), real_etcd=impl == "etcd",
                           extra_flags=["--quota-backend-bytes",
                                        str(args.quota_backend_bytes)])
    result: dict[str, Any] = {"errors": {}}
    try:
        cluster.start(wait=True, timeout=120)
        _steps(impl, cluster.members[0], args, root, result)
    except (ClusterError, RuntimeError, OSError, grpc.RpcError, subprocess.SubprocessError,
            ValueError, LookupError) as e:
        _note(f"{impl}: stopped: {e}")
        result["errors"]["run"] = _last_line(str(e))
    finally:
        cluster.cleanup(remove_data=not args.keep)
    return result


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The knobs a reader needs to reproduce a report."""
    out = {k: getattr(args, k) for k in ("size_mb", "value_bytes", "churn", "concurrency",
                                         "writers", "baseline_seconds", "quota_backend_bytes",
                                         "seed")}
    out["servers"] = list(args.servers)
    out["keys"] = key_count(args.size_mb, args.value_bytes)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark on every server in turn and print the report; 1 if any step
    failed, 130 on Ctrl-C."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    unwind_on_signals()
    root = tempfile.mkdtemp(prefix="etcdd-maint-bench-", dir=args.data_root)
    machine: dict[str, Any] = {"cpus": os.cpu_count(), "load_start": os.getloadavg()[0]}
    results: dict[str, dict[str, Any]] = {}
    try:
        for impl in args.servers:
            _note(f"{impl}: {settings(args)['keys']} keys of {args.value_bytes} bytes")
            results[impl] = bench_server(impl, args, root)
    except KeyboardInterrupt:
        _note("interrupted")
        return 130
    finally:
        if args.keep:
            _note(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    machine["load_end"] = os.getloadavg()[0]
    if args.write_out == "json":
        print(json.dumps({"settings": settings(args), "machine": machine,
                          "servers": results}, indent=2))
    else:
        print(format_table(results))
        print("\n".join(footer(results, machine)))
    return 1 if any(r.get("errors") for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
