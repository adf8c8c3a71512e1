"""The OPTIONS section of ``man/etcdd.8``, generated from `etcdd.config.FLAGS`.

A tool: pure apart from `main`, which reads and rewrites the page. Each flag's name,
``ETCD_*`` variable and default come from `FLAGS` and `Config`; what the page says about
it (its value's name, its meaning, whether etcdd acts on it) is the table below, grouped
as etcd 3.4's ``etcd --help`` groups its flags (``etcdmain/help.go``). Everything else in
the page is hand-written roff; the generated part sits between two marker comments::

    python -m etcdd.manpage            # rewrite the block in man/etcdd.8
    python -m etcdd.manpage --check    # exit 1 if the block is out of date

`tests/unit/test_man.py` fails when the table and `FLAGS` disagree or the page's block
is not what `flags_block()` renders.
"""
from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from etcdd.config import FLAGS, Config, Flag

BEGIN_MARKER = ('.\\" BEGIN GENERATED FLAGS: edit etcdd/manpage.py, '
                'then run python -m etcdd.manpage')
END_MARKER = '.\\" END GENERATED FLAGS'
DEFAULT_PAGE = "man/etcdd.8"
_WIDTH = 92


class Support(Enum):
    """What etcdd does with a flag; `note` is what the page says after the flag's text."""
    SUPPORTED = "supported"
    IGNORED = "ignored"
    REFUSED = "refused"
    OBSOLETE = "obsolete"

    @property
    def note(self) -> str:
        return _NOTES.get(self, "")


_NOTES = {Support.IGNORED: "Accepted for compatibility and ignored.",
          Support.REFUSED: ("Not supported yet: a value other than the default is refused at "
                            "start (exit status 1).")}


@dataclass(frozen=True, slots=True)
class FlagDoc:
    """One flag's entry: ``metavar`` names its value ("" for a boolean); ``text`` is
    plain text in which ``--flag`` turns bold and ``*word*`` italic; ``default``
    replaces the value read from `Config` (for flags that are not fields)."""
    name: str
    metavar: str
    text: str
    support: Support = Support.SUPPORTED
    default: str | None = None


@dataclass(frozen=True, slots=True)
class Group:
    """A subsection of OPTIONS: a title, a paragraph before the flags, the flags."""
    title: str
    intro: str
    flags: tuple[FlagDoc, ...]


D, IGN, REF = FlagDoc, Support.IGNORED, Support.REFUSED
_NO_BATCH = "etcdd commits one LMDB transaction per batch of applied entries."
_NO_TLS = "etcdd has no TLS yet."

