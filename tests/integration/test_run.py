"""`tlsprof run` on real processes with the system OpenSSL, traffic on 127.0.0.1 (issue: run)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from reportcheck import check_report, load_checked
from tlsenv import free_port

TLSPROF = [sys.executable, "-m", "tlsprof"]
WORKLOADS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workloads")


def tlsprof_run(report, interval="0.3", at="peak"):
    return [*TLSPROF, "run", "-o", str(report), "--interval", interval, "--at", at, "--"]


def settle(seconds=1.5):
    """Let the session take a few snapshots (interval 0.3 s) of the steady state."""
    time.sleep(seconds)


def freeze(server):
    """SIGKILL the target: its last snapshot is the steady state (a SIGTERM would let the server
    close its connections first, and a snapshot may land in that teardown)."""
    os.kill(server.target_pid(), signal.SIGKILL)
    assert server.proc.wait(30) == 128 + signal.SIGKILL


def test_shared_context_200_connections(spawn, tmp_path):
    report_path = tmp_path / "shared.json"
    server = spawn.server(wrapper=tlsprof_run(report_path, at="last"))
    spawn.clients(server.port, 200, interval=2)
    settle()
    freeze(server)
    report = load_checked(report_path)
    conns = report["connections"]
    assert len(conns) == 200 == report["per_connection"]["connections"]
    for c in conns:
        assert c["by_cause"].get("record_buffers", 0) + c["by_cause"].get("cipher_state", 0) > 0, c
        assert c["context"] == conns[0]["context"]
        assert c["state"] == "established"
    assert len([c for c in report["contexts"] if c["connections"]]) == 1
    ca_per_conn = report["per_connection"]["by_cause"].get("ca_store", 0)
    assert ca_per_conn < 16 * 1024, ca_per_conn  # one ~0.8 MB store shared by 200: ≈ 0 each
    assert report["target"]["mode"] == "run"
    assert report["target"]["openssl"].startswith("OpenSSL 3.")
    assert report["peak"]["chosen"] == "last"
    assert not [f for f in report["findings"] if f["id"] == "ca-store-per-connection"]


def test_context_per_connection_matches_independent_ca_store_cost(spawn, tmp_path):
    independent = int(
        subprocess.run(
            [sys.executable, os.path.join(WORKLOADS, "ca_store_cost.py")],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
    )
    report_path = tmp_path / "per-conn.json"
    server = spawn.server("--ctx-per-conn", wrapper=tlsprof_run(report_path, at="last"))
    spawn.clients(server.port, 40, interval=2)
    settle()
    freeze(server)
    report = load_checked(report_path)
    assert report["per_connection"]["connections"] == 40
    ca_per_conn = report["per_connection"]["by_cause"]["ca_store"]
    print(f"ca_store per connection: tlsprof {ca_per_conn} B, mallinfo2 {independent} B")
    assert abs(ca_per_conn - independent) <= 0.15 * independent
    finding = next(f for f in report["findings"] if f["id"] == "ca-store-per-connection")
    assert finding["bytes_per_connection"] == pytest.approx(ca_per_conn, rel=0.05)
    assert "reuse" in finding["fix"]


def _wait_port(port, proc, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "s_server exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("s_server did not listen")


def _child(pid, name, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in psutil.Process(pid).children(recursive=True):
            if c.name() == name:
                return c
        time.sleep(0.05)
    raise AssertionError(f"no {name} child of {pid}")


def test_openssl_s_server_one_connection(cert_pair, tmp_path):
    cert, key = cert_pair
    port = free_port()
    report_path = tmp_path / "s_server.json"
    tool = subprocess.Popen(
        [
            *tlsprof_run(report_path),
            "openssl",
            "s_server",
            "-accept",
            f"127.0.0.1:{port}",
            "-cert",
            cert,
            "-key",
            key,
            "-quiet",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # (s_server closes its connection when its stdin reaches EOF: keep it open)
    s_client = None
    try:
        # the probe connection of _wait_port is a TCP connect only: s_server sees no TLS from it
        _wait_port(port, tool)
        s_client = subprocess.Popen(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-quiet"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        settle(2.0)
        _child(tool.pid, "openssl").send_signal(signal.SIGTERM)
        tool.wait(30)
    finally:
        for p in (s_client, tool):
            if p and p.poll() is None:
                p.kill()
                p.wait()
    report = load_checked(report_path)
    assert report["target"]["command"][:2] == ["openssl", "s_server"]
    assert report["per_connection"]["connections"] == 1
    assert report["connections"][0]["fd"] is not None
    assert report["connections"][0]["peer"].startswith("127.0.0.1:")


def test_sigkilled_target_still_gets_a_partial_report(spawn, tmp_path):
    report_path = tmp_path / "killed.json"
    server = spawn.server(wrapper=tlsprof_run(report_path))
    spawn.clients(server.port, 20, interval=2)
    settle()
    target = server.target_pid()
    os.kill(target, signal.SIGKILL)
    assert server.proc.wait(30) == 128 + signal.SIGKILL  # the exit status passes through
    report = load_checked(report_path)
    assert report["partial"] is True
    assert report["per_connection"]["connections"] == 20


def test_clean_shutdown_still_reports_the_peak(spawn, tmp_path):
    """The server frees everything while it shuts down: the report is the high-water mark."""
    report_path = tmp_path / "peak.json"
    server = spawn.server(wrapper=tlsprof_run(report_path))
    spawn.clients(server.port, 50, interval=2)
    settle()
    assert server.stop_target() == 0
    report = load_checked(report_path)
    assert report["peak"]["chosen"] == "peak" and not report["partial"]
    # the high-water mark may fall in the handshake burst (each handshake in flight holds tens of KB),
    # before every connection is up: it is the snapshot with the most live bytes, whatever its count
    assert report["per_connection"]["connections"] >= 1
    assert report["peak"]["live_bytes_at_peak"] == report["totals"]["live_bytes"]
    assert max(h["live_bytes"] for h in report["history"]) == report["totals"]["live_bytes"]


def test_exit_status_and_stdio_pass_through(tmp_path):
    out = subprocess.run(
        [*TLSPROF, "run", "--", "sh", "-c", "read x; echo got $x; echo err >&2; exit 7"],
        input="hello\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 7
    assert out.stdout == "got hello\n"
    assert out.stderr.startswith("err\n")


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--", "/no/such/cmd"],
        ["run"],
        ["run", "--interval", "0", "--", "true"],
    ],
)
def test_bad_run_input_gives_one_line_and_nonzero(argv):
    out = subprocess.run([*TLSPROF, *argv], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr
    assert lines[-1].startswith("tlsprof")
    if argv[-1] == "/no/such/cmd":
        assert len(lines) == 1 and "/no/such/cmd" in lines[0]


def test_long_tmpdir_still_gets_snapshots(tmp_path):
    """TMPDIR too long for the channel's socket path (a sockaddr_un holds 107 bytes; pytest's own
    temp directories come close): the channel directory goes to /tmp instead, and the session sees
    the target's contexts rather than "no snapshot was taken"."""
    long_tmp = tmp_path / ("t" * (100 - len(str(tmp_path))))
    long_tmp.mkdir()
    report_path = tmp_path / "r.json"
    program = "import ssl, time\nkeep = [ssl.create_default_context() for _ in range(3)]\ntime.sleep(1.5)\n"
    out = subprocess.run(
        [*tlsprof_run(report_path, at="last"), sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TMPDIR": str(long_tmp)},
    )
    assert out.returncode == 0, out.stderr
    report = load_checked(report_path)
    assert not any("no snapshot" in n for n in report["notes"]), report["notes"]
    assert len(report["contexts"]) == 3, report["contexts"]
    assert not any(long_tmp.iterdir()), "a channel directory was made in the long TMPDIR"


def test_corrupt_report_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "tlsprof.report/1", "totals": ')
    out = subprocess.run([*TLSPROF, "report", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def _run_workload(tmp_path, name, *args):
    """`tlsprof run` of tests/workloads/<name>.py, which prints one JSON line last: that line and
    the checked report."""
    report = tmp_path / f"{name}.json"
    command = [*TLSPROF, "run", "-o", str(report), "--", sys.executable, os.path.join(WORKLOADS, f"{name}.py")]
    out = subprocess.run([*command, *args], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(result)
    return result, check_report(json.loads(report.read_text()))


def test_threads_handshaking_at_once_counts_return_to_baseline(cert_pair, tmp_path):
    cert, key = cert_pair
    result, _ = _run_workload(tmp_path, "threaded_handshakes", cert, key, "8", "25")
    assert result["errors"] == []
    assert result["peak_connections"] >= 2  # handshakes really overlapped
    assert result["end_connections"] == 0
    assert result["owner_sum"] == result["site_sum"]
    assert result["untracked"] == 0
    # every connection's bytes came back: within 16 KiB of the warm baseline (lazily grown tables)
    assert abs(result["end"] - result["base"]) < 16 * 1024, result


def test_snapshots_read_during_bursts_add_up(tmp_path):
    # A thread makes and frees 150 connection objects at a time (~10 ms apart) while the program
    # asks its shim for 300 snapshots: a burst landing between the owner and site passes made 2-37
    # of 300 disagree by more than max(2 %, 64 KiB) before the shim read such a snapshot again.
    result, _ = _run_workload(tmp_path, "bursts_under_snapshots", "300", "150")
    assert result["bursts"] >= 20  # the bursts really ran between the snapshots
    assert result["skewed"] == 0


def test_version():
    out = subprocess.run([*TLSPROF, "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("tlsprof ")
