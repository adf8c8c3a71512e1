"""Raft transcript tests (STYLE.md §8): commands, `----`, then the exact output.

Each file in `testdata/` is a list of blocks separated by blank lines::

    campaign 1
    ----
    INFO 1 is starting a new election at term 0

Commands: `nodes 1 2 3 [learners=4] [pre_vote=false] [check_quorum=false]`, `campaign N`,
`propose N DATA`, `propose-conf-change N add|remove|learner ID`, `tick N [COUNT]`,
`stabilize`, `isolate N`, `recover`, `read-index N CTX`, `transfer-leader N TO`,
`compact N`, `log N`. Output is every INFO-or-louder raft log line and, for `stabilize`,
each Ready handled and each message delivered. `ETCDD_REWRITE=1` rewrites the files with
the actual output; review the diff as you would code.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from etcdd.proto import raft_pb2
from etcdd.raft import ProposalDroppedError, Ready
from tests.unit.raft.network import Network, conf_change, describe

TESTDATA = Path(__file__).parent / "testdata"
_CC = {"add": raft_pb2.ConfChangeAddNode, "remove": raft_pb2.ConfChangeRemoveNode,
       "learner": raft_pb2.ConfChangeAddLearnerNode}
_CC_NAMES = {v: k for k, v in _CC.items()}
_STATES = ["StateFollower", "StateCandidate", "StateLeader", "StatePreCandidate"]


def describe_entry(e: raft_pb2.Entry) -> str:
    """`1/2 EntryNormal "x"` or `1/3 EntryConfChange add(4)`."""
    if e.Type == raft_pb2.EntryConfChange:
        cc = raft_pb2.ConfChange.FromString(e.Data)
        return f"{e.Term}/{e.Index} EntryConfChange {_CC_NAMES[cc.type]}({cc.node_id})"
    return f'{e.Term}/{e.Index} EntryNormal "{e.Data.decode()}"'


def describe_ready(rd: Ready) -> list[str]:
    """etcd's `DescribeReady`, in short."""
    out = [f"Ready MustSync={str(rd.must_sync).lower()}:"]
    if rd.soft_state is not None:
        out.append(f"Lead:{rd.soft_state.lead} State:{_STATES[rd.soft_state.raft_state]}")
    if rd.hard_state is not None:
        hs = rd.hard_state
        out.append(f"HardState Term:{hs.term}" + (f" Vote:{hs.vote}" if hs.vote else "")
                   + f" Commit:{hs.commit}")
    if rd.entries:
        out += ["Entries:"] + [describe_entry(e) for e in rd.entries]
    if rd.snapshot is not None:
        meta = rd.snapshot.metadata
        out.append(f"Snapshot Index:{meta.index} Term:{meta.term} "
                   f"Voters:{list(meta.conf_state.voters)}")
    if rd.committed_entries:
        out += ["CommittedEntries:"] + [describe_entry(e) for e in rd.committed_entries]
    if rd.read_states:
        out += [f"ReadState Index:{s.index} Ctx:{s.request_ctx.decode()}"
                for s in rd.read_states]
    if rd.messages:
        out += ["Messages:"] + [describe(m) for m in rd.messages]
    return out


class Transcript:
    """Runs one file's commands against a Network whose nodes log into `out`."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.net: Network | None = None

    def _observe(self, event: dict[str, Any]) -> None:
        level = event["log_level"]
        if level >= LogLevel.info:
            self.out.append(f"{level.name.upper()} {formatEvent(event)}")

    def run(self, command: str) -> str:
        self.out = []
        name, *args = command.split()
        handler = getattr(self, "cmd_" + name.replace("-", "_"))
        handler(*args)
        return "\n".join(self.out) if self.out else "ok"

    def cmd_nodes(self, *args: str) -> None:
        ids = [int(a) for a in args if "=" not in a]
        opts = dict(a.split("=") for a in args if "=" in a)
        learners = [int(i) for i in opts.pop("learners", "").split(",") if i]
        flags = {k: v == "true" for k, v in opts.items()}
        self.net = Network(ids, learners=learners, logger=Logger(observer=self._observe),
                           **flags)

    def cmd_campaign(self, i: str) -> None:
        self.net.nodes[int(i)].campaign()

    def cmd_propose(self, i: str, data: str) -> None:
        try:
            self.net.nodes[int(i)].propose(data.encode())
        except ProposalDroppedError as e:
            self.out.append(f"error: {e}")

    def cmd_propose_conf_change(self, i: str, kind: str, node_id: str) -> None:
        try:
            self.net.nodes[int(i)].propose_conf_change(conf_change(_CC[kind], int(node_id)))
        except ProposalDroppedError as e:
            self.out.append(f"error: {e}")

    def cmd_tick(self, i: str, count: str = "1") -> None:
        self.net.tick(int(i), int(count))

    def cmd_isolate(self, i: str) -> None:
        self.net.isolate(int(i))

    def cmd_recover(self) -> None:
        self.net.recover()

    def cmd_read_index(self, i: str, ctx: str) -> None:
        self.net.nodes[int(i)].read_index(ctx.encode())

    def cmd_transfer_leader(self, i: str, to: str) -> None:
        self.net.nodes[int(i)].transfer_leader(int(to))

    def cmd_compact(self, i: str) -> None:
        self.net.compact(int(i))
        s = self.net.storages[int(i)]
        self.out.append(f"first index {s.first_index()}, snapshot at "
                        f"{s.snapshot().metadata.index}")

    def cmd_log(self, i: str) -> None:
        s = self.net.storages[int(i)]
        if s.last_index() >= s.first_index():
            self.out += [describe_entry(e)
                         for e in s.entries(s.first_index(), s.last_index() + 1)]

    def cmd_stabilize(self) -> None:
        net = self.net
        for _ in range(100):
            busy = False
            for i in sorted(net.nodes):
                if net.nodes[i].has_ready():
                    busy = True
                    self.out.append(f"> {i} handling Ready")
                    mark = len(self.out)
                    rd = net.process_ready(i)
                    self.out[mark:mark] = ["  " + line for line in describe_ready(rd)]
            msgs, net.in_flight = net.in_flight, []
            for to in sorted({m.to for m in msgs}):
                busy = True
                self.out.append(f"> {to} receiving messages")
                for m in msgs:
                    if m.to == to:
                        self.out.append("  " + describe(m))
                        net.deliver(m)
            if not busy:
                return


def parse(text: str) -> list[tuple[str, str]]:
    """(command, expected output) blocks."""
    blocks = []
    for chunk in text.strip().split("\n\n"):
        command, _, output = chunk.partition("\n----")
        blocks.append((command.strip(), output.strip("\n")))
    return blocks


class TranscriptTests(SynchronousTestCase):

    def check(self, name: str) -> None:
        path = TESTDATA / name
        blocks = parse(path.read_text())
        transcript = Transcript()
        actual = [(command, transcript.run(command)) for command, _ in blocks]
        if os.environ.get("ETCDD_REWRITE"):
            path.write_text("\n\n".join(f"{c}\n----\n{o}" for c, o in actual) + "\n")
            return
        for (command, want), (_, got) in zip(blocks, actual):
            self.assertEqual(got, want, f"{name}: {command}")

    def test_campaign(self) -> None:
        """A three-node election with pre-vote, then replication of one proposal."""
        self.check("campaign.txt")

    def test_remove_leader(self) -> None:
        """A leader applies its own removal: it keeps leading and drops proposals (3.4)."""
        self.check("remove_leader.txt")

    def test_snapshot(self) -> None:
        """A follower that missed compacted entries catches up from a snapshot."""
        self.check("snapshot.txt")
