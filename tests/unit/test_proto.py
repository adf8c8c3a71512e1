"""Our .proto files: the generated code is current, matches etcd 3.4's protos field for
field and method for method, and round-trips on the upb backend."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from unittest import SkipTest

from google.protobuf import descriptor_pb2
from google.protobuf.internal import api_implementation
from twisted.trial.unittest import SynchronousTestCase

from etcdd.proto import (auth_pb2, build, etcdserver_pb2, health_pb2, kv_pb2, lease_pb2,
                         raft_internal_pb2, raft_pb2, record_pb2, rpc_pb2, snap_pb2,
                         v3election_pb2, v3lock_pb2)

OUR_MODULES = (kv_pb2, auth_pb2, rpc_pb2, etcdserver_pb2, raft_internal_pb2, v3lock_pb2,
               v3election_pb2, raft_pb2, lease_pb2, record_pb2, snap_pb2, health_pb2)

GO_SRC = Path("/usr/share/gocode/src")
ETCD_TREE = GO_SRC / "go.etcd.io" / "etcd"
GOGO = GO_SRC / "github.com" / "gogo" / "protobuf"
GOOGLEAPIS_CANDIDATES = (
    GO_SRC / "github.com" / "grpc-ecosystem" / "grpc-gateway" / "third_party" / "googleapis",
    GO_SRC / "github.com" / "gogo" / "googleapis",
    GO_SRC / "google.golang.org" / "genproto" / "googleapis",
)
# etcd's protos that import siblings as "etcd/..." (include root: the tree's parent).
ETCD_PROTOS = (
    "etcd/etcdserver/etcdserverpb/rpc.proto", "etcd/auth/authpb/auth.proto",
    "etcd/mvcc/mvccpb/kv.proto", "etcd/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
    "etcd/etcdserver/api/v3election/v3electionpb/v3election.proto",
    "etcd/raft/raftpb/raft.proto", "etcd/lease/leasepb/lease.proto",
    "etcd/wal/walpb/record.proto", "etcd/etcdserver/api/snap/snappb/snap.proto",
)
ETCD_PACKAGES = frozenset({"etcdserverpb", "authpb", "mvccpb", "v3lockpb", "v3electionpb",
                           "raftpb", "leasepb", "walpb", "snappb"})


# ------------------------------------------------------------------ descriptor indexes

class _Index:
    """Every message, enum and service of a set of files, by full name (no leading dot)."""

    def __init__(self, files: list[descriptor_pb2.FileDescriptorProto]) -> None:
        self.messages: dict[str, tuple[descriptor_pb2.DescriptorProto, str]] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.services: dict[str, descriptor_pb2.ServiceDescriptorProto] = {}
        for f in files:
            if f.package not in ETCD_PACKAGES:
                continue
            syntax = f.syntax or "proto2"          # protoc leaves proto2's syntax unset
            self._add(f.package, f.message_type, f.enum_type, syntax)
            for s in f.service:
                self.services[f"{f.package}.{s.name}"] = s

    def _add(self, scope: str, messages, enums, syntax: str) -> None:
        for e in enums:
            self.enums[f"{scope}.{e.name}"] = e
        for m in messages:
            name = f"{scope}.{m.name}"
            self.messages[name] = (m, syntax)
            self._add(name, m.nested_type, m.enum_type, syntax)


def _field_facts(message: descriptor_pb2.DescriptorProto) -> dict[int, tuple]:
    """number -> everything about a field that reaches the wire or the JSON gateway."""
    return {f.number: (f.name, f.type, f.label, f.type_name,
                       message.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None,
                       f.proto3_optional, f.default_value)
            for f in message.field}


@functools.lru_cache(maxsize=1)
def _ours() -> _Index:
    files = []
    for module in OUR_MODULES:
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        files.append(proto)
    return _Index(files)


def _googleapis() -> Path | None:
    return next((p for p in GOOGLEAPIS_CANDIDATES if (p / "google/api/annotations.proto").is_file()),
                None)


@functools.lru_cache(maxsize=1)
def _etcds() -> _Index:
    """Compile etcd 3.4's own protos (gogo options, http annotations and all) to descriptors."""
    googleapis = _googleapis()
    if googleapis is None:
        raise SkipTest("google/api/annotations.proto not found under " + str(GO_SRC))
    includes = [f"-I{ETCD_TREE.parent}", f"-I{GOGO}", f"-I{GOGO / 'protobuf'}", f"-I{googleapis}"]
    files: list[descriptor_pb2.FileDescriptorProto] = []
    with tempfile.TemporaryDirectory(prefix="etcdd-etcd-protos-") as tmp:
        # NB: raft_internal.proto imports "rpc.proto" and "etcdserver.proto" by bare name,
        # so it compiles on its own with etcdserverpb/ first on the path; in one run with
        # the others rpc.proto would load twice under two names and clash.
        runs = [(includes, ETCD_PROTOS),
                ([f"-I{ETCD_TREE / 'etcdserver' / 'etcdserverpb'}", *includes], ("raft_internal.proto",))]
        for i, (paths, protos) in enumerate(runs):
            out = Path(tmp) / f"etcd{i}.pb"
            build.run_protoc([*paths, "--include_imports", f"--descriptor_set_out={out}", *protos],
                             cwd=Path(tmp))
            files.extend(descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file)
    return _Index(files)


