"""What `etcdd-ops member`, `status` and `cluster status` print, and how they read their
arguments (ops/grpcutil.py, ops/member.py, ops/status.py, ops/clusterctl.py): etcdctl
3.4's tables, lines, json and error texts, checked on fixed responses (no server)."""
from __future__ import annotations

import contextlib
import io
import json

import grpc
from twisted.trial.unittest import SynchronousTestCase

from etcdd.proto import rpc_pb2 as pb
from ops import member, status
from ops.clusterctl import ClusterState, MemberRecord
from ops.grpcutil import (EXIT_BAD_ARGS, EXIT_ERROR, ClientConfig, CommandError, dumps, fail,
                          go_json, human_bytes, parse_endpoints, render_table,
                          rpc_error_message)
from ops.status import MemberReport

HEADER = pb.ResponseHeader(cluster_id=0x1A2D73E65FDEA19, member_id=0x9AA19078A3090D16,
                           raft_term=2)
A = pb.Member(ID=0x9AA19078A3090D16, name="a", peerURLs=["http://127.0.0.1:52087"],
              clientURLs=["http://127.0.0.1:35151"])
C = pb.Member(ID=0x7F52AFC8F851552E, name="c", peerURLs=["http://127.0.0.1:56295"],
              clientURLs=["http://127.0.0.1:53155"])
NEW = pb.Member(ID=0x2C9156B806FB86E1, peerURLs=["http://127.0.0.1:40001"], isLearner=True)


def status_response(member_id: int, leader: int, **fields: object) -> pb.StatusResponse:
    return pb.StatusResponse(
        header=pb.ResponseHeader(cluster_id=HEADER.cluster_id, member_id=member_id,
                                 revision=7, raft_term=2),
        version="3.4.23", dbSize=24576, dbSizeInUse=16384, leader=leader, raftIndex=13,
        raftTerm=2, raftAppliedIndex=13, **fields)


class FakeRpcError(grpc.RpcError):
    """A failed call as grpcio raises it: a status code and the server's details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class ErrorTests(SynchronousTestCase):

    def test_server_errors_print_as_etcdctl_prints_them(self) -> None:
        """etcd's own errors as their text, a local deadline as Go's context error, any
        other status in grpc-go's words."""
        cases = [
            (grpc.StatusCode.NOT_FOUND, "etcdserver: member not found",
             "etcdserver: member not found"),
            (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded",
             "context deadline exceeded"),
            (grpc.StatusCode.UNAVAILABLE, "Socket closed",
             "rpc error: code = Unavailable desc = Socket closed"),
            (grpc.StatusCode.CANCELLED, "x", "rpc error: code = Canceled desc = x"),
            (grpc.StatusCode.FAILED_PRECONDITION, "y",
             "rpc error: code = FailedPrecondition desc = y")]
        for code, details, printed in cases:
            self.assertEqual(rpc_error_message(FakeRpcError(code, details)), printed)

    def test_fail_prints_error_and_returns_the_exit_status(self) -> None:
        """``Error: <message>`` on stderr; 1 for a server error, the command's own code
        for a refused argument."""
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(fail(FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION,
                                               "etcdserver: unhealthy cluster")), EXIT_ERROR)
            self.assertEqual(fail(CommandError("member ID is not provided", EXIT_BAD_ARGS)),
                             EXIT_BAD_ARGS)
        self.assertEqual(err.getvalue(), "Error: etcdserver: unhealthy cluster\n"
                                         "Error: member ID is not provided\n")


class TableTests(SynchronousTestCase):

    def test_table_is_tablewriters(self) -> None:
        """Header centred with the odd space on the right, cells right-aligned, three rules."""
        self.assertEqual(render_table(["ID", "STATUS"], [["7f52", "unstarted"], ["a", ""]]),
                         "\n".join(["+------+-----------+",
                                    "|  ID  |  STATUS   |",
                                    "+------+-----------+",
                                    "| 7f52 | unstarted |",
                                    "|    a |           |",
                                    "+------+-----------+"]))

    def test_sizes_are_go_humanize(self) -> None:
        """Sizes read as etcdctl prints them: SI units, one decimal below 10."""
        self.assertEqual([human_bytes(n) for n in (0, 9, 999, 1000, 9999, 24576, 2_100_000)],
                         ["0 B", "9 B", "999 B", "1.0 kB", "10 kB", "25 kB", "2.1 MB"])


