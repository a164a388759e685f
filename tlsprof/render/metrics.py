"""Prometheus/OpenMetrics export of a report: the live endpoint (`--metrics ADDR:PORT`) and the text
exposition for node_exporter's textfile collector (`tlsprof report FILE --format prometheus`).

Both read only a report dict (tlsprof.report/1): the endpoint asks the session for the report of its
newest snapshot at scrape time and never talks to the target itself (the session polls it). The
metric names, labels and meanings are listed in docs/exports.md.
"""

import datetime
import ipaddress
import threading

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest, start_http_server
from prometheus_client.registry import CollectorRegistry

from tlsprof.model.causes import CAUSES
from tlsprof.errors import UsageError

DEFAULT_ADDR = "127.0.0.1"
PREFIX = "tlsprof_"


def _g(name, doc, labels):
    return GaugeMetricFamily(PREFIX + name, doc, labels=labels)


def _timestamp(captured_at):
    try:
        return datetime.datetime.fromisoformat(captured_at).timestamp()
    except (TypeError, ValueError):
        return None


def report_metrics(report, pid=None):
    """The gauge families describing `report` (None: no snapshot yet, only tlsprof_snapshots 0)."""
    if report is None:
        snaps = _g("snapshots", "Snapshots taken of the target so far.", ["pid"])
        snaps.add_metric([str(pid or "")], 0)
        return [snaps]
    target = report.get("target") or {}
    p = str(target.get("pid", pid or ""))
    totals = report.get("totals") or {}
    out = []
    rows = _process_rows(report, p)

    live = _g(
        "live_bytes",
        "Live OpenSSL heap bytes in the process by cause (footprint: usable size + chunk header).",
        ["pid", "cause"],
    )
    for row in rows:
        for c in CAUSES:
            live.add_metric([row["pid"], c], row["by_cause"].get(c, 0))
    out.append(live)

    conn = _g(
        "connection_bytes",
        "Mean OpenSSL bytes per live connection of the process by cause, its share of its context included.",
        ["pid", "cause"],
    )
    for row in rows:
        per_cause = row["per"].get("by_cause") or {}
        for c in CAUSES:
            conn.add_metric([row["pid"], c], per_cause.get(c, 0))
    out.append(conn)

    for name, key, doc in (
        ("connection_own_bytes", "own_bytes", "Mean bytes a live connection owns itself (no context share)."),
        (
            "connection_context_share_bytes",
            "context_share_bytes",
            "Mean share of its context's bytes per live connection.",
        ),
    ):
        g = _g(name, doc, ["pid"])
        for row in rows:
            g.add_metric([row["pid"]], row["per"].get(key, 0) or 0)
        out.append(g)

    g = _g("connections", "Live TLS connections (SSL objects) in the process.", ["pid"])
    for row in rows:
        g.add_metric([row["pid"]], row["connections"])
    out.append(g)

    g = _g("contexts", "Live TLS contexts (SSL_CTX objects) in the process.", ["pid"])
    for row in rows:
        g.add_metric([row["pid"]], row["contexts"])
    out.append(g)

    if len(rows) > 1:  # a mean is not a sum: the tree's own per-connection figure
        per = report.get("per_connection") or {}
        g = _g(
            "tree_connection_bytes",
            "Mean OpenSSL bytes per live connection over every process of the tree by cause (the report's headline).",
            ["pid", "cause"],
        )
        for c in CAUSES:
            g.add_metric([p, c], (per.get("by_cause") or {}).get(c, 0))
        out.append(g)

    g = _g(
        "finding_active",
        "1 for each finding the newest snapshot shows (by finding id).",
        ["pid", "finding", "severity"],
    )
    for f in report.get("findings") or []:
        g.add_metric([p, str(f.get("id")), str(f.get("severity"))], 1)
    out.append(g)

    g = _g("untracked_bytes", "Live OpenSSL bytes whose owner or cause could not be tracked.", ["pid"])
    g.add_metric([p], totals.get("untracked_bytes", 0) or 0)
    out.append(g)

    if any(row["rss_bytes"] is not None for row in rows):
        g = _g("target_rss_bytes", "Resident set size of the process.", ["pid"])
        for row in rows:
            if row["rss_bytes"] is not None:
                g.add_metric([row["pid"]], row["rss_bytes"])
        out.append(g)

    memory = report.get("memory") or {}
    if memory.get("parts"):
        g = _g(
            "memory_bytes",
            "The target's RSS split into measured parts (openssl_heap, python_connections, "
            "tlsprof_tracker, other_heap, malloc_free, thread_stacks, other_anonymous, file_backed); "
            "summed over the processes of a tree.",
            ["pid", "part"],
        )
        for part in memory["parts"]:
            g.add_metric([p, str(part.get("name"))], part.get("bytes", 0))
        out.append(g)
    per = report.get("per_connection") or {}
    if per.get("python_bytes") is not None:
        g = _g(
            "connection_python_bytes",
            "Mean Python-side bytes per live connection (its buffers, socket, "
            "protocol objects), from the in-target agent.",
            ["pid"],
        )
        g.add_metric([p], per.get("python_bytes") or 0)
        out.append(g)
        g = _g("connection_total_bytes", "Mean bytes per live connection, OpenSSL and Python sides together.", ["pid"])
        g.add_metric([p], per.get("total_bytes") or 0)
        out.append(g)
    largest = (memory.get("per_connection") or {}).get("largest")
    if largest:
        g = _g(
            "connection_largest_part_bytes",
            "The largest single part of a connection's memory on either "
            "side (e.g. asyncio's read buffer, the CA store), by side and name.",
            ["pid", "side", "part"],
        )
        g.add_metric([p, str(largest.get("side")), str(largest.get("name"))], largest.get("bytes", 0))
        out.append(g)

    peak = report.get("peak") or {}
    g = _g("snapshots", "Snapshots taken of the target so far.", ["pid"])
    g.add_metric([p], peak.get("snapshots", 1))
    out.append(g)

    ts = _timestamp(report.get("captured_at"))
    if ts is not None:
        g = _g("snapshot_timestamp_seconds", "Unix time the reported snapshot was taken.", ["pid"])
        g.add_metric([p], ts)
        out.append(g)
    return out


