"""`etcdd-ops snapshot restore`: a fresh member data dir from an etcdd snapshot file.

Mostly a shell (files, LMDB); `plan_restore` and the `RestorePlan` methods are pure.
Matches etcd 3.4 `clientv3/snapshot/v3_snapshot.go` `Restore` (saveDB, saveWALAndSnap):

1. The snapshot's sha256 trailer is checked while the data is copied to `member/snap/db`
   (a file whose size is not 32 bytes past a multiple of 512 has none: refused unless
   `--skip-hash-check`, which also accepts a `member/snap/db` copied from a data dir).
2. The `members` and `members_removed` databases are replaced by the new cluster's
   members (applied as the ConfChange entries below would be) and the consistent index
   is set to the member count N (term 1), so the member applies every entry after N.
3. A WAL with metadata {member ID, cluster ID}, ConfChangeAddNode entries 1..N at term 1
   (ascending member ID), HardState{term 1, vote = lowest ID, commit N}; a `.snap` at
   (1, N) whose ConfState voters are every member; the WAL's snapshot record {N, 1}.
4. `member/identity` (etcdd's), so `etcdd` started with the same --name,
   --initial-cluster-token (and any --initial-cluster) takes the dir as its own.

Worked example: `--name m1 --initial-cluster m1=http://127.0.0.1:1111,m2=http://127.0.0.1:2222
--initial-cluster-token tok` gives members 08cb1f3de5dcf951 (m2, entry 1, the vote) and
7db29806059de6fa (m1, entry 2), cluster 7b3082bdf199d98e, consistent index 2 -- the WAL
bytes etcd's restore writes (tests/unit/testdata/etcd-restore).

Alarms (a NOSPACE alarm of an old member) and the cluster version are kept, as etcd
keeps them; the old log's refused-conf-change marks go. Everything is written in temp
dirs beside the targets, fsync'd, then renamed into place: a failed restore leaves
nothing behind. NB: the `.snap` data is empty, as in etcdd's own snapshots (etcd puts its
v2 store there; etcdd keeps membership in the backend), and etcd 3.4's restore deletes
*user keys* named like member IDs while leaving its `members` bucket alone (a bug: it
calls DeleteRange); etcdd rewrites the databases.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO

import lmdb

from etcdd.config import Config, ConfigError, parse_args
from etcdd.mvcc.backend import DB_NAMES, DUPSORT_NAMES, Backend
from etcdd.mvcc.store import KVStore
from etcdd.proto import etcdserver_pb2, raft_pb2
from etcdd.server.cluster import REFUSED_PREFIX, ClusterState
from etcdd.server.identity import load_or_create_identity
from etcdd.server.membership import Member, cluster_id, initial_members
from etcdd.urls import go_quote
from etcdd.wal.snap import Snapshotter
from etcdd.wal.wal import WAL, WALSnapshot, fsync_dir
from ops.progress import Progress

SHA_BYTES = 32
SECTOR_BYTES = 512          # etcd hasChecksum: size % 512 == sha256.Size
RESTORE_TERM = 1
COPY_CHUNK_BYTES = 1 << 20
# bbolt's meta page: a 16-byte page header, then magic 0xED0CDAED (little-endian).
BBOLT_MAGIC_OFFSET, BBOLT_MAGIC = 16, b"\xed\xda\x0c\xed"


class SnapshotError(Exception):
    """The file is not an etcdd snapshot, or the server's stream was not whole."""


class RestoreError(SnapshotError):
    """A restore that cannot be done; etcd's message where etcd has one. Nothing was written."""


