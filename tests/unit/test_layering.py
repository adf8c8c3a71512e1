"""Cores stay pure (STYLE.md §1): no reactor, threads, clock, files, sockets or LMDB.

Each core module's own `import` statements are parsed (not executed), so a forbidden
import anywhere in the module, even inside a function, fails the test.
"""
from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parents[2]

# Cores named in STYLE.md §1; the ones not written yet are skipped until they exist.
CORES = (
    "etcdd/mvcc/revision.py",
    "etcdd/mvcc/keyindex.py",
    "etcdd/mvcc/ranges.py",
    "etcdd/mvcc/watcher.py",
    "etcdd/mvcc/watcher_group.py",
    "etcdd/wal/record.py",
    "etcdd/lease/lessor.py",
    "etcdd/auth/permissions.py",
    "etcdd/api/framing.py",
    "etcdd/api/router.py",
    "etcdd/api/rpctypes.py",
    "etcdd/server/wait.py",
    "etcdd/server/membership.py",
    "etcdd/config.py",
    "etcdd/urls.py",
    "etcdd/goflags.py",
    "etcdd/server/validate.py",
    "etcdd/server/apply.py",
    "etcdd/peer/framing.py",
    "etcdd/api/concurrency.py",
    "etcdd/server/compactor.py",
    "etcdd/server/alarms.py",
    "etcdd/server/quota.py",
)
CORE_DIRS = ("etcdd/raft",)

FORBIDDEN = ("twisted.internet.reactor", "socket", "threading", "time", "os", "lmdb")


def core_files() -> list[Path]:
    files = [ROOT / p for p in CORES if (ROOT / p).exists()]
    for d in CORE_DIRS:
        files.extend(sorted((ROOT / d).glob("**/*.py")))
    return files


def imported_names(source: str) -> list[str]:
    """Every module an `import` names, and every `from m import n` as both m and m.n."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def forbidden_in(names: list[str]) -> list[str]:
    return sorted({n for n in names for bad in FORBIDDEN
                   if n == bad or n.startswith(bad + ".")})


class LayeringTests(SynchronousTestCase):

    def test_cores_import_no_io(self) -> None:
        """No core module imports the reactor, socket, threading, time, os or lmdb."""
        files = core_files()
        self.assertIn(ROOT / "etcdd/mvcc/revision.py", files)
        for path in files:
            bad = forbidden_in(imported_names(path.read_text()))
            self.assertEqual(bad, [], f"{path.relative_to(ROOT)} imports {bad}")

    def test_checker_catches_each_kind(self) -> None:
        """The checker sees plain, dotted, from- and function-level imports."""
        cases = {
            "import os": ["os"],
            "import os.path": ["os.path"],
            "from os import path": ["os", "os.path"],
            "from twisted.internet import reactor": ["twisted.internet.reactor"],
            "def f():\n    import lmdb": ["lmdb"],
            "import time as t": ["time"],
            "from threading import Lock": ["threading", "threading.Lock"],
            "import socketserver": [],
            "import timeit": [],
            "from twisted.internet.interfaces import IReactorTime": [],
            "from twisted.internet.defer import Deferred": [],
            "from etcdd.mvcc.revision import rev_to_bytes": [],
        }
        for source, want in cases.items():
            self.assertEqual(forbidden_in(imported_names(source)), want, source)
