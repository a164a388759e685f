"""Which moment a report describes (issue 21): the steady state by default, the peak and the last
snapshot beside it, each re-rendered from the saved file with `tlsprof report FILE --at …`."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from reportcheck import check_report, load_checked
from tlsprof.analysis.moments import select

TLSPROF = [sys.executable, "-m", "tlsprof"]


def _stop_tlsprof(server, timeout=60):
    """SIGTERM to tlsprof: one last look, then the signal reaches the server (whose teardown is
    never snapshotted); wait for the report."""
    os.kill(server.pid, signal.SIGTERM)
    server.proc.wait(timeout)


def test_burst_then_idle_reports_the_steady_state(spawn, tmp_path):
    """200 clients connect at once (200 handshakes in flight) and then idle: the default report is
    the steady state, its per-connection bytes those of the last snapshot, the peak named beside it."""
    report_path = tmp_path / "burst.json"
    server = spawn.server(wrapper=[*TLSPROF, "run", "-o", str(report_path), "--interval", "0.1", "--"])
    spawn.clients(server.port, 200, interval=600, concurrency=200)
    time.sleep(2.0)  # idle: a dozen snapshots of the settled connections
    _stop_tlsprof(server)
    report = load_checked(report_path)
    assert report["peak"]["chosen"] == "steady"
    per = report["per_connection"]
    moments = report["moments"]
    last = check_report(select(report, "last"))
    peak = check_report(select(report, "peak"))
    print(
        f"steady: {per['connections']} connections, {per['bytes']} B each; last: "
        f"{last['per_connection']['connections']} connections, {last['per_connection']['bytes']} B each; "
        f"peak: {moments['peak']}"
    )
    assert per["connections"] >= 190
    assert per["connections"] == moments["steady"]["connections"]
    assert abs(per["bytes"] - last["per_connection"]["bytes"]) <= 0.10 * last["per_connection"]["bytes"]
    assert peak["peak"]["chosen"] == "peak"
    assert peak["totals"]["live_bytes"] == moments["peak"]["live_bytes"] >= report["totals"]["live_bytes"]
    assert last["totals"]["live_bytes"] == moments["last"]["live_bytes"]
    # the peak is named beside the steady state, in words
    text = subprocess.run([*TLSPROF, "report", str(report_path)], capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    head = next((line for line in text.stdout.splitlines() if line.startswith("Steady state")), text.stdout)
    assert head.startswith(f"Steady state: {per['connections']} connections at "), head
    assert "; peak " in head, head
    html = tmp_path / "burst.html"
    done = subprocess.run(
        [*TLSPROF, "report", str(report_path), "--html", str(html)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert f"Steady state: {per['connections']} connections at " in html.read_text()


def test_report_at_rerenders_a_saved_report(spawn, tmp_path):
    report_path = tmp_path / "r.json"
    server = spawn.server(wrapper=[*TLSPROF, "run", "-o", str(report_path), "--interval", "0.1", "--"])
    clients = spawn.clients(server.port, 30, interval=600, concurrency=30)
    time.sleep(1.0)
    clients.stop()  # the last snapshots see fewer connections than the steady state
    time.sleep(1.0)
    _stop_tlsprof(server)
    saved = load_checked(report_path)
    for at in ("peak", "last", "steady"):
        out = subprocess.run(
            [*TLSPROF, "report", str(report_path), "--at", at, "--format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        doc = check_report(json.loads(out.stdout))
        assert doc["peak"]["chosen"] == at
        assert doc["totals"]["live_bytes"] == saved["moments"][at]["live_bytes"]
        assert doc["per_connection"]["connections"] == saved["moments"][at]["connections"]
        # the re-rendered report keeps every moment: it can be re-chosen again
        back = select(doc, "steady")
        assert back["per_connection"] == saved["per_connection"]
        text = subprocess.run(
            [*TLSPROF, "report", str(report_path), "--at", at], capture_output=True, text=True, timeout=60
        )
        assert text.returncode == 0, text.stderr
        words = {"steady": "Steady state:", "peak": "Showing the peak", "last": "Showing the last snapshot"}
        assert words[at] in text.stdout
    assert saved["moments"]["steady"]["connections"] == 30
    assert saved["moments"]["last"]["connections"] < 30


def test_old_report_without_moments_stays_readable(spawn, tmp_path):
    report_path = tmp_path / "r.json"
    server = spawn.server(wrapper=[*TLSPROF, "run", "-o", str(report_path), "--interval", "0.2", "--"])
    spawn.clients(server.port, 5, interval=600)
    time.sleep(0.8)
    _stop_tlsprof(server)
    old = load_checked(report_path)
    for key in ("moments", "moment_reports", "processes"):
        old.pop(key, None)
    old["peak"]["chosen"] = "peak"
    for f in old["findings"]:
        f.pop("only_at", None)
    old_path = tmp_path / "old.json"
    old_path.write_text(json.dumps(old))
    shown = subprocess.run([*TLSPROF, "report", str(old_path)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "Peak snapshot" in shown.stdout
    same = subprocess.run(
        [*TLSPROF, "report", str(old_path), "--at", "peak"], capture_output=True, text=True, timeout=60
    )
    assert same.returncode == 0, same.stderr
    other = subprocess.run(
        [*TLSPROF, "report", str(old_path), "--at", "last"], capture_output=True, text=True, timeout=60
    )
    assert other.returncode == 2
    assert other.stderr.count("\n") == 1 and "Traceback" not in other.stderr, other.stderr
    assert "keeps the peak moment" in other.stderr


@pytest.mark.parametrize("at", ["steady", "peak", "last"])
def test_run_at_choice_is_the_report_moment(spawn, tmp_path, at):
    report_path = tmp_path / "r.json"
    server = spawn.server(wrapper=[*TLSPROF, "run", "-o", str(report_path), "--interval", "0.2", "--at", at, "--"])
    spawn.clients(server.port, 3, interval=600)
    time.sleep(0.8)
    _stop_tlsprof(server)
    report = load_checked(report_path)
    assert report["peak"]["chosen"] == at
    assert report["totals"]["live_bytes"] == report["moments"][at]["live_bytes"]


def test_a_finding_only_the_peak_shows_is_marked_and_saves_nothing_in_the_steady_state(spawn, tmp_path):
    """Two real reports as the moments of one session: a steady state with one shared context, a peak
    whose contexts each hold their own CA store (what a burst of per-request contexts looks like)."""
    from tlsprof.analysis.moments import assemble

    reports = {}
    for name, args in (("steady", ()), ("peak", ("--ctx-per-conn",))):
        path = tmp_path / f"{name}.json"
        server = spawn.server(*args, wrapper=[*TLSPROF, "run", "-o", str(path), "--interval", "0.2", "--"])
        spawn.clients(server.port, 12, interval=600)
        time.sleep(0.8)
        _stop_tlsprof(server)
        reports[name] = load_checked(path)
    steady, peak = reports["steady"], reports["peak"]
    assert "ca-store-per-connection" in {f["id"] for f in peak["findings"]}
    assert "ca-store-per-connection" not in {f["id"] for f in steady["findings"]}
    moments = {n: r["moments"]["steady"] for n, r in reports.items()}
    report = check_report(assemble({"steady": steady, "peak": peak, "last": steady}, "steady", [], moments))
    marked = [f for f in report["findings"] if f["id"] == "ca-store-per-connection"]
    assert len(marked) == 1 and marked[0]["only_at"] == "peak"
    assert marked[0]["saving_bytes"] == 0 and marked[0]["evidence"]["peak_saving_bytes"] > 0
    assert marked[0]["detail"].startswith("Seen only at the peak")
    # re-chosen at the peak, the finding is the peak's own again; back at the steady state, marked once
    at_peak = select(report, "peak")
    assert [f for f in at_peak["findings"] if f["id"] == "ca-store-per-connection"][0].get("only_at") is None
    back = select(at_peak, "steady")
    assert [f.get("only_at") for f in back["findings"] if f["id"] == "ca-store-per-connection"] == ["peak"]
    text = subprocess.run(
        [*TLSPROF, "report", "/dev/stdin"], input=json.dumps(report), capture_output=True, text=True, timeout=60
    )
    assert text.returncode == 0, text.stderr
    assert "at the peak only" in text.stdout


TEARDOWN_TARGET = """
import ssl, time
class Holder:
    def __init__(self):
        self.ctx = ssl.create_default_context()
    def __del__(self, sleep=time.sleep):
        self.ctx = None  # the interpreter's teardown frees the context, then lingers
        sleep(1.0)
holder = Holder()
sleep = time.sleep
sleep(1.0)
"""


def test_a_python_targets_teardown_is_never_the_reported_moment(tmp_path):
    """A Python target that exits by itself frees its contexts during interpreter teardown; the
    snapshots taken then (ten here, the teardown lingers 1 s) describe no working state: every
    moment, the last included, is the state before it (the agent's atexit hook marks the shim)."""
    report_path = tmp_path / "r.json"
    proc = subprocess.run(
        [*TLSPROF, "run", "-o", str(report_path), "--interval", "0.1", "--", sys.executable, "-c", TEARDOWN_TARGET],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = load_checked(report_path)
    for name in ("steady", "peak", "last"):
        body = check_report(select(report, name))
        assert body["totals"]["by_cause"].get("ca_store", 0) > 500 * 1024, (name, body["totals"]["by_cause"])
    assert report["moments"]["last"]["t"] > 1.5, report["moments"]  # snapshots were taken in the teardown
