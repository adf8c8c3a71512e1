"""`python -m ops.failover`: how long a local N-member cluster takes to write again after its
leader is killed with SIGKILL, as a distribution over trials. A shell (ops/*).

``python -m ops.failover --trials 20 [--members 3] [--etcd | --compare] [-- member flags]``
starts a cluster (`ops.cluster.LocalCluster`: etcdd by default, etcd 3.4 with ``--etcd``,
etcd then etcdd with ``--compare``) and a writer thread that puts without pause: each Put
has ``--call-timeout`` seconds, and a failed one moves on to the next member's endpoint.
Each trial then

1. waits until every member follows one leader and a write has succeeded,
2. notes the time and kills the leader with SIGKILL,
3. measures *kill -> first write*: until the first Put sent after the kill is acknowledged,
   and *kill -> new leader*: until a surviving member's ``Status`` names itself leader
   (polled every 10 ms),
4. restarts the killed member on its data dir and measures *restart -> caught up*: until
   it has applied the index its peers had committed when it came back.

It prints min, p50, p90 and max of each over the trials. Flags after ``--`` go to every
member; NB: etcdd defaults to ``--pre-vote=true`` and etcd 3.4 to false, so
``-- --pre-vote=true`` compares like with like.
"""
from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Callable, Sequence, TypeVar

import grpc

from etcdd.proto import rpc_pb2 as pb
from ops.bench import percentile
from ops.bench_compare import exited_members, keep_logs
from ops.cluster import ClusterError, LocalCluster, LocalMember
from ops.local import unwind_on_signals

T = TypeVar("T")
_PUT = "/etcdserverpb.KV/Put"
_STATUS = "/etcdserverpb.Maintenance/Status"
_POLL_SECONDS = 0.01
# A killed member comes back within seconds; grpc's default reconnect backoff (1 s, growing
# to 120 s) would keep our channel to it down for longer than the member was.
_CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 50),
                    ("grpc.min_reconnect_backoff_ms", 50),
                    ("grpc.max_reconnect_backoff_ms", 250)]
MEASURES = (("write_seconds", "kill -9 -> first write"),
            ("leader_seconds", "kill -9 -> new leader"),
            ("catch_up_seconds", "restart -> caught up"))


class FailoverError(RuntimeError):
    """A trial's wait ran past its deadline, or a member did not come back."""


# ------------------------------------------------------------------ pure helpers

@dataclass(frozen=True, slots=True)
class Trial:
    """One kill: times in seconds from the SIGKILL (catch-up: from the restart)."""
    killed: str
    new_leader: str
    write_seconds: float
    leader_seconds: float
    catch_up_seconds: float


def distribution(values: Sequence[float]) -> dict[str, float | int | None]:
    """``n``, ``min``, ``p50``, ``p90`` and ``max`` of the values (None for each when empty).

    ``distribution([3.0, 1.0, 2.0])`` is ``{"n": 3, "min": 1.0, "p50": 2.0, "p90": 2.8,
    "max": 3.0}`` (percentiles interpolate between ranks, as `ops.bench.percentile`).
    """
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "min": None, "p50": None, "p90": None, "max": None}
    return {"n": len(ordered), "min": ordered[0], "p50": percentile(ordered, 50),
            "p90": percentile(ordered, 90), "max": ordered[-1]}


def first_success_after(successes: Sequence[tuple[float, float]],
                        t: float) -> tuple[float, float] | None:
    """The first ``(sent, acked)`` with ``sent >= t``, or None; `successes` is in sent order.

    ``first_success_after([(1, 2), (5, 6)], 3) == (5, 6)``: a write sent before the kill
    proves nothing about the new leader, even if it is acknowledged after it.
    """
    i = bisect.bisect_left(successes, t, key=lambda s: s[0])
    return successes[i] if i < len(successes) else None


def summarize(trials: Sequence[Trial]) -> dict[str, dict]:
    """Each measure's `distribution` over the trials, by the measure's field name."""
    return {field: distribution([getattr(t, field) for t in trials]) for field, _ in MEASURES}


