"""etcd's command line and ``ETCD_*`` environment variables -> one immutable `Config`.

A core: pure, no IO. The caller passes argv and the environment in; `parse_args` returns a
validated `Config` or raises `ConfigError` carrying one line and an exit status.

Matches etcd 3.4 ``etcdmain/config.go`` (flag names, defaults, ``ETCD_FOO_BAR`` fallbacks),
Go's ``flag`` package (``-flag``/``--flag``, ``--flag=value`` or ``--flag value``, booleans
only as ``--flag`` or ``--flag=false``, parsing stops at the first non-flag) and
``embed/config.go`` ``Validate`` (same checks, order and messages). Flag syntax errors exit 2,
semantic errors exit 1, as etcd does. Deliberate differences, each marked ``# NB:``:
``--pre-vote`` defaults to true; a flag given on the command line and in the environment is a
warning (the flag wins), not etcd's fatal error; features etcdd lacks (``--config-file``,
discovery, v2 proxy, unix sockets) are refused with a clear message instead of ignored.
Bootstrap checks that etcd makes only when a member has no WAL yet are separate methods
(`Config.verify_bootstrap`, `Config.verify_join_existing`) for the server to call.
"""
from __future__ import annotations

import ipaddress
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from etcdd.goflags import (BadValueError, choice, duration, integer, parse_bool, parse_duration,
                           strings, text, uint32)
from etcdd.urls import (ListenAddress, go_quote, normalize_url, resolve_localhost, url_host,
                        urls_equal, urls_map)

MAX_ELECTION_MS = 50000                 # etcd embed/config.go maxElectionMs
DEFAULT_QUOTA_BYTES = 2 * 1024 ** 3     # etcdserver/quota.go DefaultQuotaBytes
_LOG_LEVELS = ("debug", "info", "warn", "error", "panic", "fatal")
_DEFAULT_PEER_URLS = ("http://localhost:2380",)
_DEFAULT_CLUSTER = (("default", "http://localhost:2380"),)


class ConfigError(ValueError):
    """A bad configuration; ``str()`` is one line. etcd exits 1 for these."""
    exit_status = 1


class FlagError(ConfigError):
    """A flag etcd's Go flag parser rejects (unknown, missing or malformed value): exit 2."""
    exit_status = 2


class HelpRequested(Exception):
    """``-h``/``--help`` was given: print `help_text()` and exit 0."""


