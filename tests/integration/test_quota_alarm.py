"""``--quota-backend-bytes`` and the NOSPACE alarm on a 3-member cluster, driven with the
real etcdctl, as etcd 3.4.23 behaves:

- A put that would take the backend past the quota fails with ``etcdserver: mvcc:
  database space exceeded`` (ResourceExhausted) and raises the NOSPACE alarm for the member
  that refused it; every member then lists it (``alarm list``, ``endpoint status``
  errors), refuses puts and lease grants, and still serves gets and deletes. /health says
  false while an alarm is active, so a member restarted meanwhile is awaited by its
  Status; it comes back with the alarm.
- ``alarm disarm`` while the store is still over the quota: the next big put raises it
  again. After deletes, ``compact``, ``defrag`` and ``alarm disarm`` puts work everywhere
  and every acknowledged key that was not deleted is on every member. (etcd's applier
  checks the quota again and may store the put it then refuses; etcdd refuses before
  proposing only, so the refused key is allowed on the members but not required.)

The fill goes through grpc (a few dozen 256 KiB puts); etcdctl checks everything else.
Which members raise an alarm differs between runs (each member checks its own backend
file), so the checks ask for at least one NOSPACE alarm and no other kind.
"""
from __future__ import annotations

import json
from typing import Any

import grpc

from etcdd.proto import rpc_pb2 as pb, rpc_pb2_grpc
from ops.cluster import LocalMember, member_status
from tests.integration.cluster import ClusterTestCase, log_phase, phase

QUOTA_BYTES = 16 << 20
VALUE = b"q" * (256 << 10)
MAX_FILL_PUTS = 400            # 100 MiB: far past any quota of 16 MiB
NO_SPACE = "etcdserver: mvcc: database space exceeded"
PREFIX = b"fill/"


