"""``etcdctl watch`` against a 3-member cluster, as etcd 3.4 answers it: one key, a range,
a prefix, a replay from a past ``--rev``, ``--prev-kv``, ``-w json``, the interactive
``watch -i``, a watch from a compacted revision, and a watch on a follower that sees the
same events as one on the leader.

Watchers run as long-lived etcdctl processes (`tests.integration.watchers.LineReader`);
writes go through ``etcdctl put/del/txn``. The simple output prints each event as its type,
key and value lines (with ``--prev-kv`` the previous key and value come before the new
ones); ``-w json`` prints one JSON object per watch response, so the events of one
transaction are one line.
"""
from __future__ import annotations

import signal
from typing import Any

from tests.integration.cluster import ClusterTestCase
from tests.integration.watchers import (LineReader, b64, events_of, json_lines,
                                        json_value_line, masked, simple_value_line,
                                        start_etcdctl, sync_watch)

COMPACTED = "etcdserver: mvcc: required revision has been compacted"


def response(revision: int, *events: dict[str, Any]) -> dict[str, Any]:
    """A masked ``watch -w json`` line: a response at `revision` carrying `events`."""
    return {"Header": {"cluster_id": "*", "member_id": "*", "revision": revision,
                       "raft_term": "*"},
            "Events": list(events), "CompactRevision": 0, "Canceled": False, "Created": False}


def put_event(key: str, value: str, create: int, mod: int, version: int,
              prev: dict[str, Any] | None = None) -> dict[str, Any]:
    """A PUT event as etcdctl's JSON shows it (the type, PUT = 0, is omitted)."""
    event: dict[str, Any] = {"kv": {"key": b64(key), "create_revision": create,
                                    "mod_revision": mod, "version": version,
                                    "value": b64(value)}}
    if prev is not None:
        event["prev_kv"] = prev
    return event


def delete_event(key: str, mod: int, prev: dict[str, Any] | None = None) -> dict[str, Any]:
    """A DELETE event: type 1, a kv holding only the key and the deletion revision."""
    event: dict[str, Any] = {"type": 1, "kv": {"key": b64(key), "mod_revision": mod}}
    if prev is not None:
        event["prev_kv"] = prev
    return event


class WatchCliTestCase(ClusterTestCase):
    """A shared 3-member cluster and the etcdctl steps the watch tests take."""
    shared_cluster = True

    def watch(self, *args: str, on: Any = None) -> LineReader:
        """A running ``etcdctl watch args...``, killed and reaped at cleanup."""
        return start_etcdctl(self, self.endpoints(on), "watch", *args)

    def put(self, key: str, value: str, on: Any = None) -> int:
        """``etcdctl put``; the revision it created."""
        return self.ctl_json("put", key, value, on=on)["header"]["revision"]

    def delete(self, key: str, *flags: str, on: Any = None) -> int:
        """``etcdctl del``; the revision after it."""
        return self.ctl_json("del", key, *flags, on=on)["header"]["revision"]

    def txn(self, *ops: str, on: Any = None) -> int:
        """``etcdctl txn`` with no compares and `ops` on success; the revision after it."""
        answer = self.ctl_json("txn", stdin="\n" + "\n".join(ops) + "\n\n\n", on=on)
        self.assertTrue(answer["succeeded"], answer)
        return answer["header"]["revision"]

    def current_revision(self) -> int:
        """The cluster's revision now (a linearizable get of a key nobody writes)."""
        return self.ctl_json("get", "no-such-key")["header"]["revision"]