class VersionRequested(Exception):
    """``--version`` was given: print the version and exit 0."""


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the daemon was told. Defaults are etcd 3.4's (except ``pre_vote``).

    URL lists are normalized (scheme lower-cased), de-duplicated and sorted, as etcd's
    ``UniqueURLs`` does; ``initial_cluster`` keeps ``(name, url)`` pairs in the given order.
    Durations are float seconds. ``data_dir`` defaults to ``<name>.etcd``.
    """
    # member
    name: str = "default"
    data_dir: str = ""
    wal_dir: str = ""
    snapshot_count: int = 100000
    heartbeat_interval_ms: int = 100
    election_timeout_ms: int = 1000
    initial_election_tick_advance: bool = True
    listen_peer_urls: tuple[str, ...] = ("http://localhost:2380",)
    listen_client_urls: tuple[str, ...] = ("http://localhost:2379",)
    listen_metrics_urls: tuple[str, ...] = ()
    max_snapshots: int = 5
    max_wals: int = 5
    quota_backend_bytes: int = 0
    backend_batch_interval_seconds: float = 0.0
    backend_batch_limit: int = 0
    max_txn_ops: int = 128
    max_request_bytes: int = 1572864
    grpc_keepalive_min_time_seconds: float = 5.0
    grpc_keepalive_interval_seconds: float = 7200.0
    grpc_keepalive_timeout_seconds: float = 20.0
    max_concurrent_streams: int = 2 ** 32 - 1
    # clustering
    initial_advertise_peer_urls: tuple[str, ...] = ("http://localhost:2380",)
    initial_cluster: tuple[tuple[str, str], ...] = _DEFAULT_CLUSTER
    initial_cluster_state: str = "new"
    initial_cluster_token: str = "etcd-cluster"
    advertise_client_urls: tuple[str, ...] = ("http://localhost:2379",)
    discovery: str = ""
    discovery_fallback: str = "proxy"
    discovery_proxy: str = ""
    discovery_srv: str = ""
    discovery_srv_name: str = ""
    strict_reconfig_check: bool = True
    enable_v2: bool = False
    pre_vote: bool = True   # NB: etcd 3.4 defaults to false; DESIGN.md turns pre-vote on
    auto_compaction_retention: str = "0"
    auto_compaction_mode: str = "periodic"
    proxy: str = "off"
    # security (kept for the TLS work; https:// URLs are refused until then)
    cert_file: str = ""
    key_file: str = ""
    client_cert_auth: bool = False
    client_crl_file: str = ""
    client_cert_allowed_hostname: str = ""
    trusted_ca_file: str = ""
    auto_tls: bool = False
    peer_cert_file: str = ""
    peer_key_file: str = ""
    peer_client_cert_auth: bool = False
    peer_trusted_ca_file: str = ""
    peer_auto_tls: bool = False
    peer_crl_file: str = ""
    peer_cert_allowed_cn: str = ""
    peer_cert_allowed_hostname: str = ""
    cipher_suites: tuple[str, ...] = ()
    experimental_peer_skip_client_san_verification: bool = False
    cors: tuple[str, ...] = ("*",)
    host_whitelist: tuple[str, ...] = ("*",)
    # logging
    logger: str = "capnslog"
    log_outputs: tuple[str, ...] = ("default",)
    log_level: str = "info"
    # auth, monitoring
    auth_token: str = "simple"
    bcrypt_cost: int = 10
    auth_token_ttl_seconds: int = 300
    enable_pprof: bool = False
    metrics: str = "basic"
    enable_grpc_gateway: bool = True
    # experimental, unsafe
    experimental_initial_corrupt_check: bool = False
    experimental_corrupt_check_time_seconds: float = 0.0
    experimental_enable_v2v3: str = ""
    experimental_backend_bbolt_freelist_type: str = "array"
    experimental_enable_lease_checkpoint: bool = False
    experimental_enable_lease_checkpoint_persist: bool = False
    experimental_compaction_batch_limit: int = 1000
    experimental_watch_progress_notify_interval_seconds: float = 600.0
    experimental_warning_apply_duration_seconds: float = 0.1
    unsafe_no_fsync: bool = False
    force_new_cluster: bool = False
    config_file: str = ""

    def __post_init__(self) -> None:
        if not self.data_dir:   # etcdmain/etcd.go: an empty --data-dir means "<name>.etcd"
            object.__setattr__(self, "data_dir", f"{self.name}.etcd")

    @property
    def election_ticks(self) -> int:
        """Election timeout in heartbeat ticks (etcd ``ElectionTicks``)."""
        return self.election_timeout_ms // max(self.heartbeat_interval_ms, 1)

    @property
    def quota_bytes(self) -> int | None:
        """The backend quota: 0 means etcd's 2 GiB default, a negative value means none."""
        if self.quota_backend_bytes < 0:
            return None
        return self.quota_backend_bytes or DEFAULT_QUOTA_BYTES

    @property
    def request_timeout_seconds(self) -> float:
        """etcdserver ``ReqTimeout``: 5 s plus two election timeouts."""
        return 5.0 + 2 * self.election_ticks * self.heartbeat_interval_ms / 1000

    @property
    def member_dir(self) -> str:
        return posixpath.join(self.data_dir, "member")

    @property
    def wal_path(self) -> str:
        return self.wal_dir or posixpath.join(self.member_dir, "wal")

    @property
    def snap_path(self) -> str:
        return posixpath.join(self.member_dir, "snap")

    @property
    def backend_path(self) -> str:
        return posixpath.join(self.snap_path, "db")

    @property
    def client_listen_addresses(self) -> tuple[ListenAddress, ...]:
        return tuple(listen_address(u) for u in self.listen_client_urls)

    @property
    def peer_listen_addresses(self) -> tuple[ListenAddress, ...]:
        return tuple(listen_address(u) for u in self.listen_peer_urls)

    @property
    def metrics_listen_addresses(self) -> tuple[ListenAddress, ...]:
        return tuple(listen_address(u) for u in self.listen_metrics_urls)

    def initial_cluster_urls(self) -> dict[str, tuple[str, ...]]:
        """``--initial-cluster`` as name -> sorted peer URLs (etcd ``types.URLsMap``)."""
        urls: dict[str, list[str]] = {}
        for name, url in self.initial_cluster:
            urls.setdefault(name, []).append(url)
        return {name: tuple(sorted(us)) for name, us in urls.items()}

    def validate(self) -> None:
        """Raise `ConfigError` for what etcd's ``embed.Config.Validate`` rejects, in its order."""
        for check in _CHECKS:
            check(self)

    def verify_bootstrap(self, resolve: Callable[[str], str] | None = None) -> None:
        """etcdserver ``VerifyBootstrap``: for a new cluster's member that has no WAL yet.

        ``resolve`` maps a host to an address for comparing URLs that differ as strings
        (etcd resolves them); the default only equates ``localhost`` with ``127.0.0.1``.
        Raises `ConfigError`.
        """
        self._has_local_member()
        self._advertise_matches_cluster(resolve or resolve_localhost)
        self._no_duplicate_url()
        if not self.initial_cluster:
            raise ConfigError("initial cluster unset and no discovery URL found")

    def verify_join_existing(self) -> None:
        """etcdserver ``VerifyJoinExisting``: for ``--initial-cluster-state existing``, no WAL."""
        self._has_local_member()
        self._no_duplicate_url()

    def _has_local_member(self) -> None:
        if self.name not in self.initial_cluster_urls():
            raise ConfigError(f"couldn't find local name {go_quote(self.name)} "
                              "in the initial cluster configuration")

    def _no_duplicate_url(self) -> None:
        urls = [url for _, url in self.initial_cluster]
        if len(set(urls)) != len(urls):
            cluster = urls_map(self.initial_cluster)
            raise ConfigError(f"initial cluster {cluster} has duplicate url")

    def _advertise_matches_cluster(self, resolve: Callable[[str], str]) -> None:
        cluster = self.initial_cluster_urls()[self.name]
        advertised = tuple(sorted(self.initial_advertise_peer_urls))
        err = urls_equal(advertised, cluster, resolve)
        if err is None:
            return
        ap = ",".join(advertised)
        missing = [u for u in cluster if u not in advertised]
        if missing:
            has = ",".join(f"{self.name}={u}" for u in missing)
            raise ConfigError(f"--initial-cluster has {has} but missing from "
                              f"--initial-advertise-peer-urls={ap} ({err})")
        own = urls_map((self.name, u) for u in advertised)
        extra = [u for u in advertised if u not in cluster]
        if extra:
            raise ConfigError(f"--initial-advertise-peer-urls has {','.join(extra)} "
                              f"but missing from --initial-cluster={own}")
        raise ConfigError(f"failed to resolve {ap} to match --initial-cluster={own} ({err})")