GROUPS: tuple[Group, ...] = (
    Group("Member", "", (
        D("name", "name", "Human-readable name of this member: its entry in --initial-cluster "
          "and the stem of the default data directory. A data directory written by a member "
          "of another name is refused."),
        D("data-dir", "dir", "The member's data directory (see DATA DIRECTORY), created with "
          "mode 0700 on first start.", default="${name}.etcd"),
        D("wal-dir", "dir", "Keep the write-ahead log here instead of in "
          "*data-dir*/member/wal, for instance on a disk of its own so that WAL fsyncs do "
          "not queue behind database writes."),
        D("snapshot-count", "n", "Applied entries between raft snapshots. After a snapshot "
          "the WAL segments and snapshot files beyond --max-wals and --max-snapshots are "
          "removed, and the raft log keeps the last 5000 entries for slow followers; a "
          "follower further behind is sent a snapshot of the database."),
        D("heartbeat-interval", "ms", "Milliseconds between the leader's heartbeats; also the "
          "length of a raft tick."),
        D("election-timeout", "ms", "Milliseconds a follower waits without hearing from a "
          "leader before it campaigns (randomized per election between one and two times "
          "this). At least five times --heartbeat-interval and at most 50000."),
        D("initial-election-tick-advance", "", "Fast-forward the election ticks at start, so "
          "that a member that finds no leader campaigns after about one heartbeat rather than "
          "a whole election timeout. etcdd always does; false is accepted and ignored."),
        D("listen-peer-urls", "urls", "Comma-separated http:// URLs to accept raft traffic "
          "from the other members on. The host must be an IP address or localhost; unix:// "
          "and https:// URLs are refused (peer TLS is not supported yet)."),
        D("listen-client-urls", "urls", "Comma-separated http:// URLs to serve clients on: "
          "gRPC over HTTP/2 and HTTP/1.1 (/health, /version) share each port. The host must "
          "be an IP address (0.0.0.0 for every address) or localhost; unix:// URLs are "
          "refused. Setting it requires --advertise-client-urls. etcdd has no TLS yet: an "
          "https:// URL is refused at start (exit status 1)."),
        D("max-snapshots", "n", "Keep at most *n* raft snapshot files (0: keep all)."),
        D("max-wals", "n", "Keep at most *n* WAL segments that replay no longer needs "
          "(0: keep all)."),
        D("quota-backend-bytes", "bytes", "Size of the database at which writes are refused: "
          "the member raises the NOSPACE alarm for the whole cluster, and puts, transactions "
          "that put and lease grants fail with \"etcdserver: mvcc: database space exceeded\" "
          "while reads and deletes keep working, until compaction, defragmentation and "
          "\"etcdctl alarm disarm\" make room. 0 means 2 GiB; a negative value, no quota."),
        D("backend-batch-interval", "duration", _NO_BATCH, IGN),
        D("backend-batch-limit", "n", _NO_BATCH, IGN),
        D("max-txn-ops", "n", "Most operations in either branch of a transaction; more fail "
          "with \"etcdserver: too many operations in txn request\"."),
        D("max-request-bytes", "bytes", "Largest client request accepted; a larger one fails "
          "with \"etcdserver: request is too large\". A gRPC message longer than this plus "
          "512 KiB is refused from its length prefix, before it is read."),
        D("max-concurrent-streams", "n", "etcdd advertises no limit and serves up to 10000 "
          "streams per client connection, refusing more with REFUSED_STREAM.", IGN),
        D("grpc-keepalive-min-time", "duration", "etcdd answers every client ping and never "
          "closes a connection for pinging too often.", IGN),
        D("grpc-keepalive-interval", "duration", "etcdd sends no keepalive pings of its own.",
          IGN),
        D("grpc-keepalive-timeout", "duration", "etcdd sends no keepalive pings of its own.",
          IGN),
        D("enable-grpc-gateway", "", "The JSON gateway (/v3/...) is not served yet.", IGN),
    )),
    Group("Clustering", "--initial-advertise-peer-urls and the --initial-cluster flags "
          "are read only when the data directory is new; afterwards the membership is what "
          "the cluster recorded.", (
        D("initial-advertise-peer-urls", "urls", "This member's peer URLs as the other "
          "members reach it. With --initial-cluster-token they make the member ID; they must "
          "equal this member's entries in --initial-cluster."),
        D("initial-cluster", "name=url,...", "The members of a new cluster as name=peer-URL "
          "pairs (a name repeats for each of its URLs); every member of the new cluster "
          "starts with the same value. When only --name is given it defaults to that name "
          "with --initial-advertise-peer-urls."),
        D("initial-cluster-state", "new|existing", "*new* bootstraps a cluster from "
          "--initial-cluster. *existing* joins a running cluster after \"etcdctl member "
          "add\" (or \"etcdd-ops member add\"): the member asks the other peers of "
          "--initial-cluster for the cluster's members, finds itself among them by its peer "
          "URLs and catches up from the leader, from a snapshot when it is far behind."),
        D("initial-cluster-token", "token", "Hashed with the peer URLs into the member and "
          "cluster IDs, so that clusters bootstrapped from the same URLs do not mistake each "
          "other's members. A data directory written with another token is refused."),
        D("advertise-client-urls", "urls", "This member's client URLs as published to the "
          "cluster, as \"etcdctl member list\" shows them and as tools find every member. "
          "Required "
          "when --listen-client-urls is set."),
        D("discovery", "url", "Bootstrap through an etcd discovery service; use "
          "--initial-cluster instead.", REF),
        D("discovery-fallback", "exit|proxy", "Only meaningful with --discovery.", IGN),
        D("discovery-proxy", "url", "Only meaningful with --discovery.", IGN),
        D("discovery-srv", "domain", "Bootstrap from DNS SRV records; use --initial-cluster "
          "instead.", REF),
        D("discovery-srv-name", "suffix", "Only meaningful with --discovery-srv.", IGN),
        D("strict-reconfig-check", "", "Refuse membership changes that could lose quorum: a "
          "change must leave a quorum of started members (\"etcdserver: re-configuration "
          "failed due to not enough started members\"), and adding a voter or removing an "
          "active one needs this member connected to a quorum for the last 5 seconds "
          "(\"etcdserver: unhealthy cluster\")."),
        D("pre-vote", "", "Run a pre-vote round before campaigning, so that a member cut off "
          "from the quorum does not raise its term and disrupt the cluster when it returns. "
          "On by default, unlike etcd 3.4."),
        D("auto-compaction-retention", "retention", "How much history the leader keeps when "
          "it compacts on its own; 0 disables. With --auto-compaction-mode *periodic*, a Go "
          "duration (30m, 1h30m) or a number of hours: a revision is sampled every tenth of "
          "the window and compaction runs every window (at most every hour) at the oldest "
          "sample. With *revision*, a number of revisions: every 5 minutes the leader "
          "compacts to the current revision minus that number."),
        D("auto-compaction-mode", "periodic|revision", "How --auto-compaction-retention is "
          "read."),
        D("enable-v2", "", "The etcd v2 API is not served.", IGN),
    )),
    Group("Security", _NO_TLS + " These flags are checked as etcd checks them and have no "
          "effect: run etcdd on a trusted network only.", (
        D("cert-file", "file", "Client server TLS certificate.", IGN),
        D("key-file", "file", "Client server TLS key.", IGN),
        D("client-cert-auth", "", "Require client certificates.", IGN),
        D("client-crl-file", "file", "Client certificate revocation list.", IGN),
        D("client-cert-allowed-hostname", "hostname", "Hostname client certificates must "
          "carry.", IGN),
        D("trusted-ca-file", "file", "CA for client certificates.", IGN),
        D("auto-tls", "", "Client TLS with a generated certificate.", IGN),
        D("peer-cert-file", "file", "Peer TLS certificate.", IGN),
        D("peer-key-file", "file", "Peer TLS key.", IGN),
        D("peer-client-cert-auth", "", "Require peer client certificates.", IGN),
        D("peer-trusted-ca-file", "file", "CA for peer certificates.", IGN),
        D("peer-cert-allowed-cn", "cn", "CommonName peer certificates must carry.", IGN),
        D("peer-cert-allowed-hostname", "hostname", "Hostname peer certificates must carry.",
          IGN),
        D("peer-auto-tls", "", "Peer TLS with a generated certificate.", IGN),
        D("peer-crl-file", "file", "Peer certificate revocation list.", IGN),
        D("cipher-suites", "suites", "TLS cipher suites.", IGN),
        D("cors", "origins", "Origins allowed to make cross-origin requests; the HTTP "
          "endpoints send no CORS headers.", IGN),
        D("host-whitelist", "hosts", "Host names accepted in HTTP requests; every Host is "
          "accepted.", IGN),
    )),
    Group("Auth", "The v3 auth API (users, roles, tokens) is not served yet: its calls "
          "fail with UNIMPLEMENTED.", (
        D("auth-token", "type[,options]", "Token type, simple or jwt.", IGN),
        D("bcrypt-cost", "n", "bcrypt cost of stored passwords (4 to 31).", IGN),
        D("auth-token-ttl", "seconds", "Lifetime of a simple token.", IGN),
    )),
    Group("Profiling and monitoring", "/health is served on every client URL.", (
        D("enable-pprof", "", "There is no /debug/pprof.", IGN),
        D("metrics", "basic|extensive", "There is no /metrics yet.", IGN),
        D("listen-metrics-urls", "urls", "There is no separate metrics listener yet; the URLs "
          "are checked as --listen-client-urls are.", IGN),
    )),
    Group("Logging", "etcdd writes text lines (time, source, level, message) to standard "
          "error, which systemd sends to the journal.", (
        D("logger", "capnslog|zap", "etcd's logger choice.", IGN),
        D("log-outputs", "targets", "Always standard error.", IGN),
        D("log-level", "level", "The least severe level logged: debug, info, warn, error, "
          "panic or fatal (panic and fatal both log only critical lines)."),
    )),
    Group("v2 proxy", "etcd's v2 proxy is gone.", (
        D("proxy", "off|readonly|on", "Run as a v2 proxy.", REF),
        D("proxy-failure-wait", "ms", "v2 proxy setting.", IGN, "5000"),
        D("proxy-refresh-interval", "ms", "v2 proxy setting.", IGN, "30000"),
        D("proxy-dial-timeout", "ms", "v2 proxy setting.", IGN, "1000"),
        D("proxy-write-timeout", "ms", "v2 proxy setting.", IGN, "5000"),
        D("proxy-read-timeout", "ms", "v2 proxy setting.", IGN, "0"),
    )),
    Group("Experimental", "", (
        D("experimental-initial-corrupt-check", "", "Compare hashes with the other members "
          "before serving; not implemented (\"etcdctl endpoint hashkv\" compares them).", IGN),
        D("experimental-corrupt-check-time", "duration", "Period of the corruption check; "
          "not implemented.", IGN),
        D("experimental-enable-v2v3", "prefix", "The v2 API is not served.", IGN),
        D("experimental-backend-bbolt-freelist-type", "array|map", "The database is LMDB, not "
          "bbolt.", IGN),
        D("experimental-enable-lease-checkpoint", "", "The leader sends each lease's "
          "remaining TTL through raft every 5 minutes, so that a new leader does not give "
          "long leases their whole TTL again."),
        D("experimental-enable-lease-checkpoint-persist", "", "etcdd always stores a "
          "checkpointed remaining TTL, so the flag changes nothing; as in etcd it requires "
          "--experimental-enable-lease-checkpoint."),
        D("experimental-compaction-batch-limit", "n", "Compaction always works in steps of "
          "at most 1000 keys and revisions, one LMDB transaction each.", IGN),
        D("experimental-peer-skip-client-san-verification", "", _NO_TLS, IGN),
        D("experimental-watch-progress-notify-interval", "duration", "How often a watch "
          "created with progress notification gets a progress response while idle."),
        D("experimental-warning-apply-duration", "duration", "Warn about slow applies; "
          "not implemented.", IGN),
    )),
    Group("Unsafe", "", (
        D("force-new-cluster", "", "Restart as a one-member cluster. Not implemented, so "
          "refused; to make a new cluster out of one member's data, use "
          "\"etcdd-ops snapshot restore\".", REF),
        D("unsafe-no-fsync", "", "etcdd always fsyncs.", IGN),
    )),
    Group("Deprecated", "", (
        D("debug", "", "Same as --log-level=debug.", default="false"),
        D("log-output", "targets", "Old name of --log-outputs.", IGN, "default"),
        D("log-package-levels", "levels", "Per-package log levels.", IGN, ""),
    )),
    Group("Other", "", (
        D("version", "", "Print etcd's version line (which scripts parse), etcdd's and "
          "Python's version, and exit 0. Not read from the environment.", default="false"),
        D("config-file", "file", "A YAML configuration file; use flags or ETCD_* variables "
          "(an EnvironmentFile under systemd).", REF),
    )),
)
OBSOLETE_INTRO = ("etcd 2 flags that etcd 3.4 no longer has. Each is accepted, with or "
                  "without a value, logged as no longer supported, and ignored:")
