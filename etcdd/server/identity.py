"""Who owns a data dir: the member's name, IDs and cluster token, in `member/identity`.

Shell. Written once, atomically (temp file, fsync, rename, fsync the directory), when a
member first starts on an empty data dir; checked on every start before anything else in
the dir is opened. Like etcd, a restarted member keeps the IDs it was born with (its WAL
metadata in etcd); a data dir written for another member name or another cluster token is
refused without being touched.

# TODO(etcdd): the WAL metadata record carries the IDs once the WAL lands (issue 3).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass


class DataDirError(Exception):
    """The data dir cannot be used by this member; nothing in it was changed."""


@dataclass(frozen=True, slots=True)
class StoredIdentity:
    name: str
    member_id: int
    cluster_id: int
    token: str


def load_or_create_identity(member_dir: str, name: str, member_id: int, cluster_id: int,
                            token: str) -> StoredIdentity:
    """The identity recorded in `member_dir`, creating it (and the dir) when absent.

    Raises DataDirError when the dir belongs to another member or cannot be read."""
    path = os.path.join(member_dir, "identity")
    wanted = StoredIdentity(name, member_id, cluster_id, token)
    if os.path.isdir(member_dir) and os.listdir(member_dir):
        return _check(path, member_dir, wanted)
    os.makedirs(member_dir, mode=0o700, exist_ok=True)
    _write_atomically(path, json.dumps({"name": name, "member_id": f"{member_id:x}",
                                        "cluster_id": f"{cluster_id:x}", "token": token}))
    return wanted


def _check(path: str, member_dir: str, wanted: StoredIdentity) -> StoredIdentity:
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read())
        stored = StoredIdentity(raw["name"], int(raw["member_id"], 16),
                                int(raw["cluster_id"], 16), raw["token"])
    except FileNotFoundError:
        raise DataDirError(f"data dir {member_dir} has no member identity file; it was not "
                           f"written by etcdd") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataDirError(f"cannot read the member identity in {path}: {e}") from None
    if stored.name != wanted.name or stored.token != wanted.token:
        raise DataDirError(
            f"data dir {os.path.dirname(member_dir)} belongs to member {stored.name!r} "
            f"({stored.member_id:x}) of cluster {stored.cluster_id:x} (token "
            f"{stored.token!r}), not to --name {wanted.name!r} with --initial-cluster-token "
            f"{wanted.token!r}")
    return stored


def _write_atomically(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