class GoJsonTests(SynchronousTestCase):

    def test_zero_fields_and_empty_lists_are_left_out(self) -> None:
        """Like Go's omitempty: an unstarted learner has no name or client URLs."""
        self.assertEqual(go_json(NEW), {"ID": 0x2C9156B806FB86E1,
                                        "peerURLs": ["http://127.0.0.1:40001"],
                                        "isLearner": True})

    def test_uint64_stays_a_number_and_fields_keep_proto_names(self) -> None:
        """A 64-bit ID is a JSON number (not a string as protobuf's json_format writes it)."""
        text = dumps(go_json(pb.MemberListResponse(header=HEADER, members=[A])))
        self.assertEqual(text, '{"header":{"cluster_id":117893203264137753,'
                               '"member_id":11142345800897072406,"raft_term":2},'
                               '"members":[{"ID":11142345800897072406,"name":"a",'
                               '"peerURLs":["http://127.0.0.1:52087"],'
                               '"clientURLs":["http://127.0.0.1:35151"]}]}')

    def test_bytes_are_base64_and_html_is_escaped(self) -> None:
        """Bytes as Go's base64 and <, >, & as Go's json.Marshal escapes them."""
        kv = go_json(pb.PutRequest(key=b"\xff\x00", value=b"v"))
        self.assertEqual(kv, {"key": "/wA=", "value": "dg=="})
        self.assertEqual(dumps({"name": "a<b>&c"}), '{"name":"a\\u003cb\\u003e\\u0026c"}')


class ArgumentTests(SynchronousTestCase):

    def parse(self, *argv: str) -> object:
        return member.parser().parse_args(list(argv))

    def refusal(self, *argv: str) -> CommandError:
        with self.assertRaises(CommandError) as caught:
            member.build_request(self.parse(*argv))
        self.assertEqual(caught.exception.exit_code, EXIT_BAD_ARGS)
        return caught.exception

    def test_endpoints_take_urls_and_host_ports(self) -> None:
        """``http://`` is dropped and empty items skipped; an https endpoint is refused."""
        self.assertEqual(parse_endpoints("http://127.0.0.1:2379/,127.0.0.1:22379,"),
                         ("127.0.0.1:2379", "127.0.0.1:22379"))
        self.assertRaises(CommandError, parse_endpoints, "https://127.0.0.1:2379")

    def test_timeouts_are_go_durations(self) -> None:
        """``--dial-timeout 500ms --command-timeout 1m`` are seconds; the defaults 2s and 5s."""
        args = self.parse("list", "--dial-timeout", "500ms", "--command-timeout", "1m")
        self.assertEqual((args.dial_timeout, args.command_timeout), (0.5, 60.0))
        args = self.parse("list")
        self.assertEqual((float(args.dial_timeout), float(args.command_timeout)), (2.0, 5.0))

    def test_requests_carry_hex_ids_and_peer_urls(self) -> None:
        """IDs are read in hex; peer URLs split on commas; --learner sets isLearner."""
        self.assertEqual(member.build_request(self.parse(
            "add", "d", "--peer-urls", "http://h:1,http://h:2", "--learner")),
            ("MemberAdd", pb.MemberAddRequest(peerURLs=["http://h:1", "http://h:2"],
                                              isLearner=True)))
        self.assertEqual(member.build_request(self.parse("remove", "7f52afc8f851552e")),
                         ("MemberRemove", pb.MemberRemoveRequest(ID=0x7F52AFC8F851552E)))
        self.assertEqual(member.build_request(self.parse("promote", "FF")),
                         ("MemberPromote", pb.MemberPromoteRequest(ID=255)))
        self.assertEqual(member.build_request(self.parse("update", "a", "--peer-urls", "u")),
                         ("MemberUpdate", pb.MemberUpdateRequest(ID=10, peerURLs=["u"])))

    def test_missing_or_bad_arguments_exit_128_with_etcdctls_text(self) -> None:
        """Every refusal etcdctl makes before dialling, in its words."""
        self.assertEqual(str(self.refusal("add")), "member name not provided")
        self.assertEqual(str(self.refusal("add", "d")), "member peer urls not provided")
        self.assertEqual(str(self.refusal("add", "d", "http://h:1")),
                         "too many arguments, did you mean --peer-urls=http://h:1")
        self.assertEqual(str(self.refusal("remove")), "member ID is not provided")
        self.assertEqual(str(self.refusal("update", "a")), "member peer urls not provided")
        self.assertEqual(str(self.refusal("promote", "zz")),
                         'bad member ID arg (strconv.ParseUint: parsing "zz": invalid syntax), '
                         'expecting ID in Hex')
        self.assertIn("value out of range", str(self.refusal("remove", "1" + "0" * 16)))
        for not_hex in ("0x10", "+1", "-1", "1_0", " 1"):
            self.assertIn("invalid syntax", str(self.refusal("remove", not_hex)))


