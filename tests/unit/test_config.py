"""etcd 3.4's flags and ETCD_* variables -> Config (etcdd/config.py).

Expected strings are etcd 3.4.23's own (``etcd --bogus``, ``etcdmain/config.go``,
``embed/config.go`` Validate, ``etcdserver/config.go`` VerifyBootstrap).
"""
from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from etcdd.config import (FLAGS, Config, ConfigError, FlagError, HelpRequested, ListenAddress,
                          VersionRequested, help_text, parse_args,
                          parse_command_line)
from etcdd.goflags import parse_duration
from etcdd.urls import normalize_url

LOCAL = ["--listen-client-urls", "http://127.0.0.1:2379",
         "--advertise-client-urls", "http://127.0.0.1:2379"]


def parse(*argv: str, **environ: str) -> Config:
    return parse_args(list(argv), environ)


class DefaultsTests(SynchronousTestCase):

    def test_defaults_are_etcds(self) -> None:
        """With no flags the Config holds etcd 3.4's defaults (pre-vote excepted)."""
        c = parse()
        self.assertEqual(c, Config())
        self.assertEqual(
            (c.name, c.data_dir, c.wal_dir, c.snapshot_count, c.heartbeat_interval_ms,
             c.election_timeout_ms, c.quota_backend_bytes, c.max_request_bytes, c.max_txn_ops,
             c.max_concurrent_streams, c.initial_cluster_token, c.initial_cluster_state),
            ("default", "default.etcd", "", 100000, 100, 1000, 0, 1572864, 128, 2 ** 32 - 1,
             "etcd-cluster", "new"))
        self.assertEqual(c.listen_client_urls, ("http://localhost:2379",))
        self.assertEqual(c.advertise_client_urls, ("http://localhost:2379",))
        self.assertEqual(c.listen_peer_urls, ("http://localhost:2380",))
        self.assertEqual(c.initial_advertise_peer_urls, ("http://localhost:2380",))
        self.assertEqual(c.initial_cluster, (("default", "http://localhost:2380"),))
        self.assertEqual((c.auto_compaction_mode, c.auto_compaction_retention), ("periodic", "0"))
        self.assertEqual((c.log_level, c.auth_token, c.bcrypt_cost, c.auth_token_ttl_seconds),
                         ("info", "simple", 10, 300))
        self.assertEqual((c.grpc_keepalive_min_time_seconds, c.grpc_keepalive_interval_seconds,
                          c.grpc_keepalive_timeout_seconds), (5.0, 7200.0, 20.0))
        self.assertTrue(c.strict_reconfig_check)
        self.assertTrue(c.enable_grpc_gateway)
        self.assertTrue(c.initial_election_tick_advance)
        self.assertFalse(c.enable_v2)
        self.assertTrue(c.pre_vote)   # NB: etcd 3.4 says false; DESIGN.md turns it on

    def test_derived_values(self) -> None:
        """Ticks, quota and paths derive from the flags as etcd derives them."""
        c = parse("--data-dir", "/var/lib/e", "--heartbeat-interval", "50",
                  "--election-timeout", "600")
        self.assertEqual(c.election_ticks, 12)
        self.assertEqual(c.quota_bytes, 2 * 1024 ** 3)
        self.assertEqual(c.member_dir, "/var/lib/e/member")
        self.assertEqual(c.wal_path, "/var/lib/e/member/wal")
        self.assertEqual(c.snap_path, "/var/lib/e/member/snap")
        self.assertEqual(c.backend_path, "/var/lib/e/member/snap/db")
        self.assertEqual(c.request_timeout_seconds, 6.2)
        self.assertEqual(parse("--wal-dir", "/fast/wal").wal_path, "/fast/wal")
        self.assertEqual(parse("--quota-backend-bytes", "1024").quota_bytes, 1024)
        self.assertIsNone(parse("--quota-backend-bytes", "-1").quota_bytes)

    def test_listen_addresses(self) -> None:
        """Listen URLs become (scheme, host, port); IPv6 hosts lose their brackets."""
        c = parse("--listen-client-urls", "http://127.0.0.1:2379,http://[::1]:2479",
                  "--advertise-client-urls", "http://127.0.0.1:2379",
                  "--listen-peer-urls", "http://0.0.0.0:2380")
        self.assertEqual(c.client_listen_addresses,
                         (ListenAddress("http", "127.0.0.1", 2379),
                          ListenAddress("http", "::1", 2479)))
        self.assertEqual(c.peer_listen_addresses, (ListenAddress("http", "0.0.0.0", 2380),))
        self.assertEqual(c.metrics_listen_addresses, ())

    def test_every_flag_has_a_field_and_help(self) -> None:
        """Each flag sets a Config field (or is consumed by the parser) and appears in --help."""
        fields = set(Config.__dataclass_fields__)
        text = help_text()
        for flag in FLAGS:
            if not flag.target.startswith("_"):
                self.assertIn(flag.target, fields, flag.name)
            if flag.target != "_obsolete":
                self.assertIn(f"  --{flag.name} '", text)


