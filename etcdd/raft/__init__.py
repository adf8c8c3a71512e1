"""IO-free Raft consensus (etcd 3.4 `raft`): messages in, Ready out; no reactor, no clock.

Core (pure). Drive a `RawNode` as described in `etcdd/raft/rawnode.py`.
"""
from etcdd.raft.progress import ProgressState
from etcdd.raft.raft import RaftConfig
from etcdd.raft.rawnode import ProgressInfo, RawNode, Ready, SoftState, Status
from etcdd.raft.read_only import ReadState
from etcdd.raft.roles import NONE, StateType
from etcdd.raft.storage import (CompactedError, MemoryStorage, ProposalDroppedError, RaftError,
                                RaftInvariantError, SnapshotOutOfDateError,
                                SnapshotTemporarilyUnavailableError, StepLocalMsgError,
                                StepPeerNotFoundError, UnavailableError)

__all__ = [
    "NONE", "CompactedError", "MemoryStorage", "ProgressInfo", "ProgressState",
    "ProposalDroppedError", "RaftConfig", "RaftError", "RaftInvariantError", "RawNode",
    "ReadState", "Ready", "SnapshotOutOfDateError", "SnapshotTemporarilyUnavailableError",
    "SoftState", "StateType", "Status", "StepLocalMsgError", "StepPeerNotFoundError",
    "UnavailableError",
]
