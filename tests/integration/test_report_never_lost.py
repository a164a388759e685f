"""Whatever stop signal reaches tlsprof, and whenever, the report is written, whole and valid
(issue 13, item 3). The moments: before the target's first snapshot, while it runs, after it exited,
at the same instant (a process-group kill, what systemd and shell teardowns do), and while tlsprof
is writing (a storm of signals). Real threaded TLS servers on 127.0.0.1, real signals by pid.

tlsprof's exit status under `run` is the target's (128+N when a signal N ended it), as README says;
under `attach` it is 0 when the session ends on a signal."""

import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from reportcheck import load_checked
from tlsenv import start_clients, start_echo_server, tls_connect

TLSPROF = [sys.executable, "-m", "tlsprof"]
CONNECTIONS = 200
EXIT_WAIT = 60.0


def run_wrapper(report_path):
    return [*TLSPROF, "run", "-o", str(report_path), "--interval", "0.3", "--"]


def wait_gone(pid, timeout=30.0):
    """Until `pid` no longer exists (reaped by its parent, not merely a zombie)."""
    deadline = time.monotonic() + timeout
    while psutil.pid_exists(pid):
        if time.monotonic() >= deadline:
            raise AssertionError(f"pid {pid} still exists after {timeout} s")
        time.sleep(0.001)


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def storm(pid, signum, until, every=0.003, timeout=EXIT_WAIT):
    """Send `signum` to `pid` again and again until until() is true: some land while tlsprof builds
    and writes the report. Returns how many were sent."""
    sent, deadline = 0, time.monotonic() + timeout
    while not until():
        if time.monotonic() >= deadline:
            raise AssertionError(f"still running after {timeout} s of {signal.Signals(signum).name}")
        try:
            os.kill(pid, signum)
            sent += 1
        except ProcessLookupError:
            break
        time.sleep(every)
    return sent


def no_temp_files_left(directory):
    return [n for n in os.listdir(directory) if n.startswith(".tlsprof-")] == []


def served_connections(cert_dir, report_path, n=CONNECTIONS):
    """The seed's threaded server under `tlsprof run`, with n idle client connections."""
    server = start_echo_server("--threaded", wrapper=run_wrapper(report_path), certdir=cert_dir)
    clients = start_clients(server.port, n, interval=60)
    time.sleep(1.2)  # a few snapshots with every connection open
    return server, clients


def assert_moment_has_connections(report, n=CONNECTIONS):
    # the default moment is the steady state (the latest snapshot with the most connections); a
    # session stopped while the last client was still connecting may hold one fewer
    assert n - max(1, n // 50) <= report["per_connection"]["connections"] <= n, report["notes"]
    assert report["peak"]["chosen"] == "steady"  # the default moment: most connections, latest


def test_sigterm_right_after_the_target_exited(cert_dir, tmp_path):
    """The issue's reproduction: 200 connections, closed, SIGTERM the server, SIGTERM tlsprof as
    soon as the server is gone. Before the fix: exit 143, no report."""
    report_path = tmp_path / "r.json"
    server, clients = served_connections(cert_dir, report_path)
    try:
        clients.stop()
        time.sleep(0.5)
        target = server.target_pid()
        os.kill(target, signal.SIGTERM)
        wait_gone(target)
        os.kill(server.pid, signal.SIGTERM)
        rc = server.proc.wait(EXIT_WAIT)
    finally:
        server.stop()
    assert rc == 0, server.describe()  # the target's own status (it exits 0 on SIGTERM)
    report = load_checked(report_path)
    assert_moment_has_connections(report)
    assert "Traceback" not in server.stderr()


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT], ids=lambda s: signal.Signals(s).name
)
def test_signal_while_the_target_runs(cert_dir, tmp_path, signum):
    """Forwarded to the target after one last snapshot; the exit status is the target's."""
    report_path = tmp_path / "r.json"
    server, clients = served_connections(cert_dir, report_path, n=20)
    try:
        target = psutil.Process(server.target_pid())
        os.kill(server.pid, signum)
        rc = server.proc.wait(EXIT_WAIT)
        assert not target.is_running() or target.status() == psutil.STATUS_ZOMBIE
    finally:
        clients.stop()
        server.stop()
    # the threaded server exits 0 on SIGTERM/SIGINT; SIGHUP and SIGQUIT end it by their default action
    expected = 0 if signum in (signal.SIGTERM, signal.SIGINT) else 128 + signum
    assert rc == expected, server.describe()
    report = load_checked(report_path)
    assert_moment_has_connections(report, 20)
    assert any(signal.Signals(signum).name in note for note in report["notes"]), report["notes"]