def listen_address(url: str) -> ListenAddress:
    """The scheme, host and port to listen on for a URL; raises `ConfigError` if malformed."""
    try:
        u = urlsplit(normalize_url(url))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return ListenAddress(u.scheme, u.hostname or "", u.port or 0)


# ---- validation (embed/config.go Validate, then etcdd's refusals) ---------------------------

def _check_logging(c: Config) -> None:
    if c.log_level not in _LOG_LEVELS:
        raise ConfigError(f"unknown log-level {go_quote(c.log_level)} "
                          f"(only supports {', '.join(_LOG_LEVELS)})")
    if c.logger not in ("capnslog", "zap"):
        raise ConfigError(f"unknown logger option {go_quote(c.logger)}")


def _check_bind_urls(c: Config) -> None:
    for url in c.listen_peer_urls + c.listen_client_urls + c.listen_metrics_urls:
        host = url_host(url)
        if url.startswith(("unix:", "unixs:")) or host == "localhost":
            continue
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"expected IP in URL for binding ({url})") from None


def _check_host_urls(c: Config) -> None:
    for flag, urls in (("--initial-advertise-peer-urls", c.initial_advertise_peer_urls),
                       ("--advertise-client-urls", c.advertise_client_urls)):
        for url in urls:
            if not url_host(url):
                raise ConfigError(f'{flag} {go_quote(",".join(urls))} must be "host:port" '
                                  f"(unexpected empty host ({url}))")


