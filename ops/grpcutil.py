"""What the etcdctl-like subcommands of `etcdd-ops` share. A shell (ops/*).

Matches etcdctl 3.4's global flags and conventions (``etcdctl/ctlv3/ctl.go``,
``command/global.go``, ``command/error.go``): ``--endpoints`` (a comma list, default
``127.0.0.1:2379``, ``http://`` accepted), ``--dial-timeout`` (2s) and ``--command-timeout``
(5s) as Go durations, ``-w/--write-out``; an error is printed as ``Error: <message>`` on
stderr, with the server's own message, and exits with etcdctl's code (`EXIT_ERROR`, or
`EXIT_BAD_ARGS` for arguments the command refuses itself).

Output helpers: `go_json` renders a protobuf message as etcdctl's ``-w json`` does (Go's
``encoding/json`` over the gogo structs: the .proto field names, zero values and empty
lists left out, 64-bit integers as JSON numbers) and `render_table` draws etcdctl's
``-w table`` (olekukonko/tablewriter: centred upper-case header, right-aligned cells).
"""
from __future__ import annotations

import argparse
import base64
import json
import math
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from etcdd.goflags import parse_duration

# etcdctl/ctlv3/command/error.go
EXIT_SUCCESS = 0
EXIT_ERROR = 1
EXIT_BAD_CONNECTION = 2
EXIT_BAD_FEATURE = 4
EXIT_BAD_ARGS = 128

DEFAULT_ENDPOINTS = "127.0.0.1:2379"
DEFAULT_DIAL_TIMEOUT = "2s"
DEFAULT_COMMAND_TIMEOUT = "5s"
# What a client-side deadline looks like in etcdctl's output (Go's context error).
DEADLINE_MESSAGE = "context deadline exceeded"


class CommandError(Exception):
    """A command fails: `message` goes to stderr after ``Error: ``, `exit_code` to the shell."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Where and how long to talk: endpoints as ``host:port``, timeouts in seconds."""
    endpoints: tuple[str, ...]
    dial_timeout_seconds: float = 2.0
    command_timeout_seconds: float = 5.0


class ArgumentParser(argparse.ArgumentParser):
    """argparse that fails as cobra does: ``Error: <message>`` and exit status 1."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"Error: {message}\n")


def _duration_arg(text: str) -> float:
    """A Go duration flag (``2s``, ``500ms``, ``1m30s``) in seconds, as etcdctl parses it."""
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_endpoints(text: str) -> tuple[str, ...]:
    """``host:port`` targets from a comma list; ``http://`` prefixes are dropped.

    Raises `CommandError` (`EXIT_BAD_ARGS`) for an empty list or an ``https://`` endpoint
    (etcdd-ops speaks plain gRPC only)."""
    endpoints = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.startswith("https://"):
            raise CommandError(f"{item}: TLS endpoints are not supported by etcdd-ops",
                               EXIT_BAD_ARGS)
        endpoints.append(url_to_target(item))
    if not endpoints:
        raise CommandError("no endpoints given", EXIT_BAD_ARGS)
    return tuple(endpoints)


def url_to_target(url: str) -> str:
    """``http://127.0.0.1:2379/`` -> ``127.0.0.1:2379`` (a bare ``host:port`` is kept)."""
    if "://" in url:
        url = url.split("://", 1)[1]
    return url.rstrip("/")


def add_client_flags(parser: argparse.ArgumentParser, write_out: Sequence[str],
                     default_write_out: str | None = None) -> None:
    """etcdctl's global flags on `parser`: endpoints, timeouts and ``-w`` among `write_out`."""
    parser.add_argument("--endpoints", default=DEFAULT_ENDPOINTS,
                        help=f"gRPC endpoints, comma separated (default {DEFAULT_ENDPOINTS})")
    parser.add_argument("--dial-timeout", type=_duration_arg, default=DEFAULT_DIAL_TIMEOUT,
                        help=f"dial timeout for client connections (default "
                             f"{DEFAULT_DIAL_TIMEOUT})")
    parser.add_argument("--command-timeout", type=_duration_arg,
                        default=DEFAULT_COMMAND_TIMEOUT,
                        help=f"timeout for short running command (default "
                             f"{DEFAULT_COMMAND_TIMEOUT})")
    parser.add_argument("-w", "--write-out", choices=tuple(write_out), default=default_write_out,
                        help="output format: " + ", ".join(write_out))


def client_config(args: argparse.Namespace) -> ClientConfig:
    """The `ClientConfig` of flags added by `add_client_flags`; raises `CommandError`."""
    dial, command = args.dial_timeout, args.command_timeout
    # NB: argparse runs `type` on string defaults too, so both are seconds here.
    return ClientConfig(parse_endpoints(args.endpoints), float(dial), float(command))