# -- the plan (pure) -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RestorePlan:
    """What a restore writes for one member. `members` ascend by ID; `member_id` is one."""
    name: str
    member_id: int
    cluster_id: int
    token: str
    members: tuple[Member, ...]
    data_dir: str
    wal_dir: str                # "" for `<data_dir>/member/wal`

    @property
    def consistent_index(self) -> int:
        """The index of the last bootstrap entry: the member count."""
        return len(self.members)

    def metadata(self) -> bytes:
        """The WAL metadata record: etcdserverpb.Metadata{NodeID, ClusterID}."""
        return etcdserver_pb2.Metadata(NodeID=self.member_id,
                                       ClusterID=self.cluster_id).SerializeToString()

    def conf_changes(self) -> list[raft_pb2.ConfChange]:
        """One ConfChangeAddNode per member, its context etcd's member JSON."""
        # id=0 written explicitly: etcd's gogo encoding always carries it.
        return [raft_pb2.ConfChange(id=0, type=raft_pb2.ConfChangeAddNode, node_id=m.id,
                                    context=etcd_member_json(m)) for m in self.members]

    def entries(self) -> list[raft_pb2.Entry]:
        """The bootstrap entries 1..N at term 1."""
        return [raft_pb2.Entry(Term=RESTORE_TERM, Index=i, Type=raft_pb2.EntryConfChange,
                               Data=cc.SerializeToString())
                for i, cc in enumerate(self.conf_changes(), 1)]

    def hard_state(self) -> raft_pb2.HardState:
        """Term 1, a vote for the first member, every bootstrap entry committed."""
        return raft_pb2.HardState(term=RESTORE_TERM, vote=self.members[0].id,
                                  commit=self.consistent_index)

    def snapshot(self) -> raft_pb2.Snapshot:
        """The raft snapshot at (term 1, index N) with every member a voter."""
        meta = raft_pb2.SnapshotMetadata(
            # auto_leave=False written explicitly: etcd's gogo encoding always carries it.
            conf_state=raft_pb2.ConfState(voters=[m.id for m in self.members],
                                          auto_leave=False),
            index=self.consistent_index, term=RESTORE_TERM)
        return raft_pb2.Snapshot(metadata=meta)


def etcd_member_json(member: Member) -> bytes:
    """A member as etcd 3.4 marshals `membership.Member` (empty fields omitted), e.g.
    ``{"id":633634523285616977,"peerURLs":["http://127.0.0.1:2222"],"name":"m2"}``."""
    obj: dict[str, object] = {"id": member.id, "peerURLs": list(member.peer_urls)}
    if member.is_learner:
        obj["isLearner"] = True
    if member.name:
        obj["name"] = member.name
    if member.client_urls:
        obj["clientURLs"] = list(member.client_urls)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def restore_config(name: str = "default",
                   initial_cluster: str = "default=http://localhost:2380",
                   token: str = "etcd-cluster", peer_urls: str = "http://localhost:2380",
                   data_dir: str = "", wal_dir: str = "") -> Config:
    """The daemon's Config for etcdctl's restore flags (defaults are etcdctl 3.4's), parsed
    by etcdd's own flag parser so IDs come out as `etcdd` computes them. Raises
    ConfigError. NB: unlike `etcd --name x`, the default --initial-cluster is not
    rewritten to x's URLs (etcdctl keeps `default=http://localhost:2380`)."""
    argv = ["--name", name, "--initial-cluster", initial_cluster,
            "--initial-cluster-token", token, "--initial-advertise-peer-urls", peer_urls,
            "--data-dir", data_dir or f"{name}.etcd"]
    if wal_dir:
        argv += ["--wal-dir", wal_dir]
    config = parse_args(argv, {})
    given = parse_args(["--initial-cluster", initial_cluster], {}).initial_cluster
    return dataclasses.replace(config, initial_cluster=given)


def plan_restore(config: Config) -> RestorePlan:
    """The members, IDs and dirs of a restore (etcd `VerifyBootstrap` and
    `NewClusterFromURLsMap`). Raises RestoreError with etcd's message."""
    try:
        config.verify_bootstrap()
        members = tuple(initial_members(config))
    except ConfigError as e:
        raise RestoreError(str(e)) from None
    own = next(m for m in members if m.name == config.name)
    return RestorePlan(config.name, own.id, cluster_id(m.id for m in members),
                       config.initial_cluster_token, members, config.data_dir, config.wal_dir)


