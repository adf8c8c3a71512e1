"""The pure parts of ops/maint_bench.py: argument parsing, the key plan, the write-hold
figures from put samples, and the side-by-side table. No network, no processes."""
from __future__ import annotations

import contextlib
import io
import math
import re

from twisted.trial.unittest import SynchronousTestCase

from ops import cli
from ops.maint_bench import (MIB, ROWS, WriteHold, churn_indexes, footer, format_table,
                             key_count, parse_args, write_hold)

MACHINE = {"cpus": 2, "load_start": 1.5, "load_end": 2.25}


def _parse_error(argv: list[str]) -> str:
    """The message argparse prints for a refused command line (it exits 2)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            parse_args(argv)
        except SystemExit as e:
            if e.code != 2:
                raise AssertionError(f"exit {e.code}, not 2") from None
            return err.getvalue()
    raise AssertionError(f"{argv} was accepted")


class ParseArgsTests(SynchronousTestCase):

    def test_defaults_are_issue_fives_run(self) -> None:
        """With no flags: 1024 MiB of 64 KiB values, half deleted, 2 writers, etcdd then etcd."""
        args = parse_args([])
        self.assertEqual((args.size_mb, args.value_bytes, args.churn, args.writers),
                         (1024, 65536, 0.5, 2))
        self.assertEqual(args.servers, ("etcdd", "etcd"))
        self.assertEqual(args.quota_backend_bytes, 4 << 30)
        self.assertEqual(args.write_out, "table")

    def test_flags_are_read(self) -> None:
        """Sizes, churn, writers, servers and -w json are taken as given."""
        args = parse_args(["--size-mb", "64", "--value-bytes", "4096", "--churn", "0.25",
                           "--writers", "4", "--servers", "etcd", "-w", "json"])
        self.assertEqual((args.size_mb, args.value_bytes, args.churn, args.writers),
                         (64, 4096, 0.25, 4))
        self.assertEqual(args.servers, ("etcd",))
        self.assertEqual(args.write_out, "json")

    def test_churn_outside_zero_to_one_is_refused(self) -> None:
        """A churn above 1 or below 0 is a usage error naming the range."""
        self.assertIn("within 0..1", _parse_error(["--churn", "1.5"]))
        self.assertIn("within 0..1", _parse_error(["--churn", "-0.1"]))

    def test_writers_outside_one_to_four_are_refused(self) -> None:
        """Zero or five background writers is a usage error."""
        self.assertIn("--writers must be within 1..4", _parse_error(["--writers", "0"]))
        self.assertIn("--writers must be within 1..4", _parse_error(["--writers", "5"]))

    def test_values_over_one_mib_are_refused(self) -> None:
        """A value etcd's request limit would refuse is caught before any server starts."""
        self.assertIn("at most 1048576", _parse_error(["--value-bytes", str(MIB + 1)]))

    def test_sizes_must_be_positive(self) -> None:
        """A zero size or a negative value size is a usage error."""
        self.assertIn("must be positive", _parse_error(["--size-mb", "0"]))
        self.assertIn("must be positive", _parse_error(["--value-bytes", "-1"]))

    def test_servers_must_be_known_and_distinct(self) -> None:
        """Only etcd and etcdd, each at most once, make a server list."""
        self.assertIn("each once", _parse_error(["--servers", "etcd,consul"]))
        self.assertIn("each once", _parse_error(["--servers", "etcd,etcd"]))
        self.assertIn("each once", _parse_error(["--servers", ","]))

    def test_registered_as_an_etcdd_ops_subcommand(self) -> None:
        """`etcdd-ops maint-bench` runs this module's main."""
        self.assertEqual(cli.SUBCOMMANDS["maint-bench"][0], "ops.maint_bench")


class KeyPlanTests(SynchronousTestCase):

    def test_one_gib_of_64_kib_values_is_16384_keys(self) -> None:
        """The key count is the size over the value size, at least one."""
        self.assertEqual(key_count(1024, 65536), 16384)
        self.assertEqual(key_count(1, 3 * MIB), 1)

    def test_half_churn_deletes_every_other_key(self) -> None:
        """Churn 0.5 deletes the odd indexes."""
        self.assertEqual(churn_indexes(6, 0.5), [1, 3, 5])

    def test_churn_is_spread_evenly_and_exactly(self) -> None:
        """A tenth of 100 keys is exactly 10, one in each run of ten."""
        doomed = churn_indexes(100, 0.1)
        self.assertEqual(doomed, list(range(9, 100, 10)))
        self.assertEqual(churn_indexes(5, 0.4), [2, 4])

    def test_no_churn_and_full_churn(self) -> None:
        """Churn 0 deletes nothing and churn 1 deletes every key."""
        self.assertEqual(churn_indexes(4, 0.0), [])
        self.assertEqual(churn_indexes(4, 1.0), [0, 1, 2, 3])


