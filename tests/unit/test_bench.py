"""The pure parts of ops/bench.py, ops/bench_compare.py, ops/failover.py and ops/cli.py:
percentiles, /proc parsing, worker plans, cell matrices, argument parsing, failover
distributions and the tables. No network, no processes."""
from __future__ import annotations

import contextlib
import io
import math

from twisted.trial.unittest import SynchronousTestCase

from ops import cli, failover
from ops.bench import (ProcStat, TcpSocket, WorkerPlan, format_table, make_key,
                       parse_args, parse_cells, parse_endpoint, parse_proc_net_tcp_line,
                       parse_proc_stat, parse_proc_stat_busy, percentile, plan_workers,
                       settings, summarize)
from ops.bench_compare import (add_ratios, compare_status, exited_members, footer,
                               leader_first, without_redraws)
from ops.cluster import LocalMember

# /proc/PID/stat of etcd, with a comm that holds a space and a ')' to trip naive splitting.
STAT = ("13703 (etcd (x) y) S 1 13703 1 0 -1 1077936384 33915 0 3 0 1871 402 0 0 20 0 13 0 "
        "675000 11888418816 22000 18446744073709551615 4194304 20051237 140722584094080 0 0 0 0 "
        "0 2143420159 0 0 0 17 1 0 0 0 0 0")
TCP_HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
              "timeout inode")
TCP_LISTEN = ("   0: 0100007F:5CF9 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0"
              "        0 46212 1 000000008bed39d2 100 0 0 10 0")
TCP6_ESTABLISHED = ("   3: 00000000000000000000000001000000:0953 0000000000000000000000000100"
                    "0000:D3A2 01 00000000:00000000 00:00000000 00000000     0        0 777 1 "
                    "0000000000000000 20 4 30 10 -1")
TCP6_MAPPED = ("   4: 0000000000000000FFFF00000100007F:0953 00000000000000000000000000000000:0000"
               " 0A 00000000:00000000 00:00000000 00000000     0        0 888 1 0 100 0 0 10 0")


class PercentileTests(SynchronousTestCase):

    def test_interpolates_between_ranks(self) -> None:
        """The median of an even count is the mean of the middle two; ends are min and max."""
        values = [1.0, 2.0, 3.0, 4.0]
        self.assertEqual(percentile(values, 50), 2.5)
        self.assertEqual(percentile(values, 0), 1.0)
        self.assertEqual(percentile(values, 100), 4.0)

    def test_p99_of_a_hundred_and_one(self) -> None:
        """With values 0..100 the p-th percentile is exactly p."""
        values = [float(v) for v in range(101)]
        self.assertEqual(percentile(values, 99), 99.0)
        self.assertEqual(percentile(values, 50), 50.0)

    def test_single_and_empty(self) -> None:
        """One value is every percentile; no values give nan rather than an error."""
        self.assertEqual(percentile([7.0], 99), 7.0)
        self.assertTrue(math.isnan(percentile([], 50)))


class ProcStatTests(SynchronousTestCase):

    def test_parses_pid_ppid_and_cpu_ticks(self) -> None:
        """utime (field 14) plus stime (field 15) are counted after the last ')' of comm."""
        self.assertEqual(parse_proc_stat(STAT), ProcStat(pid=13703, ppid=1, cpu_ticks=1871 + 402))

    def test_refuses_other_text(self) -> None:
        """A line without a parenthesised comm is not a stat line."""
        self.assertRaises(ValueError, parse_proc_stat, "not a stat line")

    def test_machine_busy_ticks(self) -> None:
        """/proc/stat's cpu line counts user+nice+system, not idle, iowait, irq or softirq."""
        text = "cpu  100 2 30 9000 50 4 5 6 0 0\ncpu0 50 1 15 4500 25 2 2 3 0 0\n"
        self.assertEqual(parse_proc_stat_busy(text), 100 + 2 + 30)
        self.assertRaises(ValueError, parse_proc_stat_busy, "cpu0 1 2 3 4 5 6 7 8\n")