del D, IGN, REF


def flag_docs() -> dict[str, FlagDoc]:
    """Every documented flag by name, obsolete ones included (they are in no group)."""
    docs = {d.name: d for group in GROUPS for d in group.flags}
    for flag in FLAGS:
        if flag.target == "_obsolete":
            docs[flag.name] = FlagDoc(flag.name, "", "", Support.OBSOLETE)
    return docs


def go_duration(seconds: float) -> str:
    """A duration as Go prints a round one: ``7200.0`` -> ``2h``, ``0.1`` -> ``100ms``."""
    if seconds == 0:
        return "0s"
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds * 1000:g}ms"


def default_text(flag: Flag, doc: FlagDoc, defaults: Config) -> str:
    """The flag's default as the page shows it; "" when it is empty."""
    if doc.default is not None:
        return doc.default
    value = getattr(defaults, flag.target)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return go_duration(value)
    if isinstance(value, tuple):
        return ",".join(v if isinstance(v, str) else "=".join(v) for v in value)
    return str(value)


_FLAG_REF = re.compile(r"--([a-z0-9](?:[a-z0-9.-]*[a-z0-9])?)")
_ITALIC = re.compile(r"\*([^*\s][^*]*)\*")


def roff_text(text: str) -> str:
    """Plain text as roff: ``--flag`` bold, ``*word*`` italic, ``-`` in a flag as ``\\-``."""
    text = text.replace("\\", "\\e")
    text = _FLAG_REF.sub(lambda m: r"\fB\-\-" + m.group(1).replace("-", r"\-") + r"\fR", text)
    return _ITALIC.sub(r"\\fI\1\\fR", text)


