"""Seeded random schedules against Raft's safety properties (Raft §5.2, §5.3, §5.4).

Each schedule drives five nodes through ticks, proposals, partitions, random drops,
reordering, crashes with restarts from storage, and log compaction. After every step:
election safety (one leader per term), log matching, committed entries never change, and
state-machine safety (every node applies the same entry at each index) hold. At the end
the network heals and must converge. A failure names its seed.
"""
from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from etcdd.proto import raft_pb2
from etcdd.raft import ProposalDroppedError, StateType
from tests.unit.raft.network import Network, SafetyViolation, conf_change

SEEDS = range(200)
STEPS = 400


class Schedule:
    """One random run: a network, a random source, and the extra checks."""

    def __init__(self, seed: int, *, membership: bool = False) -> None:
        self.rng = random.Random(seed)
        self.membership = membership
        self.net = Network(range(1, 6), seed=seed, election_ticks=self.rng.choice([3, 5]),
                           pre_vote=self.rng.random() < 0.8,
                           check_quorum=self.rng.random() < 0.8,
                           max_size_per_msg=self.rng.choice([0, 64, 1 << 20]),
                           max_inflight_msgs=self.rng.choice([1, 4, 256]))
        self.committed_terms: dict[int, int] = {}
        self.next_value = 0

    def run(self, steps: int) -> None:
        faults = self.rng.choice([0.25, 1.0])      # calm runs commit more, stormy elect more
        actions = [(10 + 10 * faults, self.tick), (25, self.deliver), (15, self.process),
                   (15, self.flush), (12, self.propose), (4 * faults, self.partition),
                   (5, self.heal), (2 * faults, self.isolate_leader),
                   (2 * faults, self.restart), (3, self.compact), (2, self.read_index)]
        if self.membership:
            actions.append((2, self.change_membership))
        weights = [w for w, _ in actions]
        for _ in range(steps):
            self.rng.choices(actions, weights)[0][1]()
            self.check()
        self.converge()

    # --- actions -------------------------------------------------------------------------

    def _node(self) -> int:
        return self.rng.choice(sorted(self.net.nodes))

    def tick(self) -> None:
        for node in self.net.nodes.values():     # one clock: every running node ticks
            node.tick()

    def deliver(self) -> None:
        net = self.net
        for _ in range(self.rng.randint(1, 12)):
            if not net.in_flight:
                return
            net.deliver(net.in_flight.pop(self.rng.randrange(len(net.in_flight))))

    def flush(self) -> None:
        self.net.drain()

    def process(self) -> None:
        for i in self.rng.sample(sorted(self.net.nodes), self.rng.randint(1, 5)):
            self.net.process_ready(i)

    def propose(self) -> None:
        self.next_value += 1
        try:
            self.net.nodes[self._node()].propose(b"v%d" % self.next_value)
        except ProposalDroppedError:
            pass

    def partition(self) -> None:
        ids = sorted(self.net.storages)
        self.rng.shuffle(ids)
        k = self.rng.randint(1, 2)
        self.net.partition(ids[:k], ids[k:])
        self.net.drop_rate = self.rng.choice([0.0, 0.0, 0.1, 0.3])

    def isolate_leader(self) -> None:
        lead = self.net.leader()
        if lead:
            self.net.isolate(lead)

    def heal(self) -> None:
        self.net.recover()

    def restart(self) -> None:
        self.net.restart(self._node())

    def compact(self) -> None:
        self.net.compact(self._node(), keep=self.rng.randint(0, 2))

    def read_index(self) -> None:
        self.net.nodes[self._node()].read_index(b"r%d" % self.rng.randrange(1 << 20))

    def change_membership(self) -> None:
        """Remove a voter, re-add it as a learner, or promote a learner (leader only)."""
        lead = self.net.leader()
        if not lead:
            return
        cs = self.net.conf_states[lead]
        if cs.learners:
            cc = conf_change(raft_pb2.ConfChangeAddNode, cs.learners[0])
        elif len(cs.voters) == 5:
            victim = self.rng.choice([v for v in cs.voters if v != lead])
            cc = conf_change(raft_pb2.ConfChangeRemoveNode, victim)
        else:
            missing = [i for i in range(1, 6) if i not in cs.voters]
            cc = conf_change(raft_pb2.ConfChangeAddLearnerNode, missing[0])
        try:
            self.net.nodes[lead].propose_conf_change(cc)
        except ProposalDroppedError:
            pass

    # --- checks --------------------------------------------------------------------------

    def check(self) -> None:
        net = self.net
        for i, node in net.nodes.items():
            if node.state == StateType.LEADER:
                net.check_one_leader(i)
            storage = net.storages[i]
            commit = min(storage.initial_state()[0].commit, storage.last_index())
            lo = max(storage.first_index(), commit - 20)
            for index in range(lo, commit + 1):
                term = storage.term(index)
                if self.committed_terms.setdefault(index, term) != term:
                    raise SafetyViolation(f"committed entry {index} changed on node {i}")

    def converge(self) -> None:
        """Heal everything: a leader emerges and every node applies the same log."""
        net = self.net
        net.recover()
        for i in sorted(net.storages):
            if i not in net.nodes:
                net.start(i)
        net.stabilize()
        for _ in range(200):
            net.tick_all()
            lead = net.leader()
            if lead and self._converged(lead):
                return
        raise AssertionError("the healed cluster did not converge")

    def _converged(self, lead: int) -> bool:
        net = self.net
        want = net.machines[lead].applied_index
        if want < net.nodes[lead].committed:
            return False
        cs = net.conf_states[lead]
        members = set(cs.voters) | set(cs.learners)
        return all(net.machines[i].applied_index == want for i in members)


class RandomizedScheduleTests(SynchronousTestCase):

    def run_seeds(self, seeds: range, steps: int, **kw: bool) -> None:
        for seed in seeds:
            try:
                Schedule(seed, **kw).run(steps)
            except Exception as e:
                raise AssertionError(f"seed {seed} ({kw}): {e!r}") from e

    def test_safety_under_random_faults(self) -> None:
        """Election safety, log matching, leader completeness and state-machine safety hold
        under partitions, drops, reordering, restarts and compaction (Reference: §5.2-§5.4)."""
        self.run_seeds(SEEDS, STEPS)

    def test_safety_with_membership_changes(self) -> None:
        """The same properties hold while voters are removed, re-added as learners and
        promoted one change at a time (Reference: §6, single-server changes)."""
        self.run_seeds(range(60), STEPS, membership=True)