def _check_bootstrap_flags(c: Config) -> None:
    if c.initial_cluster_state not in ("new", "existing"):
        raise ConfigError(f"unexpected clusterState {go_quote(c.initial_cluster_state)}")
    if sum(map(bool, (c.discovery, c.initial_cluster, c.discovery_srv))) > 1:
        raise ConfigError('multiple discovery or bootstrap flags are set. Choose one of '
                          '"initial-cluster", "discovery" or "discovery-srv"')


def _check_timing(c: Config) -> None:
    tick, election = c.heartbeat_interval_ms, c.election_timeout_ms
    if tick <= 0:
        raise ConfigError(f"--heartbeat-interval must be >0 (set to {tick}ms)")
    if election <= 0:
        raise ConfigError(f"--election-timeout must be >0 (set to {election}ms)")
    if 5 * tick > election:
        raise ConfigError(f"--election-timeout[{election}ms] should be at least as 5 times as "
                          f"--heartbeat-interval[{tick}ms]")
    if election > MAX_ELECTION_MS:
        raise ConfigError(f"--election-timeout[{election}ms] is too long, and should be set "
                          f"less than {MAX_ELECTION_MS}ms")


def _check_advertise_client(c: Config) -> None:
    if c.listen_client_urls and not c.advertise_client_urls:
        raise ConfigError("--advertise-client-urls is required when --listen-client-urls "
                          "is set explicitly")


def _check_compaction(c: Config) -> None:
    if c.auto_compaction_mode not in ("periodic", "revision"):
        raise ConfigError(f"unknown auto-compaction-mode {go_quote(c.auto_compaction_mode)}")
    retention = c.auto_compaction_retention
    if retention.isdigit():
        return
    if c.auto_compaction_mode == "periodic":   # embed/etcd.go parseCompactionRetention
        try:
            parse_duration(retention)
            return
        except ValueError as e:
            raise ConfigError(f"error parsing CompactionRetention: {e}") from None
    raise ConfigError(f"invalid auto-compaction-retention {go_quote(retention)} for "
                      "auto-compaction-mode revision: want a revision count")


def _check_lease_checkpoint(c: Config) -> None:
    persist, checkpoint = (c.experimental_enable_lease_checkpoint_persist,
                           c.experimental_enable_lease_checkpoint)
    if persist and not checkpoint:
        raise ConfigError("setting experimental-enable-lease-checkpoint-persist requires "
                          "experimental-enable-lease-checkpoint")


def _check_unsupported(c: Config) -> None:
    # NB: etcd has these; etcdd refuses them rather than silently running without them.
    if c.config_file:
        raise ConfigError("--config-file is not supported by etcdd; use flags or ETCD_* variables")
    if c.discovery or c.discovery_srv:
        raise ConfigError("discovery (--discovery, --discovery-srv) is not supported by etcdd; "
                          "use --initial-cluster")
    if c.proxy != "off":
        raise ConfigError(f"--proxy={c.proxy} is not supported by etcdd (the v2 proxy is gone)")
    for url in c.listen_peer_urls + c.listen_client_urls + c.listen_metrics_urls:
        if url.startswith(("unix:", "unixs:")):
            raise ConfigError(f"unix socket URLs are not supported by etcdd ({url})")
        if url.startswith("https:"):
            # NB: never serve plaintext on a URL that promises TLS.
            raise ConfigError(f"TLS (https:// URLs) is not supported by etcdd yet ({url})")
    if c.force_new_cluster:
        raise ConfigError("--force-new-cluster is not supported by etcdd; restore a snapshot "
                          "with 'etcdd-ops snapshot restore' instead")


_CHECKS = (_check_logging, _check_bind_urls, _check_host_urls, _check_bootstrap_flags,
           _check_timing, _check_advertise_client, _check_compaction, _check_lease_checkpoint,
           _check_unsupported)