def connect(config: ClientConfig) -> tuple[grpc.Channel, str]:
    """A ready channel to the first of `config.endpoints` that answers within the dial
    timeout (all dialled at once), and that endpoint; the others are closed.

    Raises `CommandError` with Go's ``context deadline exceeded`` when none answers, as
    etcdctl prints it."""
    channels = [grpc.insecure_channel(ep) for ep in config.endpoints]
    ready = threading.Event()
    winner: list[int] = []
    lock = threading.Lock()
    futures = []
    for i, channel in enumerate(channels):
        future = grpc.channel_ready_future(channel)
        future.add_done_callback(lambda f, i=i: _on_ready(f, i, winner, lock, ready))
        futures.append(future)
    ready.wait(config.dial_timeout_seconds)
    for future in futures:
        future.cancel()
    with lock:
        chosen = winner[0] if winner else None
    for i, channel in enumerate(channels):
        if i != chosen:
            channel.close()
    if chosen is None:
        raise CommandError(DEADLINE_MESSAGE)
    return channels[chosen], config.endpoints[chosen]


def _on_ready(future: grpc.Future, index: int, winner: list[int], lock: threading.Lock,
              ready: threading.Event) -> None:
    if future.cancelled():
        return
    with lock:
        if not winner:
            winner.append(index)
    ready.set()


def rpc_error_message(error: grpc.RpcError) -> str:
    """What etcdctl prints for a failed call: etcd's own message (``etcdserver: ...``, as
    clientv3 turns the errors it knows back into their text), Go's ``context deadline
    exceeded`` for a client-side deadline, else grpc-go's ``rpc error: code = ... desc = ...``.
    """
    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else None) or ""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and details in ("", "Deadline Exceeded"):
        return DEADLINE_MESSAGE
    if details.startswith("etcdserver: ") or code is None:
        return details or str(error)
    return f"rpc error: code = {_go_code_name(code)} desc = {details}"


def _go_code_name(code: grpc.StatusCode) -> str:
    """grpc-go's name of a status code: ``FAILED_PRECONDITION`` -> ``FailedPrecondition``."""
    if code == grpc.StatusCode.CANCELLED:
        return "Canceled"
    return "".join(word.capitalize() for word in code.name.split("_")) if code.name != "OK" \
        else "OK"


def fail(error: BaseException) -> int:
    """Print ``Error: ...`` for `error` (a `CommandError` or an `grpc.RpcError`) on stderr;
    the exit status to return."""
    if isinstance(error, grpc.RpcError):
        message, code = rpc_error_message(error), EXIT_ERROR
    elif isinstance(error, CommandError):
        message, code = str(error), error.exit_code
    else:
        message, code = str(error), EXIT_ERROR
    print(f"Error: {message}", file=sys.stderr)
    return code


def go_json(message: Message) -> dict[str, Any]:
    """`message` as Go's ``encoding/json`` writes etcd's gogo structs: .proto field names,
    fields in number order, zero values and empty lists omitted (``omitempty``),
    integers and enums as numbers, bytes in base64.

    >>> go_json(pb.Member(ID=10, name="a", peerURLs=["http://p"]))
    {'ID': 10, 'name': 'a', 'peerURLs': ['http://p']}
    """
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        convert = _GO_JSON_CONVERT.get(field.type)
        if convert is None:
            out[field.name] = list(value) if field.is_repeated else value
        elif field.is_repeated:
            out[field.name] = [convert(v) for v in value]
        else:
            out[field.name] = convert(value)
    return out


_GO_JSON_CONVERT: dict[int, Any] = {
    FieldDescriptor.TYPE_MESSAGE: go_json,
    # Go's encoding/json writes []byte as standard base64
    FieldDescriptor.TYPE_BYTES: lambda b: base64.b64encode(b).decode("ascii"),
}


_GO_HTML_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                                  "\u2028": "\\u2028", "\u2029": "\\u2029"})


def dumps(value: Any) -> str:
    """One line of compact JSON as Go's ``json.Marshal`` writes it (UTF-8, HTML-escaped)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).translate(
        _GO_HTML_ESCAPES)


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """etcdctl's ``-w table``: header centred (extra space on the right), cells
    right-aligned, one space of padding, ``+---+`` rules above and below the header and
    below the last row.

    >>> print(render_table(["ID", "NAME"], [["8e9e05c52164694d", "a"]]))
    +------------------+------+
    |        ID        | NAME |
    +------------------+------+
    | 8e9e05c52164694d |    a |
    +------------------+------+
    """
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    lines = [rule, "|" + "|".join(_centre(h, w) for h, w in zip(header, widths)) + "|", rule]
    lines += ["|" + "|".join(f" {cell.rjust(w)} " for cell, w in zip(row, widths)) + "|"
              for row in rows]
    lines.append(rule)
    return "\n".join(lines)


def _centre(text: str, width: int) -> str:
    pad = width - len(text)
    left = pad // 2
    return " " * (left + 1) + text + " " * (pad - left + 1)


def human_bytes(n: int) -> str:
    """go-humanize ``Bytes`` (SI units), as etcdctl prints sizes: ``25 kB``, ``2.1 MB``.

    Rounded to one decimal first, then printed with none from 10 up: 9999 is ``10 kB``."""
    if n < 10:
        return f"{n} B"
    exponent = min(int(math.floor(math.log(n) / math.log(1000))), len(_SI_UNITS) - 1)
    value = math.floor(n / 1000 ** exponent * 10 + 0.5) / 10
    return f"{value:.1f} {_SI_UNITS[exponent]}" if value < 10 else \
        f"{value:.0f} {_SI_UNITS[exponent]}"


_SI_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
