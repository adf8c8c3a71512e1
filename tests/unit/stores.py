"""A KVStore on a fresh LMDB file under the test's temp dir, closed and removed after."""
from __future__ import annotations

import os
import shutil

from twisted.trial.unittest import SynchronousTestCase

from etcdd.mvcc.backend import Backend
from etcdd.mvcc.store import KVStore


def new_store_path(case: SynchronousTestCase) -> str:
    """A backend path (`member/snap/db`) in a temp dir removed after the test."""
    base = case.mktemp()
    case.addCleanup(shutil.rmtree, base, True)
    return os.path.join(base, "member", "snap", "db")


def open_store(case: SynchronousTestCase, path: str | None = None) -> KVStore:
    """Open (or create) the store at `path`, closing its backend after the test."""
    backend = Backend(path or new_store_path(case))
    case.addCleanup(backend.close)
    return KVStore(backend)