def _urls(*exceptions: str) -> Callable[[str], tuple[str, ...] | None]:
    """etcd ``flags.UniqueURLs``: comma list, sorted, de-duplicated; an exception is kept as is.

    The empty string returns None, which leaves the value as it was (etcd's quirk)."""
    def parse(s: str) -> tuple[str, ...] | None:
        if s in exceptions:
            return (s,) if s else None
        try:
            return tuple(sorted({normalize_url(part) for part in s.split(",")}))
        except ValueError as e:
            raise BadValueError(str(e)) from None
    return parse


def _initial_cluster(s: str) -> tuple[tuple[str, str], ...]:
    """etcd ``types.NewURLsMap``: ``name=url,name=url``; a name may repeat."""
    pairs = []
    for item in s.split(","):
        if item:
            name, _, url = item.partition("=")
            try:
                pairs.append((name, normalize_url(url)))
            except ValueError as e:   # NB: etcd checks this after parsing flags: exit 1
                raise ConfigError(f"invalid --initial-cluster {go_quote(s)}: {e}") from None
    return tuple(pairs)


# ---- the flag table (etcdmain/config.go newConfig, help.go) --------------------------------

@dataclass(frozen=True, slots=True)
class Flag:
    """One etcd flag: ``--name`` sets Config ``field`` (``_x``: consumed here, not a field)."""
    name: str
    parse: Callable[[str], object]
    help: str
    field: str = ""

    @property
    def is_bool(self) -> bool:
        return self.parse is parse_bool or self.parse is _ignored

    @property
    def target(self) -> str:
        return self.field or self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return "ETCD_" + self.name.upper().replace("-", "_")


def _ignored(s: str) -> None:
    return None


_uint, _int = integer(64, False), integer(64, True)
_OBSOLETE = ("cluster-active-size", "cluster-remove-delay", "cluster-sync-interval", "config",
             "force", "max-result-buffer", "max-retry-attempts", "peer-heartbeat-interval",
             "peer-election-timeout", "retry-interval", "snapshot", "v", "vv",
             "test.coverprofile", "test.outputdir")