def test_process_group_kill_reaches_both_at_once(cert_dir, tmp_path):
    """`kill -TERM -PGID`: tlsprof and its target get the signal at the same instant."""
    report_path = tmp_path / "r.json"
    server, clients = served_connections(cert_dir, report_path)
    try:
        target = server.target_pid()
        assert os.getpgid(target) == os.getpgid(server.pid) == server.pid  # one group, tlsprof leads
        os.killpg(server.pid, signal.SIGTERM)
        rc = server.proc.wait(EXIT_WAIT)
    finally:
        clients.stop()
        server.stop()
    assert rc in (0, 128 + signal.SIGTERM), server.describe()
    report = load_checked(report_path)
    assert_moment_has_connections(report)


def test_signals_while_tlsprof_writes_the_report(cert_dir, tmp_path):
    """SIGTERM every few ms from the target's exit until tlsprof's: many land while the report of
    200 connections is built and written. The report is whole, no temp file is left behind."""
    report_path = tmp_path / "r.json"
    server, clients = served_connections(cert_dir, report_path)
    try:
        clients.stop()
        target = server.target_pid()
        os.kill(target, signal.SIGTERM)
        sent = storm(server.pid, signal.SIGTERM, until=lambda: server.proc.poll() is not None)
        rc = server.proc.wait(EXIT_WAIT)
    finally:
        server.stop()
    assert sent > 1
    assert rc in (0, 128 + signal.SIGTERM), server.describe()
    report = load_checked(report_path)
    assert_moment_has_connections(report)
    assert no_temp_files_left(tmp_path)


def test_group_kill_then_a_second_signal_during_the_writing(cert_dir, tmp_path):
    report_path = tmp_path / "r.json"
    server, clients = served_connections(cert_dir, report_path)
    try:
        os.killpg(server.pid, signal.SIGTERM)
        storm(server.pid, signal.SIGINT, until=lambda: server.proc.poll() is not None, every=0.01)
        rc = server.proc.wait(EXIT_WAIT)
    finally:
        clients.stop()
        server.stop()
    # the target's status: forwarded SIGINTs may end it while it handles the SIGTERM
    assert rc in (0, 128 + signal.SIGTERM, 128 + signal.SIGINT), server.describe()
    assert_moment_has_connections(load_checked(report_path))
    assert no_temp_files_left(tmp_path)