def format_report(run: dict) -> str:
    """One server's run as a small table: a header line, then a row per measure.

    ``run`` holds ``server``, ``members``, ``call_timeout``, ``trials`` (dicts of `Trial`),
    ``summary`` (from `summarize`), ``writer_errors`` (counts by gRPC code),
    ``writer_error_samples`` (one message per code) and ``error`` (why it stopped early).
    """
    width = max(len(title) for _, title in MEASURES) + 6
    lines = [f"{run['server']}: {run['members']} members, {len(run['trials'])} trials, "
             f"Put timeout {run['call_timeout']:g}s",
             " " * width + "".join(f"{c:>8}" for c in ("min", "p50", "p90", "max"))]
    for field, title in MEASURES:
        d = run["summary"][field]
        cells = "".join("       -" if d[k] is None else f"{d[k]:>8.3f}"
                        for k in ("min", "p50", "p90", "max"))
        lines.append(f"  {title + ' (s)':<{width - 2}}{cells}")
    errors = run.get("writer_errors") or {}
    if errors:
        lines.append("  writer errors: " + ", ".join(f"{k}:{v}" for k, v in sorted(errors.items())))
    for code, details in sorted((run.get("writer_error_samples") or {}).items()):
        lines.append(f"    e.g. {code}: {details}")
    if run.get("error"):
        lines.append(f"  stopped early: {run['error']}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command line; flags after ``--`` are kept in ``args.member_flags``."""
    argv = list(argv)
    member_flags: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, member_flags = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(prog="ops.failover", description=__doc__.split("\n\n")[0],
                                usage="%(prog)s [flags] [-- flags for every member]")
    p.add_argument("--trials", type=int, default=20, help="leader kills (default 20)")
    p.add_argument("--members", type=int, default=3, help="cluster size (default 3)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--etcd", action="store_true", help="etcd 3.4 instead of etcdd")
    which.add_argument("--compare", action="store_true", help="etcd 3.4, then etcdd")
    p.add_argument("--call-timeout", type=float, default=0.1,
                   help="seconds per Put before trying the next member (default 0.1)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds any one wait of a trial may take (default 30)")
    p.add_argument("--data-root", default=None, help="where the clusters' data dirs go")
    p.add_argument("-w", "--write-out", choices=("table", "json"), default="table")
    args = p.parse_args(argv)
    if args.trials < 1 or not 3 <= args.members <= 26:
        p.error("--trials must be at least 1 and --members 3..26 (a kill must leave a quorum)")
    if args.call_timeout <= 0 or args.timeout <= 0:
        p.error("--call-timeout and --timeout must be positive")
    args.member_flags = member_flags
    args.servers = ["etcd", "etcdd"] if args.compare else ["etcd" if args.etcd else "etcdd"]
    return args


# ------------------------------------------------------------------ the cluster side

def _wait(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Call `probe` every 10 ms until it returns something; raises FailoverError at the
    deadline."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got is not None:
            return got
        if time.monotonic() >= deadline:
            raise FailoverError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(_POLL_SECONDS)


class Writer:
    """A thread that puts without pause, one Put at a time, moving to the next endpoint
    after a failure. `successes` holds ``(sent, acked)`` monotonic times in sent order."""

    def __init__(self, endpoints: Sequence[str], call_timeout: float) -> None:
        self._channels = [grpc.insecure_channel(e, options=_CHANNEL_OPTIONS) for e in endpoints]
        self._puts = [ch.unary_unary(_PUT) for ch in self._channels]   # bytes in, bytes out
        self._requests = [pb.PutRequest(key=b"failover/%04d" % i, value=bytes(64))
                          .SerializeToString() for i in range(1000)]
        self._call_timeout = call_timeout
        self.successes: list[tuple[float, float]] = []
        self.errors: Counter = Counter()
        self.error_samples: dict[str, str] = {}     # the first details seen, by code
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="failover-writer", daemon=True)

    def start(self) -> None:
        """Start putting; call `stop` to end it."""
        self._thread.start()

    def _run(self) -> None:
        target, n = 0, 0
        while not self._stopping.is_set():
            request = self._requests[n % len(self._requests)]
            n += 1
            sent = time.monotonic()
            try:
                self._puts[target](request, timeout=self._call_timeout)
            except grpc.RpcError as e:
                code = e.code().name
                self.errors[code] += 1
                self.error_samples.setdefault(code, e.details() or "")
                target = (target + 1) % len(self._puts)
                self._stopping.wait(0.002)      # a refused connection fails at once: no spin
                continue
            self.successes.append((sent, time.monotonic()))

    def success_after(self, t: float) -> tuple[float, float] | None:
        """The first write sent at or after `t` that was acknowledged, if any yet."""
        return first_success_after(self.successes, t)

    def stop(self) -> None:
        """Finish the Put in flight, end the thread and close the channels."""
        self._stopping.set()
        self._thread.join()
        for channel in self._channels:
            channel.close()


class StatusWatch:
    """One long-lived Maintenance channel per member, for polling ``Status`` cheaply."""

    def __init__(self, members: Sequence[LocalMember]) -> None:
        self._channels = {m.name: grpc.insecure_channel(m.endpoint, options=_CHANNEL_OPTIONS)
                          for m in members}
        self._calls = {
            name: ch.unary_unary(_STATUS, request_serializer=pb.StatusRequest.SerializeToString,
                                 response_deserializer=pb.StatusResponse.FromString)
            for name, ch in self._channels.items()}

    def status(self, member: LocalMember, timeout: float = 0.5) -> pb.StatusResponse | None:
        """The member's Status, or None if it does not answer in time."""
        try:
            return self._calls[member.name](pb.StatusRequest(), timeout=timeout)
        except grpc.RpcError:
            return None

    def self_leader(self, members: Sequence[LocalMember]) -> LocalMember | None:
        """Of `members`, the one whose Status names itself leader (highest term wins)."""
        best: tuple[int, LocalMember] | None = None
        for member in members:
            s = self.status(member)
            if s is not None and s.leader and s.leader == s.header.member_id:
                if best is None or s.raftTerm > best[0]:
                    best = (s.raftTerm, member)
        return None if best is None else best[1]

    def agreed_leader(self, members: Sequence[LocalMember]) -> LocalMember | None:
        """The leader, if every one of `members` answers and names the same one."""
        statuses = [self.status(m) for m in members]
        if any(s is None for s in statuses) or len({s.leader for s in statuses}) != 1:
            return None
        return next((m for m, s in zip(members, statuses)
                     if s.leader and s.leader == s.header.member_id), None)

    def close(self) -> None:
        """Close every member's channel."""
        for channel in self._channels.values():
            channel.close()


def run_trial(cluster: LocalCluster, watch: StatusWatch, writer: Writer,
              timeout: float) -> Trial:
    """Kill the leader, time the failover, restart it and wait until it has caught up."""
    members = cluster.members
    leader = _wait(lambda: watch.agreed_leader(members), timeout,
                   "every member to follow one leader")
    settled_at = time.monotonic()
    _wait(lambda: writer.success_after(settled_at), timeout, "a write to succeed")
    killed_at = time.monotonic()
    cluster.kill(leader)
    survivors = [m for m in members if m is not leader]
    new_leader = _wait(lambda: watch.self_leader(survivors), timeout, "a new leader")
    leader_at = time.monotonic()
    _, acked = _wait(lambda: writer.success_after(killed_at), timeout,
                     "a write after the kill")
    restarted_at = time.monotonic()
    try:
        cluster.start_member(leader, wait=True, timeout=timeout)
    except ClusterError as e:
        raise FailoverError(f"restarting {leader.name}: {e}") from None
    target = max((s.raftIndex for m in survivors if (s := watch.status(m)) is not None),
                 default=0)

    def caught_up() -> bool | None:
        s = watch.status(leader)
        return True if s is not None and s.raftAppliedIndex >= target else None
    _wait(caught_up, timeout, f"{leader.name} to apply index {target}")
    return Trial(killed=leader.name, new_leader=new_leader.name,
                 write_seconds=acked - killed_at, leader_seconds=leader_at - killed_at,
                 catch_up_seconds=time.monotonic() - restarted_at)


def run_server(label: str, args: argparse.Namespace, root: str) -> dict:
    """Start `label`'s cluster and the writer, run the trials, stop everything; the run's
    report (see `format_report`). A failing trial ends the run with ``error`` set."""
    cluster = LocalCluster(args.members, base_dir=os.path.join(root, label),
                           real_etcd=label == "etcd", extra_flags=args.member_flags)
    trials: list[Trial] = []
    error = None
    writer: Writer | None = None
    try:
        cluster.start(wait=True, timeout=60.0)
        writer = Writer(cluster.endpoints.split(","), args.call_timeout)
        watch = StatusWatch(cluster.members)
        writer.start()
        try:
            for i in range(args.trials):
                trial = run_trial(cluster, watch, writer, args.timeout)
                trials.append(trial)
                _note(f"{label} trial {i + 1}/{args.trials}: killed {trial.killed}, "
                      f"{trial.new_leader} led after {trial.leader_seconds:.3f}s, first write "
                      f"after {trial.write_seconds:.3f}s, caught up {trial.catch_up_seconds:.2f}s "
                      f"after restart")
        finally:
            writer.stop()
            watch.close()
    except (ClusterError, FailoverError) as e:
        down = exited_members(cluster.members)
        error = f"{e}" + (f" ({down})" if down else "") + f"; logs in {keep_logs(label, cluster)}"
        _note(f"{label}: {error}")
    finally:
        cluster.cleanup()
    return {"server": label, "members": args.members, "call_timeout": args.call_timeout,
            "member_flags": args.member_flags, "trials": [asdict(t) for t in trials],
            "summary": summarize(trials),
            "writer_errors": dict(writer.errors) if writer else {},
            "writer_error_samples": dict(writer.error_samples) if writer else {}, "error": error}


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)          # progress; stdout holds the report


def main(argv: Sequence[str] | None = None) -> int:
    """Run the trials on each server asked for; 1 if any run stopped early."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    unwind_on_signals()
    root = tempfile.mkdtemp(prefix="etcdd-failover-", dir=args.data_root)
    try:
        runs = [run_server(label, args, root) for label in args.servers]
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.write_out == "json":
        print(json.dumps(runs, indent=2))
    else:
        print("\n".join(format_report(run) for run in runs))
    return 1 if any(run["error"] for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