F = Flag
FLAGS: tuple[Flag, ...] = (
    F("name", text, "Human-readable name for this member."),
    F("data-dir", text, "Path to the data directory."),
    F("wal-dir", text, "Path to the dedicated wal directory."),
    F("snapshot-count", _uint, "Number of committed transactions to trigger a snapshot to disk."),
    F("heartbeat-interval", _uint, "Time (in milliseconds) of a heartbeat interval.",
      "heartbeat_interval_ms"),
    F("election-timeout", _uint, "Time (in milliseconds) for an election to timeout.",
      "election_timeout_ms"),
    F("initial-election-tick-advance", parse_bool, "Fast-forward initial election ticks on boot."),
    F("listen-peer-urls", _urls(""), "List of URLs to listen on for peer traffic."),
    F("listen-client-urls", _urls(""), "List of URLs to listen on for client traffic."),
    F("listen-metrics-urls", _urls(""), "URLs to listen on for /metrics and /health."),
    F("max-snapshots", _uint, "Maximum number of snapshot files to retain (0 is unlimited)."),
    F("max-wals", _uint, "Maximum number of wal files to retain (0 is unlimited)."),
    F("quota-backend-bytes", _int, "Backend size quota (0 = 2 GiB)."),
    F("backend-batch-interval", duration, "Maximum time before committing the backend.",
      "backend_batch_interval_seconds"),
    F("backend-batch-limit", _int, "Maximum operations before committing the backend transaction."),
    F("max-txn-ops", _uint, "Maximum number of operations permitted in a transaction."),
    F("max-request-bytes", _uint, "Maximum client request size in bytes the server will accept."),
    F("grpc-keepalive-min-time", duration, "Minimum interval a client should wait before pinging.",
      "grpc_keepalive_min_time_seconds"),
    F("grpc-keepalive-interval", duration, "Server-to-client ping interval (0 to disable).",
      "grpc_keepalive_interval_seconds"),
    F("grpc-keepalive-timeout", duration, "Wait before closing a non-responsive connection.",
      "grpc_keepalive_timeout_seconds"),
    F("max-concurrent-streams", uint32, "Maximum concurrent streams per client connection."),
    F("initial-advertise-peer-urls", _urls(""), "This member's peer URLs to advertise."),
    F("initial-cluster", _initial_cluster, "Initial cluster configuration for bootstrapping."),
    F("initial-cluster-state", choice("new", "existing"), "'new' or 'existing'."),
    F("initial-cluster-token", text, "Token hashed into the IDs at bootstrap."),
    F("advertise-client-urls", _urls(""), "This member's client URLs to advertise to the public."),
    F("discovery", text, "Discovery URL used to bootstrap the cluster (not supported)."),
    F("discovery-fallback", choice("proxy", "exit"), "Behavior when discovery fails."),
    F("discovery-proxy", text, "HTTP proxy to use for traffic to discovery service."),
    F("discovery-srv", text, "DNS srv domain used to bootstrap the cluster (not supported)."),
    F("discovery-srv-name", text, "Suffix to the dns srv name queried when bootstrapping."),
    F("strict-reconfig-check", parse_bool, "Refuse reconfigurations that lose quorum."),
    F("enable-v2", parse_bool, "Accept etcd V2 client requests (accepted, ignored)."),
    F("pre-vote", parse_bool, "Enable to run an additional Raft election phase."),
    F("auto-compaction-retention", text, "0 disables; periodic: hours or a duration."),
    F("auto-compaction-mode", text, "Interpret 'auto-compaction-retention': periodic|revision."),
    F("proxy", choice("off", "readonly", "on"), "v2 proxy mode (only 'off' is supported)."),
    *(F(f"proxy-{n}", _uint, "v2 proxy setting (accepted, ignored).", "_ignored")
      for n in ("failure-wait", "refresh-interval", "dial-timeout", "write-timeout",
                "read-timeout")),
    F("cert-file", text, "Path to the client server TLS cert file."),
    F("key-file", text, "Path to the client server TLS key file."),
    F("client-cert-auth", parse_bool, "Enable client cert authentication."),
    F("client-crl-file", text, "Path to the client certificate revocation list file."),
    F("client-cert-allowed-hostname", text, "Allowed TLS hostname for client certs."),
    F("trusted-ca-file", text, "Path to the client server TLS trusted CA cert file."),
    F("auto-tls", parse_bool, "Client TLS using generated certificates."),
    F("peer-cert-file", text, "Path to the peer server TLS cert file."),
    F("peer-key-file", text, "Path to the peer server TLS key file."),
    F("peer-client-cert-auth", parse_bool, "Enable peer client cert authentication."),
    F("peer-trusted-ca-file", text, "Path to the peer server TLS trusted CA file."),
    F("peer-auto-tls", parse_bool, "Peer TLS using self-generated certificates."),
    F("peer-crl-file", text, "Path to the peer certificate revocation list file."),
    F("peer-cert-allowed-cn", text, "Allowed CommonName for inter peer authentication."),
    F("peer-cert-allowed-hostname", text, "Allowed TLS hostname for inter peer authentication."),
    F("cipher-suites", strings(False), "Comma-separated list of supported TLS cipher suites."),
    F("experimental-peer-skip-client-san-verification", parse_bool,
      "Skip verification of SAN field in client certificate for peer connections."),
    F("cors", _urls("*"), "Comma-separated whitelist of origins for CORS (* means allow all)."),
    F("host-whitelist", strings(True), "Acceptable HTTP Host names (* means all)."),
    F("logger", text, "'capnslog' or 'zap' (accepted; etcdd logs with twisted.logger)."),
    F("log-outputs", strings(True), "Log output targets (accepted; etcdd logs to stderr)."),
    F("log-output", strings(True), "[deprecated] use '--log-outputs'.", "_log_output"),
    F("debug", parse_bool, "[deprecated] use '--log-level=debug'.", "_debug"),
    F("log-level", text, "Log level: debug, info, warn, error, panic, or fatal."),
    F("log-package-levels", text, "[deprecated] accepted, ignored.", "_ignored"),
    F("version", parse_bool, "Print the version and exit.", "_version"),
    F("config-file", text, "Path to a YAML configuration file (not supported)."),
    F("enable-pprof", parse_bool, "Enable runtime profiling data via HTTP server."),
    F("metrics", text, "Level of detail for exported metrics: basic or extensive."),
    F("auth-token", text, "Auth token type and options ('simple' or 'jwt,...')."),
    F("bcrypt-cost", _uint, "bcrypt cost for hashing auth passwords (4..31)."),
    F("auth-token-ttl", _uint, "Lifetime (in seconds) of auth tokens.", "auth_token_ttl_seconds"),
    F("enable-grpc-gateway", parse_bool, "Enable the JSON gRPC gateway."),
    F("experimental-initial-corrupt-check", parse_bool, "Check data corruption before serving."),
    F("experimental-corrupt-check-time", duration, "Time between cluster corruption check passes.",
      "experimental_corrupt_check_time_seconds"),
    F("experimental-enable-v2v3", text, "v3 prefix for serving emulated v2 state."),
    F("experimental-backend-bbolt-freelist-type", text, "bbolt freelist (accepted, ignored)."),
    F("experimental-enable-lease-checkpoint", parse_bool, "Send lease checkpoints to followers."),
    F("experimental-enable-lease-checkpoint-persist", parse_bool, "Persist lease remaining TTL."),
    F("experimental-compaction-batch-limit", _int, "Revisions deleted per compaction batch."),
    F("experimental-watch-progress-notify-interval", duration, "Watch progress period.",
      "experimental_watch_progress_notify_interval_seconds"),
    F("experimental-warning-apply-duration", duration, "Warn when an apply takes longer.",
      "experimental_warning_apply_duration_seconds"),
    F("unsafe-no-fsync", parse_bool, "Disables fsync, unsafe, will cause data loss."),
    F("force-new-cluster", parse_bool, "Force to create a new one member cluster."),
    *(F(n, _ignored, "obsolete, ignored", "_obsolete") for n in _OBSOLETE),
)
del F
_BY_NAME = {f.name: f for f in FLAGS}
_BY_ENV = {f.env: f for f in FLAGS}
_SECTIONS = {"name": "Member", "initial-advertise-peer-urls": "Clustering", "proxy": "Proxy",
             "cert-file": "Security", "logger": "Logging", "version": "Other",
             "experimental-initial-corrupt-check": "Experimental and unsafe"}