class MemberOutputTests(SynchronousTestCase):

    def test_list_table_matches_etcdctl(self) -> None:
        """etcdctl member list -w table: started/unstarted, empty name and client URLs."""
        resp = pb.MemberListResponse(header=HEADER, members=[NEW, C])
        self.assertEqual(member.format_member_list(resp, "table"), "\n".join([
            "+------------------+-----------+------+------------------------+"
            "------------------------+------------+",
            "|        ID        |  STATUS   | NAME |       PEER ADDRS       |"
            "      CLIENT ADDRS      | IS LEARNER |",
            "+------------------+-----------+------+------------------------+"
            "------------------------+------------+",
            "| 2c9156b806fb86e1 | unstarted |      | http://127.0.0.1:40001 |"
            "                        |       true |",
            "| 7f52afc8f851552e |   started |    c | http://127.0.0.1:56295 |"
            " http://127.0.0.1:53155 |      false |",
            "+------------------+-----------+------+------------------------+"
            "------------------------+------------+"]))

    def test_list_simple_is_etcdctls_comma_lines(self) -> None:
        """etcdctl member list (simple): one comma-separated line per member."""
        resp = pb.MemberListResponse(header=HEADER, members=[NEW, C])
        self.assertEqual(member.format_member_list(resp, "simple"),
                         "2c9156b806fb86e1, unstarted, , http://127.0.0.1:40001, , true\n"
                         "7f52afc8f851552e, started, c, http://127.0.0.1:56295, "
                         "http://127.0.0.1:53155, false")

    def test_add_prints_the_new_members_environment(self) -> None:
        """The confirmation with %16x IDs, then ETCD_* lines naming the new member and
        every other peer URL in the response's order."""
        resp = pb.MemberAddResponse(header=HEADER, member=NEW, members=[NEW, C, A])
        self.assertEqual(member.format_member_add(resp, "d", "http://127.0.0.1:40001",
                                                  "simple"), "\n".join([
            "Member 2c9156b806fb86e1 added to cluster  1a2d73e65fdea19",
            "",
            'ETCD_NAME="d"',
            'ETCD_INITIAL_CLUSTER="d=http://127.0.0.1:40001,c=http://127.0.0.1:56295,'
            'a=http://127.0.0.1:52087"',
            'ETCD_INITIAL_ADVERTISE_PEER_URLS="http://127.0.0.1:40001"',
            'ETCD_INITIAL_CLUSTER_STATE="existing"']))

    def test_add_json_is_the_response(self) -> None:
        """-w json prints the MemberAddResponse and no environment lines."""
        resp = pb.MemberAddResponse(header=HEADER, member=NEW, members=[NEW])
        out = json.loads(member.format_member_add(resp, "d", "http://127.0.0.1:40001", "json"))
        self.assertEqual(out["member"], {"ID": NEW.ID, "peerURLs": ["http://127.0.0.1:40001"],
                                         "isLearner": True})
        self.assertEqual(list(out), ["header", "member", "members"])

    def test_changes_print_etcdctls_line(self) -> None:
        """Remove, update and promote each print etcdctl's one line."""
        resp = pb.MemberRemoveResponse(header=HEADER, members=[C])
        self.assertEqual(member.format_member_change("remove", 0x2C91, resp, "simple"),
                         "Member             2c91 removed from cluster  1a2d73e65fdea19")
        self.assertEqual(member.format_member_change("promote", NEW.ID, resp, "simple"),
                         "Member 2c9156b806fb86e1 promoted in cluster  1a2d73e65fdea19")
        self.assertEqual(member.format_member_change("update", NEW.ID, resp, "simple"),
                         "Member 2c9156b806fb86e1 updated in cluster  1a2d73e65fdea19")


