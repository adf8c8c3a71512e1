"""The versions etcdd reports to clients, in one place.

Core. etcd 3.4 reports these through `GET /version` (`version.Versions`) and the
Maintenance.Status RPC; clients such as etcdctl check them to pick features.
"""
from __future__ import annotations

ETCD_SERVER_VERSION = "3.4.23"   # etcd's version.Version we are compatible with
ETCD_CLUSTER_VERSION = "3.4.0"   # the cluster version: major.minor.0 of the oldest member