# ------------------------------------------------------------------ tests

class GeneratedCodeTests(SynchronousTestCase):
    """The checked-in *_pb2.py files are what `python -m etcdd.proto.build` makes now."""

    def test_generated_code_is_current(self) -> None:
        """Regenerating every .proto reproduces the checked-in modules byte for byte."""
        self.assertEqual(build.check(), [])

    def test_upb_backend(self) -> None:
        """The generated modules run on the upb backend (the fast C one), not pure Python."""
        self.assertEqual(api_implementation.Type(), "upb")

    def test_etcdserverpb_services(self) -> None:
        """The six client services carry etcd's 39 methods, with its four streaming ones."""
        services = rpc_pb2.DESCRIPTOR.services_by_name
        self.assertEqual(sorted(services), ["Auth", "Cluster", "KV", "Lease", "Maintenance", "Watch"])
        methods = [m for s in services.values() for m in s.methods]
        self.assertEqual(len(methods), 39)
        streaming = {m.full_name: (m.client_streaming, m.server_streaming)
                     for m in methods if m.client_streaming or m.server_streaming}
        self.assertEqual(streaming, {"etcdserverpb.Watch.Watch": (True, True),
                                     "etcdserverpb.Lease.LeaseKeepAlive": (True, True),
                                     "etcdserverpb.Maintenance.Snapshot": (False, True)})
        # NB: three streaming methods in etcdserverpb; Election.Observe is the fourth.
        observe = v3election_pb2.DESCRIPTOR.services_by_name["Election"].methods_by_name["Observe"]
        self.assertEqual((observe.client_streaming, observe.server_streaming), (False, True))


class WireCompatTests(SynchronousTestCase):
    """Ours and etcd 3.4's protos agree on everything that reaches the wire."""

    def setUp(self) -> None:
        if not ETCD_TREE.is_dir():
            raise SkipTest(f"etcd 3.4 source not installed at {ETCD_TREE}")

    def test_every_etcd_message_enum_and_service_exists(self) -> None:
        """No message, enum or service of etcd's packages is missing from ours, or extra."""
        ours, etcds = _ours(), _etcds()
        self.assertEqual(sorted(ours.messages), sorted(etcds.messages))
        self.assertEqual(sorted(ours.enums), sorted(etcds.enums))
        self.assertEqual(sorted(ours.services), sorted(etcds.services))

    def test_messages_match_field_for_field(self) -> None:
        """Every field has etcd's number, name, type, label, type name and oneof; syntax matches."""
        ours, etcds = _ours(), _etcds()
        mismatches = []
        for name in sorted(ours.messages.keys() & etcds.messages.keys()):
            (mine, my_syntax), (theirs, their_syntax) = ours.messages[name], etcds.messages[name]
            if my_syntax != their_syntax:
                mismatches.append(f"{name}: syntax {my_syntax} != etcd's {their_syntax}")
            my_fields, their_fields = _field_facts(mine), _field_facts(theirs)
            for number in sorted(my_fields.keys() | their_fields.keys()):
                if my_fields.get(number) != their_fields.get(number):
                    mismatches.append(f"{name} field {number}: ours {my_fields.get(number)} "
                                      f"!= etcd's {their_fields.get(number)}")
        self.assertEqual(mismatches, [])

    def test_enums_match_value_for_value(self) -> None:
        """Every enum has etcd's value names and numbers."""
        ours, etcds = _ours(), _etcds()
        mismatches = []
        for name in sorted(ours.enums.keys() & etcds.enums.keys()):
            mine = [(v.name, v.number) for v in ours.enums[name].value]
            theirs = [(v.name, v.number) for v in etcds.enums[name].value]
            if mine != theirs:
                mismatches.append(f"{name}: ours {mine} != etcd's {theirs}")
        self.assertEqual(mismatches, [])

    def test_services_match_method_for_method(self) -> None:
        """Every method has etcd's name (hence gRPC path), request, response and streaming kind."""
        ours, etcds = _ours(), _etcds()
        mismatches = []
        for name in sorted(ours.services.keys() & etcds.services.keys()):
            mine, theirs = ({m.name: (m.input_type, m.output_type, m.client_streaming,
                                      m.server_streaming) for m in s.method}
                            for s in (ours.services[name], etcds.services[name]))
            if mine != theirs:
                mismatches.append(f"{name}: ours {mine} != etcd's {theirs}")
        self.assertEqual(mismatches, [])
        self.assertEqual(sum(len(s.method) for n, s in etcds.services.items()
                             if n.startswith("etcdserverpb.")), 39)