class FlagSyntaxTests(SynchronousTestCase):

    def test_value_forms(self) -> None:
        """``--f v``, ``--f=v``, ``-f v`` and ``-f=v`` all set a flag, as Go's flag package does."""
        for argv in (["--name", "x"], ["--name=x"], ["-name", "x"], ["-name=x"]):
            self.assertEqual(parse(*argv).name, "x", argv)

    def test_booleans(self) -> None:
        """A boolean is ``--f`` or ``--f=<Go bool>``; it never takes the next argument."""
        self.assertTrue(parse("--enable-pprof").enable_pprof)
        self.assertTrue(parse("--enable-pprof=true").enable_pprof)
        self.assertFalse(parse("--pre-vote=false").pre_vote)
        self.assertFalse(parse("--strict-reconfig-check=0").strict_reconfig_check)
        self.assertTrue(parse("--enable-v2=T").enable_v2)
        e = self.assertRaises(ConfigError, parse, "--enable-pprof", "true")
        self.assertEqual(str(e), "'true' is not a valid flag")

    def test_integers_like_go(self) -> None:
        """Integers parse as Go's strconv with base 0: decimal, 0x, 0o, 0b."""
        self.assertEqual(parse("--max-txn-ops", "0x10").max_txn_ops, 16)
        self.assertEqual(parse("--snapshot-count", "1_000").snapshot_count, 1000)
        self.assertEqual(parse("--quota-backend-bytes", "-5").quota_backend_bytes, -5)

    def test_durations_like_go(self) -> None:
        """Duration flags take Go durations and are kept in seconds."""
        c = parse("--grpc-keepalive-min-time", "1m30s",
                  "--experimental-watch-progress-notify-interval", "250ms")
        self.assertEqual(c.grpc_keepalive_min_time_seconds, 90.0)
        self.assertEqual(c.experimental_watch_progress_notify_interval_seconds, 0.25)
        self.assertEqual(parse_duration("1.5h"), 5400.0)
        self.assertEqual(parse_duration("0"), 0.0)

    def test_double_dash_ends_flags(self) -> None:
        """``--`` ends the flags; what follows is a stray argument."""
        e = self.assertRaises(ConfigError, parse, "--name", "x", "--", "--name")
        self.assertEqual(str(e), "'--name' is not a valid flag")

    def test_last_occurrence_wins(self) -> None:
        """A flag given twice keeps its last value, as in Go."""
        self.assertEqual(parse("--name", "a", "--name", "b").name, "b")

    def test_help_and_version(self) -> None:
        """-h, --help and -help ask for help; --version asks for the version."""
        for arg in ("-h", "--help", "-help"):
            self.assertRaises(HelpRequested, parse, arg)
        self.assertRaises(VersionRequested, parse, "--version")
        self.assertRaises(VersionRequested, parse, "--name", "x", "--version")

    def test_obsolete_flags_warn(self) -> None:
        """etcd's obsolete v0.4 flags are accepted, ignored and warned about."""
        result = parse_command_line(["--snapshot", "--peer-heartbeat-interval=5"], {})
        self.assertEqual(result.config, Config())
        self.assertEqual(result.warnings, ('flag "-snapshot" is no longer supported - ignoring.',
                                           'flag "-peer-heartbeat-interval" is no longer '
                                           'supported - ignoring.'))


