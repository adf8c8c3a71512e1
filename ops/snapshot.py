"""`etcdd-ops snapshot save|status`: etcdctl's snapshot commands for etcdd's LMDB snapshots.
A shell (ops/*).

`save FILE` fetches Maintenance/Snapshot from one endpoint, checks the sha256 trailer and
writes the file as `etcdctl snapshot save` does (data, then the 32-byte trailer), via
`FILE.part` and a rename. `status FILE` reads such a file without writing to it (the real
`etcdctl snapshot status` only reads bbolt files) and prints etcdctl's line, `-w table`
or `-w json` with etcdctl's field names: hash (the store's `Hash`, as Maintenance/Hash
answers it), the store revision, total keys (entries over every database, as etcd counts
bucket keys) and the database size (without the trailer).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

import grpc
import lmdb

from etcdd.mvcc.backend import DB_NAMES, DUPSORT_NAMES, Backend
from etcdd.mvcc.store import KVStore
from etcdd.proto import rpc_pb2 as pb, rpc_pb2_grpc

SHA_BYTES = 32


class SnapshotError(Exception):
    """The file is not an etcdd snapshot, or the server's stream was not whole."""


def save(endpoint: str, path: str, timeout: float = 300.0) -> int:
    """Fetch a snapshot from `endpoint` into `path`; returns its size in bytes."""
    part = path + ".part"
    sha = hashlib.sha256()
    channel = grpc.insecure_channel(endpoint, options=[("grpc.max_receive_message_length", -1)])
    try:
        stub = rpc_pb2_grpc.MaintenanceStub(channel)
        with open(part, "wb") as f:
            trailer = b""
            for resp in stub.Snapshot(pb.SnapshotRequest(), timeout=timeout):
                if trailer:
                    sha.update(trailer)
                    f.write(trailer)
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
        channel.close()
    return os.path.getsize(path)


def status(path: str) -> dict[str, int]:
    """etcdctl's snapshot status fields for an etcdd snapshot file (read only)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
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
    _check_is_backend(db, path)
    backend = Backend(db)
    try:
        store = KVStore(backend)
        return {"hash": store.hash(), "revision": store.current_revision(),
                "totalKey": backend.total_entries(), "totalSize": data_size}
    finally:
        backend.close()


def _check_is_backend(db: str, path: str) -> None:
    """Refuse (SnapshotError) a file that is not LMDB or lacks one of etcdd's databases,
    before opening it as a backend would create them. Reads only."""
    try:
        env = lmdb.open(db, subdir=False, readonly=True, lock=False, max_dbs=32)
    except lmdb.Error:
        raise SnapshotError(f"{path} is not an etcdd (LMDB) snapshot; etcd's bbolt "
                            "snapshots are read by `etcdctl snapshot status`") from None
    try:
        with env.begin() as txn:
            for name in DB_NAMES:
                try:
                    env.open_db(name, txn=txn, create=False, dupsort=name in DUPSORT_NAMES)
                except lmdb.NotFoundError:
                    raise SnapshotError(f"{path} is not an etcdd snapshot: no "
                                        f"{name.decode()} database") from None
    finally:
        env.close()


def _human(n: int) -> str:
    """go-humanize `Bytes` (SI), as etcdctl prints sizes: 2.1 MB, 37 kB, 0 B."""
    if n < 10:
        return f"{n} B"
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    value, i = float(n), 0
    while value >= 1000 and i < len(units) - 1:
        value /= 1000
        i += 1
    return f"{value:.1f} {units[i]}" if value < 10 else f"{value:.0f} {units[i]}"


def table(st: dict[str, int]) -> str:
    """etcdctl's `snapshot status -w table`."""
    cells = [f"{st['hash']:x}", str(st["revision"]), str(st["totalKey"]),
             _human(st["totalSize"])]
    heads = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"]
    widths = [max(len(h), len(c)) + 2 for h, c in zip(heads, cells)]
    line = "+" + "+".join("-" * w for w in widths) + "+"
    head = "|" + "|".join(h.center(w) for h, w in zip(heads, widths)) + "|"
    row = "|" + "|".join(c.rjust(w - 1) + " " for c, w in zip(cells, widths)) + "|"
    return "\n".join([line, head, line, row, line])


def simple(st: dict[str, int]) -> str:
    """etcdctl's default `snapshot status` line: `953ca626, 21, 24, 20 kB`."""
    return f"{st['hash']:x}, {st['revision']}, {st['totalKey']}, {_human(st['totalSize'])}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="etcdd-ops snapshot",
                                description="save or inspect an etcdd snapshot")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save", help="fetch a snapshot from an endpoint into FILE")
    s.add_argument("file")
    s.add_argument("--endpoints", default="127.0.0.1:2379",
                   help="the endpoint to fetch from (the first of a comma list)")
    st = sub.add_parser("status", help="hash, revision, total keys and size of FILE")
    st.add_argument("file")
    st.add_argument("-w", "--write-out", choices=("simple", "table", "json"), default="simple")
    args = p.parse_args(list(argv) if argv is not None else None)
    try:
        if args.cmd == "save":
            save(args.endpoints.split(",")[0], args.file)
            print(f"Snapshot saved at {args.file}")
            return 0
        result = status(args.file)
    except (SnapshotError, OSError, grpc.RpcError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    show = {"simple": simple, "table": table,
            "json": lambda st: json.dumps(st, separators=(",", ":"))}[args.write_out]
    print(show(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
