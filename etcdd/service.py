"""MemberService: one etcdd member wired together.

Shell. Opens the data dir (refusing one that belongs to another member, without writing
to it), starts the disk thread and the member, then listens on the client URLs (gRPC and
HTTP/1.1 on one port) and the peer URLs. Children start in order and stop in reverse;
stopping sends GOAWAY to clients and lets in-flight calls finish. sd_notify READY=1 once
the member has published itself to the cluster (etcd's ReadyNotify), STOPPING=1 when it
starts to stop (systemd Type=notify).
"""
from __future__ import annotations

import gc
import os
import socket
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from etcdd.api.http import build_root, client_site
from etcdd.api.kv import HeaderFiller, KVService
from etcdd.api.cluster import ClusterService, supported_for_learner
from etcdd.api.election import ElectionService
from etcdd.api.lease import LeaseService
from etcdd.api.local import LocalClient
from etcdd.api.lock import LockService
from etcdd.api.watch import WatchService
from etcdd.api.maintenance import MaintenanceService
from etcdd.api.mux import ClientPortFactory
from etcdd.api.router import Router
from etcdd.api.snapshot import SnapshotService
from etcdd.config import Config, ConfigError
from etcdd.mvcc.backend import DEFAULT_MAP_SIZE, Backend
from etcdd.mvcc.store import KVStore
from etcdd.mvcc.watchable import WatchableStore
from etcdd.server import membership
from etcdd.server.disk import DiskExecutor, choose_cpu
from etcdd.server.identity import DataDirError, load_or_create_identity
from etcdd.server.bootstrap import BootstrapError, RaftState, open_raft
from etcdd.server.cluster import ClusterState
from etcdd.server.autocompact import AutoCompactor
from etcdd.server.defrag import Defragmenter
from etcdd.server.errors import NoLeaderError, NotSupportedForLearnerError
from etcdd.server.cluster import members_json
from etcdd.server.reconfig import PROMOTE_CALL, Reconfigurer
from etcdd.peer.discovery import DiscoveryError, fetch_cluster, match_local
from etcdd.server.leases import LeaseHost, min_lease_ttl_seconds
from etcdd.server.member import MAX_PENDING_PROPOSALS, Identity, Member
from etcdd.server.quota import QuotaGuard, backend_map_bytes
from etcdd.server.raftloop import RaftLoop
from etcdd.peer.transport import PeerTransport


class StartupError(Exception):
    """The member cannot start; the message says why, in one line."""


def sd_notify(state: str) -> None:
    """Tell systemd our state when started by a Type=notify unit; a no-op otherwise."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as e:
        # systemd not listening any more must not fail the member
        Logger().warn("sd_notify {state} to {address} failed: {e}", state=state,
                      address=address, e=e)


def tune_gc() -> None:
    """Fewer cyclic-GC passes: every request allocates many short-lived objects (h2
    events, frames, messages) that reference counting frees anyway, and the default
    threshold runs a collection every 700 allocations. What is alive once the member
    serves is frozen out of collections. Measured: +10-15 % puts per server CPU-second."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _checkpoint_interval(environ: Any) -> float:
    """etcd 3.4's lease checkpoint interval (5 min) has no flag; tests shorten it with
    `ETCDD_EXPERIMENTAL_LEASE_CHECKPOINT_INTERVAL` (seconds, > 0)."""
    raw = environ.get("ETCDD_EXPERIMENTAL_LEASE_CHECKPOINT_INTERVAL", "")
    try:
        value = float(raw) if raw else 300.0
    except ValueError:
        raise StartupError(f"ETCDD_EXPERIMENTAL_LEASE_CHECKPOINT_INTERVAL={raw!r} "
                           "is not a number of seconds") from None
    if value <= 0:
        raise StartupError("ETCDD_EXPERIMENTAL_LEASE_CHECKPOINT_INTERVAL must be > 0")
    return value