class WriteHoldTests(SynchronousTestCase):

    def test_worked_example(self) -> None:
        """Puts finished inside the window are counted; the longest gap and put are 7.9 s."""
        samples = [(9.0, 11.0), (11.0, 11.1), (11.1, 19.0), (19.0, 19.5), (19.5, 21.0)]
        hold = write_hold(samples, 10.0, 20.0)
        self.assertEqual(hold.puts_completed, 4)
        self.assertAlmostEqual(hold.longest_gap_seconds, 7.9)
        self.assertAlmostEqual(hold.longest_put_seconds, 7.9)
        self.assertTrue(math.isnan(hold.baseline_p50_seconds))

    def test_writes_held_for_the_whole_window(self) -> None:
        """When no put finishes inside the window, the gap is the window and the stall is
        the put that waited across it."""
        samples = [(0.0, 0.5), (0.5, 1.0), (1.0, 5.5)]
        self.assertEqual(write_hold(samples, 2.0, 5.0), WriteHold(0, 4.5, 3.0, 0.5))

    def test_no_samples(self) -> None:
        """Without any put, nothing finished, nothing stalled and the gap is the window."""
        hold = write_hold([], 1.0, 3.0)
        self.assertEqual((hold.puts_completed, hold.longest_put_seconds,
                          hold.longest_gap_seconds), (0, 0.0, 2.0))

    def test_baseline_is_the_median_before_the_window(self) -> None:
        """The baseline is the median latency of puts finished before the window only."""
        samples = [(0.0, 0.1), (0.1, 0.4), (0.4, 0.6), (0.6, 9.0)]
        hold = write_hold(samples, 1.0, 2.0)
        self.assertAlmostEqual(hold.baseline_p50_seconds, 0.2)
        self.assertEqual(hold.puts_completed, 0)
        self.assertAlmostEqual(hold.longest_put_seconds, 8.4)

    def test_puts_outside_the_window_do_not_count(self) -> None:
        """A put that started after the window ended is neither counted nor a stall."""
        samples = [(1.0, 1.2), (1.2, 1.4), (3.0, 9.0)]
        hold = write_hold(samples, 1.0, 2.0)
        self.assertEqual(hold.puts_completed, 2)
        self.assertAlmostEqual(hold.longest_put_seconds, 0.2)
        self.assertAlmostEqual(hold.longest_gap_seconds, 0.6)

    def test_a_failed_put_is_a_stall_but_not_a_finished_put(self) -> None:
        """A put that failed after waiting (etcd's 7 s request timeout) is the longest
        stall, yet the window still counts as having no finished put."""
        samples = [(0.0, 0.5), (2.5, 3.0)]
        hold = write_hold(samples, 1.0, 9.0, failed=[(0.5, 7.5)])
        self.assertEqual(hold.puts_completed, 1)
        self.assertAlmostEqual(hold.longest_put_seconds, 7.0)
        self.assertAlmostEqual(hold.longest_gap_seconds, 6.0)
        self.assertAlmostEqual(hold.baseline_p50_seconds, 0.5)


def _line(table: str, label: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(label + " "))


class FormatTableTests(SynchronousTestCase):

    def test_side_by_side_with_ratio(self) -> None:
        """Each figure sits under its server, right-aligned, with etcdd/etcd after them."""
        results = {"etcdd": {"snapshot_seconds": 2.0, "snapshot_bytes": 1024 * MIB},
                   "etcd": {"snapshot_seconds": 1.0, "snapshot_bytes": 512 * MIB}}
        table = format_table(results)
        header = table.splitlines()[0]
        self.assertEqual(header.split(), ["etcdd", "etcd", "etcdd/etcd"])
        row = _line(table, "snapshot save s")
        self.assertEqual(row.split()[-3:], ["2.00", "1.00", "2.00"])
        self.assertEqual(_line(table, "snapshot file MiB").split()[-3:],
                         ["1024.0", "512.0", "2.00"])
        column_ends = [m.end() for m in re.finditer(r"\S+", header)]
        figure_ends = [m.end() for m in re.finditer(r"\S+", row)][-3:]
        self.assertEqual(figure_ends, column_ends)

    def test_every_row_is_shown_and_missing_figures_are_na(self) -> None:
        """Every row appears once; a figure not measured shows n/a and gets no ratio."""
        table = format_table({"etcdd": {"keys": 16}, "etcd": {"keys": 16,
                                                              "restore_seconds": 3.0}})
        lines = table.splitlines()
        self.assertEqual(len(lines), 1 + len(ROWS))
        self.assertEqual(_line(table, "restore s").split()[-2:], ["n/a", "3.00"])
        self.assertEqual(_line(table, "keys loaded").split()[-3:], ["16", "16", "1.00"])

    def test_no_ratio_against_zero_or_nan(self) -> None:
        """A zero or NaN etcd figure gives no ratio rather than an error."""
        table = format_table({"etcdd": {"writer_errors": 3, "baseline_put_p50_ms": 1.0},
                              "etcd": {"writer_errors": 0, "baseline_put_p50_ms": math.nan}})
        self.assertEqual(_line(table, "background puts failed").split()[-2:], ["3", "0"])
        self.assertEqual(_line(table, "put p50 before defrag ms").split()[-2:],
                         ["1.00", "n/a"])

    def test_one_server_has_no_ratio_column(self) -> None:
        """With only etcd measured, the table has one figure column."""
        table = format_table({"etcd": {"defrag_seconds": 0.5}})
        self.assertEqual(table.splitlines()[0].split(), ["etcd"])
        self.assertEqual(_line(table, "defrag s").split()[-1], "0.50")

    def test_footer_says_why_a_figure_is_missing_and_the_load(self) -> None:
        """Each failed step gets a line with its error; the machine's load follows."""
        lines = footer({"etcdd": {"errors": {"restore": "exit 2: invalid choice"}},
                        "etcd": {"errors": {}}}, MACHINE)
        self.assertEqual(lines[0], "etcdd restore: n/a (exit 2: invalid choice)")
        self.assertEqual(lines[1], "machine: 2 CPUs; load average 1.50 at start, 2.25 at end")
        self.assertTrue(all("n/a" not in line for line in lines[1:]))

    def test_footer_says_why_background_puts_failed(self) -> None:
        """Each kind of failed background put gets a line with its count."""
        lines = footer({"etcd": {"errors": {}, "writer_error_kinds": {
            "UNKNOWN: etcdserver: request timed out": 2}}}, MACHINE)
        self.assertEqual(lines[0], "etcd background puts failed: 2 x UNKNOWN: etcdserver: "
                                   "request timed out")
