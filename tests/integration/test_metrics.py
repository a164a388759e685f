"""The Prometheus/OpenMetrics exports: the live endpoint of a profiled run and the textfile exposition."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from test_findings import report_with
from tlsenv import REPO_ROOT, free_port

from tlsprof.collect import launch
from tlsprof.model.causes import CAUSES
from tlsprof.errors import UsageError
from tlsprof.render.metrics import ReportCollector, exposition, parse_address, start_metrics_server
from tlsprof.analysis.reports import ReportSource
from tlsprof.collect.session import Session

WAIT = 60.0
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def scrape(url, accept=None, timeout=10.0):
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.headers.get("Content-Type", ""), resp.read().decode("utf-8")


def samples(text, parser=parse_prometheus):
    """{(name, frozenset(labels.items())): value} of every sample."""
    out = {}
    for family in parser(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(smp, name, **labels):
    return smp[(name, frozenset({k: str(v) for k, v in labels.items()}.items()))]


def by_label(smp, name, label):
    return {dict(k[1])[label]: v for k, v in smp.items() if k[0] == name}


def wait_for(what, fn, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(0.1)


def assert_metrics_match_report(smp, report):
    """Every gauge equals what the report says (the report of the same snapshot)."""
    pid = report["target"]["pid"]
    totals, per = report["totals"], report["per_connection"]
    assert by_label(smp, "tlsprof_live_bytes", "cause") == {c: totals["by_cause"].get(c, 0) for c in CAUSES}
    assert sum(by_label(smp, "tlsprof_live_bytes", "cause").values()) == totals["live_bytes"]
    assert by_label(smp, "tlsprof_connection_bytes", "cause") == {c: per["by_cause"].get(c, 0) for c in CAUSES}
    assert value(smp, "tlsprof_connection_own_bytes", pid=pid) == per["own_bytes"]
    assert value(smp, "tlsprof_connection_context_share_bytes", pid=pid) == per["context_share_bytes"]
    assert value(smp, "tlsprof_connections", pid=pid) == len(report["connections"]) == per["connections"]
    assert value(smp, "tlsprof_contexts", pid=pid) == sum(1 for c in report["contexts"] if c.get("alive", True))
    assert value(smp, "tlsprof_untracked_bytes", pid=pid) == totals.get("untracked_bytes", 0)
    assert value(smp, "tlsprof_target_rss_bytes", pid=pid) == report["target"]["rss_bytes"]
    assert value(smp, "tlsprof_snapshots", pid=pid) == report["peak"]["snapshots"]
    assert by_label(smp, "tlsprof_finding_active", "finding") == {f["id"]: 1 for f in report["findings"]}
    assert {dict(k[1])["pid"] for k in smp} == {str(pid)}


def test_endpoint_serves_the_report_of_the_newest_snapshot_exactly(spawn, tmp_path):
    """In-process session over a real shimmed echo server: poll, scrape over HTTP, compare with
    the report source's latest_report() of that same snapshot, gauge by gauge."""
    channel = launch.private_dir()
    try:
        server = spawn.server("--ctx-per-conn", env=launch.preload_env(channel))
        session = Session(channel, server.pid, ["echo_server.py"], mode="run")
        source = ReportSource(session)
        metrics = start_metrics_server(source, "127.0.0.1:0")
        try:
            _, text = scrape(metrics.url)
            assert value(samples(text), "tlsprof_snapshots", pid=server.pid) == 0  # nothing polled yet
            spawn.clients(server.port, 3, interval=60.0, ctx_per_conn=True)
            wait_for(
                "3 connections in a snapshot",
                lambda: (snap := session.poll()) is not None and len(snap.connections) == 3,
            )
            _, text = scrape(metrics.url)
            report = source.latest_report()
            smp = samples(text)
            assert_metrics_match_report(smp, report)
            assert value(smp, "tlsprof_connections", pid=server.pid) == 3
            assert value(smp, "tlsprof_contexts", pid=server.pid) >= 3  # --ctx-per-conn
            assert by_label(smp, "tlsprof_finding_active", "finding") == {"ca-store-per-connection": 1}
            assert value(smp, "tlsprof_live_bytes", pid=server.pid, cause="ca_store") > 3 * 500_000
            # OpenMetrics for scrapers that ask for it, same numbers
            ctype, om = scrape(metrics.url, accept=OPENMETRICS)
            assert ctype.startswith("application/openmetrics-text") and om.rstrip().endswith("# EOF")
            assert samples(om, parse_openmetrics) == smp
        finally:
            metrics.stop()
        with pytest.raises(OSError):
            scrape(metrics.url, timeout=3.0)  # stopped: the port is closed
    finally:
        shutil.rmtree(channel, ignore_errors=True)