class StatusOutputTests(SynchronousTestCase):

    def reports(self) -> list[MemberReport]:
        return [
            MemberReport("127.0.0.1:53155", C.ID, "c",
                         status=status_response(C.ID, C.ID), healthy=True),
            MemberReport("127.0.0.1:35151", A.ID, "a",
                         status=status_response(A.ID, C.ID, errors=["memberID:1 alarm:NOSPACE "]),
                         healthy=True),
            MemberReport("127.0.0.1:1", 0xB, "b", healthy=None,
                         error="unreachable: context deadline exceeded"),
            MemberReport("", NEW.ID, "", is_learner=True, error=status.NOT_STARTED),
        ]

    def test_rows_show_every_member_even_unreachable_ones(self) -> None:
        """Leader, term, indexes, revision and sizes for those that answered; endpoint, ID,
        name, health false and the reason for those that did not."""
        rows = status.table_rows(self.reports())
        self.assertEqual(rows[0], ["127.0.0.1:53155", "7f52afc8f851552e", "c", "true", "false",
                                   "2", "13", "13", "7", "25 kB", "16 kB", "3.4.23", "true", ""])
        self.assertEqual(rows[1][3], "false")
        self.assertEqual(rows[1][-1], "memberID:1 alarm:NOSPACE ")
        self.assertEqual(rows[2], ["127.0.0.1:1", "b", "b", "", "false", "", "", "", "", "", "",
                                   "", "false", "unreachable: context deadline exceeded"])
        self.assertEqual(rows[3][:3], ["", "2c9156b806fb86e1", ""])
        self.assertEqual(rows[3][4], "true")
        self.assertEqual(rows[3][-1], status.NOT_STARTED)

    def test_table_has_one_header_and_a_row_per_member(self) -> None:
        """The table's header is HEADER, then one line per report."""
        lines = status.format_reports(self.reports(), "table").splitlines()
        self.assertEqual(lines[1].split("|")[1:-1][:3],
                         ["    ENDPOINT     ", "        ID        ", " NAME "])
        self.assertEqual(len(lines), 3 + len(self.reports()) + 1)

    def test_json_keeps_etcdctls_status_shape(self) -> None:
        """Each entry holds etcdctl's Status json; empty fields are left out."""
        out = json.loads(status.format_reports(self.reports(), "json"))
        self.assertEqual(out[0]["Status"]["header"]["member_id"], C.ID)
        self.assertEqual(out[0]["Status"]["leader"], C.ID)
        self.assertEqual(out[0]["Health"], True)
        self.assertNotIn("Error", out[0])
        self.assertEqual(out[2], {"Endpoint": "127.0.0.1:1", "ID": 11, "Name": "b",
                                  "Error": "unreachable: context deadline exceeded"})
        self.assertEqual(out[3]["IsLearner"], True)

    def test_only_answering_healthy_members_are_ok(self) -> None:
        """The exit status follows is_ok: Status answered and /health true."""
        self.assertEqual([r.is_ok for r in self.reports()], [True, True, False, False])

    def test_targets_come_from_the_member_list_or_the_endpoints(self) -> None:
        """--cluster: every member by its first client URL (unstarted: none); otherwise the
        endpoints given, named when a member serves them."""
        config = ClientConfig(("127.0.0.1:35151", "127.0.0.1:9"))
        rows = status.targets(config, [C, A, NEW], cluster=True)
        self.assertEqual([(r.endpoint, r.name) for r in rows],
                         [("127.0.0.1:53155", "c"), ("127.0.0.1:35151", "a"), ("", "")])
        self.assertEqual(rows[2].error, status.NOT_STARTED)
        rows = status.targets(config, [C, A, NEW], cluster=False)
        self.assertEqual([(r.endpoint, r.name, r.member_id) for r in rows],
                         [("127.0.0.1:35151", "a", A.ID), ("127.0.0.1:9", "", 0)])


class ClusterStateTests(SynchronousTestCase):

    def test_state_file_round_trips(self) -> None:
        """The json written for a detached cluster reads back as the same state."""
        state = ClusterState("/tmp/c", "etcdd", "tok", (
            MemberRecord("a", 41, 1234, 2379, 2380, "/tmp/c/a.etcd", "/tmp/c/a.log",
                         ("python", "-m", "etcdd", "--data-dir", "/tmp/c/a.etcd")),))
        self.assertEqual(ClusterState.from_json(json.loads(json.dumps(state.to_json()))), state)
        self.assertEqual(state.endpoints, "127.0.0.1:2379")

    def test_unknown_state_versions_are_refused(self) -> None:
        """A file of another version is not read as ours."""
        self.assertRaises(ValueError, ClusterState.from_json,
                          {"version": 99, "base_dir": "/", "impl": "", "token": "",
                           "members": []})