class ProcNetTcpTests(SynchronousTestCase):

    def test_ipv4_listen_row(self) -> None:
        """Little-endian hex address and hex port decode to 127.0.0.1:23801, LISTEN."""
        self.assertEqual(parse_proc_net_tcp_line(TCP_LISTEN),
                         TcpSocket("127.0.0.1", 23801, "0A", 46212))

    def test_ipv6_rows(self) -> None:
        """IPv6 addresses are four little-endian words; a v4-mapped one reads as IPv4."""
        self.assertEqual(parse_proc_net_tcp_line(TCP6_ESTABLISHED),
                         TcpSocket("::1", 2387, "01", 777))
        self.assertEqual(parse_proc_net_tcp_line(TCP6_MAPPED),
                         TcpSocket("127.0.0.1", 2387, "0A", 888))

    def test_header_and_blank_lines_are_skipped(self) -> None:
        """The column header and an empty line give None."""
        self.assertIsNone(parse_proc_net_tcp_line(TCP_HEADER))
        self.assertIsNone(parse_proc_net_tcp_line(""))


class EndpointAndKeyTests(SynchronousTestCase):

    def test_endpoint_forms(self) -> None:
        """URLs, bare host:port and bracketed IPv6 all give (host, port)."""
        self.assertEqual(parse_endpoint("http://127.0.0.1:2379"), ("127.0.0.1", 2379))
        self.assertEqual(parse_endpoint("127.0.0.1:2379"), ("127.0.0.1", 2379))
        self.assertEqual(parse_endpoint("[::1]:2379/"), ("::1", 2379))
        self.assertRaises(ValueError, parse_endpoint, "localhost")

    def test_keys_have_the_key_size(self) -> None:
        """Keys are zero-padded to key_size; one that cannot fit is refused."""
        self.assertEqual(make_key(42, 8), b"00000042")
        self.assertRaises(ValueError, make_key, 123456789, 8)


def _plans(**kw: object) -> list[WorkerPlan]:
    common = dict(op="put", key_space=10, key_size=8, val_size=1, total=None, seed=1)
    common.update(kw.pop("common", {}))
    return plan_workers(**kw, **common)


class PlanWorkersTests(SynchronousTestCase):

    def test_clients_spread_over_channels_and_processes(self) -> None:
        """5 clients on 2 channels over 2 processes: 3 loops on one, 2 on the other."""
        plans = _plans(endpoints=["a:1"], clients=5, conns=2, procs=2)
        self.assertEqual([(p.targets, p.clients) for p in plans],
                         [(("a:1",), (3,)), (("a:1",), (2,))])

    def test_channels_round_robin_over_endpoints(self) -> None:
        """Channel j goes to endpoint j % len(endpoints); one process holds every channel."""
        plans = _plans(endpoints=["a:1", "b:2"], clients=4, conns=4, procs=1)
        self.assertEqual(plans[0].targets, ("a:1", "b:2", "a:1", "b:2"))
        self.assertEqual(plans[0].clients, (1, 1, 1, 1))

    def test_never_more_channels_than_clients_or_processes_than_channels(self) -> None:
        """One client gets one channel in one process, however many were asked for."""
        plans = _plans(endpoints=["a:1"], clients=1, conns=16, procs=4)
        self.assertEqual([(p.targets, p.clients) for p in plans], [(("a:1",), (1,))])

    def test_total_is_split_by_clients_and_sums_exactly(self) -> None:
        """1000 requests over 3 processes of 2, 2 and 1 clients: 400, 400, 200."""
        plans = _plans(endpoints=["a:1"], clients=5, conns=3, procs=3, common={"total": 1000})
        self.assertEqual([p.total for p in plans], [400, 400, 200])
        self.assertEqual(len({p.seed for p in plans}), 3)


