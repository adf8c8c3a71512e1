"""The parts of ops/watch_bench.py that need no server: argument parsing, how watchers
are spread over streams and processes, and (from ops/watch_report.py) window and lag
arithmetic and the side-by-side table. No network, no processes."""
from __future__ import annotations

import array
import contextlib
import io

from twisted.trial.unittest import SynchronousTestCase

from ops.watch_bench import WatchPlan, parse_args, plan_watchers
from ops.watch_report import (WATCH_METRICS, format_report, in_window, lag_percentiles,
                              side_by_side)


def refused(argv: list[str]) -> str:
    """What argparse says when it rejects `argv`."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            parse_args(argv)
        except SystemExit as e:
            if e.code == 2:
                return err.getvalue()
    raise AssertionError(f"{argv} was accepted")


class ParseArgsTests(SynchronousTestCase):

    def test_defaults_are_the_issue_benchmark(self) -> None:
        """Without flags: etcdd alone, 3 members, watchers 0/1/100/1000, 10,000 leases."""
        args = parse_args([])
        self.assertEqual((args.servers, args.members, args.watchers, args.leases),
                         (["etcdd"], 3, [0, 1, 100, 1000], 10000))
        self.assertEqual((args.inflight, args.watchers_per_stream, args.procs), (64, 100, 2))

    def test_compare_runs_etcd_then_etcdd(self) -> None:
        """--compare benches both servers, etcd first; --server picks one."""
        self.assertEqual(parse_args(["--compare"]).servers, ["etcd", "etcdd"])
        self.assertEqual(parse_args(["--server", "etcd"]).servers, ["etcd"])

    def test_watcher_lists(self) -> None:
        """--watchers takes a comma list; an empty one runs only the lease cell."""
        self.assertEqual(parse_args(["--watchers", "5,50"]).watchers, [5, 50])
        self.assertEqual(parse_args(["--watchers", ""]).watchers, [])

    def test_bad_values_are_refused(self) -> None:
        """Negative or non-numeric counts, zero sizes, a non-positive duration, and
        --compare with --server are refused with a message naming the problem."""
        self.assertIn("want counts of 0 or more", refused(["--watchers", "1,-1"]))
        self.assertIn("want counts of 0 or more", refused(["--watchers", "x"]))
        self.assertIn("--inflight must be at least 1", refused(["--inflight", "0"]))
        self.assertIn("--lease-window must be at least 1", refused(["--lease-window", "0"]))
        self.assertIn("--duration", refused(["--duration", "0"]))
        self.assertIn("not allowed with", refused(["--compare", "--server", "etcd"]))


class PlanWatchersTests(SynchronousTestCase):

    def test_lag_watcher_alone_then_even_streams(self) -> None:
        """249 watchers after the lag watcher make 3 streams of 83, spread over the
        endpoints by stream and over 2 processes."""
        plans = plan_watchers(250, 100, 2, ["a", "b"], b"p/")
        self.assertEqual(plans, [WatchPlan((("a", 1),), b"p/", record_lag=True),
                                 WatchPlan((("a", 83), ("a", 83)), b"p/"),
                                 WatchPlan((("b", 83),), b"p/")])

    def test_no_watchers_and_one_watcher(self) -> None:
        """Zero watchers need no process; one watcher is the lag watcher alone."""
        self.assertEqual(plan_watchers(0, 100, 2, ["a"], b"p/"), [])
        self.assertEqual(plan_watchers(1, 100, 2, ["a"], b"p/"),
                         [WatchPlan((("a", 1),), b"p/", record_lag=True)])

    def test_every_watcher_is_placed_once(self) -> None:
        """For many shapes the streams hold exactly the watchers asked for, none over
        the per-stream limit, in no more processes than asked."""
        for watchers, per_stream, procs in ((1000, 100, 2), (101, 100, 4), (7, 3, 8)):
            plans = plan_watchers(watchers, per_stream, procs, ["a", "b", "c"], b"p/")
            sizes = [n for plan in plans for _, n in plan.streams]
            self.assertEqual(sum(sizes), watchers)
            self.assertLessEqual(max(sizes), per_stream)
            self.assertLessEqual(len(plans), procs + 1)


class ArithmeticTests(SynchronousTestCase):

    def test_in_window_counts_both_edges(self) -> None:
        """Times on the window's edges count; times outside do not."""
        self.assertEqual(in_window(array.array("d", [0.9, 1.0, 1.5, 2.0, 2.1]), 1.0, 2.0), 3)

    def test_lag_from_ack_and_from_send(self) -> None:
        """Lag is arrival minus acknowledgement (negative if the event came first) and
        send lag arrival minus send, over puts acknowledged inside the window only."""
        revs, sent, acked = [2, 3, 4, 5], [0.5, 1.0, 1.1, 1.2], [0.9, 1.010, 1.110, 3.0]
        arrivals = [(2, 0.95), (3, 1.009), (4, 1.120), (5, 3.1), (9, 1.0)]
        got = lag_percentiles(revs, sent, acked, arrivals, 1.0, 2.0)
        self.assertEqual(got["lag_samples"], 2)
        self.assertAlmostEqual(got["lag_p50_ms"], 4.5)
        self.assertAlmostEqual(got["send_lag_p50_ms"], 14.5)
        self.assertAlmostEqual(got["lag_p99_ms"], -1 + 11 * 0.99)

    def test_no_samples(self) -> None:
        """Without a matching event the lag is unknown, not zero."""
        got = lag_percentiles([2], [0.5], [1.5], [], 1.0, 2.0)
        self.assertEqual((got["lag_p50_ms"], got["lag_p99_ms"], got["lag_samples"]),
                         (None, None, 0))


