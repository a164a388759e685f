"""pprof export (issue: pprof export): reports of real servers turned into gzipped profile.proto
files, read back with the real pprof tool (`go tool pprof`, Debian's golang-go), whose sums must be
the report's: total inuse_space = totals.live_bytes, `-tagfocus cause=X` = totals.by_cause[X],
total inuse_objects = totals.live_blocks, a connection's samples = its own bytes; and the top
location of the ctx-per-connection server is a CA-store call site."""

import gzip
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings, strategies as st

from reportcheck import load_checked
from tlsenv import Proc, start_clients
from tlsprof.model.causes import CAUSES
from tlsprof.render.pprof import apportion, split

TLSPROF = [sys.executable, "-m", "tlsprof"]
GO = shutil.which("go")
needs_pprof = pytest.mark.skipif(GO is None, reason="needs `go tool pprof` (make test installs golang-go)")


# --- reading profiles back with the real pprof -------------------------------------------------


def pprof_top(path, *flags, index="inuse_space"):
    """`go tool pprof -top` over every node: (shown, total, [(flat, name)]), values in bytes/counts."""
    argv = [
        GO,
        "tool",
        "pprof",
        "-top",
        "-nodefraction=0",
        "-edgefraction=0",
        f"-sample_index={index}",
        *(["-unit=B"] if index == "inuse_space" else []),
        *flags,
        str(path),
    ]
    env = dict(os.environ, PPROF_TMPDIR=os.path.dirname(os.path.abspath(path)), PPROF_BINARY_PATH="/nonexistent")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    unit = "B" if index == "inuse_space" else ""
    head = re.search(rf"Showing nodes accounting for (\d+)(?:{unit})?, [\d.]+% of (\d+)(?:{unit})? total", proc.stdout)
    assert head, proc.stdout[:2000]
    rows = [
        (int(m.group(1)), m.group(2).strip())
        for m in re.finditer(rf"^\s*(\d+){unit}\s+[\d.]+%\s+[\d.]+%\s+\d+{unit}\s+[\d.]+%\s+(.+)$", proc.stdout, re.M)
    ]
    return int(head.group(1)), int(head.group(2)), rows


def site_name(site):
    file = site["file"]
    while file.startswith("../"):
        file = file[3:]
    # a site without a line (the heap walk's pseudo-site of what predates an attach) is its file alone
    return f"{file}:{site['line']}" if site.get("line") is not None else file