class FlagErrorTests(SynchronousTestCase):
    """Go flag errors: etcd prints them and exits 2."""

    def assertFlagError(self, argv: list[str], message: str) -> None:
        e = self.assertRaises(FlagError, parse_args, argv, {})
        self.assertEqual((str(e), e.exit_status), (message, 2))

    def test_unknown_flag(self) -> None:
        """An unknown flag is named the way Go names it."""
        self.assertFlagError(["--bogus"], "flag provided but not defined: -bogus")
        self.assertFlagError(["--bogus=1"], "flag provided but not defined: -bogus")

    def test_missing_value(self) -> None:
        """A value flag at the end of argv is an error."""
        self.assertFlagError(["--name"], "flag needs an argument: -name")

    def test_bad_syntax(self) -> None:
        """Three dashes or a bare ``-=`` is bad syntax."""
        self.assertFlagError(["---name"], "bad flag syntax: ---name")

    def test_malformed_values(self) -> None:
        """Malformed numbers, booleans, choices and URLs carry etcd's reasons."""
        self.assertFlagError(["--snapshot-count", "abc"],
                             'invalid value "abc" for flag -snapshot-count: parse error')
        self.assertFlagError(["--heartbeat-interval=-1"],
                             'invalid value "-1" for flag -heartbeat-interval: parse error')
        self.assertFlagError(["--max-wals", "18446744073709551616"],
                             'invalid value "18446744073709551616" for flag -max-wals: '
                             'value out of range')
        self.assertFlagError(["--max-concurrent-streams=5000000000"],
                             'invalid value "5000000000" for flag -max-concurrent-streams: '
                             'strconv.ParseUint: parsing "5000000000": value out of range')
        self.assertFlagError(["--pre-vote=maybe"],
                             'invalid boolean value "maybe" for -pre-vote: parse error')
        self.assertFlagError(["--initial-cluster-state", "foo"],
                             'invalid value "foo" for flag -initial-cluster-state: invalid value')
        self.assertFlagError(["--grpc-keepalive-timeout", "5"],
                             'invalid value "5" for flag -grpc-keepalive-timeout: parse error')

    def test_malformed_urls(self) -> None:
        """URL flags refuse other schemes, a missing port and paths, as types.NewURLs does."""
        self.assertFlagError(["--listen-client-urls", "ftp://x:1"],
                             'invalid value "ftp://x:1" for flag -listen-client-urls: '
                             'URL scheme must be http, https, unix, or unixs: ftp://x:1')
        self.assertFlagError(["--listen-peer-urls", "http://127.0.0.1"],
                             'invalid value "http://127.0.0.1" for flag -listen-peer-urls: '
                             'URL address does not have the form "host:port": http://127.0.0.1')
        self.assertFlagError(["--advertise-client-urls", "http://localhost:9/path"],
                             'invalid value "http://localhost:9/path" for flag '
                             '-advertise-client-urls: URL must not contain a path: '
                             'http://localhost:9/path')

    def test_url_normalization(self) -> None:
        """URL lists are de-duplicated and sorted; schemes are lower-cased."""
        c = parse("--listen-client-urls",
                  "http://127.0.0.2:1,HTTP://127.0.0.1:1,http://127.0.0.2:1",
                  "--advertise-client-urls", "http://a:1")
        self.assertEqual(c.listen_client_urls, ("http://127.0.0.1:1", "http://127.0.0.2:1"))
        self.assertEqual(normalize_url(" https://h:1 "), "https://h:1")


