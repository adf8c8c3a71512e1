"""The man pages, the systemd units and their packaging (issue 5 item 6).

`man/etcdd.8` documents every flag of `etcdd.config.FLAGS` (its OPTIONS block is generated
by `etcdd.manpage`; run ``python -m etcdd.manpage`` after changing a flag), what the page
says about a flag matches what the parser does with it, `man/etcdd-ops.8` has a section
for every subcommand of `ops.cli.SUBCOMMANDS`, both pages render without roff warnings,
the units pass ``systemd-analyze verify``, the env examples parse into a valid bootstrap
configuration, and setup.py installs all of it. Rendering and verifying run the host's
man(1)/groff(1) and systemd-analyze(1) and are skipped, saying why, where absent.
"""
from __future__ import annotations

import ast
import io
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from etcdd import manpage
from etcdd.config import FLAGS, Config, ConfigError, FlagError, parse_command_line
from etcdd.manpage import GROUPS, Support, flag_docs, flags_block, go_duration, splice
from ops.cli import SUBCOMMANDS

ROOT = Path(__file__).resolve().parents[2]
ETCDD_PAGE = ROOT / "man" / "etcdd.8"
OPS_PAGE = ROOT / "man" / "etcdd-ops.8"
SYSTEMD = ROOT / "systemd"
# groff's warning categories except "break" (a long word that cannot be broken at 80
# columns is a matter of layout, not a mistake in the page).
ROFF_WARNINGS = ("mac,char,delim,di,el,escape,file,font,ig,input,missing,number,range,"
                 "reg,right-brace,scale,space,syntax,tab")
_ROFF_NAME = re.compile(r"\\-\\-((?:[a-z0-9.]|\\-)*[a-z0-9])")


def documented_names(roff: str) -> list[str]:
    """Every ``\\-\\-name`` written in roff, as a plain flag name."""
    return [m.group(1).replace("\\-", "-") for m in _ROFF_NAME.finditer(roff)]


def plain(line: str) -> str:
    """A roff line's text without its macro, font escapes and quotes."""
    line = re.sub(r"^\.[A-Z]{1,2}\s*", "", line)
    line = re.sub(r"\\f[BIRP]|\\&|\"", "", line)
    return line.replace("\\-", "-").strip()


def tag_lines(roff: str) -> list[str]:
    """The tag line of every ``.TP`` paragraph."""
    lines = roff.splitlines()
    return [lines[i + 1] for i, line in enumerate(lines[:-1]) if line.startswith(".TP")]


def generated_block(page: str) -> str:
    start = page.index(manpage.BEGIN_MARKER)
    return page[start:page.index(manpage.END_MARKER, start)]


