"""Regenerate the Python code for etcdd's own .proto files (a build tool, never imported at runtime).

    python -m etcdd.proto.build            # rewrite etcdd/proto/*_pb2.py and *_pb2_grpc.py
    python -m etcdd.proto.build --check    # regenerate into a temp dir; exit 1 naming drifted files

Every .proto lives flat in ``etcdd/proto/`` and imports the others as
``import "etcdd/proto/kv.proto";``; protoc runs with the repository root as its only
include path (plus grpc_tools' bundled well-known types), so generated modules import
each other as ``from etcdd.proto import kv_pb2``. The generated code depends on the
grpcio-tools version: upgrading it means running this and committing the result.
"""

from __future__ import annotations

import argparse
import filecmp
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent.parent
PACKAGE_DIR = PROTO_DIR.relative_to(REPO_ROOT)          # etcdd/proto

# Every .proto we own, by stem; dependencies first only for readability.
PROTOS: tuple[str, ...] = (
    "kv", "auth", "rpc", "etcdserver", "raft_internal", "v3lock", "v3election",
    "raft", "lease", "record", "snap", "health",
)
# The files that declare services and so also get a *_pb2_grpc.py.
SERVICE_PROTOS: frozenset[str] = frozenset({"rpc", "v3lock", "v3election", "health"})


class ProtocError(Exception):
    """protoc exited non-zero; the message is its stderr."""


def run_protoc(args: Sequence[str], cwd: Path = REPO_ROOT) -> None:
    """Run grpc_tools' protoc (which adds its bundled google/protobuf/*.proto to the path).

    Raises ProtocError with protoc's own diagnostics when it fails.
    """
    result = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", *args],
                            cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ProtocError(f"protoc {' '.join(args)} failed ({result.returncode}):\n"
                          f"{result.stderr.strip()}")


def proto_paths() -> list[str]:
    """The repo-relative paths of our .proto files, as protoc should see them."""
    return [str(PACKAGE_DIR / f"{stem}.proto") for stem in PROTOS]


def expected_outputs() -> list[str]:
    """The file names generation produces inside etcdd/proto/, sorted."""
    names = [f"{stem}_pb2.py" for stem in PROTOS]
    names += [f"{stem}_pb2_grpc.py" for stem in SERVICE_PROTOS]
    return sorted(names)


def generate(out_root: Path) -> None:
    """Write the generated modules under ``out_root/etcdd/proto/``.

    Raises ProtocError if any .proto fails to compile.
    """
    services = [str(PACKAGE_DIR / f"{stem}.proto") for stem in PROTOS if stem in SERVICE_PROTOS]
    run_protoc(["-I.", f"--python_out={out_root}", *proto_paths()])
    # NB: a separate run, because the grpc plugin writes a (useless) *_pb2_grpc.py
    # for every input file, services or not.
    run_protoc(["-I.", f"--grpc_python_out={out_root}", *services])


def _generated_files(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("*_pb2.py")} | {p.name for p in directory.glob("*_pb2_grpc.py")}


def check() -> list[str]:
    """Regenerate into a temp dir and return the checked-in files that differ, sorted.

    A name is listed when its content differs, when it is missing from etcdd/proto/,
    or when it is a stale generated file that no .proto produces any more.
    """
    with tempfile.TemporaryDirectory(prefix="etcdd-proto-") as tmp:
        fresh_dir = Path(tmp) / PACKAGE_DIR
        generate(Path(tmp))
        fresh = _generated_files(fresh_dir)
        present = _generated_files(PROTO_DIR)
        drifted = {name for name in fresh & present
                   if not filecmp.cmp(fresh_dir / name, PROTO_DIR / name, shallow=False)}
        return sorted(drifted | (fresh ^ present))


def write() -> list[str]:
    """Regenerate in place (write-to-temp, then replace each file) and return the names written."""
    with tempfile.TemporaryDirectory(prefix="etcdd-proto-") as tmp:
        fresh_dir = Path(tmp) / PACKAGE_DIR
        generate(Path(tmp))
        names = sorted(_generated_files(fresh_dir))
        for name in names:
            staged = PROTO_DIR / f".{name}.tmp"
            staged.write_bytes((fresh_dir / name).read_bytes())
            staged.replace(PROTO_DIR / name)
        return names


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m etcdd.proto.build [--check]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m etcdd.proto.build", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 listing generated files that differ from the checked-in ones")
    options = parser.parse_args(argv)
    try:
        if options.check:
            drifted = check()
            for name in drifted:
                print(f"{PACKAGE_DIR / name} is out of date (run: python -m etcdd.proto.build)",
                      file=sys.stderr)
            return 1 if drifted else 0
        for name in write():
            print(PACKAGE_DIR / name)
        return 0
    except ProtocError as e:
        print(e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
