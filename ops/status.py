"""`etcdd-ops status`: one table of the cluster's members, each member's own view. A shell
(ops/*); `table_rows`, `format_reports` and `report_json` are pure.

For every member (``--cluster``: every member of ``MemberList``; otherwise the members at
``--endpoints``) it asks the member itself for ``Maintenance.Status`` (leader, learner,
raft term, index and applied index, store revision from the header, DB size and size in
use, version, errors: etcd 3.4 lists the member's alarms there) and ``GET /health`` on its
client URL (``{"health":"true"}`` while it sees a leader). A member that does not answer,
or was added but never started, is a row saying so; the others are still shown. The exit
status is 0 only when every member answered and is healthy (etcdctl ``endpoint status``
also prints what it has and exits 1 when an endpoint failed).

``-w table`` (default), ``-w simple`` (etcdctl's comma lines) or ``-w json``: a list of
``{"Endpoint", "ID", "Name", "IsLearner", "Status" (etcdctl's StatusResponse json),
"Health", "Error"}``, empty fields left out as Go's ``omitempty`` would.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import grpc

from etcdd.proto import rpc_pb2 as pb, rpc_pb2_grpc
from ops.grpcutil import (EXIT_ERROR, EXIT_SUCCESS, ArgumentParser, ClientConfig, CommandError,
                          add_client_flags, client_config, connect, dumps, fail, go_json,
                          human_bytes, render_table, rpc_error_message, url_to_target)

HEADER = ("ENDPOINT", "ID", "NAME", "IS LEADER", "IS LEARNER", "RAFT TERM", "RAFT INDEX",
          "RAFT APPLIED INDEX", "REVISION", "DB SIZE", "DB SIZE IN USE", "VERSION", "HEALTH",
          "ERRORS")
NOT_STARTED = "not started (no client URL yet)"
UNREACHABLE = "unreachable: "


@dataclass(frozen=True, slots=True)
class MemberReport:
    """One row: the member as the member list names it and what it answered itself.

    `status` is None when it did not answer (`error` says why); `healthy` is None when
    ``/health`` was not asked (no endpoint) or did not answer. `member_id` and `name` are
    0 and "" for an endpoint that is in no member list."""
    endpoint: str
    member_id: int = 0
    name: str = ""
    is_learner: bool = False
    status: pb.StatusResponse | None = None
    healthy: bool | None = None
    error: str = ""

    @property
    def is_ok(self) -> bool:
        """Whether the member answered Status and says it is healthy."""
        return self.status is not None and self.healthy is True and not self.error


def table_rows(reports: Sequence[MemberReport]) -> list[list[str]]:
    """The cells of `HEADER` for each report; a member that did not answer has only its
    endpoint, ID, name, learner flag, health and error."""
    return [_row(r) for r in reports]


def _row(r: MemberReport) -> list[str]:
    member_id = f"{r.member_id:x}" if r.member_id else ""
    health = "" if r.healthy is None else str(r.healthy).lower()
    s = r.status
    if s is None:
        return [r.endpoint, member_id, r.name, "", str(r.is_learner).lower(), "", "", "", "",
                "", "", "", health or "false", r.error]
    errors = ", ".join([*s.errors, *([r.error] if r.error else [])])
    return [r.endpoint, member_id, r.name, str(s.leader == s.header.member_id).lower(),
            str(s.isLearner).lower(), str(s.raftTerm), str(s.raftIndex),
            str(s.raftAppliedIndex), str(s.header.revision), human_bytes(s.dbSize),
            human_bytes(s.dbSizeInUse), s.version, health, errors]


def report_json(r: MemberReport) -> dict[str, Any]:
    """One report as `-w json` writes it (Go-style: empty fields omitted)."""
    out: dict[str, Any] = {"Endpoint": r.endpoint}
    if r.member_id:
        out["ID"] = r.member_id
    if r.name:
        out["Name"] = r.name
    if r.is_learner:
        out["IsLearner"] = True
    if r.status is not None:
        out["Status"] = go_json(r.status)
    if r.healthy is not None:
        out["Health"] = r.healthy
    if r.error:
        out["Error"] = r.error
    return out


def format_reports(reports: Sequence[MemberReport], write_out: str) -> str:
    """The reports as a table, etcdctl's simple comma lines, or a json list."""
    if write_out == "json":
        return dumps([report_json(r) for r in reports])
    rows = table_rows(reports)
    if write_out == "simple":
        return "\n".join(", ".join(row) for row in rows)
    return render_table(HEADER, rows)


def member_list(config: ClientConfig) -> list[pb.Member]:
    """``MemberList`` from the first endpoint that answers; raises `CommandError` or
    `grpc.RpcError`."""
    channel, _ = connect(config)
    try:
        stub = rpc_pb2_grpc.ClusterStub(channel)
        return list(stub.MemberList(pb.MemberListRequest(),
                                    timeout=config.command_timeout_seconds).members)
    finally:
        channel.close()


