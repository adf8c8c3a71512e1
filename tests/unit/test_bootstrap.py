"""Opening a member's raft state (`etcdd/server/bootstrap.py`) on real WAL files: a new
member writes its WAL and bootstrap entries, a restart replays them, and a backend with
history but no WAL is refused rather than started on a fresh log."""
from __future__ import annotations

import os
from types import SimpleNamespace

from twisted.trial.unittest import SynchronousTestCase

from etcdd.server.bootstrap import BootstrapError, open_raft
from etcdd.server.membership import Member
from tests.unit.stores import open_store

MEMBERS = [Member(1, "a", ("http://127.0.0.1:2380",)), Member(2, "b", ("http://127.0.0.1:2381",))]


class BootstrapTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.store = open_store(self)
        member_dir = os.path.dirname(os.path.dirname(self.store.backend.path))
        self.config = SimpleNamespace(wal_path=os.path.join(member_dir, "wal"),
                                      snap_path=os.path.dirname(self.store.backend.path),
                                      election_ticks=10, pre_vote=True)

    def open(self) -> object:
        state = open_raft(self.config, 1, 0xC1, MEMBERS, self.store.backend, self.store)
        self.addCleanup(state.wal.close)
        return state

    def test_new_member_then_restart_replays_the_bootstrap_entries(self) -> None:
        """A new member's first Ready holds one ConfChange per member at term 1; once saved,
        a restart replays them from the WAL with the same hard state."""
        state = self.open()
        self.assertTrue(state.is_new)
        rd = state.node.ready()
        self.assertEqual([(e.Index, e.Term, e.Type) for e in rd.entries], [(1, 1, 1), (2, 1, 1)])
        state.wal.save(rd.hard_state, rd.entries, rd.must_sync)
        state.wal.close()
        again = self.open()
        self.assertFalse(again.is_new)
        self.assertEqual(again.storage.last_index(), 2)
        hard_state, _ = again.storage.initial_state()
        self.assertEqual((hard_state.term, hard_state.commit), (1, 2))

    def test_backend_with_history_and_no_wal_is_refused(self) -> None:
        """A backend that applied entries but has no WAL beside it is not bootstrapped on a
        fresh log (every new entry up to its consistent index would be skipped)."""
        with self.store.write_batch() as batch:
            batch.set_consistent_index(40, 3)
        error = self.assertRaises(BootstrapError, self.open)
        self.assertIn("up to index 40", str(error))
        self.assertFalse(os.path.exists(self.config.wal_path))