def test_sigterm_before_the_first_snapshot(cert_dir, tmp_path):
    """The moment the target exists, before tlsprof took any snapshot: tlsprof waits (bounded) for
    the shim's first answer, then forwards the signal; the report describes what it saw."""
    report_path = tmp_path / "r.json"
    p = subprocess.Popen(
        [*run_wrapper(report_path), sys.executable, "-c", "import time; time.sleep(60)"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(lambda: psutil.Process(p.pid).children(), 30, "tlsprof to start its target")
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=EXIT_WAIT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 128 + signal.SIGTERM, err
    report = load_checked(report_path)
    assert report["per_connection"]["connections"] == 0
    assert "Traceback" not in err


@pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc (make test installs it)")
def test_target_gone_before_any_snapshot_still_gives_a_report(tmp_path):
    """A target that exits at once and never answers: the report is still written, empty, partial,
    and says why. The target is statically linked, so the shim cannot load into it and no snapshot
    can race its exit (`sh -c "exit 4"` sometimes answered once before it was gone)."""
    src = tmp_path / "exit4.c"
    src.write_text("int main(void) { return 4; }\n")
    exe = tmp_path / "exit4"
    subprocess.run(["gcc", "-static", "-O1", "-o", str(exe), str(src)], check=True, timeout=120)
    report_path = tmp_path / "r.json"
    p = subprocess.run([*run_wrapper(report_path), str(exe)], capture_output=True, text=True, timeout=EXIT_WAIT)
    assert p.returncode == 4, p.stderr
    report = load_checked(report_path)
    assert report["partial"] is True and report["connections"] == []
    assert any("no snapshot was taken" in n for n in report["notes"]), report["notes"]


# ---- attach ----------------------------------------------------------------------------------

needs_gdb = pytest.mark.skipif(not os.path.exists("/usr/bin/gdb"), reason="attach needs gdb")


def attach(pid, report_path):
    return subprocess.Popen(
        [*TLSPROF, "attach", str(pid), "-o", str(report_path), "--interval", "0.3"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


class StderrReader:
    """tlsprof's stderr, read on a thread so that every wait on it has a bound."""

    def __init__(self, proc):
        import threading

        self.lines = []
        self._thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line)

    def text(self, wait=0.0):
        self._thread.join(wait)
        return "".join(self.lines)


@needs_gdb
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT], ids=lambda s: signal.Signals(s).name
)
def test_signal_while_attached_detaches_and_reports(cert_dir, tmp_path, signum):
    """A stop signal while attached ends the session: report written, target detached, unharmed.
    A second one arrives while tlsprof detaches and writes."""
    report_path = tmp_path / "r.json"
    server = start_echo_server("--threaded", certdir=cert_dir)
    clients = p = None
    try:
        target = server.target_pid()
        p = attach(target, report_path)
        err = StderrReader(p)
        wait_for(lambda: "attached to pid" in err.text() or p.poll() is not None, 120, "the attach")
        assert p.poll() is None, err.text(5)
        clients = start_clients(server.port, 20, interval=60)  # made while attached: fully seen
        time.sleep(1.0)  # a few snapshots
        p.send_signal(signum)
        time.sleep(0.05)
        storm(p.pid, signum, until=lambda: p.poll() is not None, every=0.02, timeout=120)
        p.wait(EXIT_WAIT)
        err = err.text(10)
        assert p.returncode == 0, err
        assert "detached from pid" in err, err
        assert server.alive()
        tls = tls_connect(server.port)  # still serves
        tls.close()
        report = load_checked(report_path)
        assert report["target"]["mode"] == "attach"
        assert report["per_connection"]["connections"] == 20
        assert "Traceback" not in err
    finally:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()
        if clients is not None:
            clients.stop()
        server.stop()


STUBBORN_TARGET = """
import signal, ssl, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a target that will not stop on SIGTERM
ctxs = [ssl.create_default_context() for _ in range(2)]
open(sys.argv[1], "w").write("ready")
time.sleep(120)
"""


def test_supervisor_escalates_to_sigkill(tmp_path):
    """A stubborn target ignores SIGTERM; the supervisor then SIGKILLs the whole group (systemd
    after TimeoutStopSec). tlsprof wrote the report when it was signalled, before waiting."""
    report_path, ready = tmp_path / "r.json", tmp_path / "ready"
    p = subprocess.Popen(
        [*run_wrapper(report_path), sys.executable, "-c", STUBBORN_TARGET, str(ready)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(ready.exists, 60, "the target's contexts")
        time.sleep(0.8)  # a snapshot or two
        os.killpg(p.pid, signal.SIGTERM)
        wait_for(report_path.exists, 30, "the report written on the signal")
        time.sleep(0.3)  # the target is still running, tlsprof still waits for it
        assert p.poll() is None
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(EXIT_WAIT)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    report = load_checked(report_path)
    assert report["partial"] is True
    assert report["totals"]["by_cause"].get("ca_store", 0) > 1_000_000  # two system CA stores
    assert any("before the target exited" in n for n in report["notes"]), report["notes"]


@needs_gdb
def test_signal_during_the_injection(cert_dir, tmp_path):
    """SIGTERM while gdb is still loading the shim: the injection completes, the session ends at
    once (one snapshot), the target is detached and serves on, the report is written."""
    report_path = tmp_path / "r.json"
    server = start_echo_server("--threaded", certdir=cert_dir)
    p = None
    try:
        p = attach(server.target_pid(), report_path)
        err = StderrReader(p)
        wait_for(
            lambda: any("gdb" in c.name() for c in psutil.Process(p.pid).children()) or p.poll() is not None,
            60,
            "tlsprof to start gdb",
        )
        p.send_signal(signal.SIGTERM)
        p.wait(120)
        assert p.returncode == 0, err.text(10)
        assert "detached from pid" in err.text(10), err.text()
        assert server.alive()
        tls_connect(server.port).close()
        report = load_checked(report_path)
        assert report["target"]["mode"] == "attach"
        assert any("SIGTERM" in n for n in report["notes"]), report["notes"]
    finally:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()
        server.stop()


# ---- a report file that cannot be written ------------------------------------------------------


def test_unwritable_report_path_is_refused_before_the_target_starts(tmp_path):
    """-o in a directory that does not exist: one line and exit code 2 before CMD runs, not after
    it ran for hours (run), and before anything touches the target (attach)."""
    marker = tmp_path / "started"
    bad = tmp_path / "missing" / "r.json"
    p = subprocess.run(
        [*run_wrapper(bad), sys.executable, "-c", f"open({str(marker)!r}, 'w')"],
        capture_output=True,
        text=True,
        timeout=EXIT_WAIT,
    )
    assert p.returncode == 2, p.stderr
    assert p.stderr.splitlines() == [f"tlsprof: -o: cannot write {bad}: No such file or directory"], p.stderr
    assert not marker.exists(), "the target was started"
    p = subprocess.run([*run_wrapper(tmp_path), "true"], capture_output=True, text=True, timeout=EXIT_WAIT)
    assert p.returncode == 2 and p.stderr.strip() == f"tlsprof: -o: {tmp_path} is a directory, not a report file"
    target = subprocess.Popen(["sleep", "60"])
    try:
        p = subprocess.run(
            [*TLSPROF, "attach", str(target.pid), "-o", str(bad)], capture_output=True, text=True, timeout=EXIT_WAIT
        )
        assert p.returncode == 2, p.stderr
        assert p.stderr.startswith("tlsprof: -o: cannot write") and "Traceback" not in p.stderr
    finally:
        target.kill()
        target.wait(10)


def test_report_directory_gone_at_the_end_keeps_the_report(tmp_path):
    """The report's directory was writable at the start and is gone when the target exits (a
    cleanup job, a full disk): the report goes to the temp directory, the error names it, and the
    exit status says the report is not where it was asked for."""
    out_dir = tmp_path / "reports"
    out_dir.mkdir()
    spare_dir = tmp_path / "tmp"
    spare_dir.mkdir()
    program = (
        "import shutil, ssl, sys, time\n"
        "keep = [ssl.create_default_context() for _ in range(3)]\n"
        "time.sleep(1.5)\n"
        "shutil.rmtree(sys.argv[1])\n"
    )
    p = subprocess.run(
        [*run_wrapper(out_dir / "r.json"), sys.executable, "-c", program, str(out_dir)],
        capture_output=True,
        text=True,
        timeout=EXIT_WAIT,
        env={**os.environ, "TMPDIR": str(spare_dir)},
    )
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"tlsprof: cannot write report {out_dir / 'r.json'}: "), p.stderr
    spares = list(spare_dir.glob("tlsprof-report-*.json"))
    assert len(spares) == 1 and last.endswith(f"; the report is in {spares[0]} instead"), (last, spares)
    report = load_checked(spares[0])
    assert report["target"]["command"][-1] == str(out_dir)
    assert len(report["contexts"]) == 3, report["contexts"]