def targets(config: ClientConfig, members: Sequence[pb.Member] | None,
            cluster: bool) -> list[MemberReport]:
    """The rows to fill, before asking anyone: every listed member (its first client URL)
    if `cluster`, else each of `config.endpoints` with the listed member serving it."""
    known = members or []
    if cluster:
        return [MemberReport(url_to_target(m.clientURLs[0]) if m.clientURLs else "", m.ID,
                             m.name, m.isLearner, error="" if m.clientURLs else NOT_STARTED)
                for m in known]
    by_endpoint = {url_to_target(url): m for m in known for url in m.clientURLs}
    rows = []
    for endpoint in config.endpoints:
        m = by_endpoint.get(endpoint)
        rows.append(MemberReport(endpoint) if m is None else
                    MemberReport(endpoint, m.ID, m.name, m.isLearner))
    return rows


def probe(report: MemberReport, config: ClientConfig,
          members: Sequence[pb.Member] = ()) -> MemberReport:
    """Ask the member at `report.endpoint` for Status and ``/health``; the filled report.

    An endpoint no member list named is named from its own Status (header member ID)."""
    if not report.endpoint:
        return report
    status, error = _status(report.endpoint, config)
    if status is None and error.startswith(UNREACHABLE):
        return replace(report, error=error)     # NB: /health would only wait as long again
    healthy, health_error = _health(report.endpoint, config.command_timeout_seconds)
    if status is not None and not report.member_id:
        own = next((m for m in members if m.ID == status.header.member_id), None)
        report = replace(report, member_id=status.header.member_id,
                         name=own.name if own else "", is_learner=status.isLearner)
    if status is not None:
        error = health_error       # NB: "" when /health said true
    return replace(report, status=status, healthy=healthy, error=error)


def _status(endpoint: str, config: ClientConfig) -> tuple[pb.StatusResponse | None, str]:
    try:
        channel, _ = connect(ClientConfig((endpoint,), config.dial_timeout_seconds,
                                          config.command_timeout_seconds))
    except CommandError as e:
        return None, f"{UNREACHABLE}{e}"
    try:
        return rpc_pb2_grpc.MaintenanceStub(channel).Status(
            pb.StatusRequest(), timeout=config.command_timeout_seconds), ""
    except grpc.RpcError as e:
        return None, rpc_error_message(e)
    finally:
        channel.close()


def _health(endpoint: str, timeout_seconds: float) -> tuple[bool | None, str]:
    """``GET /health``: (True, "") or (False, why) from its json, (None, why) when it did
    not answer.

    NB: etcd answers 503 with ``{"health":"false"}`` while it has no leader."""
    try:
        with urllib.request.urlopen(f"http://{endpoint}/health", timeout=timeout_seconds) as r:
            body = r.read()
    except urllib.error.HTTPError as e:
        body = e.read()
    except OSError as e:
        return None, f"health: {getattr(e, 'reason', e)}"
    try:
        healthy = json.loads(body).get("health") == "true"
    except (ValueError, AttributeError):
        return None, f"health: not json: {body[:80]!r}"
    return healthy, "" if healthy else "unhealthy (/health)"


def collect(config: ClientConfig, cluster: bool) -> list[MemberReport]:
    """Every member's report, all asked at once.

    With `cluster` the rows come from MemberList, and no member list is a `CommandError`
    (etcdctl's message); without, a failed member list only leaves rows unnamed."""
    try:
        members: list[pb.Member] | None = member_list(config)
    except (CommandError, grpc.RpcError) as e:
        if cluster:
            message = rpc_error_message(e) if isinstance(e, grpc.RpcError) else str(e)
            raise CommandError("failed to fetch endpoints from etcd cluster member list: "
                               + message) from None
        members = None
    rows = targets(config, members, cluster)
    if not rows:
        return rows
    with ThreadPoolExecutor(max_workers=min(16, len(rows))) as pool:
        return list(pool.map(lambda r: probe(r, config, members or ()), rows))


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="etcdd-ops status",
                       description="one table of the members: leader, learner, raft term "
                                   "and index, revision, DB size, version, health, errors")
    p.add_argument("--cluster", action="store_true",
                   help="every member of the member list, not only --endpoints")
    add_client_flags(p, ("table", "simple", "json"), "table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``etcdd-ops status``: the table; 0 if every member answered and is healthy, else 1."""
    args = parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        reports = collect(client_config(args), args.cluster)
    except CommandError as e:
        return fail(e)
    print(format_reports(reports, args.write_out))
    return EXIT_SUCCESS if all(r.is_ok for r in reports) else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