class EnvironmentTests(SynchronousTestCase):

    def test_env_sets_flag(self) -> None:
        """Every flag --foo-bar can come from ETCD_FOO_BAR."""
        c = parse(ETCD_NAME="n1", ETCD_PRE_VOTE="false", ETCD_SNAPSHOT_COUNT="10",
                  ETCD_INITIAL_CLUSTER="n1=http://10.0.0.1:2380",
                  ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT="true")
        self.assertEqual((c.name, c.pre_vote, c.snapshot_count, c.data_dir),
                         ("n1", False, 10, "n1.etcd"))
        self.assertEqual(c.initial_cluster, (("n1", "http://10.0.0.1:2380"),))
        self.assertTrue(c.experimental_enable_lease_checkpoint)

    def test_empty_env_is_ignored(self) -> None:
        """An empty ETCD_* value is the same as none, as in etcd."""
        self.assertEqual(parse(ETCD_NAME=""), Config())

    def test_flag_wins_over_env(self) -> None:
        """A flag beats its ETCD_* variable, with a warning (etcd 3.4 refuses to start)."""
        result = parse_command_line(["--name", "flag"], {"ETCD_NAME": "env"})
        self.assertEqual(result.config.name, "flag")
        self.assertEqual(result.warnings,
                         ("environment variable ETCD_NAME is shadowed by the corresponding "
                          "command-line flag -name; using the flag",))

    def test_used_and_unknown_env_reported(self) -> None:
        """Used variables are reported for logging; unknown ETCD_* ones warn."""
        result = parse_command_line([], {"ETCD_MAX_TXN_OPS": "7", "ETCD_FOO": "1",
                                         "ETCDCTL_API": "3", "HOME": "/root"})
        self.assertEqual(result.config.max_txn_ops, 7)
        self.assertEqual(result.env_used, ("ETCD_MAX_TXN_OPS=7",))
        self.assertEqual(result.warnings, ("unrecognized environment variable ETCD_FOO=1",))

    def test_malformed_env(self) -> None:
        """A malformed ETCD_* value names the variable; etcd exits 1 for it."""
        e = self.assertRaises(ConfigError, parse, ETCD_SNAPSHOT_COUNT="abc")
        self.assertEqual((str(e), e.exit_status),
                         ('invalid value "abc" for ETCD_SNAPSHOT_COUNT: parse error', 1))

    def test_env_listen_urls_need_advertise(self) -> None:
        """Listen client URLs from the environment count as set explicitly."""
        e = self.assertRaises(ConfigError, parse, ETCD_LISTEN_CLIENT_URLS="http://127.0.0.1:1")
        self.assertEqual(str(e), "--advertise-client-urls is required when "
                                 "--listen-client-urls is set explicitly")