class ParseArgsTests(SynchronousTestCase):

    def test_single_run_defaults(self) -> None:
        """No flags: put with 16 clients for 5 s after 1 s warmup, on 127.0.0.1:2379."""
        a = parse_args([])
        self.assertEqual((a.command, a.op, a.clients, a.duration, a.warmup, a.total),
                         ("bench", ["put"], [16], 5.0, 1.0, None))
        self.assertEqual((a.endpoints, a.key_space, a.key_size, a.val_size, a.conns, a.procs),
                         ("127.0.0.1:2379", 100000, 8, 256, None, 2))

    def test_compare_defaults_to_the_matrix(self) -> None:
        """--compare runs put and range at 1, 16 and 64 clients, 5 s a cell, one member each."""
        a = parse_args(["--compare"])
        self.assertEqual((a.op, a.clients, a.duration, a.members),
                         (["put", "range"], [1, 16, 64], 5.0, 1))
        self.assertEqual(a.cells, [("put", (1, 16, 64)), ("range", (1, 16, 64))])

    def test_cells_give_each_op_its_own_clients(self) -> None:
        """--cells is the matrix as given; --op and --clients are derived from it."""
        a = parse_args(["--compare", "--members", "3",
                        "--cells", "put:1,16,64,256/range:64/range-l:64"])
        self.assertEqual(a.cells, [("put", (1, 16, 64, 256)), ("range", (64,)),
                                   ("range-l", (64,))])
        self.assertEqual((a.op, a.clients, a.members),
                         (["put", "range", "range-l"], [1, 16, 64, 256], 3))
        self.assertEqual(settings(a)["cells"], a.cells)

    def test_members_and_cells_misuse_exit_2(self) -> None:
        """--cells with --op, --members above 1 without --compare, and 0 members are refused."""
        for argv in (["--cells", "put:1", "--op", "put"], ["--cells", "put:1", "--clients", "1"],
                     ["--members", "3"], ["--compare", "--members", "0"],
                     ["--cells", "get:1"]):
            with contextlib.redirect_stderr(io.StringIO()):
                error = self.assertRaises(SystemExit, parse_args, argv)
            self.assertEqual(error.code, 2, argv)

    def test_lists_and_total(self) -> None:
        """--op and --clients take comma lists; --total replaces the default duration."""
        a = parse_args(["--op", "range,range-l", "--clients", "1,64", "--total", "500",
                        "--server-pid", "7,9", "-w", "json"])
        self.assertEqual((a.op, a.clients, a.total, a.duration, a.server_pid, a.write_out),
                         (["range", "range-l"], [1, 64], 500, None, [7, 9], "json"))

    def test_check_perf_subcommand(self) -> None:
        """'check-perf' first selects etcdctl check perf with its --load."""
        a = parse_args(["check-perf", "--load", "m", "--endpoints", "127.0.0.1:1"])
        self.assertEqual((a.command, a.load, a.endpoints), ("check-perf", "m", "127.0.0.1:1"))

    def test_bad_arguments_exit_2(self) -> None:
        """Unknown ops, --total with --duration, and a too small key size are usage errors."""
        for argv in (["--op", "delete"], ["--total", "1", "--duration", "1"],
                     ["--key-size", "3"], ["--clients", "0"]):
            with contextlib.redirect_stderr(io.StringIO()):
                error = self.assertRaises(SystemExit, parse_args, argv)
            self.assertEqual(error.code, 2, argv)


class ReportTests(SynchronousTestCase):

    def test_summarize_merges_workers(self) -> None:
        """Latencies of every worker are pooled; rate is count over the measured seconds."""
        import array
        results = [{"latencies": array.array("d", [0.001, 0.003]).tobytes(),
                    "errors": {"UNAVAILABLE": 1}, "last_end": 12.0, "client_cpu_seconds": 0.5},
                   {"latencies": array.array("d", [0.002]).tobytes(),
                    "errors": {"UNAVAILABLE": 2}, "last_end": 11.0, "client_cpu_seconds": 0.25}]
        s = summarize(results, duration=None, measure_at=10.0)
        self.assertEqual((s["requests"], s["seconds"], s["requests_per_second"]), (3, 2.0, 1.5))
        self.assertAlmostEqual(s["p50_ms"], 2.0)
        self.assertEqual((s["errors"], s["client_cpu_seconds"]), ({"UNAVAILABLE": 3}, 0.75))

    def test_ratio_is_etcdd_over_etcd_per_server_cpu_second(self) -> None:
        """Each etcdd cell gets its requests per server CPU-second over etcd's same cell."""
        cells = [{"op": "put", "clients": 1, "server": server,
                  "requests_per_server_cpu_second": rate}
                 for server, rate in (("etcd", 4000.0), ("etcdd", 1000.0))]
        add_ratios(cells)
        self.assertNotIn("ratio", cells[0])
        self.assertEqual(cells[1]["ratio"], 0.25)
        table = format_table(cells).splitlines()
        self.assertEqual(table[0].split()[-1], "etcdd/etcd")
        self.assertEqual(table[2].split()[-1], "0.25")
        self.assertEqual(table[1].split()[-1], "-")


