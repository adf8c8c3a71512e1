"""`etcdd-ops snapshot save|status|restore`: etcdctl's snapshot commands for etcdd's LMDB
snapshots. A shell (ops/*).

`save FILE` fetches Maintenance/Snapshot from one endpoint, checks the sha256 trailer and
writes the file as `etcdctl snapshot save` does (data, then the 32-byte trailer), via
`FILE.part` and a rename. `status FILE` reads such a file without writing to it (the real
`etcdctl snapshot status` only reads bbolt files) and prints etcdctl's line, `-w table`
or `-w json` with etcdctl's field names: hash (the store's `Hash`, as Maintenance/Hash
answers it), the store revision, total keys (entries over every database, as etcd counts
bucket keys) and the database size (without the trailer). `restore FILE` writes a fresh
member data dir with new membership, as `etcdctl snapshot restore` (ops/restore.py).
Long work (the download, the restore's hash check and copy) shows a progress bar on
stderr when it is a terminal.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import TextIO

import grpc
import lmdb

from etcdd.mvcc.backend import Backend
from etcdd.mvcc.store import KVStore, StoreInvariantError
from etcdd.proto import rpc_pb2 as pb, rpc_pb2_grpc
from etcdd.wal.wal import WALError
from ops.progress import Progress, human_bytes
from ops.restore import (SHA_BYTES, SnapshotError, added_member_lines, check_etcdd_backend,
                         plan_from_flags, refuse_bbolt, restore, result_json)


def save(endpoint: str, path: str, timeout: float = 300.0,
         stream: TextIO | None = None) -> int:
    """Fetch a snapshot from `endpoint` into `path`; returns its size in bytes. A progress
    bar goes to `stream` (default stderr) when it is a terminal."""
    part = path + ".part"
    sha = hashlib.sha256()
    channel = grpc.insecure_channel(endpoint, options=[("grpc.max_receive_message_length", -1)])
    bar: Progress | None = None
    try:
        stub = rpc_pb2_grpc.MaintenanceStub(channel)
        with open(part, "wb") as f:
            trailer = b""
            for resp in stub.Snapshot(pb.SnapshotRequest(), timeout=timeout):
                if bar is None:          # the first message says how much follows
                    bar = Progress(resp.remaining_bytes + len(resp.blob),
                                   f"fetching {endpoint}", stream)
                if trailer:
                    sha.update(trailer)
                    f.write(trailer)
                    bar.update(len(trailer))
                trailer = resp.blob
            if len(trailer) != SHA_BYTES or sha.digest() != trailer:
                raise SnapshotError("snapshot stream ended without a matching sha256")
            f.write(trailer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, path)
    except BaseException:
        if os.path.exists(part):
            os.remove(part)
        raise
    finally:
        if bar is not None:
            bar.close()
        channel.close()
    return os.path.getsize(path)


def status(path: str) -> dict[str, int]:
    """etcdctl's snapshot status fields for an etcdd snapshot file (read only)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        refuse_bbolt(f, path, "status")
        data_size = size - SHA_BYTES
        if data_size <= 0:
            raise SnapshotError(f"{path} is too small to be a snapshot")
        f.seek(data_size)
        trailer = f.read()
        f.seek(0)
        if hashlib.sha256(f.read(data_size)).digest() != trailer:
            raise SnapshotError(f"{path}: the sha256 trailer does not match its data")
    # NB: LMDB wants to own the file it maps; a copy without the trailer keeps the
    # snapshot itself untouched.
    tmp = tempfile.mkdtemp(prefix="etcdd-snapshot-status-")
    try:
        db = os.path.join(tmp, "db")
        with open(path, "rb") as src, open(db, "wb") as dst:
            shutil.copyfileobj(src, dst, data_size)
            dst.truncate(data_size)
        return _inspect(db, data_size, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _inspect(db: str, data_size: int, path: str) -> dict[str, int]:
    """The fields of the LMDB copy `db` (of snapshot `path`), through the store itself."""
    check_etcdd_backend(db, path, "status")
    backend = Backend(db)
    try:
        store = KVStore(backend)
        return {"hash": store.hash(), "revision": store.current_revision(),
                "totalKey": backend.total_entries(), "totalSize": data_size}
    finally:
        backend.close()


def table(st: dict[str, int]) -> str:
    """etcdctl's `snapshot status -w table`."""
    cells = [f"{st['hash']:x}", str(st["revision"]), str(st["totalKey"]),
             human_bytes(st["totalSize"])]
    heads = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"]
    widths = [max(len(h), len(c)) + 2 for h, c in zip(heads, cells)]
    line = "+" + "+".join("-" * w for w in widths) + "+"
    head = "|" + "|".join(h.center(w) for h, w in zip(heads, widths)) + "|"
    row = "|" + "|".join(c.rjust(w - 1) + " " for c, w in zip(cells, widths)) + "|"
    return "\n".join([line, head, line, row, line])


def simple(st: dict[str, int]) -> str:
    """etcdctl's default `snapshot status` line: `953ca626, 21, 24, 20 kB`."""
    return f"{st['hash']:x}, {st['revision']}, {st['totalKey']}, {human_bytes(st['totalSize'])}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="etcdd-ops snapshot",
                                description="save, inspect or restore an etcdd snapshot")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save", help="fetch a snapshot from an endpoint into FILE")
    s.add_argument("file")
    s.add_argument("--endpoints", default="127.0.0.1:2379",
                   help="the endpoint to fetch from (the first of a comma list)")
    st = sub.add_parser("status", help="hash, revision, total keys and size of FILE")
    st.add_argument("file")
    st.add_argument("-w", "--write-out", choices=("simple", "table", "json"), default="simple")
    r = sub.add_parser("restore", help="write a new member data dir from FILE "
                                       "(etcdctl snapshot restore)")
    r.add_argument("file")
    # etcdctl 3.4 snapshot_command.go: flags and defaults
    r.add_argument("--data-dir", default="", help="Path to the data directory "
                                                  "(default <name>.etcd)")
    r.add_argument("--wal-dir", default="",
                   help="Path to the WAL directory (use --data-dir if none given)")
    r.add_argument("--initial-cluster", default="default=http://localhost:2380",
                   help="Initial cluster configuration for restore bootstrap")
    r.add_argument("--initial-cluster-token", default="etcd-cluster",
                   help="Initial cluster token for the etcd cluster during restore bootstrap")
    r.add_argument("--initial-advertise-peer-urls", default="http://localhost:2380",
                   help="List of this member's peer URLs to advertise to the rest of the "
                        "cluster")
    r.add_argument("--name", default="default", help="Human-readable name for this member")
    r.add_argument("--skip-hash-check", action="store_true",
                   help="Ignore snapshot integrity hash value (required if copied from data "
                        "directory)")
    r.add_argument("-w", "--write-out", choices=("simple", "json"), default="simple")
    return p