class FlagSectionTests(SynchronousTestCase):
    """etcdd.8's OPTIONS and `etcdd.config.FLAGS` agree."""

    def setUp(self) -> None:
        self.page = ETCDD_PAGE.read_text(encoding="utf-8")

    def test_page_block_is_current(self) -> None:
        """The page's generated block is exactly what `flags_block()` renders today."""
        self.assertEqual(splice(self.page, flags_block()), self.page,
                         "man/etcdd.8 is out of date: run python -m etcdd.manpage")

    def test_every_flag_has_one_entry(self) -> None:
        """The doc table names each flag of FLAGS once, and no flag FLAGS lacks."""
        grouped = [d.name for g in GROUPS for d in g.flags]
        self.assertEqual(len(grouped), len(set(grouped)))
        self.assertEqual(set(flag_docs()), {f.name for f in FLAGS})

    def test_every_flag_appears_in_the_page(self) -> None:
        """Every flag name of FLAGS is written in the page's generated block."""
        names = set(documented_names(generated_block(self.page)))
        self.assertEqual(sorted({f.name for f in FLAGS} - names), [])

    def test_no_documented_flag_is_unknown(self) -> None:
        """Every flag the generated block or any tagged paragraph names is in FLAGS."""
        known = {f.name for f in FLAGS}
        named = documented_names(generated_block(self.page))
        named += documented_names("\n".join(tag_lines(self.page)))
        self.assertEqual(sorted({n.split("=")[0] for n in named} - known), [])

    def test_every_flag_shows_its_environment_variable(self) -> None:
        """Each flag read from the environment names its ETCD_* variable."""
        block = generated_block(self.page)
        missing = [f.env for f in FLAGS
                   if f.target != "_obsolete" and f.name != "version" and f.env not in block]
        self.assertEqual(missing, [])

    def test_defaults_as_go_prints_them(self) -> None:
        """Defaults read from Config are shown as etcd's help shows them."""
        self.assertEqual([go_duration(s) for s in (0.0, 0.1, 5.0, 600.0, 7200.0, 1.5)],
                         ["0s", "100ms", "5s", "10m", "2h", "1500ms"])
        block = generated_block(self.page)
        for shown in (r"Default: \fB2h\fR. Environment: \fBETCD_GRPC_KEEPALIVE_INTERVAL\fR.",
                      r"Default: \fB${name}.etcd\fR. Environment: \fBETCD_DATA_DIR\fR.",
                      r"Default: \fBtrue\fR. Environment: \fBETCD_PRE_VOTE\fR.",
                      r"Default: \fBdefault=http://localhost:2380\fR."):
            self.assertIn(shown, block)

    def test_refused_flags_are_refused(self) -> None:
        """Each flag the page calls not supported stops the member (exit status 1)."""
        samples = {"discovery": "http://discovery.example/abc", "discovery-srv": "example.com",
                   "proxy": "on", "config-file": "/etc/etcdd.yml", "force-new-cluster": "true"}
        refused = [d.name for d in flag_docs().values() if d.support is Support.REFUSED]
        self.assertEqual(sorted(refused), sorted(samples))
        for name, value in samples.items():
            with self.assertRaises(ConfigError, msg=name) as caught:
                parse_command_line([f"--{name}={value}"], {})
            self.assertNotIsInstance(caught.exception, FlagError)

    def test_ignored_flags_are_accepted(self) -> None:
        """Each flag the page calls accepted and ignored parses with a non-default value."""
        for doc in flag_docs().values():
            if doc.support is not Support.IGNORED:
                continue
            argv = [f"--{doc.name}={_sample(doc)}"]
            try:
                parse_command_line(argv, {})
            except ConfigError as e:
                self.fail(f"{argv} refused: {e}")

    def test_obsolete_flags_warn(self) -> None:
        """The flags the page lists as obsolete are accepted with a warning."""
        for name in (d.name for d in flag_docs().values() if d.support is Support.OBSOLETE):
            result = parse_command_line([f"--{name}"], {})
            self.assertEqual(result.warnings,
                             (f'flag "-{name}" is no longer supported - ignoring.',))

    def test_main_checks_and_rewrites(self) -> None:
        """``python -m etcdd.manpage --check`` fails on a stale block, which a plain run
        rewrites to the current one."""
        stale = splice(self.page, f"{manpage.BEGIN_MARKER}\n{manpage.END_MARKER}\n")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "etcdd.8"
            path.write_text(stale, encoding="utf-8")
            stderr = self.patch_stderr()
            self.assertEqual(manpage.main(["--check", str(path)]), 1)
            self.assertIn("out of date", stderr.getvalue())
            self.assertEqual(path.read_text(encoding="utf-8"), stale)
            self.assertEqual(manpage.main([str(path)]), 0)
            self.assertEqual(path.read_text(encoding="utf-8"), self.page)
            self.assertEqual(manpage.main(["--check", str(path)]), 0)

    def patch_stderr(self) -> io.StringIO:
        stream = io.StringIO()
        self.patch(sys, "stderr", stream)
        return stream

    def test_splice_needs_markers(self) -> None:
        """A page without the markers is refused rather than silently left alone."""
        with self.assertRaises(manpage.MarkerError):
            splice(".TH X 8\n", flags_block())


_SAMPLES = {"": "true", "n": "7", "ms": "7", "seconds": "7", "duration": "3s",
            "file": "/tmp/x.pem", "urls": "http://127.0.0.1:9999", "url": "http://p.example",
            "origins": "http://a.example:8080", "hosts": "a.example", "targets": "stderr",
            "levels": "etcdmain=DEBUG", "type[,options]": "jwt", "cn": "peer",
            "hostname": "h.example", "suites": "TLS_AES_128_GCM_SHA256", "suffix": "x",
            "prefix": "/v2", "array|map": "map", "capnslog|zap": "zap",
            "basic|extensive": "extensive", "exit|proxy": "exit"}