def export(report_path, tmp_path, name="r.pb.gz"):
    out = tmp_path / name
    proc = subprocess.run(
        [*TLSPROF, "report", str(report_path), "--format", "pprof", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    with gzip.open(out) as f:  # a gzipped profile.proto, as pprof's readers expect on disk
        assert f.read(1)
    return out


def check_sums(profile, report):
    """What every profile must say of its report, in pprof's own arithmetic."""
    totals = report["totals"]
    shown, total, rows = pprof_top(profile)
    assert shown == total == totals["live_bytes"]
    # a location per OpenSSL call site, named by its file:line (reports this small keep every one)
    assert {site_name(s) for s in report["sites"] if s["file"] and s["live_bytes"]} <= {name for _, name in rows}
    shown, total, _ = pprof_top(profile, index="inuse_objects")
    assert shown == total  # each site's blocks, spread over its owners
    if sum(s["live_blocks"] for s in report["sites"]) == totals["live_blocks"]:
        assert total == totals["live_blocks"]
    for cause in CAUSES:
        want = totals["by_cause"].get(cause, 0)
        if want:
            assert pprof_top(profile, "-tagfocus", f"cause=^{cause}$")[0] == want, cause
    sites_by_cause = {}
    for s in report["sites"]:
        sites_by_cause[s["cause"]] = sites_by_cause.get(s["cause"], 0) + s["live_bytes"]
    # owners and sites are counted apart in the shim; when they agree for a cause (a quiet target),
    # every call site's bytes of that cause are the report's exactly too
    for cause, site_bytes in sites_by_cause.items():
        if site_bytes != totals["by_cause"].get(cause, 0):
            continue
        want = {}
        for s in report["sites"]:
            if s["cause"] == cause and s["file"]:
                want[site_name(s)] = want.get(site_name(s), 0) + s["live_bytes"]
        _, _, rows = pprof_top(profile, "-tagfocus", f"cause=^{cause}$")
        for flat, name in rows[:5]:
            if name in want:
                assert flat == want[name], (cause, name)


def check_connections(profile, report, n=3):
    """A connection's samples are its own bytes; all connections' are the sum of theirs."""
    conns = report["connections"]
    assert pprof_top(profile, "-tagfocus", "owner_kind=^connection$")[0] == sum(c["live_bytes"] for c in conns)
    for c in conns[:n]:
        assert pprof_top(profile, "-tagfocus", f"connection=^{c['id']}$")[0] == c["live_bytes"], c["id"]
    ctx = report["contexts"][0]
    got = pprof_top(profile, "-tagfocus", f"context=^{ctx['id']}$", "-tagignore", "owner_kind=^connection$")[0]
    assert got == sum(ctx["by_cause"].values())


# --- the examples' echo server -------------------------------------------------------------------


def profiled_echo_server(tmp_path, cert_dir, *server_args, extra=()):
    from tlsenv import ECHO_SERVER

    report = tmp_path / "report.json"
    argv = [
        *TLSPROF,
        "run",
        "-o",
        str(report),
        "--interval",
        "0.3",
        *extra,
        "--",
        sys.executable,
        ECHO_SERVER,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--ready-file",
        "{ready}",
        "--certdir",
        cert_dir,
        *server_args,
    ]
    proc = Proc(argv, script=ECHO_SERVER)
    return proc, int(proc.wait_ready(60)), report


@needs_pprof
@pytest.mark.parametrize("server_args", [[], ["--ctx-per-conn"]], ids=["shared", "ctx-per-connection"])
def test_pprof_of_echo_server_sums_to_the_report(tmp_path, cert_dir, server_args):
    proc, port, report_path = profiled_echo_server(tmp_path, cert_dir, *server_args)
    try:
        clients = start_clients(port, 20, interval=1.0)
        time.sleep(1.5)  # several snapshots with all 20 connected
        clients.stop()
    finally:
        proc.stop()
    report = load_checked(report_path)
    assert len(report["connections"]) >= 20
    profile = export(report_path, tmp_path)
    check_sums(profile, report)
    check_connections(profile, report)

    # the issue's own words: -tagfocus cause=ca_store is the report's CA-store bytes
    assert pprof_top(profile, "-tagfocus", "cause=ca_store")[0] == report["totals"]["by_cause"]["ca_store"] > 0
    ca_sites = {site_name(s) for s in report["sites"] if s["cause"] == "ca_store" and s["file"]}
    _, _, rows = pprof_top(profile)
    if server_args:  # 20 CA stores: the heaviest location is where OpenSSL built them
        assert report["totals"]["by_cause"]["ca_store"] > 0.8 * report["totals"]["live_bytes"]
        assert rows[0][1] in ca_sites, rows[:3]
    # the Python stack that created each owner sits above its call sites
    traces = subprocess.run(
        [GO, "tool", "pprof", "-traces", "-tagfocus", "owner_kind=^context$", str(profile)],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "make_context" in traces and "create_default_context" in traces


# --- nginx, attached, with --pprof --------------------------------------------------------------


@needs_pprof
@pytest.mark.skipif(not shutil.which("gdb"), reason="attach needs gdb (make test installs it)")
@pytest.mark.skipif(
    not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"),
    reason="needs Debian's nginx (make test installs nginx-light)",
)
def test_pprof_of_nginx_worker_sums_to_the_report(cert_pair, tmp_path):
    from test_attach import Attached, _http_keepalive, nginx_worker

    profiles = tmp_path / "profiles"
    with nginx_worker(cert_pair, tmp_path) as (worker, port, socks):
        session = Attached(worker, tmp_path / "nginx.json", 4, "--pprof", str(profiles))
        socks += _http_keepalive(port, 20)
        report = session.finish()
    assert report["per_connection"]["connections"] >= 20
    profile = export(tmp_path / "nginx.json", tmp_path)
    check_sums(profile, report)
    check_connections(profile, report)
    peers = pprof_tags(profile, "peer")
    assert {c["peer"] for c in report["connections"]} <= peers
    # the attach session wrote its own profiles as it went: each is one of its snapshots
    written = sorted(p for p in os.listdir(profiles) if p.endswith(".pb.gz"))
    assert written and all(p.startswith(f"tlsprof-{worker}-") for p in written)
    seen = {h["live_bytes"] for h in report["history"]}
    for name in written[-3:]:
        assert pprof_top(profiles / name)[1] in seen, name


@needs_pprof
def test_pprof_of_an_nginx_run_sums_to_each_process(cert_pair, tmp_path):
    """nginx under `tlsprof run` (master + 2 workers, 200 keep-alive connections): the tree's
    profile sums to the report and `-tagfocus pid=N` to each process's live bytes."""
    from servers import hold_measured, start

    with start("nginx", *cert_pair, profile=True) as running:
        with hold_measured(running, 200):
            running.stop()
        report = running.report()
    report_path = tmp_path / "nginx-run.json"
    report_path.write_text(__import__("json").dumps(report))
    processes = report["processes"]
    assert len(processes) >= 3 and report["per_connection"]["connections"] >= 190
    profile = export(report_path, tmp_path)
    shown, total, _ = pprof_top(profile)
    assert shown == total == report["totals"]["live_bytes"]
    for p in processes:
        if p["live_bytes"]:
            assert pprof_top(profile, "-tagfocus", f"pid=^{p['pid']}$")[0] == p["live_bytes"], p["pid"]
    assert pprof_top(profile, "-tagfocus", "cause=^ca_store$")[0] == report["totals"]["by_cause"].get("ca_store", 0)


def pprof_tags(profile, key):
    out = subprocess.run(
        [GO, "tool", "pprof", "-tags", "-tagfocus", f"{key}=.", str(profile)],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    section = out.split(f" {key}: Total", 1)[1].split("\n\n", 1)[0]
    return {line.split(": ", 1)[1].strip() for line in section.splitlines()[1:] if ": " in line}


# --- --pprof DIR: one profile per snapshot, rotated -------------------------------------------------


@needs_pprof
def test_pprof_dir_gets_a_profile_per_snapshot_and_keeps_the_newest(tmp_path, cert_dir):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    foreign = profiles / "collector-state.pb.gz"  # not ours: never rotated away
    foreign.write_bytes(b"x")
    proc, port, report_path = profiled_echo_server(
        tmp_path, cert_dir, extra=["--interval", "0.2", "--pprof", str(profiles), "--pprof-keep", "3"]
    )

    def ours():
        return sorted(p for p in os.listdir(profiles) if p.startswith("tlsprof-"))

    try:
        clients = start_clients(port, 5, interval=1.0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the writer has rotated at least twice
            names = ours()
            if names and int(names[-1].split("-")[-1].split(".")[0]) >= 6:
                break
            time.sleep(0.1)
        during = ours()
        clients.stop()
    finally:
        proc.stop()
    assert 1 <= len(during) <= 4, during  # the new one is renamed in before the oldest goes
    assert int(during[-1].split("-")[-1].split(".")[0]) >= 6, during
    after = ours()
    assert len(after) == 3 and foreign.exists()
    assert not [p for p in os.listdir(profiles) if p.endswith(".tmp")]  # written whole, renamed
    report = load_checked(report_path)
    seen = {h["live_bytes"] for h in report["history"]}
    for name in after:
        assert pprof_top(profiles / name)[1] in seen, name


def test_pprof_dir_that_cannot_be_written_refuses_before_starting(tmp_path):
    marker = tmp_path / "started"
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = subprocess.run(
        [*TLSPROF, "run", "--pprof", str(blocker / "sub"), "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("tlsprof: --pprof:"), proc.stderr
    assert not marker.exists()


def test_pprof_dir_removed_mid_session_costs_one_line_not_the_report(tmp_path):
    profiles = tmp_path / "profiles"
    report_path = tmp_path / "r.json"
    proc = subprocess.Popen(
        [
            *TLSPROF,
            "run",
            "-o",
            str(report_path),
            "--interval",
            "0.1",
            "--pprof",
            str(profiles),
            "--",
            sys.executable,
            "-c",
            "import ssl, time; c = ssl.create_default_context(); time.sleep(3)",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (profiles.exists() and any(p.endswith(".pb.gz") for p in os.listdir(profiles))):
            assert time.monotonic() < deadline and proc.poll() is None, "no profile was written"
            time.sleep(0.05)
        shutil.rmtree(profiles)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert len([line for line in err.splitlines() if "--pprof: cannot write" in line]) == 1, err
    load_checked(report_path)


@needs_pprof
def test_report_format_pprof_of_a_process_without_connections(tmp_path):
    """A process that builds one default context and exits: every byte is the context's or the
    process's; no -o is a one-line usage error. The peak snapshot: the last may catch the
    interpreter's teardown freeing the context."""
    report_path = tmp_path / "r.json"
    proc = subprocess.run(
        [
            *TLSPROF,
            "run",
            "-o",
            str(report_path),
            "--interval",
            "0.1",
            "--",
            sys.executable,
            "-c",
            "import ssl, time; c = ssl.create_default_context(); time.sleep(1)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = load_checked(report_path)
    assert report["totals"]["by_cause"].get("ca_store", 0) > 500 * 1024
    profile = export(report_path, tmp_path)
    check_sums(profile, report)
    assert pprof_top(profile, "-tagfocus", "owner_kind=^connection$")[0] == 0

    proc = subprocess.run(
        [*TLSPROF, "report", str(report_path), "--format", "pprof"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "-o" in proc.stderr


# --- the apportioning arithmetic ---------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 10**9), min_size=1, max_size=8), st.lists(st.integers(0, 10**7), min_size=1, max_size=30)
)
def test_split_keeps_every_owner_and_every_site_exact(rows, cols):
    if sum(cols) == 0:
        cols = cols[:-1] + [1]
    cells = split(rows, cols)
    assert all(v >= 0 for r in cells for v in r)
    assert [sum(r) for r in cells] == rows
    columns = [sum(r[j] for r in cells) for j in range(len(cols))]
    assert columns == (apportion(sum(rows), cols) if sum(rows) else [0] * len(cols))
    same_total = apportion(sum(rows), cols) if sum(rows) else None
    if same_total:  # owners and sites of one snapshot agree: both sides exact
        cells = split(rows, same_total)
        assert [sum(r) for r in cells] == rows
        assert [sum(r[j] for r in cells) for j in range(len(cols))] == same_total