# -- snapshot files --------------------------------------------------------------------------

def has_checksum(size_bytes: int) -> bool:
    """Whether a file of this size ends in a sha256 trailer (etcd `hasChecksum`)."""
    return size_bytes % SECTOR_BYTES == SHA_BYTES


def go_bytes(data: bytes) -> str:
    """Go's `%v` of a []byte, as etcd prints sha256 sums: ``[18 52 ...]``."""
    return "[" + " ".join(map(str, data)) + "]"


def refuse_bbolt(f: BinaryIO, path: str, command: str) -> None:
    """Raise SnapshotError if `f` (positioned at 0, left there) holds an etcd bbolt file."""
    header = f.read(BBOLT_MAGIC_OFFSET + len(BBOLT_MAGIC))
    f.seek(0)
    if header[BBOLT_MAGIC_OFFSET:] == BBOLT_MAGIC:
        raise SnapshotError(f"{path} is an etcd (bbolt) snapshot, not an etcdd (LMDB) one; "
                            f"use `etcdctl snapshot {command}` for it")


def check_etcdd_backend(db: str, path: str, command: str) -> None:
    """Refuse (SnapshotError) an LMDB file `db` (a copy of `path`) that is not an etcdd
    backend, before a Backend opens it and creates what is missing. Reads only."""
    try:
        env = lmdb.open(db, subdir=False, readonly=True, lock=False, max_dbs=32)
    except lmdb.Error:
        raise SnapshotError(f"{path} is not an etcdd (LMDB) snapshot; etcd's bbolt "
                            f"snapshots are for `etcdctl snapshot {command}`") from None
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


def copy_bytes(src: BinaryIO, dst_fd: int, n_bytes: int, bar: Progress,
               sha: Any = None) -> None:
    """Copy `n_bytes` from `src`'s position to `dst_fd`'s, hashing them into `sha`.
    Raises SnapshotError if `src` ends first.

    NB: sha256 runs at about the speed of the disk, so a worker thread hashes each chunk
    while the next one is read and written (hashlib, reads and writes release the GIL);
    two buffers alternate, and a buffer is refilled only after its hash is done."""
    size = min(COPY_CHUNK_BYTES, max(n_bytes, 1))
    bufs = (memoryview(bytearray(size)), memoryview(bytearray(size)))
    left, turn = n_bytes, 0
    with ThreadPoolExecutor(max_workers=1) as hasher:
        hashed: Future[None] | None = None
        while left:
            buf = bufs[turn]
            turn ^= 1
            n = src.readinto(buf[:min(size, left)])
            if not n:
                raise SnapshotError(f"{src.name} ended {left} bytes early")
            chunk = buf[:n]
            if sha is not None:
                if hashed is not None:
                    hashed.result()
                hashed = hasher.submit(sha.update, chunk)
            while chunk:
                chunk = chunk[os.write(dst_fd, chunk):]
            left -= n
            bar.update(n)
        if hashed is not None:
            hashed.result()


def copy_snapshot_db(path: str, db: str, skip_hash_check: bool,
                     stream: TextIO | None = None) -> int:
    """Copy snapshot `path` without its trailer to the new file `db`, fsync'd, checking
    the sha256 trailer on the way (etcd saveDB); returns the bytes copied."""
    with open(path, "rb") as f:
        refuse_bbolt(f, path, "restore")
        size = os.fstat(f.fileno()).st_size
        hashed = has_checksum(size)
        if not hashed and not skip_hash_check:
            raise RestoreError("snapshot missing hash but --skip-hash-check=false")
        data_bytes = size - SHA_BYTES if hashed else size
        sha = hashlib.sha256() if hashed and not skip_hash_check else None
        fd = os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            label = "checking and copying" if sha is not None else "copying"
            with Progress(data_bytes, f"{label} {path}", stream) as bar:
                copy_bytes(f, fd, data_bytes, bar, sha)
            os.fsync(fd)
        finally:
            os.close(fd)
        if sha is not None:
            trailer = f.read(SHA_BYTES)
            if sha.digest() != trailer:
                raise RestoreError(f"expected sha256 {go_bytes(trailer)}, "
                                   f"got {go_bytes(sha.digest())}")
    return data_bytes