class ValidationTests(SynchronousTestCase):
    """embed/config.go Validate: etcd logs these and exits 1."""

    def assertInvalid(self, argv: list[str], message: str) -> None:
        e = self.assertRaises(ConfigError, parse_args, argv, {})
        self.assertNotIsInstance(e, FlagError)
        self.assertEqual((str(e), e.exit_status), (message, 1))

    def test_election_timeout_bounds(self) -> None:
        """Election timeout is at least 5 heartbeats and at most 50 s; both are positive."""
        self.assertInvalid(["--election-timeout", "100"],
                           "--election-timeout[100ms] should be at least as 5 times as "
                           "--heartbeat-interval[100ms]")
        self.assertInvalid(["--election-timeout", "50001"],
                           "--election-timeout[50001ms] is too long, and should be set less "
                           "than 50000ms")
        self.assertInvalid(["--heartbeat-interval", "0"],
                           "--heartbeat-interval must be >0 (set to 0ms)")
        c = parse("--heartbeat-interval", "10", "--election-timeout", "50")
        self.assertEqual(c.election_ticks, 5)

    def test_advertise_client_urls_required(self) -> None:
        """Explicit listen client URLs need explicit advertise client URLs."""
        self.assertInvalid(["--listen-client-urls", "http://127.0.0.1:2379"],
                           "--advertise-client-urls is required when --listen-client-urls "
                           "is set explicitly")
        self.assertEqual(parse(*LOCAL).advertise_client_urls, ("http://127.0.0.1:2379",))

    def test_bind_urls_need_ips(self) -> None:
        """Listen URLs name an IP or localhost, never another host name."""
        self.assertInvalid(["--listen-peer-urls", "http://example.com:2380"],
                           "expected IP in URL for binding (http://example.com:2380)")

    def test_advertised_urls_need_hosts(self) -> None:
        """Advertised URLs must have a host."""
        self.assertInvalid(["--initial-advertise-peer-urls", "http://:2380"],
                           '--initial-advertise-peer-urls "http://:2380" must be "host:port" '
                           "(unexpected empty host (http://:2380))")

    def test_choices(self) -> None:
        """Unknown compaction modes, retentions and log levels are refused."""
        self.assertInvalid(["--auto-compaction-mode", "x"], 'unknown auto-compaction-mode "x"')
        self.assertInvalid(["--auto-compaction-retention", "5x"],
                           'error parsing CompactionRetention: time: unknown unit "x" in '
                           'duration "5x"')
        c = parse("--auto-compaction-retention", "30m")
        self.assertEqual(c.auto_compaction_retention, "30m")
        self.assertInvalid(["--log-level", "loud"], 'unknown log-level "loud" '
                           "(only supports debug, info, warn, error, panic, fatal)")
        self.assertEqual(parse("--debug").log_level, "debug")

    def test_conflicting_bootstrap_flags(self) -> None:
        """--initial-cluster and --discovery exclude each other."""
        self.assertInvalid(["--initial-cluster", "a=http://127.0.0.1:1", "--discovery", "http://d"],
                           'multiple discovery or bootstrap flags are set. Choose one of '
                           '"initial-cluster", "discovery" or "discovery-srv"')

    def test_lease_checkpoint_persist_needs_checkpoint(self) -> None:
        """Persisting lease checkpoints requires sending them."""
        self.assertInvalid(["--experimental-enable-lease-checkpoint-persist"],
                           "setting experimental-enable-lease-checkpoint-persist requires "
                           "experimental-enable-lease-checkpoint")

    def test_unsupported_features_refused(self) -> None:
        """What etcdd cannot do is refused with a clear line, never silently ignored."""
        self.assertInvalid(["--config-file", "etcd.yml"],
                           "--config-file is not supported by etcdd; use flags or ETCD_* variables")
        self.assertInvalid(["--proxy", "on"],
                           "--proxy=on is not supported by etcdd (the v2 proxy is gone)")
        self.assertInvalid(["--discovery", "http://d"], "discovery (--discovery, "
                           "--discovery-srv) is not supported by etcdd; use --initial-cluster")
        self.assertInvalid(["--listen-peer-urls", "unix://localhost:1"],
                           "unix socket URLs are not supported by etcdd (unix://localhost:1)")

    def test_https_refused_until_tls_exists(self) -> None:
        """An https URL is refused rather than served as plaintext; so is
        --force-new-cluster, which etcdd does not implement."""
        e = self.assertRaises(ConfigError, parse, "--listen-client-urls",
                              "https://127.0.0.1:2379", "--advertise-client-urls",
                              "https://127.0.0.1:2379", "--cert-file", "c.pem")
        self.assertIn("TLS (https:// URLs) is not supported by etcdd yet", str(e))
        e = self.assertRaises(ConfigError, parse, "--force-new-cluster")
        self.assertIn("--force-new-cluster is not supported", str(e))