class QuotaAlarmTests(ClusterTestCase):
    """The NOSPACE alarm cycle, as etcd 3.4 goes through it."""
    extra_flags = ("--quota-backend-bytes", str(QUOTA_BYTES))

    def test_nospace_alarm_cycle(self) -> None:
        """Fill past the quota, see the alarm and its refusals on every member and across
        a restart, re-raise it by disarming too early, then compact, defrag, disarm and
        write again, losing no acknowledged key."""
        members = self.cluster.members
        a, c = members[0], members[2]
        with phase("fill to the quota"):
            acked, refused = self.fill(a)
        with phase("alarm and refusals on every member"):
            self.wait(lambda: all(self.status_alarms(m) for m in members), 30,
                      "NOSPACE in every member's status errors")
            for m in members:
                self.assert_nospace_listed(m)
                self.assert_refused("put", f"more/{m.name}", "x", on=m)
                self.assert_refused("lease", "grant", "60", on=m)
                got = self.ctl_ok("get", (PREFIX + b"0000").decode(), "--print-value-only",
                                  on=m)
                self.assertEqual(got, VALUE.decode() + "\n")
        deleted = sorted(acked)[:len(acked) // 2]
        with phase(f"delete {len(deleted)} keys"):
            end = PREFIX + b"%04d" % len(deleted)      # the keys are fill/0000, fill/0001...
            out = self.ctl_ok("del", deleted[0].decode(), end.decode(), on=c)
            self.assertEqual(out, f"{len(deleted)}\n")
        with phase("restart a member while the alarm is active"):
            self.cluster.stop(c)
            self.cluster.start_member(c, wait=False)
            self.wait(lambda: self.status_alarms(c), 60,
                      f"{c.name} to answer Status with a leader and the alarm")
            self.assert_refused("put", "more/restarted", "x", on=c)
        with phase("disarm while still over the quota: raised again"):
            self.assertIn("alarm:NOSPACE", self.ctl_ok("alarm", "disarm", on=a))
            self.assertEqual(self.alarm_list(a), [])
            self.assert_refused("put", "more/big", on=a, stdin=VALUE.decode())
            self.wait(lambda: self.alarm_list(a) != [], 15, "the alarm raised again")
        with phase("compact, defrag, disarm"):
            rev = json.loads(self.ctl_ok("get", "x", "-w", "json", on=a))["header"]["revision"]
            self.ctl_ok("compact", str(rev), "--physical", on=a)
            self.ctl_ok("defrag")
            self.ctl_ok("alarm", "disarm", on=a)
            self.assertEqual(self.alarm_list(a), [])
            for m in members:
                self.ctl_ok("put", f"after/{m.name}", "ok", on=m)
                self.assertEqual(self.status_errors(m), [])
        with phase("no acknowledged key lost"):
            want = {k: rev for k, rev in acked.items() if k not in set(deleted)}
            for m in members:
                stored = self.serializable_range(m, PREFIX)
                self.assertEqual({k: stored.get(k) for k in want}, want, m.name)
                # NB: etcd's applier re-checks the quota and may store a put it refuses
                self.assertLessEqual(set(stored) - set(want), {refused}, m.name)
            log_phase(f"{len(want)} acknowledged keys on every member")

    # -- helpers ---------------------------------------------------------------------------

    def fill(self, member: LocalMember) -> tuple[dict[bytes, int], bytes]:
        """Put 256 KiB values through `member` until one is refused for space; the
        acknowledged keys with their revisions, and the refused key."""
        acked: dict[bytes, int] = {}
        with grpc.insecure_channel(member.endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            for n in range(MAX_FILL_PUTS):
                key = PREFIX + b"%04d" % n
                try:
                    acked[key] = kv.Put(pb.PutRequest(key=key, value=VALUE),
                                        timeout=30).header.revision
                except grpc.RpcError as e:
                    self.assertEqual((e.code(), e.details()),
                                     (grpc.StatusCode.RESOURCE_EXHAUSTED, NO_SPACE))
                    log_phase(f"refused after {len(acked)} puts")
                    return acked, key
        self.fail(f"{MAX_FILL_PUTS} puts of {len(VALUE)} bytes never reached the quota")

    def assert_refused(self, *args: str, on: LocalMember, stdin: str | None = None) -> None:
        """etcdctl `args` on `on` fails with etcd's NOSPACE message."""
        r = self.ctl(*args, on=on, stdin=stdin)
        self.assertNotEqual(r.returncode, 0, f"etcdctl {args[:2]} on {on.name}: {r.stdout}")
        self.assertIn(NO_SPACE, r.stderr.splitlines()[-1])

    def alarm_list(self, member: LocalMember) -> list[dict[str, Any]]:
        """``etcdctl alarm list -w json`` on `member` (no alarms prints ``{}``)."""
        return json.loads(self.ctl_ok("alarm", "list", "-w", "json", on=member)).get(
            "alarms", [])

    def assert_nospace_listed(self, member: LocalMember) -> None:
        """`alarm list` names at least one NOSPACE alarm and nothing else, in etcd's text."""
        alarms = self.alarm_list(member)
        self.assertTrue(alarms, member.name)
        self.assertEqual({a["alarm"] for a in alarms}, {pb.NOSPACE}, alarms)
        # NB: etcd lists alarms in Go map order, which changes from call to call
        want = sorted(f"memberID:{a['memberID']} alarm:NOSPACE " for a in alarms)
        self.assertEqual(sorted(self.ctl_ok("alarm", "list", on=member).splitlines()), want)
        self.assertEqual(sorted(self.status_errors(member)), want)

    def status_errors(self, member: LocalMember) -> list[str]:
        """The `errors` of ``etcdctl endpoint status -w json`` on `member`."""
        [answer] = json.loads(self.ctl_ok("endpoint", "status", "-w", "json", on=member))
        return answer["Status"].get("errors", [])

    def status_alarms(self, member: LocalMember) -> bool:
        """Whether `member` answers Status with a leader and only NOSPACE alarm errors."""
        try:
            status = member_status(member, timeout=2.0)
        except grpc.RpcError:
            return False
        errors = list(status.errors)
        return bool(status.leader and errors
                    and all(e.startswith("memberID:") and e.endswith(" alarm:NOSPACE ")
                            for e in errors))