def _process_rows(report, root_pid) -> list:
    """One row per process: the report's `processes` of a tree, or the report itself (one process)."""
    processes = report.get("processes") or []
    if len(processes) > 1:
        return [
            {
                "pid": str(q.get("pid")),
                "by_cause": q.get("by_cause") or {},
                "per": q.get("per_connection") or {},
                "connections": q.get("connections", 0),
                "contexts": q.get("contexts", 0),
                "rss_bytes": q.get("rss_bytes"),
            }
            for q in processes
        ]
    return [
        {
            "pid": root_pid,
            "by_cause": (report.get("totals") or {}).get("by_cause") or {},
            "per": report.get("per_connection") or {},
            "connections": len(report.get("connections") or []),
            "contexts": sum(1 for c in report.get("contexts") or [] if c.get("alive", True) is not False),
            "rss_bytes": (report.get("target") or {}).get("rss_bytes"),
        }
    ]


class ReportCollector:
    """A prometheus-client collector over a function returning the current report (or None)."""

    def __init__(self, get_report, pid=None):
        self._get_report = get_report
        self._pid = pid
        self._last_good = None

    def collect(self):
        try:
            report = self._get_report()
        except RuntimeError:  # a report built while the poller mutated the session: show the last one
            report = self._last_good
        if report is not None:
            self._last_good = report
        return report_metrics(report, self._pid)

    def describe(self):
        return []  # families are known only at scrape time


def exposition(report) -> str:
    """The Prometheus text exposition (format 0.0.4) of a report, for the textfile collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReportCollector(lambda: report))
    return generate_latest(registry).decode("utf-8")


def parse_address(text):
    """'ADDR:PORT', '[v6]:PORT', ':PORT' or 'PORT' -> (addr, port); default address 127.0.0.1."""
    bad = f"--metrics: expected ADDR:PORT (e.g. 127.0.0.1:9464), got {text!r}"
    text = (text or "").strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise UsageError(bad)
    elif ":" in text:
        host, _, port = text.rpartition(":")
        if ":" in host:
            raise UsageError(bad + " (put an IPv6 address in brackets: [::1]:9464)")
    else:
        host, port = "", text
    host = host or DEFAULT_ADDR
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(bad)
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise UsageError(bad + " (ADDR must be an IP address or localhost)") from None
    return host, int(port)


class MetricsServer:
    """The running endpoint: .address, .port, .url; stop() shuts it down and frees the port."""

    def __init__(self, httpd, thread):
        self._httpd = httpd
        self._thread = thread
        self.address, self.port = httpd.server_address[:2]
        host = f"[{self.address}]" if ":" in self.address else self.address
        self.url = f"http://{host}:{self.port}/metrics"
        self._lock = threading.Lock()
        self._stopped = False

    def stop(self):
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5.0)


def start_metrics_server(source, address) -> MetricsServer:
    """Serve the gauges of `source.latest_report()` (tlsprof/analysis/reports.py) on http://ADDR:PORT/ (any path) in a daemon
    thread. OpenMetrics when the scraper asks for it (Accept header), else Prometheus text."""
    host, port = parse_address(address)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReportCollector(source.latest_report, pid=source.main_pid))
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise UsageError(f"--metrics: cannot listen on {address}: {exc.strerror or exc}") from None
    return MetricsServer(httpd, thread)
