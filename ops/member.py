"""`etcdd-ops member add|remove|promote|update|list`: etcdctl 3.4's member commands over the
Cluster API. A shell (ops/*); the formatting functions are pure.

Output as etcdctl's (``etcdctl/ctlv3/command/member_command.go`` and its printers):
``member add`` prints ``Member <id> added to cluster <cluster id>`` and then the
``ETCD_NAME``, ``ETCD_INITIAL_CLUSTER``, ``ETCD_INITIAL_ADVERTISE_PEER_URLS`` and
``ETCD_INITIAL_CLUSTER_STATE="existing"`` lines to start the new member with;
``member list`` prints a table by default (``-w table``: ID, STATUS started|unstarted,
NAME, PEER ADDRS, CLIENT ADDRS, IS LEARNER), etcdctl's comma lines with ``-w simple``;
every command prints the response as etcdctl's ``-w json``. IDs are hexadecimal both
ways. Errors are the server's message (``Error: etcdserver: member not found``, exit 1);
arguments the command refuses itself exit 128, as etcdctl's do.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from google.protobuf.message import Message

from etcdd.proto import rpc_pb2 as pb, rpc_pb2_grpc
from etcdd.urls import go_quote
from ops.grpcutil import (EXIT_BAD_ARGS, EXIT_SUCCESS, ArgumentParser, ClientConfig,
                          CommandError, add_client_flags, client_config, connect, dumps, fail,
                          go_json, render_table)

MEMBER_LIST_HEADER = ("ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER")
# command -> the words etcdctl prints ("Member ... removed from cluster ...")
_DONE = {"remove": "removed from", "update": "updated in", "promote": "promoted in"}


def member_list_rows(members: Sequence[pb.Member]) -> list[list[str]]:
    """etcdctl's member list cells: hex ID, ``started`` once the member has published its
    name (else ``unstarted``), name, peer and client URLs comma-joined, learner flag."""
    return [[f"{m.ID:x}", "started" if m.name else "unstarted", m.name, ",".join(m.peerURLs),
             ",".join(m.clientURLs), "true" if m.isLearner else "false"] for m in members]


def format_member_list(resp: pb.MemberListResponse, write_out: str) -> str:
    """``member list`` in `write_out` (table, simple or json)."""
    if write_out == "json":
        return dumps(go_json(resp))
    rows = member_list_rows(resp.members)
    if write_out == "simple":
        return "\n".join(", ".join(row) for row in rows)
    return render_table(MEMBER_LIST_HEADER, rows)


def format_member_add(resp: pb.MemberAddResponse, name: str, peer_urls: str,
                      write_out: str) -> str:
    """``member add``: the confirmation and the environment for the new member, or json.

    ``ETCD_INITIAL_CLUSTER`` lists every peer URL of every member in the response's order
    as ``name=url``, the new member under `name` (others not yet started have an empty
    name, as etcdctl prints them); `peer_urls` is the flag's text, quoted as given."""
    if write_out == "json":
        return dumps(go_json(resp))
    new_id = resp.member.ID
    initial_cluster = ",".join(f"{name if m.ID == new_id else m.name}={url}"
                               for m in resp.members for url in m.peerURLs)
    return "\n".join([
        f"Member {new_id:16x} added to cluster {resp.header.cluster_id:16x}",
        "",
        f"ETCD_NAME={go_quote(name)}",
        f"ETCD_INITIAL_CLUSTER={go_quote(initial_cluster)}",
        f"ETCD_INITIAL_ADVERTISE_PEER_URLS={go_quote(peer_urls)}",
        'ETCD_INITIAL_CLUSTER_STATE="existing"'])


def format_member_change(verb: str, member_id: int,
                         resp: pb.MemberRemoveResponse | pb.MemberUpdateResponse
                         | pb.MemberPromoteResponse, write_out: str) -> str:
    """``member remove|update|promote``: ``Member <id> removed from cluster <cid>`` or json."""
    if write_out == "json":
        return dumps(go_json(resp))
    return f"Member {member_id:16x} {_DONE[verb]} cluster {resp.header.cluster_id:16x}"