def _fill(text: str) -> list[str]:
    """Source lines of at most `_WIDTH` characters; none starts with a control character."""
    lines = textwrap.wrap(text, _WIDTH, break_long_words=False, break_on_hyphens=False)
    return ["\\&" + line if line[:1] in ".'" else line for line in lines]


def _tag(flag: Flag, doc: FlagDoc) -> str:
    name = roff_text("--" + flag.name)
    if flag.is_bool:
        return name + r"[\fB=\fR\fIbool\fR]"
    return f"{name} \\fI{roff_text(doc.metavar)}\\fR"


def _entry(flag: Flag, doc: FlagDoc, defaults: Config) -> list[str]:
    default = default_text(flag, doc, defaults)
    shown = f"\\fB{roff_text(default)}\\fR" if default else "empty"
    env = "" if flag.name == "version" else f" Environment: \\fB{flag.env}\\fR."
    body = " ".join(part for part in (doc.text, doc.support.note) if part)
    return [".TP", _tag(flag, doc), *_fill(roff_text(body)), ".br",
            *_fill(f"Default: {shown}.{env}")]


def flags_block() -> str:
    """The generated part of OPTIONS: one subsection per group, then the obsolete flags."""
    by_name = {f.name: f for f in FLAGS}
    defaults = Config()
    lines = [BEGIN_MARKER]
    for group in GROUPS:
        lines += [".SS " + group.title]
        if group.intro:
            lines += _fill(roff_text(group.intro))
        for doc in group.flags:
            lines += _entry(by_name[doc.name], doc, defaults)
    obsolete = [f"--{f.name}" for f in FLAGS if f.target == "_obsolete"]
    lines += [".SS Obsolete", *_fill(roff_text(f"{OBSOLETE_INTRO} {', '.join(obsolete)}."))]
    lines.append(END_MARKER)
    return "\n".join(lines) + "\n"


class MarkerError(ValueError):
    """The page lacks the generated block's markers, or has them out of order."""


def splice(page: str, block: str) -> str:
    """`page` with the text from `BEGIN_MARKER` through `END_MARKER` replaced by `block`.

    Raises `MarkerError`."""
    start = page.find(BEGIN_MARKER)
    end = page.find(END_MARKER, start)
    if start < 0 or end < 0 or page.find(BEGIN_MARKER, start + 1) >= 0:
        raise MarkerError(f"the page needs one {BEGIN_MARKER!r} ... {END_MARKER!r} block")
    end = page.index("\n", end) + 1 if "\n" in page[end:] else len(page)
    return page[:start] + block + page[end:]


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite the page's generated block (``--check``: only say whether it is current)."""
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    paths = [a for a in args if a != "--check"] or [DEFAULT_PAGE]
    status = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            page = f.read()
        try:
            fresh = splice(page, flags_block())
        except MarkerError as e:
            print(f"{path}: {e}", file=sys.stderr)
            return 2
        if fresh == page:
            continue
        if check:
            print(f"{path}: the flag section is out of date; run python -m etcdd.manpage",
                  file=sys.stderr)
            status = 1
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(fresh)
    return status


if __name__ == "__main__":
    sys.exit(main())