@dataclass(frozen=True, slots=True)
class ParseResult:
    """A `Config` plus what the caller should log once logging is up."""
    config: Config
    warnings: tuple[str, ...] = ()
    env_used: tuple[str, ...] = ()


def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """Parse etcd's flags and ``ETCD_*`` variables into a validated `Config`.

    Raises `FlagError` (exit 2) or `ConfigError` (exit 1) with one line, `HelpRequested`
    or `VersionRequested`.
    """
    return parse_command_line(argv, environ).config


def parse_command_line(argv: Sequence[str], environ: Mapping[str, str]) -> ParseResult:
    """`parse_args`, also returning warnings and the ``ETCD_*`` variables used.

    Order as etcd: flags (Go syntax), leftover arguments, ``--version``, environment,
    defaults that depend on other flags, `Config.validate`.
    """
    values: dict[str, object] = {}
    warnings: list[str] = []
    given = _scan_flags(list(argv), values, warnings)
    if values.get("_version"):
        raise VersionRequested()
    env_used = _apply_environ(environ, given, values, warnings)
    _apply_dependent_defaults(given, values)
    for key in [k for k in values if k.startswith("_")]:
        del values[key]
    config = Config(**values)
    config.validate()
    return ParseResult(config, tuple(warnings), tuple(env_used))


def _set(flag: Flag, raw: str, values: dict[str, object]) -> None:
    value = flag.parse(raw)
    if value is not None or flag.is_bool:
        values[flag.target] = value


def _scan_flags(argv: list[str], values: dict[str, object], warnings: list[str]) -> set[str]:
    """Go ``flag.FlagSet.Parse``; returns the names given. Raises `FlagError`."""
    given: set[str] = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if len(arg) < 2 or arg[0] != "-":
            break
        i += 1
        if arg == "--":
            break
        body = arg[2:] if arg[1] == "-" else arg[1:]
        if not body or body[0] in "-=":
            raise FlagError(f"bad flag syntax: {arg}")
        name, has_value, raw = body.partition("=")
        flag = _BY_NAME.get(name)
        if flag is None:
            if name in ("h", "help"):
                raise HelpRequested()
            raise FlagError(f"flag provided but not defined: -{name}")
        if flag.is_bool and not has_value:
            raw = "true"
        elif not has_value:
            if i == len(argv):
                raise FlagError(f"flag needs an argument: -{name}")
            raw, i = argv[i], i + 1
        try:
            _set(flag, raw, values)
        except BadValueError as e:
            kind = "boolean value" if flag.parse is parse_bool else "value"
            sep = " " if flag.parse is parse_bool else " flag "
            raise FlagError(f"invalid {kind} {go_quote(raw)} for{sep}-{name}: {e}") from None
        if flag.target == "_obsolete":
            warnings.append(f'flag "-{name}" is no longer supported - ignoring.')
        given.add(name)
    if i < len(argv):
        raise ConfigError(f"'{argv[i]}' is not a valid flag")
    return given