def _sample(doc: manpage.FlagDoc) -> str:
    """A plausible value other than the default for an accepted-and-ignored flag."""
    if doc.metavar == "":
        flag = next(f for f in FLAGS if f.name == doc.name)
        return "false" if manpage.default_text(flag, doc, Config()) == "true" else "true"
    return _SAMPLES[doc.metavar]


class OpsPageTests(SynchronousTestCase):
    """etcdd-ops.8 covers every subcommand of `ops.cli.SUBCOMMANDS`."""

    def setUp(self) -> None:
        self.page = OPS_PAGE.read_text(encoding="utf-8")

    def test_every_subcommand_has_a_section(self) -> None:
        """Each subcommand starts a tagged paragraph or a subsection of the page."""
        lines = self.page.splitlines()
        headings = tag_lines(self.page) + [line for line in lines if line.startswith(".SS")]
        first_words = {plain(h).split(" ")[0] for h in headings if plain(h)}
        self.assertEqual(sorted(set(SUBCOMMANDS) - first_words), [])

    def test_every_subcommand_is_in_the_synopsis(self) -> None:
        """Each subcommand has a line of its own in SYNOPSIS."""
        synopsis = self.page.split(".SH SYNOPSIS", 1)[1].split("\n.SH ", 1)[0]
        shown = {plain(line).split(" ")[1] for line in synopsis.splitlines()
                 if plain(line).startswith("etcdd-ops ")}
        self.assertEqual(sorted(set(SUBCOMMANDS) - shown), [])


