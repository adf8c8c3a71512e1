"""The pure arithmetic and tables of ops/watch_bench.py: events inside the measured
window, delivery lag percentiles, and the side-by-side watch and lease tables of a
report. No IO; the benchmark's processes and servers are in ops/watch_bench.py.
"""
from __future__ import annotations

import array
import math
from typing import Sequence

from ops.bench import percentile


def in_window(times: array.array, start: float, end: float) -> int:
    """How many of `times` fall in ``[start, end]``."""
    return sum(1 for t in times if start <= t <= end)


def lag_percentiles(revs: Sequence[int], sent: Sequence[float], acked: Sequence[float],
                    arrivals: Sequence[tuple[int, float]], start: float,
                    end: float) -> dict[str, float | None]:
    """p50/p99 in ms of event arrival minus put acknowledgement (``lag_``) and minus put
    send (``send_lag_``), over puts acknowledged in ``[start, end]``; ``revs[i]`` was
    sent at ``sent[i]`` and acknowledged at ``acked[i]``.

    A put sent at 1.990, acknowledged at 2.000, whose event arrived at 1.999 has lag
    -1 ms and send lag 9 ms.
    """
    put_at = {rev: (s, a) for rev, s, a in zip(revs, sent, acked) if start <= a <= end}
    out: dict[str, float | None] = {}
    for name, which in (("lag", 1), ("send_lag", 0)):
        lags = sorted((arrived - put_at[rev][which]) * 1000 for rev, arrived in arrivals
                      if rev in put_at)
        for p in (50, 99):
            out[f"{name}_p{p}_ms"] = percentile(lags, p) if lags else None
        out["lag_samples"] = len(lags)
    return out


# (title, cell key, format); a watch row shows the first block, a lease row the second.
WATCH_METRICS = (("puts/s", "puts_per_second", "{:.0f}"),
                 ("events/s", "events_per_second", "{:.0f}"),
                 ("lag p50 ms", "lag_p50_ms", "{:.1f}"), ("lag p99 ms", "lag_p99_ms", "{:.1f}"),
                 ("drain s", "drain_seconds", "{:.1f}"), ("missed", "missed_watchers", "{}"),
                 ("srv CPU s", "server_cpu_seconds", "{:.1f}"),
                 ("cli CPU s", "client_cpu_seconds", "{:.1f}"))
LEASE_METRICS = (("grants/s", "grants_per_second", "{:.0f}"),
                 ("renewals/s", "renewals_per_second", "{:.0f}"),
                 ("srv CPU s", "server_cpu_seconds", "{:.1f}"),
                 ("cli CPU s", "client_cpu_seconds", "{:.1f}"))


def _show(cell: dict | None, key: str, fmt: str) -> str:
    value = None if cell is None else cell.get(key)
    return "-" if value is None else fmt.format(value)


def side_by_side(rows: Sequence[tuple[str, dict[str, dict]]], metrics: Sequence[tuple],
                 servers: Sequence[str], first: str) -> list[str]:
    """Lines of a table: one row per ``(label, {server: cell})``, one column group per
    metric holding a column per server; a missing server or value prints ``-``.

    With servers etcd and etcdd the head reads ``watchers  puts/s`` over
    ``etcd  etcdd``, then a row ``100  9000  4000``.
    """
    n = len(servers)
    body = [[label] + [_show(cells.get(s), key, fmt) for _, key, fmt in metrics for s in servers]
            for label, cells in rows]
    label_width = max(len(first), *(len(row[0]) for row in body))
    widths = []
    for g, (title, _, _) in enumerate(metrics):
        width = max(len(v) for row in body + [[""] + list(servers) * len(metrics)]
                    for v in row[1 + g * n:1 + (g + 1) * n])
        widths.append(max(width, math.ceil((len(title) - 2 * (n - 1)) / n)))

    def line(label: str, values: Sequence[str]) -> str:
        groups = ["  ".join(values[g * n + i].rjust(w) for i in range(n))
                  for g, w in enumerate(widths)]
        return "  ".join([label.ljust(label_width), *groups]).rstrip()
    titles = [title.rjust(n * w + 2 * (n - 1)) for (title, _, _), w in zip(metrics, widths)]
    return ["  ".join([first.ljust(label_width), *titles]).rstrip(),
            line("", list(servers) * len(metrics)), *(line(row[0], row[1:]) for row in body)]


def format_report(report: dict) -> str:
    """The watch table, the lease table and each problem, as printed."""
    servers = report["servers"]
    by: dict[tuple, dict[str, dict]] = {}
    for cell in report["cells"]:
        key = (cell["kind"], cell.get("watchers", cell.get("leases")))
        by.setdefault(key, {})[cell["server"]] = cell
    watch = [(str(n), cells) for (kind, n), cells in by.items() if kind == "watch"]
    lease = [(str(n), cells) for (kind, n), cells in by.items() if kind == "lease"]
    lines = []
    if watch:
        lines += side_by_side(watch, WATCH_METRICS, servers, "watchers")
    if lease:
        lines += [""] + side_by_side(lease, LEASE_METRICS, servers, "leases")
    for cell in report["cells"]:
        if cell.get("problem"):
            what = f"{cell['kind']} {cell.get('watchers', cell.get('leases'))}"
            lines.append(f"{cell['server']} {what}: {cell['problem']}")
    lines += [f"{label}: {text}" for label, text in report.get("notes", [])]
    return "\n".join(lines)