class TableTests(SynchronousTestCase):

    def test_side_by_side_columns(self) -> None:
        """One column per server under each metric; a missing cell or value is '-'."""
        rows = [("1", {"etcd": {"puts_per_second": 9000.4, "lag_p50_ms": -0.25},
                       "etcdd": {"puts_per_second": 4000}}),
                ("1000", {"etcd": {"puts_per_second": 123}})]
        lines = side_by_side(rows, WATCH_METRICS[:1] + WATCH_METRICS[2:3],
                             ["etcd", "etcdd"], "watchers")
        self.assertEqual(lines, ["watchers        puts/s    lag p50 ms",
                                 "           etcd  etcdd   etcd  etcdd",
                                 "1          9000   4000   -0.2      -",
                                 "1000        123      -      -      -"])

    def test_report_with_problems_and_notes(self) -> None:
        """The watch table, the lease table, each failed cell and each note, in order."""
        report = {"servers": ["etcd", "etcdd"], "notes": [("client processes", "watch 0: 1")],
                  "cells": [
                      {"kind": "watch", "watchers": 0, "server": "etcd",
                       "puts_per_second": 2500.0, "events_per_second": 0.0},
                      {"kind": "watch", "watchers": 0, "server": "etcdd",
                       "problem": "watch: RuntimeError: stream ended"},
                      {"kind": "lease", "leases": 10, "server": "etcd",
                       "renewals_per_second": 20000.0}]}
        self.assertEqual(format_report(report).splitlines(), [
            "watchers        puts/s      events/s    lag p50 ms    lag p99 ms       drain s"
            "        missed     srv CPU s     cli CPU s",
            "           etcd  etcdd   etcd  etcdd   etcd  etcdd   etcd  etcdd   etcd  etcdd"
            "   etcd  etcdd   etcd  etcdd   etcd  etcdd",
            "0          2500      -      0      -      -      -      -      -      -      -"
            "      -      -      -      -      -      -",
            "",
            "leases      grants/s    renewals/s     srv CPU s     cli CPU s",
            "         etcd  etcdd   etcd  etcdd   etcd  etcdd   etcd  etcdd",
            "10          -      -  20000      -      -      -      -      -",
            "etcdd watch 0: watch: RuntimeError: stream ended",
            "client processes: watch 0: 1"])
