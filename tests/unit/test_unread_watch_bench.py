"""ops/unread_watch_bench.py's arguments (the benchmark itself starts processes: not here)."""
from __future__ import annotations

import contextlib
import io

from twisted.trial.unittest import SynchronousTestCase

from ops.unread_watch_bench import parse_args


class ParseArgsTests(SynchronousTestCase):

    def test_defaults_are_the_issues_case(self) -> None:
        """10,000 watchers on 10 streams, 300 puts, etcd then etcdd."""
        args = parse_args([])
        self.assertEqual((args.watchers, args.streams, args.puts, args.servers),
                         (10_000, 10, 300, "etcd,etcdd"))

    def test_refuses_watchers_that_do_not_split_over_the_streams(self) -> None:
        """Watchers must be a positive multiple of streams; servers are etcd or etcdd."""
        for argv in (["--watchers", "15", "--streams", "10"], ["--streams", "0"],
                     ["--servers", "consul"]):
            with contextlib.redirect_stderr(io.StringIO()):
                self.assertRaises(SystemExit, parse_args, argv)
