"""`python -m ops.unread_watch_bench`: thousands of watchers whose client stops reading.

A shell (ops/*). Issue 4: "a watcher that reads slowly, or 10,000 watchers on one prefix,
never slows writes". For each server (etcd 3.4, then etcdd; one member each) it opens
`--streams` Watch streams carrying `--watchers` watchers of one prefix in total, stops
reading them, times `--puts` puts under the prefix from 16 grpcio threads, then reads
and reports how long the watchers took to get every event, and how many events per
second arrived meanwhile. Each watcher's sequence is checked: every revision once, in
order.
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from etcdd.proto import rpc_pb2 as pb, rpc_pb2_grpc
from ops.cluster import LocalCluster
from ops.h2client import BlockingWatchClient

PREFIX = b"unread/"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ops.unread_watch_bench", description=__doc__.split("\n")[0])
    p.add_argument("--watchers", type=int, default=10_000, help="watchers in all (default 10000)")
    p.add_argument("--streams", type=int, default=10, help="Watch streams (default 10)")
    p.add_argument("--puts", type=int, default=300, help="puts under the prefix (default 300)")
    p.add_argument("--val-size", type=int, default=16, help="bytes per value (default 16)")
    p.add_argument("--servers", default="etcd,etcdd", help="comma list of etcd, etcdd")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for delivery")
    args = p.parse_args(argv)
    if args.streams < 1 or args.watchers < args.streams or args.watchers % args.streams:
        p.error("--watchers must be a positive multiple of --streams")
    if not set(args.servers.split(",")) <= {"etcd", "etcdd"}:
        p.error("--servers takes etcd and/or etcdd")
    return args


def run(endpoint: str, args: argparse.Namespace) -> dict:
    """One server's figures: put seconds while unread, delivery seconds, events/s, check."""
    client = BlockingWatchClient(endpoint)
    per_stream = args.watchers // args.streams
    try:
        sids = [client.open(per_stream, PREFIX) for _ in range(args.streams)]
        client.read_until(lambda: all(client.created[s] == per_stream for s in sids),
                          time.monotonic() + 120)
        channel = grpc.insecure_channel(endpoint)
        kv = rpc_pb2_grpc.KVStub(channel)
        value = b"v" * args.val_size
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            revisions = sorted(pool.map(lambda i: kv.Put(pb.PutRequest(
                key=PREFIX + b"%06d" % i, value=value), timeout=60).header.revision,
                range(args.puts)))
        put_seconds = time.monotonic() - started
        channel.close()
        started = time.monotonic()
        last = revisions[-1]
        client.read_until(lambda: sum(1 for v in client.events.values() if v and v[-1] == last)
                          == args.watchers, started + args.timeout)
        deliver_seconds = time.monotonic() - started
        events = sum(len(v) for v in client.events.values())
        wrong = sum(1 for v in client.events.values() if v != revisions)
        return {"put_seconds": put_seconds, "deliver_seconds": deliver_seconds,
                "events": events, "events_per_second": events / max(deliver_seconds, 1e-9),
                "watchers_with_other_sequence": wrong + args.watchers - len(client.events)}
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    for server in args.servers.split(","):
        cluster = LocalCluster(1, real_etcd=server == "etcd")
        try:
            cluster.start(wait=True, timeout=60.0)
            cluster.wait_leader(timeout=30.0)
            rows.append((server, run(cluster.members[0].endpoint, args)))
        finally:
            cluster.cleanup()
    print(f"{args.watchers} watchers of one prefix on {args.streams} unread streams, "
          f"{args.puts} puts of {args.val_size} B")
    print(f"{'server':8} {'puts s':>8} {'deliver s':>10} {'events':>10} {'events/s':>10} "
          f"{'wrong':>6}")
    for server, r in rows:
        print(f"{server:8} {r['put_seconds']:8.2f} {r['deliver_seconds']:10.2f} "
              f"{r['events']:10d} {r['events_per_second']:10.0f} "
              f"{r['watchers_with_other_sequence']:6d}")
    return 0 if all(r["watchers_with_other_sequence"] == 0 for _, r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