class CliTests(SynchronousTestCase):

    def test_unknown_and_missing_commands_exit_2(self) -> None:
        """etcdd-ops with no command or an unknown one prints usage and returns 2."""
        with contextlib.redirect_stderr(io.StringIO()) as err:
            self.assertEqual(cli.main([]), 2)
            self.assertEqual(cli.main(["nope"]), 2)
        self.assertIn("bench", err.getvalue())

    def test_bench_is_dispatched_to_ops_bench(self) -> None:
        """'etcdd-ops bench --help' is ops.bench's own help."""
        with contextlib.redirect_stdout(io.StringIO()) as out:
            error = self.assertRaises(SystemExit, cli.main, ["bench", "--help"])
        self.assertEqual(error.code, 0)
        self.assertIn("--key-space", out.getvalue())


class CellsTests(SynchronousTestCase):

    def test_ops_keep_their_order_and_counts(self) -> None:
        """Slashes or spaces separate ops; each op keeps its own comma list, in order."""
        self.assertEqual(parse_cells("range-l:64 put:1,16/range:8"),
                         [("range-l", (64,)), ("put", (1, 16)), ("range", (8,))])

    def test_bad_cells_are_refused(self) -> None:
        """Unknown or repeated ops, missing or zero counts and an empty spec are errors."""
        for text in ("get:1", "put:1/put:2", "put", "put:", "put:0,4", "", " / "):
            self.assertRaises(ValueError, parse_cells, text)


class CompareTests(SynchronousTestCase):

    def test_leader_endpoint_comes_first(self) -> None:
        """Members a, b, c led by b give b's endpoint, then a's and c's."""
        members = [LocalMember(name, f"/d/{name}", f"/l/{name}", port, port + 1, [])
                   for name, port in (("a", 1000), ("b", 2000), ("c", 3000))]
        self.assertEqual(leader_first(members, members[1]),
                         ["127.0.0.1:2000", "127.0.0.1:1000", "127.0.0.1:3000"])

    def test_footer_and_status(self) -> None:
        """check perf is PASS on exit 0, else FAIL with the status; a lost member is named;
        only etcdd's failures make the run fail."""
        report = {"check_perf": {"etcd": {"exit_status": 1, "server_cpu_seconds": 41.5},
                                 "etcdd": {"exit_status": 0, "server_cpu_seconds": None}},
                  "clusters": {"etcd": {"members": 3}, "etcdd": {"members": 3}}}
        self.assertEqual(footer(report, "m"),
                         ["check perf --load=m: etcd FAIL (exit 1), server CPU 41.50 s",
                          "check perf --load=m: etcdd PASS"])
        self.assertEqual(compare_status(report), 0)
        report["clusters"]["etcdd"].update(problem="member b exited with -9", logs="/tmp/x")
        self.assertEqual(footer(report, "m")[-1],
                         "etcdd: member b exited with -9 (member logs: /tmp/x)")
        self.assertEqual(compare_status(report), 1)
        report["clusters"]["etcdd"].pop("problem")
        report["check_perf"]["etcdd"].update(exit_status=-9, stopped="member a exited with 0")
        self.assertEqual(footer(report, "m")[1], "check perf --load=m: etcdd FAIL (exit -9), "
                                                 "stopped: member a exited with 0")
        self.assertEqual(compare_status(report), 1)
        self.assertEqual(compare_status({"cells": [], "check_perf": {}}), 0)

    def test_progress_bar_redraws_are_dropped(self) -> None:
        """Only the last carriage-return segment of each line is kept; CRLF ends stay."""
        self.assertEqual(without_redraws(b"\r 1 / 60\r 2 / 60 3.33%\nPASS\r\nFAIL"),
                         b" 2 / 60 3.33%\nPASS\nFAIL")
        self.assertEqual(without_redraws(b""), b"")

    def test_exited_members_are_named(self) -> None:
        """Members whose process has exited are named with their status; others are not."""
        class Proc:
            def __init__(self, code: int | None) -> None:
                self.returncode = code

            def poll(self) -> int | None:
                return self.returncode
        members = [LocalMember(name, "/d", "/l", 1, 2, [], proc=proc) for name, proc in
                   (("a", Proc(None)), ("b", Proc(-9)), ("c", None), ("d", Proc(1)))]
        self.assertEqual(exited_members(members),
                         "member b exited with -9; member d exited with 1")
        self.assertIsNone(exited_members(members[:1]))


def _trial(write: float, leader: float, catch_up: float) -> failover.Trial:
    return failover.Trial(killed="a", new_leader="b", write_seconds=write,
                          leader_seconds=leader, catch_up_seconds=catch_up)


