"""Opening a member's raft state: a new cluster's WAL, or the replay of an existing one.

Shell (runs once at start, before the reactor serves anyone, so it may block). etcd 3.4
`etcdserver/server.go NewServer` and `raft.go startNode/restartNode`:

- No WAL: create it with the member's metadata (node and cluster ID), and bootstrap raft
  with one ConfChangeAddNode entry per `--initial-cluster` member at term 1; a member
  joining a running cluster (`--initial-cluster-state existing`) starts with nothing.
- A WAL: pick the newest `.snap` that the WAL also recorded; if the backend is older than
  that snapshot, install the backend that arrived with it (`<index>.snap.db`); replay the
  WAL from the snapshot into the raft storage. Entries the backend already applied are
  skipped when they are delivered again (consistent index).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Sequence

from etcdd.proto import etcdserver_pb2, raft_pb2
from etcdd.raft import MemoryStorage, RaftConfig, RawNode
from etcdd.server.cluster import member_json
from etcdd.server.membership import Member
from etcdd.wal.snap import Snapshotter
from etcdd.wal.wal import WAL, WALSnapshot, valid_snapshots, wal_exists


class BootstrapError(Exception):
    """The member's raft state cannot be opened; the message says why, in one line."""


@dataclass(slots=True)
class RaftState:
    node: RawNode
    storage: MemoryStorage
    wal: WAL
    snapshotter: Snapshotter
    snapshot_index: int
    conf_state: raft_pb2.ConfState
    is_new: bool


def raft_config(config: Any, member_id: int, storage: MemoryStorage) -> RaftConfig:
    return RaftConfig(id=member_id, storage=storage, election_ticks=config.election_ticks,
                      heartbeat_ticks=1, pre_vote=config.pre_vote, check_quorum=True,
                      max_size_per_msg=1 << 20, max_inflight_msgs=512,
                      rand=random.Random(int.from_bytes(os.urandom(8), "big")))


def open_raft(config: Any, member_id: int, cluster_id: int, members: Sequence[Member],
              backend: Any, store: Any, join: bool = False) -> RaftState:
    """Create or replay the WAL and build the raft node. A new member that `join`s a
    running cluster starts with an empty log and no configuration: the leader sends it
    the log (or a snapshot), membership included (etcd 3.4 `startNode` without peers).
    Raises BootstrapError."""
    wal_dir, snap_dir = config.wal_path, config.snap_path
    os.makedirs(snap_dir, mode=0o700, exist_ok=True)
    snapshotter = Snapshotter(snap_dir)
    snapshotter.cleanup_tmp()
    if not wal_exists(wal_dir):
        if store.consistent_index() > 0:
            # A fresh raft log would start below what the backend holds, and every new
            # entry up to its consistent index would be skipped as already applied.
            raise BootstrapError(f"the backend has applied raft entries up to index "
                                 f"{store.consistent_index()} but the WAL in {wal_dir} "
                                 f"is missing")
        return _start_new(config, member_id, cluster_id, () if join else members, wal_dir,
                          snapshotter)
    return _restart(config, member_id, cluster_id, wal_dir, snapshotter, backend, store)


def _start_new(config: Any, member_id: int, cluster_id: int, members: Sequence[Member],
               wal_dir: str, snapshotter: Snapshotter) -> RaftState:
    metadata = etcdserver_pb2.Metadata(NodeID=member_id, ClusterID=cluster_id)
    wal = WAL.create(wal_dir, metadata.SerializeToString())
    storage = MemoryStorage()
    node = RawNode(raft_config(config, member_id, storage))
    if members:
        node.bootstrap([(m.id, member_json(m)) for m in members])
    conf_state = raft_pb2.ConfState(voters=sorted(m.id for m in members))
    return RaftState(node, storage, wal, snapshotter, 0, conf_state, True)


def _restart(config: Any, member_id: int, cluster_id: int, wal_dir: str,
             snapshotter: Snapshotter, backend: Any, store: Any) -> RaftState:
    try:
        snapshot = snapshotter.load_newest_available(valid_snapshots(wal_dir))
    except Exception as e:   # a WAL that cannot even list its snapshots
        raise BootstrapError(f"cannot read the WAL in {wal_dir}: {e}") from None
    snap_index = snapshot.metadata.index if snapshot is not None else 0
    if snapshot is not None and snap_index > store.consistent_index():
        db = snapshotter.db_path(snap_index)
        if not os.path.exists(db):
            raise BootstrapError(f"snapshot at index {snap_index} is newer than the backend "
                                 f"(consistent index {store.consistent_index()}) and its "
                                 f"database {db} is missing")
        backend.load_from(db)
        os.unlink(db)
    walsnap = (WALSnapshot(snap_index, snapshot.metadata.term) if snapshot is not None
               else WALSnapshot(0, 0))
    try:
        wal = WAL.open(wal_dir, walsnap)
        replay = wal.read_all()
    except Exception as e:
        raise BootstrapError(str(e)) from None
    meta = etcdserver_pb2.Metadata.FromString(replay.metadata)
    if meta.NodeID != member_id or meta.ClusterID != cluster_id:
        wal.close()
        raise BootstrapError(f"the WAL in {wal_dir} belongs to member {meta.NodeID:x} of "
                             f"cluster {meta.ClusterID:x}, not {member_id:x} of {cluster_id:x}")
    storage = MemoryStorage()
    if snapshot is not None:
        storage.apply_snapshot(snapshot)
    storage.set_hard_state(replay.hard_state)
    storage.append(replay.entries)
    node = RawNode(raft_config(config, member_id, storage))
    conf_state = (snapshot.metadata.conf_state if snapshot is not None
                  else raft_pb2.ConfState())
    return RaftState(node, storage, wal, snapshotter, snap_index, conf_state, False)