class NameAndClusterTests(SynchronousTestCase):

    def test_data_dir_defaults_to_name(self) -> None:
        """--data-dir defaults to <name>.etcd, also when given empty."""
        self.assertEqual(parse("--name", "n1").data_dir, "n1.etcd")
        self.assertEqual(parse("--name", "n1", "--data-dir", "").data_dir, "n1.etcd")
        self.assertEqual(parse("--name", "n1", "--data-dir", "/d").data_dir, "/d")
        self.assertEqual(Config(name="n2").data_dir, "n2.etcd")

    def test_initial_cluster_with_several_urls_per_name(self) -> None:
        """A name may repeat in --initial-cluster to give a member several peer URLs."""
        c = parse("--name", "a", "--initial-cluster",
                  "a=http://10.0.0.1:2380,b=http://10.0.0.2:2380,a=http://10.0.0.1:2381,,",
                  "--initial-advertise-peer-urls", "http://10.0.0.1:2381,http://10.0.0.1:2380")
        self.assertEqual(c.initial_cluster, (("a", "http://10.0.0.1:2380"),
                                             ("b", "http://10.0.0.2:2380"),
                                             ("a", "http://10.0.0.1:2381")))
        self.assertEqual(c.initial_cluster_urls(),
                         {"a": ("http://10.0.0.1:2380", "http://10.0.0.1:2381"),
                          "b": ("http://10.0.0.2:2380",)})
        c.verify_bootstrap()

    def test_name_alone_renames_default_cluster(self) -> None:
        """``--name x`` without --initial-cluster bootstraps x=<advertised peer URLs>."""
        c = parse("--name", "x", "--initial-advertise-peer-urls", "http://127.0.0.1:2380")
        self.assertEqual(c.initial_cluster, (("x", "http://127.0.0.1:2380"),))
        c.verify_bootstrap()

    def test_malformed_initial_cluster(self) -> None:
        """A member without a URL is refused with the flag named."""
        e = self.assertRaises(ConfigError, parse, "--initial-cluster", "a")
        self.assertEqual(str(e), 'invalid --initial-cluster "a": URL scheme must be http, '
                                 'https, unix, or unixs: ')


class VerifyBootstrapTests(SynchronousTestCase):
    """etcdserver/config.go VerifyBootstrap, checked only when a new member has no WAL."""

    def assertBootstrapError(self, argv: list[str], message: str) -> None:
        e = self.assertRaises(ConfigError, parse_args(argv, {}).verify_bootstrap)
        self.assertEqual(str(e), message)

    def test_local_name_missing(self) -> None:
        """The member's own name must be in --initial-cluster."""
        self.assertBootstrapError(["--initial-cluster", "y=http://127.0.0.1:2380"],
                                  'couldn\'t find local name "default" in the initial cluster '
                                  "configuration")
        e = self.assertRaises(ConfigError, parse("--initial-cluster", "y=http://127.0.0.1:1")
                              .verify_join_existing)
        self.assertIn("couldn't find local name", str(e))

    def test_cluster_url_not_advertised(self) -> None:
        """A URL the cluster lists for us must be one we advertise (etcd's exact message)."""
        self.assertBootstrapError(
            ["--initial-advertise-peer-urls", "http://127.0.0.1:23800",
             "--initial-cluster", "default=http://10.1.1.1:2380"],
            "--initial-cluster has default=http://10.1.1.1:2380 but missing from "
            "--initial-advertise-peer-urls=http://127.0.0.1:23800 "
            '(resolved urls: "http://127.0.0.1:23800" != "http://10.1.1.1:2380")')

    def test_advertised_url_not_in_cluster(self) -> None:
        """A URL we advertise must be in the cluster's list for us."""
        self.assertBootstrapError(
            ["--initial-advertise-peer-urls", "http://127.0.0.1:23800,http://127.0.0.1:23801",
             "--initial-cluster", "default=http://127.0.0.1:23800"],
            "--initial-advertise-peer-urls has http://127.0.0.1:23801 but missing from "
            "--initial-cluster=default=http://127.0.0.1:23800,default=http://127.0.0.1:23801")

    def test_duplicate_url(self) -> None:
        """Two members may not share a peer URL."""
        self.assertBootstrapError(
            ["--initial-advertise-peer-urls", "http://127.0.0.1:23800", "--initial-cluster",
             "default=http://127.0.0.1:23800,b=http://127.0.0.1:23800"],
            "initial cluster b=http://127.0.0.1:23800,default=http://127.0.0.1:23800 has "
            "duplicate url")

    def test_localhost_matches_loopback(self) -> None:
        """localhost and 127.0.0.1 name the same peer URL, as etcd finds by resolving."""
        parse("--initial-advertise-peer-urls", "http://127.0.0.1:2380").verify_bootstrap()
        c = parse("--initial-advertise-peer-urls", "http://node1:2380",
                  "--initial-cluster", "default=http://10.0.0.1:2380")
        self.assertRaises(ConfigError, c.verify_bootstrap)
        c.verify_bootstrap(resolve=lambda host: {"node1": "10.0.0.1"}.get(host, host))