class RenderTests(SynchronousTestCase):
    """Both pages render at 80 columns without roff warnings."""

    def render(self, page: Path) -> tuple[str, str]:
        """(text, warnings) from man(1), or groff(1) where man is absent."""
        env = {"MANWIDTH": "80", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"}
        if shutil.which("man"):
            argv = ["man", f"--warnings={ROFF_WARNINGS}", "-l", str(page)]
        elif shutil.which("groff"):
            argv = ["groff", "-man", "-Tutf8", "-rLL=80n", f"-w{ROFF_WARNINGS}", str(page)]
        else:
            raise SkipTest("neither man (man-db) nor groff (groff-base) is installed")
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout, done.stderr

    def test_etcdd_page_renders(self) -> None:
        """man -l man/etcdd.8 prints the page with its sections and no warning."""
        text, warnings = self.render(ETCDD_PAGE)
        self.assertEqual(warnings, "")
        for heading in ("NAME", "SYNOPSIS", "OPTIONS", "DATA DIRECTORY", "SIGNALS",
                        "EXIT STATUS", "SYSTEMD", "ENVIRONMENT", "FILES", "SEE ALSO"):
            self.assertIn(f"\n{heading}\n", text)

    def test_ops_page_renders(self) -> None:
        """man -l man/etcdd-ops.8 prints the page with no warning."""
        text, warnings = self.render(OPS_PAGE)
        self.assertEqual(warnings, "")
        self.assertIn("\nNAME\n", text)


def env_file(path: Path) -> dict[str, str]:
    """An EnvironmentFile's assignments (comments and blank lines skipped)."""
    pairs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def instance_env(base: dict[str, str], name: str, client: str, peer: str) -> dict[str, str]:
    """What member `name` of the instance example sees: etcdd@.service's Environment=
    lines, then the example with infra1's own URLs changed to `client` and `peer`."""
    environ = {"ETCD_NAME": name, "ETCD_DATA_DIR": f"/var/lib/etcdd/{name}.etcd"}
    for key, value in base.items():
        if not key.startswith("ETCD_INITIAL_CLUSTER"):
            value = value.replace("127.0.0.1:2379", client).replace("127.0.0.1:2380", peer)
        environ[key] = value
    return environ


class SystemdTests(SynchronousTestCase):
    """The units verify and the environment examples make valid members."""

    def test_units_verify(self) -> None:
        """systemd-analyze verify finds nothing to say about either unit."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze (systemd) is not installed")
        etcdd = shutil.which("etcdd", path=str(Path(sys.executable).parent)) or sys.executable
        with tempfile.TemporaryDirectory() as tmp:
            for unit, as_name in (("etcdd.service", "etcdd.service"),
                                  ("etcdd@.service", "etcdd@infra1.service")):
                # ExecStart must exist on this host: point it at this checkout's script.
                text = (SYSTEMD / unit).read_text(encoding="utf-8")
                self.assertIn("ExecStart=/usr/local/bin/etcdd\n", text)
                target = Path(tmp) / as_name
                target.write_text(text.replace("/usr/local/bin/etcdd", etcdd), encoding="utf-8")
                done = subprocess.run([analyze, "verify", "--man=no", str(target)],
                                      capture_output=True, text=True, timeout=60)
                self.assertEqual((done.returncode, done.stdout + done.stderr), (0, ""), unit)

    def test_units_notify_and_harden(self) -> None:
        """Both units are Type=notify, run etcdd unprivileged and keep /var/lib/etcdd
        writable under ProtectSystem=strict; the template reads its instance's env file."""
        for unit in ("etcdd.service", "etcdd@.service"):
            text = (SYSTEMD / unit).read_text(encoding="utf-8")
            for line in ("Type=notify", "User=etcd", "StateDirectory=etcdd",
                         "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
                         "TimeoutStartSec=infinity", "KillSignal=SIGTERM"):
                self.assertIn(f"\n{line}\n", text, unit)
        template = (SYSTEMD / "etcdd@.service").read_text(encoding="utf-8")
        for line in ("EnvironmentFile=/etc/etcdd/%i.env", "Environment=ETCD_NAME=%i",
                     "Environment=ETCD_DATA_DIR=/var/lib/etcdd/%i.etcd"):
            self.assertIn(f"\n{line}\n", template)

    def test_single_member_example_is_valid(self) -> None:
        """etcdd.env.example parses without a warning into a member that can bootstrap."""
        result = parse_command_line([], env_file(SYSTEMD / "etcdd.env.example"))
        self.assertEqual(result.warnings, ())
        result.config.verify_bootstrap()
        self.assertEqual(result.config.data_dir, "/var/lib/etcdd/default.etcd")

    def test_instance_example_makes_a_three_member_cluster(self) -> None:
        """Each member of etcdd-instance.env.example, with what etcdd@.service sets and
        the ports its comment gives, bootstraps one cluster of three on distinct ports."""
        path = SYSTEMD / "etcdd-instance.env.example"
        base = env_file(path)
        ports = {"infra1": ("127.0.0.1:2379", "127.0.0.1:2380")}
        ports.update((name, (client, peer)) for name, client, peer in re.findall(
            r"#\s+(\w+): client (\S+), peer (\S+)", path.read_text(encoding="utf-8")))
        self.assertEqual(sorted(ports), ["infra1", "infra2", "infra3"])
        seen = set()
        for name, (client, peer) in ports.items():
            result = parse_command_line([], instance_env(base, name, client, peer))
            self.assertEqual(result.warnings, ())
            result.config.verify_bootstrap()
            self.assertEqual(len(result.config.initial_cluster_urls()), 3)
            seen.update(result.config.listen_client_urls + result.config.listen_peer_urls)
        self.assertEqual(len(seen), 6)


class PackagingTests(SynchronousTestCase):
    """setup.py installs the man pages and the systemd files."""

    def data_files(self) -> dict[str, list[str]]:
        tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "data_files":
                return dict(ast.literal_eval(node.value))
        self.fail("setup.py has no data_files")

    def test_pages_and_units_are_installed(self) -> None:
        """Both man pages go to share/man/man8 and every file of systemd/ is installed."""
        data = self.data_files()
        self.assertEqual(sorted(data["share/man/man8"]), ["man/etcdd-ops.8", "man/etcdd.8"])
        systemd = sorted(f"systemd/{p.name}" for p in SYSTEMD.iterdir() if p.is_file())
        self.assertEqual(sorted(data["share/doc/etcdd/systemd"]), systemd)
        for files in data.values():
            for name in files:
                self.assertTrue((ROOT / name).is_file(), name)