def parse_member_id(text: str) -> int:
    """A member ID in hex as etcdctl takes it (Go ``strconv.ParseUint(s, 16, 64)``: hex
    digits only, no prefix or sign); raises `CommandError` (exit 128) with etcdctl's text."""
    if not text or any(ch not in _HEX_DIGITS for ch in text):
        reason = "invalid syntax"
    elif int(text, 16) >= 1 << 64:
        reason = "value out of range"
    else:
        return int(text, 16)
    raise CommandError(f"bad member ID arg (strconv.ParseUint: parsing {go_quote(text)}: "
                       f"{reason}), expecting ID in Hex", EXIT_BAD_ARGS)


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _peer_urls(text: str | None) -> list[str]:
    if not text:
        raise CommandError("member peer urls not provided", EXIT_BAD_ARGS)
    return text.split(",")


def build_request(args: argparse.Namespace) -> tuple[str, Message]:
    """The Cluster method and its request for the parsed command line, checked as etcdctl
    checks it before dialling; raises `CommandError` (exit 128)."""
    if args.command == "list":
        return "MemberList", pb.MemberListRequest()
    if args.command == "add":
        if not args.args:
            raise CommandError("member name not provided", EXIT_BAD_ARGS)
        if len(args.args) > 1:
            hints = "".join(f", did you mean --peer-urls={a}" for a in args.args
                            if a.lower().startswith("http"))
            raise CommandError("too many arguments" + hints, EXIT_BAD_ARGS)
        return "MemberAdd", pb.MemberAddRequest(peerURLs=_peer_urls(args.peer_urls),
                                                isLearner=args.learner)
    if len(args.args) != 1:
        raise CommandError("member ID is not provided", EXIT_BAD_ARGS)
    member_id = parse_member_id(args.args[0])
    if args.command == "remove":
        return "MemberRemove", pb.MemberRemoveRequest(ID=member_id)
    if args.command == "promote":
        return "MemberPromote", pb.MemberPromoteRequest(ID=member_id)
    return "MemberUpdate", pb.MemberUpdateRequest(ID=member_id,
                                                  peerURLs=_peer_urls(args.peer_urls))


def format_response(args: argparse.Namespace, resp: Message) -> str:
    """The text etcdctl prints for the command's response (default: table for list,
    etcdctl's simple lines for the others)."""
    if args.command == "list":
        return format_member_list(resp, args.write_out or "table")
    write_out = args.write_out or "simple"
    if args.command == "add":
        return format_member_add(resp, args.args[0], args.peer_urls, write_out)
    return format_member_change(args.command, int(args.args[0], 16), resp, write_out)


def parser() -> argparse.ArgumentParser:
    """``etcdd-ops member`` and its five subcommands, each with etcdctl's client flags."""
    p = ArgumentParser(prog="etcdd-ops member", description="membership commands, as "
                       "etcdctl member: add, remove, update, promote, list")
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    specs = {"add": ("NAME", "add a member (--peer-urls, --learner); prints its ETCD_* env"),
             "remove": ("ID", "remove the member with this hex ID"),
             "update": ("ID", "set the peer URLs of the member with this hex ID"),
             "promote": ("ID", "promote the learner with this hex ID to a voter"),
             "list": (None, "list the members (table; -w simple|json)")}
    for name, (arg, text) in specs.items():
        s = sub.add_parser(name, help=text, description=text)
        if arg is not None:
            # NB: optional here, checked by the command, so a missing one exits 128 with
            # etcdctl's message rather than argparse's.
            s.add_argument("args", nargs="*", metavar=arg)
        else:
            s.set_defaults(args=[])
        if name in ("add", "update"):
            s.add_argument("--peer-urls", default="", help="comma separated peer URLs")
        if name == "add":
            s.add_argument("--learner", action="store_true",
                           help="add the member as a raft learner (non-voting)")
        add_client_flags(s, ("simple", "table", "json") if name == "list" else
                         ("simple", "json"))
    return p


def run(config: ClientConfig, args: argparse.Namespace) -> str:
    """Run the parsed command against the first endpoint that answers; the text to print.

    Raises `CommandError` or `grpc.RpcError`."""
    method, request = build_request(args)
    channel, _ = connect(config)
    try:
        call = getattr(rpc_pb2_grpc.ClusterStub(channel), method)
        resp = call(request, timeout=config.command_timeout_seconds)
    finally:
        channel.close()
    return format_response(args, resp)


def main(argv: Sequence[str] | None = None) -> int:
    """``etcdd-ops member ...``: 0, or etcdctl's exit status with ``Error: ...`` on stderr."""
    args = parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        print(run(client_config(args), args))
    except (CommandError, grpc.RpcError) as e:
        return fail(e)
    return EXIT_SUCCESS


if __name__ == "__main__":
    sys.exit(main())