def _apply_environ(environ: Mapping[str, str], given: set[str], values: dict[str, object],
                   warnings: list[str]) -> list[str]:
    """etcd ``flags.SetFlagsFromEnv``: ``ETCD_FOO_BAR`` for each ``--foo-bar`` not given."""
    on_command_line = set(given)
    used: list[str] = []
    for flag in FLAGS:
        raw = environ.get(flag.env, "")
        if flag.name in on_command_line or flag.name == "version" or not raw:
            continue
        try:
            _set(flag, raw, values)
        except BadValueError as e:
            raise ConfigError(f"invalid value {go_quote(raw)} for {flag.env}: {e}") from None
        given.add(flag.name)
        used.append(f"{flag.env}={raw}")
    for key in sorted(environ):
        flag = _BY_ENV.get(key)
        if flag is not None and flag.name in on_command_line:
            # NB: etcd 3.4 exits here; etcdd lets the command-line flag win.
            warnings.append(f"environment variable {key} is shadowed by the corresponding "
                            f"command-line flag -{flag.name}; using the flag")
        elif flag is None and key.startswith("ETCD_"):
            warnings.append(f"unrecognized environment variable {key}={environ[key]}")
    return used


def _apply_dependent_defaults(given: set[str], values: dict[str, object]) -> None:
    """What etcdmain does between parsing and validating (configFromCmdLine, etcd.go)."""
    may_be_proxy = values.get("proxy", "off") != "off" or (
        values.get("discovery") and values.get("discovery_fallback", "proxy") == "proxy")
    if "listen-client-urls" in given and "advertise-client-urls" not in given and not may_be_proxy:
        values["advertise_client_urls"] = ()
    if (values.get("discovery") or values.get("discovery_srv")) and "initial-cluster" not in given:
        values["initial_cluster"] = ()
    if values.get("_debug"):
        values["log_level"] = "debug"
    if "_log_output" in values and "log-outputs" not in given:
        values["log_outputs"] = values["_log_output"]
    name = values.get("name", "default")
    if name != "default" and values.get("initial_cluster", _DEFAULT_CLUSTER) == _DEFAULT_CLUSTER:
        # etcd UpdateDefaultClusterFromName: `etcd --name x` bootstraps x=<advertised peer URLs>
        peer_urls = values.get("initial_advertise_peer_urls", _DEFAULT_PEER_URLS)
        values["initial_cluster"] = tuple((name, url) for url in peer_urls)


def help_text() -> str:
    """The ``--help`` text: usage, then every flag with its default (etcd help.go layout)."""
    defaults = Config()
    lines = ["Usage:", "", "  etcdd [flags]", "    Start an etcd v3 compatible member.", "",
             "  etcdd --version", "    Show the version of etcdd.", "",
             "  etcdd -h | --help", "    Show this help.", ""]
    for flag in FLAGS:
        if flag.target == "_obsolete":
            continue
        if flag.name in _SECTIONS:
            lines.append(f"{_SECTIONS[flag.name]}:")
        lines += [f"  --{flag.name} '{_shown_default(flag, defaults)}'", f"    {flag.help}"]
    return "\n".join(lines) + "\n"


def _shown_default(flag: Flag, defaults: Config) -> str:
    if flag.name == "data-dir":
        return "${name}.etcd"
    value = getattr(defaults, flag.target, False if flag.is_bool else "")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}s"
    if isinstance(value, tuple):
        return ",".join(v if isinstance(v, str) else "=".join(v) for v in value)
    return str(value)