class MemberService(MultiService):
    """A member's whole life: start opens and serves, stop drains and closes."""

    _log = Logger()

    def __init__(self, config: Config, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        self.config = config
        self._reactor = reactor
        self._ports: list[Any] = []
        self._factories: list[ClientPortFactory] = []
        self.backend: Backend | None = None
        self.store: KVStore | None = None
        self.member: Member | None = None
        self.disk: DiskExecutor | None = None
        self.raft: RaftState | None = None
        self.loop: RaftLoop | None = None
        self.cluster: ClusterState | None = None
        self.transport: PeerTransport | None = None
        self.watchable: WatchableStore | None = None
        self.leases: LeaseHost | None = None
        self.compactor: AutoCompactor | None = None
        self.reconfigurer: Reconfigurer | None = None
        self.defragmenter: Defragmenter | None = None
        self._in_pool: set[Deferred] = set()
        self.exit_status = 0

    def startService(self) -> None:
        super().startService()
        try:
            self._start()
        except (StartupError, DataDirError) as e:
            self._log.critical("{error}", error=str(e))
            self.exit_status = 1
            self._close_storage()
            raise StartupError(str(e)) from None

    def _start(self) -> None:
        c = self.config
        is_new = not (os.path.isdir(c.member_dir) and os.listdir(c.member_dir))
        joining = is_new and c.initial_cluster_state == "existing"
        if is_new:
            try:
                c.verify_join_existing() if joining else c.verify_bootstrap()
            except ConfigError as e:
                raise StartupError(str(e)) from None
        members = membership.initial_members(c)
        cluster_id = membership.cluster_id([m.id for m in members])
        own_id = membership.member_id(c.initial_advertise_peer_urls, c.initial_cluster_token)
        if joining:
            members, own_id, cluster_id = self._discover(c)
        snap_dir = c.snap_path
        identity = load_or_create_identity(c.member_dir, name=c.name, member_id=own_id,
                                           cluster_id=cluster_id, token=c.initial_cluster_token)
        if not is_new and not os.path.exists(c.backend_path):
            # etcd 3.4 server.go: a member with history but no backend must not start
            # empty; that would silently drop every acknowledged key.
            raise StartupError(f"database file ({c.backend_path}) of the backend is missing")
        try:
            os.makedirs(snap_dir, mode=0o700, exist_ok=True)
            self.backend = Backend(c.backend_path, map_size=backend_map_bytes(
                c.quota_bytes, c.max_request_bytes, MAX_PENDING_PROPOSALS, DEFAULT_MAP_SIZE))
        except Exception as e:
            raise StartupError(f"cannot open the backend in {snap_dir}: {e}") from None
        self.store = KVStore(self.backend)
        try:
            self.raft = open_raft(c, identity.member_id, identity.cluster_id, members,
                                  self.backend, self.store, join=joining)
        except BootstrapError as e:
            raise StartupError(str(e)) from None
        self.cluster = ClusterState(self.backend.dbs)
        with self.backend.begin_read() as txn:
            self.cluster.load(txn)
        self.disk = DiskExecutor(self._reactor, cpu=choose_cpu(os.environ))
        self.disk.start()
        self.member = Member(Identity(identity.cluster_id, identity.member_id, c.name),
                             self.store, self.cluster, self.disk, self._reactor,
                             max_request_bytes=c.max_request_bytes,
                             request_timeout_seconds=c.request_timeout_seconds,
                             election_timeout_seconds=c.election_timeout_ms / 1000,
                             client_urls=tuple(c.advertise_client_urls),
                             applied_index=self.raft.snapshot_index,
                             on_fatal=self._fatal,
                             min_lease_ttl_seconds=min_lease_ttl_seconds(
                                 c.election_ticks, c.heartbeat_interval_ms),
                             on_ready=self._ready, on_removed=self._removed)
        self.defragmenter = Defragmenter(self.backend, self.disk, self._reactor,
                                         on_fatal=self.member.fatal)
        self.reconfigurer = Reconfigurer(self.member, self._reactor,
                                         strict=c.strict_reconfig_check)
        self.watchable = WatchableStore(self.store, self._reactor, self._run_in_pool)
        self.leases = LeaseHost(self.member, self.store, self._reactor,
                                min_ttl_seconds=min_lease_ttl_seconds(
                                    c.election_ticks, c.heartbeat_interval_ms),
                                election_timeout_seconds=c.election_timeout_ms / 1000,
                                request_timeout_seconds=c.request_timeout_seconds,
                                checkpointing=c.experimental_enable_lease_checkpoint,
                                checkpoint_interval_seconds=_checkpoint_interval(os.environ),
                                run_read=self._run_in_pool)
        self.member.watchable = self.watchable
        self.member.leases = self.leases
        self.compactor = AutoCompactor(self.member, self.store, self._reactor,
                                       c.auto_compaction_mode, c.auto_compaction_retention)
        r = self.raft
        self.loop = RaftLoop(r.node, r.storage, r.wal, r.snapshotter, self.store, self.disk,
                             self._reactor, self.member,
                             heartbeat_seconds=c.heartbeat_interval_ms / 1000,
                             snapshot_count=c.snapshot_count, max_wals=c.max_wals,
                             max_snapshots=c.max_snapshots, snapshot_index=r.snapshot_index,
                             conf_state=r.conf_state, on_fatal=self.member.fatal,
                             run_in_pool=self._run_in_pool)
        self.member.loop = self.loop
        self.transport = PeerTransport(self._reactor, identity.member_id, identity.cluster_id,
                                       self.loop, c.snap_path,
                                       max_frame_bytes=max(16 << 20,
                                                           2 * c.max_request_bytes + (1 << 20)))
        self.loop.transport = self.transport
        self.loop.call_handler = self._handle_call
        self.transport.set_membership(
            is_removed=lambda mid: mid in self.cluster.removed,
            members_json=lambda: members_json(self.cluster.sorted_members()),
            on_removed=self.member.removed)
        self.leases.transport = self.transport
        self._listen()
        self.transport.start()
        peers = self.cluster.sorted_members() or members
        if not self.cluster.members and not is_new and c.initial_cluster_state == "existing":
            # NB: a joined member stopped before it applied any membership: its peers
            # are the running cluster's, not what the flags' IDs would say.
            peers = self._discover(c)[0]
        for m in peers:
            if m.id != identity.member_id and m.peer_urls:
                self.transport.add_peer(m.id, m.peer_urls)
        # etcd --initial-election-tick-advance: do not wait a whole election timeout
        # before the first campaign.
        for _ in range(c.election_ticks - 1):
            r.node.tick()
        self.member.start()
        self.watchable.start()
        self.leases.start()
        self.compactor.start()
        self.loop.start()
        self._log.info("{name} started ({state}), member {mid:x} of cluster {cid:x}",
                       name=c.name, state="new" if r.is_new else "restarted",
                       mid=identity.member_id, cid=identity.cluster_id)
        tune_gc()

    def _discover(self, c: Config) -> tuple[list[membership.Member], int, int]:
        """`--initial-cluster-state existing`: the running cluster's members (asked of the
        other peers of `--initial-cluster`), this member's ID among them and the cluster
        ID. Raises StartupError."""
        urls = [u for name, us in c.initial_cluster_urls().items() if name != c.name
                for u in us]
        try:
            remote = fetch_cluster(urls)
            own_id = match_local(c.initial_cluster_urls(), remote.members, c.name)
        except DiscoveryError as e:
            raise StartupError(f"cannot join the cluster: {e}") from None
        self._log.info("joining cluster {cid:x} as member {mid:x}", cid=remote.cluster_id,
                       mid=own_id)
        return list(remote.members), own_id, remote.cluster_id

    def _handle_call(self, from_id: int, method: str, payload: bytes) -> Any:
        """A peer's call: a forwarded MemberPromote, or a lease renewal or TTL query."""
        if method == PROMOTE_CALL:
            return self.reconfigurer.handle_call(from_id, method, payload)
        return self.leases.handle_call(from_id, method, payload)

    def _removed(self) -> None:
        """The member was removed from the cluster: stop, exit 0 (as etcd 3.4 does)."""
        self._log.warn("stopping: the member has been permanently removed from the cluster")
        self.member.stop()
        if self._reactor.running:
            self._reactor.stop()

    def _ready(self) -> None:
        """etcd embed: READY=1 once the member has joined the cluster (published its
        attributes through raft), so systemd starts dependants only when it serves."""
        self._log.info("ready to serve client requests")
        sd_notify("READY=1")

    def _router(self) -> Router:
        router = Router(guard=self._require_leader)
        header = HeaderFiller(self.member, self.store)
        quota = QuotaGuard(self.config.quota_bytes, self.backend.size_bytes,
                           self.member.alarms, self.member.identity.member_id,
                           self.member.propose, self._reactor)
        KVService(self.member, header, self.config.max_txn_ops, quota).register(router)
        ClusterService(self.reconfigurer, header).register(router)
        MaintenanceService(self.member, self.store, self.backend, header, self.cluster,
                           run_read=self._run_in_pool, alarms=self.member.alarms,
                           defragmenter=self.defragmenter).register(router)
        c = self.config
        # etcd 3.4 v3rpc/watch.go: fragments are cut at MaxRequestBytes + grpcOverheadBytes.
        WatchService(self.watchable, header, self._reactor, c.max_request_bytes + 512 * 1024,
                     c.experimental_watch_progress_notify_interval_seconds).register(router)
        LeaseService(self.leases, header, quota).register(router)
        SnapshotService(self.store, c.snap_path, self._reactor,
                        self._run_in_pool).register(router)
        local = LocalClient(self.member, self.watchable, self.leases, header)
        LockService(local).register(router)
        ElectionService(local).register(router)
        return router

    def _require_leader(self, context: Any, request: Any) -> None:
        """etcd 3.4 v3rpc interceptors: a learner answers only Status and serializable
        Range; a call with `hasleader: true` metadata is refused with `no leader` while
        this member knows no leader."""
        if self.member.is_learner and not supported_for_learner(context.path, request):
            raise NotSupportedForLearnerError()
        if context.metadata.get("hasleader") == "true" and not self.loop.lead:
            raise NoLeaderError()

    def _run_in_pool(self, fn: Any, *args: object) -> Deferred:
        """Run a long LMDB scan or bulk file work in the reactor's thread pool; stopping
        waits for these before the backend is closed. Held back while a defrag swaps
        the backend file (they hold LMDB read transactions)."""
        d = self.defragmenter.run_in_pool(fn, *args)
        self._in_pool.add(d)

        def done(result: Any) -> Any:
            self._in_pool.discard(d)
            return result
        return d.addBoth(done)

    def _listen(self) -> None:
        c = self.config
        router = self._router()
        root = build_root(health=self._healthy)
        max_message_bytes = c.max_request_bytes + 512 * 1024
        for address in c.client_listen_addresses:
            host, port = address.host, address.port
            factory = ClientPortFactory(router, client_site(root, self._reactor), self._reactor,
                                        max_message_bytes=max_message_bytes)
            self._factories.append(factory)
            self._ports.append(self._listen_tcp(port, factory, host, "client"))
            self._log.info("serving insecure client requests on {host}:{port}",
                           host=host, port=port)
        for address in c.peer_listen_addresses:
            host, port = address.host, address.port
            self._ports.append(self._listen_tcp(port, self.transport.server_factory(),
                                                host, "peer"))
            self._log.info("listening for peers on {host}:{port}", host=host, port=port)

    def _listen_tcp(self, port: int, factory: Any, host: str, what: str) -> Any:
        from twisted.internet.error import CannotListenError
        try:
            return self._reactor.listenTCP(port, factory, interface=host)
        except CannotListenError as e:
            raise StartupError(f"cannot listen for {what} traffic on {host}:{port}: "
                               f"{e.socketError}") from None

    def _healthy(self) -> "bool | Deferred":
        """etcd /health: false while any alarm is active (etcd 3.4 etcdhttp checkHealth),
        without a leader, or when a quorum read through raft fails."""
        if self.member is None or self.loop is None or self.member.alarms.active:
            return False
        return self.member.check_health()

    def _fatal(self, failure: Failure) -> None:
        self.exit_status = 1
        if self._reactor.running:
            self._reactor.stop()

    def stopService(self) -> Deferred:
        super().stopService()
        sd_notify("STOPPING=1")
        if self.member is None or self.member.stopped:
            return self._stop_all()
        d = self.member.transfer_leadership_on_stop()
        return d.addBoth(lambda _: self._stop_all())

    def _stop_all(self) -> Deferred:
        if self.loop is not None:
            self.loop.stop()
        if self.member is not None:
            self.member.stop()
        for part in (self.watchable, self.leases, self.compactor, self.defragmenter):
            if part is not None:
                part.stop()
        transport_stopped = self.transport.stop() if self.transport is not None else None
        ports, factories = self._ports, self._factories
        self._ports, self._factories = [], []
        stopped = [port.stopListening() for port in ports]
        d = DeferredList([s if isinstance(s, Deferred) else succeed(s) for s in stopped])
        d.addCallback(lambda _: DeferredList([f.close_gracefully(timeout_seconds=2.0)
                                              for f in factories]))
        if transport_stopped is not None:
            d.addBoth(lambda _: transport_stopped)
        # Scans and snapshot copies in the pool hold LMDB read transactions.
        d.addBoth(lambda _: DeferredList(list(self._in_pool)))
        d.addBoth(lambda _: self._close_storage())
        return d

    def _close_storage(self) -> None:
        if self.disk is not None:
            self.disk.stop()
            self.disk = None
        if self.raft is not None:
            self.raft.wal.close()
            self.raft = None
        if self.backend is not None:
            self.backend.close()
            self.backend = None