class WatchCliTests(WatchCliTestCase):
    """Events arrive in revision order, each once, for exactly the watched keys; every
    test writes under its own prefix, so they share one cluster (the compaction test
    compacts only revisions older than any other test watches from)."""

    def test_watch_one_key(self) -> None:
        """``watch key`` prints every put and delete of that key and nothing of other keys."""
        w = self.watch("one/foo")
        sync_watch(w, lambda value: self.put("one/foo", value), simple_value_line)
        self.put("one/foo", "a")
        self.put("one/foobar", "not watched")
        self.put("one/fo", "not watched")
        self.delete("one/foo")
        self.put("one/foo", "b")
        self.assertEqual(w.read(9), ["PUT", "one/foo", "a",
                                     "DELETE", "one/foo", "",
                                     "PUT", "one/foo", "b"])
        self.assertLess(w.stop(signal.SIGKILL), 0)

    def test_watch_range(self) -> None:
        """``watch b d`` covers [b, d): the start key and keys before the end, not the end."""
        w = self.watch("range/b", "range/d")
        sync_watch(w, lambda value: self.put("range/b", value), simple_value_line)
        for key in ("range/a", "range/b", "range/c", "range/cz", "range/d", "range/e"):
            self.put(key, key[-2:])
        self.put("range/b", "end")
        self.assertEqual(w.read(12), ["PUT", "range/b", "/b", "PUT", "range/c", "/c",
                                      "PUT", "range/cz", "cz", "PUT", "range/b", "end"])

    def test_watch_prefix_prints_a_txn_together(self) -> None:
        """``watch --prefix`` sees keys under the prefix only; a txn's events print in
        the txn's order."""
        w = self.watch("--prefix", "pre/")
        sync_watch(w, lambda value: self.put("pre/probe", value), simple_value_line)
        self.put("pre", "not under pre/")
        self.put("pre/x", "1")
        self.put("prf/x", "not watched")
        self.txn("put pre/a 1", "put other/z 2", "put pre/b 2", "del pre/x")
        self.assertEqual(w.read(12), ["PUT", "pre/x", "1",
                                      "PUT", "pre/a", "1",
                                      "PUT", "pre/b", "2",
                                      "DELETE", "pre/x", ""])

    def test_watch_from_past_revision_replays_history(self) -> None:
        """``watch --rev R`` prints every event since R (puts, deletes, a txn), then
        live events, in revision order."""
        first = self.put("hist/a", "1")
        self.put("hist/b", "2")
        deleted = self.delete("hist/a")
        self.put("hist/a", "3")
        self.txn("put hist/c 4", "del hist/b")
        history = ["PUT", "hist/a", "1", "PUT", "hist/b", "2", "DELETE", "hist/a", "",
                   "PUT", "hist/a", "3", "PUT", "hist/c", "4", "DELETE", "hist/b", ""]
        from_first = self.watch("--rev", str(first), "--prefix", "hist/")
        from_delete = self.watch("--rev", str(deleted), "--prefix", "hist/")
        self.assertEqual(from_first.read(len(history)), history)
        self.assertEqual(from_delete.read(len(history) - 6), history[6:])
        self.put("hist/d", "live")
        self.assertEqual(from_first.read(3), ["PUT", "hist/d", "live"])
        self.assertEqual(from_delete.read(3), ["PUT", "hist/d", "live"])

    def test_watch_prev_kv(self) -> None:
        """``--prev-kv`` prints the previous key and value before each event that had one;
        ``-w json`` carries it as ``prev_kv``."""
        start = self.current_revision() + 1
        simple = self.watch("--rev", str(start), "--prev-kv", "pkv")
        as_json = self.watch("--rev", str(start), "--prev-kv", "pkv", "-w", "json")
        created = self.put("pkv", "1")
        updated = self.put("pkv", "2")
        deleted = self.delete("pkv")
        self.assertEqual(simple.read(13), ["PUT", "pkv", "1",
                                           "PUT", "pkv", "1", "pkv", "2",
                                           "DELETE", "pkv", "2", "pkv", ""])
        first = {"key": b64("pkv"), "create_revision": created, "mod_revision": created,
                 "version": 1, "value": b64("1")}
        second = {"key": b64("pkv"), "create_revision": created, "mod_revision": updated,
                  "version": 2, "value": b64("2")}
        events = [e for r in json_lines(as_json.read_until(lambda line: "\"type\":1" in line))
                  for e in r["Events"]]
        self.assertEqual(events, [put_event("pkv", "1", created, created, 1),
                                  put_event("pkv", "2", created, updated, 2, prev=first),
                                  delete_event("pkv", deleted, prev=second)])

    def test_watch_json_one_response_per_txn(self) -> None:
        """``-w json`` prints one response per revision: a txn's puts and deletes are the
        events of one response, whose header revision is the txn's."""
        w = self.watch("-w", "json", "--prefix", "js/")
        sync_watch(w, lambda value: self.put("js/probe", value), json_value_line)
        a = self.put("js/a", "1")
        both = self.txn("put js/b 2", "put js/a 3", "del js/nothing", "put elsewhere 0")
        gone = self.delete("js/a")
        swept = self.delete("js/", "--prefix")
        lines = w.read(4)
        self.assertEqual([masked(r) for r in json_lines(lines)], [
            response(a, put_event("js/a", "1", a, a, 1)),
            response(both, put_event("js/b", "2", both, both, 1),
                     put_event("js/a", "3", a, both, 2)),
            response(gone, delete_event("js/a", gone)),
            response(swept, delete_event("js/b", swept), delete_event("js/probe", swept)),
        ])
        self.assertTrue(lines[0].startswith('{"Header":{"cluster_id":'), lines[0])

    def test_interactive_watch_and_progress(self) -> None:
        """Two watches from stdin print their events; ``progress`` prints one line per
        watcher; anything else is refused on stderr; EOF ends etcdctl with status 3."""
        start = self.current_revision() + 1
        w = start_etcdctl(self, self.cluster.endpoints, "watch", "-i", stdin=True)
        w.write_line(f"watch --rev {start} ia/foo")
        w.write_line(f"watch --rev {start} --prefix ia/bar")
        w.write_line("cancel 0")
        w.write_line("watch")
        # NB: one write at a time: each watcher prints from its own goroutine
        self.put("ia/foo", "1")
        self.assertEqual(w.read(3), ["PUT", "ia/foo", "1"])
        self.put("ia/bar/x", "2")
        self.assertEqual(w.read(3), ["PUT", "ia/bar/x", "2"])
        self.put("ia/zzz", "not watched")
        self.put("ia/barn", "3")
        self.assertEqual(w.read(3), ["PUT", "ia/barn", "3"])
        last = self.put("ia/foo", "4")
        self.assertEqual(w.read(3), ["PUT", "ia/foo", "4"])
        w.write_line("progress")
        self.assertEqual(w.read(2), [f"progress notify: {last}"] * 2)
        w.close_stdin()
        self.assertEqual(w.wait_exit(), 3)
        self.assertEqual(w.rest(), [])
        self.assertEqual(w.error_lines(), [
            "Invalid command cancel 0 (only support watch)",
            "Invalid command watch (command type or key is not provided)",
            "Error: Error reading watch request line: EOF"])

    def test_watch_from_compacted_revision(self) -> None:
        """A watch from below the compaction gets the compacted response (exit status 5);
        one from the compacted revision itself replays from there."""
        old = self.put("cmp/k", "v1")
        kept = self.put("cmp/k", "v2")
        newest = self.put("cmp/k", "v3")
        self.assertEqual(self.ctl_ok("compact", str(kept)), f"compacted revision {kept}\n")
        w = self.watch("--rev", str(old), "cmp/k")
        self.assertEqual(w.wait_exit(), 5)
        self.assertEqual(w.rest(), [])
        self.assertEqual(w.error_lines(), [f"watch was canceled ({COMPACTED})",
                                            "Error: watch is canceled by the server"])
        as_json = self.watch("--rev", str(old), "cmp/k", "-w", "json")
        self.assertEqual(as_json.wait_exit(), 5)
        self.assertEqual([masked(r) for r in json_lines(as_json.rest())], [
            {"Header": {"cluster_id": "*", "member_id": "*", "raft_term": "*"},
             "Events": [], "CompactRevision": kept, "Canceled": True, "Created": False}])
        replay = self.watch("--rev", str(kept), "cmp/k", "-w", "json")
        events = events_of(json_lines(replay.read_until(lambda line: b64("v3") in line)))
        self.assertEqual(events, [("PUT", "cmp/k", "v2", old, kept, 2),
                                  ("PUT", "cmp/k", "v3", old, newest, 3)])

    def test_follower_watch_sees_the_leaders_sequence(self) -> None:
        """Watches from one revision on the leader and on a follower print the same
        events, with a txn's events in one response on both."""
        leader = self.wait_leader()
        follower, other = [m for m in self.cluster.members if m is not leader]
        start = self.current_revision() + 1
        on_leader = self.watch("--rev", str(start), "--prefix", "fw/", "-w", "json", on=leader)
        on_follower = self.watch("--rev", str(start), "--prefix", "fw/", "-w", "json",
                                 on=follower)
        a = self.put("fw/a", "1", on=leader)
        b = self.put("fw/b", "2", on=follower)
        both = self.txn("put fw/c 3", "put fw/a 4", "del fw/b", on=follower)
        gone = self.delete("fw/a", on=other)
        end = self.put("fw/end", "5", on=other)
        expected = [("PUT", "fw/a", "1", a, a, 1), ("PUT", "fw/b", "2", b, b, 1),
                    ("PUT", "fw/c", "3", both, both, 1), ("PUT", "fw/a", "4", a, both, 2),
                    ("DELETE", "fw/b", "", 0, both, 0), ("DELETE", "fw/a", "", 0, gone, 0),
                    ("PUT", "fw/end", "5", end, end, 1)]
        for w in (on_leader, on_follower):
            responses = json_lines(w.read_until(lambda line: b64("fw/end") in line))
            self.assertEqual(events_of(responses), expected, w.describe())
            txn_responses = [r for r in responses
                             if any(e["kv"]["mod_revision"] == both for e in r["Events"])]
            self.assertEqual(len(txn_responses), 1, w.describe())
            self.assertEqual(sum(e["kv"]["mod_revision"] == both
                                 for e in txn_responses[0]["Events"]), 3)
        self.assertEqual([json_lines(w.seen)[0]["Header"]["member_id"]
                          for w in (on_leader, on_follower)],
                         [leader.member_id, follower.member_id])