def _save(args: argparse.Namespace) -> str:
    save(args.endpoints.split(",")[0], args.file)
    return f"Snapshot saved at {args.file}"


def _status(args: argparse.Namespace) -> str:
    result = status(args.file)
    show = {"simple": simple, "table": table,
            "json": lambda st: json.dumps(st, separators=(",", ":"))}[args.write_out]
    return show(result)


def _restore(args: argparse.Namespace) -> str:
    plan = plan_from_flags(args.name, args.initial_cluster, args.initial_cluster_token,
                           args.initial_advertise_peer_urls, args.data_dir, args.wal_dir)
    result = restore(args.file, plan, skip_hash_check=args.skip_hash_check)
    if args.write_out == "json":
        return json.dumps(result_json(result), separators=(",", ":"))
    return "\n".join(added_member_lines(plan))


_COMMANDS: dict[str, Callable[[argparse.Namespace], str]] = {
    "save": _save, "status": _status, "restore": _restore}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one snapshot subcommand; 1 with `Error: ...` on stderr when it fails."""
    args = _parser().parse_args(list(argv) if argv is not None else None)
    try:
        out = _COMMANDS[args.cmd](args)
    except (SnapshotError, OSError, lmdb.Error, WALError, StoreInvariantError,
            grpc.RpcError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
