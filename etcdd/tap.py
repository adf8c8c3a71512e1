"""The daemon's entry points: ``twistd -n etcdd ...`` (`Options`, `makeService`) and the
``etcdd`` console script (`main`). A shell.

Both take etcd 3.4's flags and ``ETCD_*`` variables (`etcdd.config.parse_command_line`) and
build the same ``etcdd.service.MemberService``. A bad flag prints one line,
``etcdd: <reason>``, on stderr and exits 2 (a flag Go's parser refuses) or 1 (a value etcd's
validation refuses), as etcd does; ``--help`` and ``--version`` print on stdout and exit 0.

`main` logs to stderr at ``--log-level``, starts the service once the reactor runs, and
stops it before the reactor shuts down (SIGINT/SIGTERM stop the reactor). It exits 0 after a
clean stop and 1 if the service failed to start or to stop. A service that stops the member
for a fatal error (STYLE.md §6.4) sets ``exit_status`` on itself before stopping the reactor;
one that sets it before failing ``startService`` has logged why, so no traceback follows.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn, TextIO

from twisted.application.service import IService
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate, Logger,
                            globalLogBeginner, textFileLogObserver)
from twisted.python import usage
from twisted.python.failure import Failure

from etcdd.config import (ConfigError, HelpRequested, ParseResult, VersionRequested, help_text,
                          parse_command_line)
from etcdd.version import ETCD_SERVER_VERSION

try:
    __version__ = importlib.metadata.version("etcdd")
except importlib.metadata.PackageNotFoundError:   # running from a source tree
    __version__ = "0.1.0"
_log = Logger(namespace="etcdd")

# etcd's --log-level names -> twisted.logger levels
_LOG_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
               "error": LogLevel.error, "panic": LogLevel.critical, "fatal": LogLevel.critical}


class _Exit(Exception):
    """Stop with this text on stdout (status 0) or stderr (otherwise)."""
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


def version_text() -> str:
    """``--version``: etcd's first line (scripts grep it), then what etcdd really is."""
    return (f"etcd Version: {ETCD_SERVER_VERSION}\n"
            "Git SHA: Not provided\n"
            f"etcdd Version: {__version__}\n"
            f"Python Version: {platform.python_version()}\n"
            f"Python OS/Arch: {sys.platform}/{platform.machine()}\n")


def _parse(argv: Sequence[str], environ: Mapping[str, str]) -> ParseResult:
    """`parse_command_line`, turning help, version and bad flags into `_Exit`."""
    try:
        return parse_command_line(argv, environ)
    except HelpRequested:
        raise _Exit(0, help_text()) from None
    except VersionRequested:
        raise _Exit(0, version_text()) from None
    except ConfigError as e:
        raise _Exit(e.exit_status, f"etcdd: {e}\n") from None


def _exit(e: _Exit) -> NoReturn:
    (sys.stdout if e.status == 0 else sys.stderr).write(e.text)
    raise SystemExit(e.status)


def _log_parse_notes(parsed: ParseResult) -> None:
    for warning in parsed.warnings:
        _log.warn("{warning}", warning=warning)
    for assignment in parsed.env_used:
        _log.info("recognized and used environment variable {assignment}", assignment=assignment)


class Options(usage.Options):
    """``twistd etcdd`` options: etcd's flags, parsed by `etcdd.config`, not by getopt.

    After `parseOptions`, ``self["config"]`` is the `Config`. Bad flags write one line to
    stderr and raise ``SystemExit`` (2 or 1) rather than twistd's usage dump and status 1.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._environ = os.environ if environ is None else environ

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        # twistd hands us the arguments after the subcommand name.
        argv = sys.argv[1:] if options is None else list(options)
        try:
            parsed = _parse(argv, self._environ)
        except _Exit as e:
            _exit(e)
        self["config"] = parsed.config
        self["parsed"] = parsed

    def getUsage(self, width: int | None = None) -> str:
        return help_text()


def makeService(options: Options) -> IService:
    """The member service for ``twistd``, which owns logging, signals and the reactor."""
    from etcdd.service import MemberService   # written by the service room; imported late
    _log_parse_notes(options["parsed"])
    return MemberService(options["config"])


def begin_logging(level: str, stream: TextIO) -> None:
    """Log text lines with time, namespace and level to ``stream``, at ``level`` and above."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LOG_LEVELS[level])
    observer = FilteringLogObserver(textFileLogObserver(stream), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def run_service(service: IService, reactor) -> int:
    """Start ``service`` when ``reactor`` runs, stop it before shutdown; return an exit status.

    Returns 1 if starting or stopping failed (raised or a failed Deferred), else the
    service's ``exit_status`` (default 0).
    """
    failed = []

    def start() -> None:
        maybeDeferred(service.startService).addErrback(start_failed)

    def start_failed(failure: Failure) -> None:
        if getattr(service, "exit_status", 0):   # the service has said why: one line is enough
            _log.critical("etcdd failed to start: {error}", error=failure.getErrorMessage())
        else:
            _log.failure("etcdd failed to start", failure, level=LogLevel.critical)
        failed.append(failure)
        reactor.stop()

    def stop() -> Deferred | None:
        if not service.running:
            return None
        return maybeDeferred(service.stopService).addErrback(stop_failed)

    def stop_failed(failure: Failure) -> None:
        _log.failure("etcdd failed to stop cleanly", failure, level=LogLevel.critical)
        failed.append(failure)

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    return 1 if failed else int(getattr(service, "exit_status", 0) or 0)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``etcdd`` console script (and ``python -m etcdd``): run one member until stopped."""
    try:
        parsed = _parse(sys.argv[1:] if argv is None else argv, os.environ)
    except _Exit as e:
        _exit(e)
    config = parsed.config
    begin_logging(config.log_level, sys.stderr)
    _log_parse_notes(parsed)
    from twisted.internet import reactor

    from etcdd.service import MemberService
    try:
        service = MemberService(config, reactor)
    except Exception:
        _log.failure("etcdd failed to start", level=LogLevel.critical)
        raise SystemExit(1) from None
    raise SystemExit(run_service(service, reactor))


if __name__ == "__main__":
    main()