class RoundTripTests(SynchronousTestCase):
    """Messages serialise to etcd's bytes and parse back equal."""

    def test_range_response_round_trips(self) -> None:
        """A RangeResponse with a header and two kvs parses back equal to itself."""
        response = rpc_pb2.RangeResponse(
            header=rpc_pb2.ResponseHeader(cluster_id=14841639068965178418, member_id=10276657743932975437,
                                          revision=7, raft_term=2),
            kvs=[kv_pb2.KeyValue(key=b"a", value=b"1", create_revision=2, mod_revision=2, version=1),
                 kv_pb2.KeyValue(key=b"b", value=b"\x00\xff", create_revision=3, mod_revision=7,
                                 version=4, lease=0x694d77aa1b9f3c07)],
            more=True, count=5)
        data = response.SerializeToString()
        self.assertEqual(rpc_pb2.RangeResponse.FromString(data), response)

    def test_put_request_bytes(self) -> None:
        """A PutRequest encodes exactly as etcd's: key is field 1, value field 2, both bytes."""
        self.assertEqual(rpc_pb2.PutRequest(key=b"foo", value=b"bar").SerializeToString(),
                         b"\x0a\x03foo\x12\x03bar")

    def test_txn_with_oneofs_round_trips(self) -> None:
        """A Txn keeps its compare's target_union and its ops' request oneofs through bytes."""
        txn = rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(result=rpc_pb2.Compare.EQUAL, target=rpc_pb2.Compare.MOD,
                                     key=b"k", mod_revision=0, range_end=b"l")],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"k", value=b"v"))],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"k"))])
        parsed = rpc_pb2.TxnRequest.FromString(txn.SerializeToString())
        self.assertEqual(parsed, txn)
        self.assertEqual(parsed.compare[0].WhichOneof("target_union"), "mod_revision")
        self.assertEqual(parsed.success[0].WhichOneof("request"), "request_put")
        # NB: range_end is field 64 (two-byte tag 0x82 0x04), not 9.
        self.assertIn(b"\x82\x04\x01l", txn.compare[0].SerializeToString())

    def test_raft_message_round_trips(self) -> None:
        """A raftpb Message with entries survives bytes; `from` is reached via getattr."""
        message = raft_pb2.Message(type=raft_pb2.MsgApp, to=2, term=3, logTerm=3, index=10, commit=9,
                                   entries=[raft_pb2.Entry(Term=3, Index=11, Type=raft_pb2.EntryNormal,
                                                           Data=b"x")],
                                   **{"from": 1})
        parsed = raft_pb2.Message.FromString(message.SerializeToString())
        self.assertEqual(parsed, message)
        self.assertEqual(getattr(parsed, "from"), 1)

    def test_proto2_repeated_scalars_are_unpacked(self) -> None:
        """raftpb is proto2, so ConfState.voters goes out one tag per value, as etcd's does."""
        self.assertEqual(raft_pb2.ConfState(voters=[1, 2]).SerializeToString(), b"\x08\x01\x08\x02")

    def test_internal_raft_request_round_trips(self) -> None:
        """An InternalRaftRequest carries its header at field 100 and a put through bytes."""
        request = raft_internal_pb2.InternalRaftRequest(
            header=raft_internal_pb2.RequestHeader(ID=42, username="root", auth_revision=3),
            put=rpc_pb2.PutRequest(key=b"k", value=b"v", lease=7))
        data = request.SerializeToString()
        self.assertIn(b"\xa2\x06", data)      # tag of field 100, length-delimited: two bytes
        self.assertEqual(raft_internal_pb2.InternalRaftRequest.FromString(data), request)