def test_scrape_during_tlsprof_run_matches_its_report(spawn, tmp_path):
    """`tlsprof run --metrics` end to end: scrape while it profiles a real echo server, then check
    the scraped snapshot against the saved report's history entry of the same snapshot."""
    port = free_port()
    out = tmp_path / "r.json"
    wrapper = [
        sys.executable,
        "-m",
        "tlsprof",
        "run",
        "-o",
        str(out),
        "--interval",
        "0.2",
        "--metrics",
        f"127.0.0.1:{port}",
        "--",
    ]
    server = spawn.server(wrapper=wrapper, cwd=REPO_ROOT, timeout=90)
    pid = server.target_pid()
    spawn.clients(server.port, 4, interval=60.0)
    url = f"http://127.0.0.1:{port}/metrics"

    def scraped_with_4():
        smp = samples(scrape(url)[1])
        return smp if smp.get(("tlsprof_connections", frozenset({"pid": str(pid)}.items()))) == 4 else None

    smp = wait_for("4 connections on the endpoint", scraped_with_4)
    ctype, om = scrape(url, accept=OPENMETRICS)
    assert ctype.startswith("application/openmetrics-text")
    assert {f.name for f in parse_openmetrics(om)} >= {
        "tlsprof_live_bytes",
        "tlsprof_connection_bytes",
        "tlsprof_connections",
        "tlsprof_contexts",
        "tlsprof_finding_active",
        "tlsprof_untracked_bytes",
        "tlsprof_target_rss_bytes",
    }
    assert value(smp, "tlsprof_target_rss_bytes", pid=pid) > 0
    assert value(smp, "tlsprof_contexts", pid=pid) >= 1

    server.stop_target()
    assert out.exists(), server.describe()
    report = json.loads(out.read_text())
    assert report["target"]["pid"] == pid
    k = int(value(smp, "tlsprof_snapshots", pid=pid))
    seen = report["history"][k - 1]  # snapshot number k of the session
    assert seen["connections"] == 4
    assert seen["live_bytes"] == sum(by_label(smp, "tlsprof_live_bytes", "cause").values())
    # nobody listens on the port once tlsprof run exited (SO_REUSEADDR: TIME_WAIT of the scrapes is fine)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_textfile_exposition_matches_the_report(tmp_path):
    report = report_with([(900_000, 1)] * 3)
    report["target"]["rss_bytes"] = 50_000_000
    report["totals"]["untracked_bytes"] = 123
    report["peak"] = {"chosen": "last", "snapshots": 7, "live_bytes_at_peak": report["totals"]["live_bytes"]}
    from tlsprof.analysis.findings import compute_findings

    report["findings"] = compute_findings(report)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    r = subprocess.run(
        [sys.executable, "-m", "tlsprof", "report", str(path), "--format", "prometheus"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == exposition(report)
    smp = samples(r.stdout)
    assert_metrics_match_report(smp, report)
    assert "# TYPE tlsprof_live_bytes gauge" in r.stdout


def test_before_the_first_snapshot_only_the_snapshot_count_is_served():
    families = list(ReportCollector(lambda: None, pid=42).collect())
    assert [(f.name, [(s.labels, s.value) for s in f.samples]) for f in families] == [
        ("tlsprof_snapshots", [({"pid": "42"}, 0)])
    ]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        (":9464", ("127.0.0.1", 9464)),
        ("9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_metrics_address_forms(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "127.0.0.1:",
        "127.0.0.1:99999",
        "::1:9464",
        "[::1]9464",
        "example.com:80",
        "127.0.0.1:-1",
        "1.2.3.4.5:80",
    ],
)
def test_bad_metrics_address_is_a_usage_error(text):
    with pytest.raises(UsageError) as exc:
        parse_address(text)
    assert "\n" not in str(exc.value) and "ADDR:PORT" in str(exc.value)


def test_bad_metrics_address_on_the_command_line_is_one_line_and_exit_2():
    r = subprocess.run(
        [sys.executable, "-m", "tlsprof", "run", "--metrics", "nowhere", "--", sys.executable, "-c", "pass"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "tlsprof: --metrics: expected ADDR:PORT (e.g. 127.0.0.1:9464), got 'nowhere'"
    ]


def test_port_in_use_is_a_usage_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(UsageError, match="cannot listen on 127.0.0.1:%d" % port):
            start_metrics_server(
                ReportSource(Session("/nonexistent", os.getpid(), [], mode="run")), f"127.0.0.1:{port}"
            )
