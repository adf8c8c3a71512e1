"""`etcdd-ops`: the operator's tool, one subcommand per module of ``ops``. A shell.

``etcdd-ops bench [flags]`` is ``python -m ops.bench [flags]``. A new subcommand is one row
in `SUBCOMMANDS`: its name and the module whose ``main(argv) -> int`` runs it.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# name -> (module with main(argv) -> int, one line of help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("ops.bench", "benchmark etcd v3 KV over gRPC (etcdd or etcd)"),
    "restart-bench": ("ops.restart_bench", "time to first answer after a restart with N keys"),
    "cluster": ("ops.cluster", "cluster up [--detach] | status | down: a local N-member cluster"),
    "failover": ("ops.failover", "leader failover time (kill -9 to first write), N trials"),
    "snapshot": ("ops.snapshot", "snapshot save|status|restore FILE, as etcdctl's"),
    "backup": ("ops.backup", "a consistent offline copy of a stopped member's data dir"),
    "defrag": ("ops.defrag", "defragment members (sizes, write hold) or a stopped --data-dir"),
    "member": ("ops.member", "member add|remove|update|promote|list, as etcdctl's"),
    "maint-bench": ("ops.maint_bench", "snapshot save/restore, defrag of 1 GB: etcdd vs etcd"),
    "status": ("ops.status", "one table of every member: leader, term, revision, DB, health"),
}


def usage() -> str:
    """The help text: usage line, then one line per subcommand."""
    lines = ["usage: etcdd-ops <command> [flags]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines.append("\n'etcdd-ops <command> --help' shows a command's flags.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the subcommand named by the first argument; 2 for a missing or unknown one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    entry = SUBCOMMANDS.get(argv[0])
    if entry is None:
        print(f"etcdd-ops: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return importlib.import_module(entry[0]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