# -- writing the member ----------------------------------------------------------------------

class StagedDir:
    """A directory built under a temp name beside `final`, then renamed into place.

    Invariant: `final` is untouched until `publish`; `discard` removes whatever exists."""

    def __init__(self, final: str) -> None:
        self.final = os.path.normpath(final)
        self.parent = os.path.dirname(os.path.abspath(self.final))
        os.makedirs(self.parent, mode=0o700, exist_ok=True)
        self.path = tempfile.mkdtemp(prefix=f".{os.path.basename(self.final)}.",
                                     suffix=".tmp", dir=self.parent)
        self.published = False

    def publish(self) -> None:
        """fsync the dir, rename it to `final` and fsync the parent."""
        fsync_dir(self.path)
        os.rename(self.path, self.final)
        self.published = True
        fsync_dir(self.parent)

    def discard(self) -> None:
        shutil.rmtree(self.final if self.published else self.path, ignore_errors=True)


def rewrite_backend(db: str, path: str, plan: RestorePlan) -> int:
    """Give the backend `db` the plan's members and consistent index, durably; returns the
    store revision. Raises SnapshotError for a file that is not an etcdd backend."""
    check_etcdd_backend(db, path, "restore")
    backend = Backend(db)
    try:
        store = KVStore(backend)
        cluster = ClusterState(backend.dbs)
        with store.write_batch() as batch:
            txn = batch.raw_txn
            for name in (b"members", b"members_removed"):
                txn.drop(backend.dbs[name], delete=False)
            _drop_prefix(txn, backend.dbs[b"cluster"], REFUSED_PREFIX)
            for index, cc in enumerate(plan.conf_changes(), 1):   # as entries 1..N would
                refused = cluster.apply_conf_change(txn, cc, index)
                if refused is not None:
                    raise RestoreError(f"member {cc.node_id:x}: {refused}")
            batch.set_consistent_index(plan.consistent_index, RESTORE_TERM)
        backend.sync()
        return store.current_revision()
    finally:
        backend.close()
        _remove(db + "-lock")


def _drop_prefix(txn: Any, db: Any, prefix: bytes) -> None:
    """Delete every key of `db` that starts with `prefix`.

    NB: the refused-conf-change marks are keyed by the old cluster's raft indexes; the
    new log reuses those indexes, so a mark left behind would turn a later conf change
    into a no-op on replay."""
    cursor = txn.cursor(db)
    found = cursor.set_range(prefix)
    while found and cursor.key().startswith(prefix):
        found = cursor.delete()


def write_raft_state(wal_dir: str, snap_dir: str, plan: RestorePlan) -> None:
    """Create the WAL (bootstrap entries, hard state, snapshot record) and the `.snap`."""
    wal = WAL.create(wal_dir, plan.metadata())
    try:
        wal.save(plan.hard_state(), plan.entries(), must_sync=True)
        Snapshotter(snap_dir).save(plan.snapshot())     # before its WAL record
        wal.save_snapshot(WALSnapshot(plan.consistent_index, RESTORE_TERM))
    finally:
        wal.close()


@dataclass(frozen=True, slots=True)
class RestoreResult:
    plan: RestorePlan
    revision: int
    db_bytes: int


def refuse_existing(plan: RestorePlan) -> None:
    """etcd refuses to overwrite: `data-dir "X" exists`, `wal-dir "X" exists`."""
    if os.path.exists(plan.data_dir):
        raise RestoreError(f"data-dir {go_quote(plan.data_dir)} exists")
    if plan.wal_dir and os.path.exists(plan.wal_dir):
        raise RestoreError(f"wal-dir {go_quote(plan.wal_dir)} exists")