class FailoverTests(SynchronousTestCase):

    def test_distribution(self) -> None:
        """min, p50, p90 and max interpolate between ranks; no values give None each."""
        self.assertEqual(failover.distribution([3.0, 1.0, 2.0]),
                         {"n": 3, "min": 1.0, "p50": 2.0, "p90": 2.8, "max": 3.0})
        self.assertEqual(failover.distribution([]),
                         {"n": 0, "min": None, "p50": None, "p90": None, "max": None})

    def test_first_success_sent_after_the_kill(self) -> None:
        """A write sent before the kill does not count even if acknowledged after it."""
        successes = [(1.0, 2.0), (2.5, 4.0), (5.0, 6.0)]
        self.assertEqual(failover.first_success_after(successes, 3.0), (5.0, 6.0))
        self.assertEqual(failover.first_success_after(successes, 2.5), (2.5, 4.0))
        self.assertIsNone(failover.first_success_after(successes, 5.5))
        self.assertIsNone(failover.first_success_after([], 0.0))

    def test_summary_and_report(self) -> None:
        """Each measure gets its distribution and a table row; errors and a stop are shown."""
        trials = [_trial(1.0, 0.9, 2.0), _trial(3.0, 2.9, 4.0)]
        summary = failover.summarize(trials)
        self.assertEqual(summary["write_seconds"]["p50"], 2.0)
        self.assertEqual(summary["catch_up_seconds"]["max"], 4.0)
        run = {"server": "etcdd", "members": 3, "call_timeout": 0.1, "summary": summary,
               "trials": trials, "writer_errors": {"UNAVAILABLE": 4},
               "writer_error_samples": {"UNAVAILABLE": "connection refused"},
               "error": "timed out"}
        lines = failover.format_report(run).splitlines()
        self.assertEqual(lines[0], "etcdd: 3 members, 2 trials, Put timeout 0.1s")
        self.assertEqual(lines[1].split(), ["min", "p50", "p90", "max"])
        self.assertEqual(lines[2].split()[-4:], ["1.000", "2.000", "2.800", "3.000"])
        self.assertTrue(lines[2].lstrip().startswith("kill -9 -> first write (s)"))
        self.assertEqual(lines[5:], ["  writer errors: UNAVAILABLE:4",
                                     "    e.g. UNAVAILABLE: connection refused",
                                     "  stopped early: timed out"])

    def test_report_of_no_trials(self) -> None:
        """A run that stopped before its first trial prints dashes, not an error."""
        run = {"server": "etcd", "members": 3, "call_timeout": 0.1, "trials": [],
               "summary": failover.summarize([]), "error": None}
        self.assertEqual(failover.format_report(run).splitlines()[2].split()[-4:], ["-"] * 4)

    def test_parse_args(self) -> None:
        """Defaults: 20 trials of etcdd on 3 members; --compare runs etcd then etcdd, and
        flags after -- go to every member."""
        a = failover.parse_args([])
        self.assertEqual((a.trials, a.members, a.servers, a.call_timeout, a.member_flags),
                         (20, 3, ["etcdd"], 0.1, []))
        a = failover.parse_args(["--compare", "--trials", "5", "--", "--pre-vote=true"])
        self.assertEqual((a.trials, a.servers, a.member_flags),
                         (5, ["etcd", "etcdd"], ["--pre-vote=true"]))
        self.assertEqual(failover.parse_args(["--etcd"]).servers, ["etcd"])

    def test_bad_arguments_exit_2(self) -> None:
        """Fewer than 3 members, no trials, --etcd with --compare and a zero timeout are
        usage errors."""
        for argv in (["--members", "2"], ["--trials", "0"], ["--etcd", "--compare"],
                     ["--call-timeout", "0"]):
            with contextlib.redirect_stderr(io.StringIO()):
                error = self.assertRaises(SystemExit, failover.parse_args, argv)
            self.assertEqual(error.code, 2, argv)

    def test_failover_is_a_subcommand(self) -> None:
        """'etcdd-ops failover --help' is ops.failover's own help."""
        with contextlib.redirect_stdout(io.StringIO()) as out:
            error = self.assertRaises(SystemExit, cli.main, ["failover", "--help"])
        self.assertEqual(error.code, 0)
        self.assertIn("--call-timeout", out.getvalue())