def restore(path: str, plan: RestorePlan, skip_hash_check: bool = False,
            stream: TextIO | None = None) -> RestoreResult:
    """Write the member data dir (and WAL dir) of `plan` from snapshot file `path`.

    Raises RestoreError/SnapshotError (refused), OSError or lmdb.Error; on any failure
    nothing is left at the targets. `stream` gets the progress bar (default stderr)."""
    refuse_existing(plan)
    inner = wal_inside(plan.data_dir, plan.wal_dir)
    staged = [StagedDir(plan.data_dir)]
    try:
        if plan.wal_dir and inner is None:
            staged.append(StagedDir(plan.wal_dir))
        member_dir = os.path.join(staged[0].path, "member")
        load_or_create_identity(member_dir, plan.name, plan.member_id, plan.cluster_id,
                                plan.token)
        snap_dir = os.path.join(member_dir, "snap")
        os.mkdir(snap_dir, 0o700)
        db = os.path.join(snap_dir, "db")
        db_bytes = copy_snapshot_db(path, db, skip_hash_check, stream)
        revision = rewrite_backend(db, path, plan)
        wal_dir = staged[1].path if len(staged) > 1 else os.path.join(staged[0].path, inner)
        if os.path.exists(wal_dir) and len(staged) == 1:
            raise RestoreError(f"wal-dir {go_quote(plan.wal_dir)} is a part of the data dir")
        write_raft_state(wal_dir, snap_dir, plan)
        fsync_dir(member_dir)
        for s in reversed(staged):           # the data dir last: it is what etcdd looks for
            s.publish()
    except BaseException:
        for s in staged:
            s.discard()
        raise
    return RestoreResult(plan, revision, db_bytes)


def wal_inside(data_dir: str, wal_dir: str) -> str | None:
    """The WAL dir's path relative to the data dir when it lies inside it (always when
    `wal_dir` is ""), else None. Raises RestoreError if the data dir is inside it."""
    if not wal_dir:
        return os.path.join("member", "wal")
    data, wal = os.path.abspath(data_dir), os.path.abspath(wal_dir)
    if os.path.commonpath([data, wal]) == wal:
        raise RestoreError(f"wal-dir {go_quote(wal_dir)} holds the data dir")
    if os.path.commonpath([data, wal]) == data:
        return os.path.relpath(wal, data)
    return None


def added_member_lines(plan: RestorePlan) -> list[str]:
    """etcdctl's (capnslog era) report: `added member <id> [<urls>] to cluster <cid>`."""
    return [f"added member {m.id:x} [{' '.join(m.peer_urls)}] to cluster {plan.cluster_id:x}"
            for m in plan.members]


def result_json(result: RestoreResult) -> dict[str, object]:
    """`-w json`: the new IDs (decimal, as etcdctl's JSON), members, dirs and revision."""
    p = result.plan
    return {"cluster_id": p.cluster_id, "member_id": p.member_id, "name": p.name,
            "members": [{"ID": m.id, "name": m.name, "peerURLs": list(m.peer_urls)}
                        for m in p.members],
            "data_dir": p.data_dir,
            "wal_dir": p.wal_dir or os.path.join(p.data_dir, "member", "wal"),
            "revision": result.revision, "consistent_index": p.consistent_index,
            "db_size": result.db_bytes}


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def plan_from_flags(name: str = "default",
                    initial_cluster: str = "default=http://localhost:2380",
                    token: str = "etcd-cluster", peer_urls: str = "http://localhost:2380",
                    data_dir: str = "", wal_dir: str = "") -> RestorePlan:
    """`restore_config` then `plan_restore`; raises RestoreError for every bad flag."""
    try:
        config = restore_config(name, initial_cluster, token, peer_urls, data_dir, wal_dir)
    except ConfigError as e:
        raise RestoreError(str(e)) from None
    return plan_restore(config)

