"""End to end in a real terminal: `tlsprof run --live` under tmux (80x24) against the seed echo
server with 200 connections; keys go in with `send-keys`, the screen comes back with
`capture-pane`. tmux runs on a private socket; everything started is stopped by pid."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tlsenv import ECHO_SERVER, REPO_ROOT

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

N = 200


class Tmux:
    def __init__(self, tmp_path):
        self.socket = f"tlsprof-test-{os.getpid()}-{time.monotonic_ns()}"
        self.name = "live"
        self.pane_pid = None

    def cmd(self, *args, check=True):
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=check, timeout=30
        )

    def start(self, command: str):
        self.cmd("new-session", "-d", "-s", self.name, "-x", "80", "-y", "24", command)
        self.pane_pid = int(self.cmd("display-message", "-p", "-t", self.name, "#{pane_pid}").stdout)

    def screen(self) -> str:
        r = self.cmd("capture-pane", "-p", "-t", self.name, check=False)
        return r.stdout if r.returncode == 0 else ""

    def keys(self, *keys):
        for k in keys:  # one at a time: "Escape q" sent together reads as Alt-q
            self.cmd("send-keys", "-t", self.name, k)
            time.sleep(0.3)

    def wait_screen(self, predicate, what, timeout=90.0):
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; screen:\n{text}")
            time.sleep(0.25)

    def close(self):
        procs = []
        if self.pane_pid:
            try:
                top = psutil.Process(self.pane_pid)
                procs = [top] + top.children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        for p in reversed(procs):  # the server first, tlsprof after it
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.cmd("kill-server", check=False)


@pytest.fixture
def tmux(tmp_path):
    t = Tmux(tmp_path)
    yield t
    t.close()


def _exit_status(tmux, status, timeout=60.0):
    """The status the shell wrote after tlsprof exited (bounded wait)."""
    deadline = time.monotonic() + timeout
    while not (status.exists() and status.read_text().strip()):
        assert time.monotonic() < deadline, f"tlsprof did not exit; screen:\n{tmux.screen()}"
        time.sleep(0.2)
    return status.read_text().strip()


def test_live_view_in_tmux_shows_200_connections_and_cause_bars(tmux, tmp_path, cert_dir, spawn):
    ready, log, report = tmp_path / "ready", tmp_path / "server.log", tmp_path / "report.json"
    status = tmp_path / "status"
    # the server's own output goes to a file: the live view owns the terminal
    server = (
        f"exec {shlex.quote(sys.executable)} {shlex.quote(ECHO_SERVER)} --host 127.0.0.1 --port 0 "
        f"--ready-file {shlex.quote(str(ready))} --certdir {shlex.quote(cert_dir)} "
        f"> {shlex.quote(str(log))} 2>&1"
    )
    command = (
        f"cd {shlex.quote(REPO_ROOT)} && {shlex.quote(sys.executable)} -m tlsprof run --live "
        f"--interval 0.5 -o {shlex.quote(str(report))} -- sh -c {shlex.quote(server)}; "
        f"echo $? > {shlex.quote(str(status))}"
    )
    tmux.start(command)

    deadline = time.monotonic() + 60
    while not (ready.exists() and ready.read_text().strip()):
        assert time.monotonic() < deadline, f"server not ready; screen:\n{tmux.screen()}"
        time.sleep(0.1)
    spawn.clients(int(ready.read_text()), N, interval=2.0)

    screen = tmux.wait_screen(
        lambda s: f"{N} connections" in s and "CA store" in s and "█" in s, f"{N} connections and the cause bars"
    )
    assert "per connection" in screen and "cipher state" in screen
    assert all(len(line) <= 80 for line in screen.splitlines())

    tmux.keys("2")
    tmux.wait_screen(lambda s: f"rows 1–{N} of {N}" in s and "conn-" in s, "the connections table")

    tmux.keys("q")
    tmux.wait_screen(lambda s: "still running" in s, "the quit dialog")
    tmux.keys("t")  # terminate the target; tlsprof writes the report and exits with its status
    assert _exit_status(tmux, status) == "0"
    doc = json.loads(report.read_text())
    assert doc["schema"] == "tlsprof.report/2" and doc["per_connection"]["connections"] > 0


@pytest.mark.skipif(shutil.which("gdb") is None, reason="attach needs gdb")
def test_attach_live_in_tmux_q_detaches_and_the_target_runs_on(tmux, tmp_path, spawn):
    from tlsenv import tls_connect
    from tlsprof.collect import client
    from tlsprof.collect.channel_paths import channel_dir_for, socket_path

    server = spawn.server()
    spawn.clients(server.port, 20, interval=1.0)
    report, status = tmp_path / "attach.json", tmp_path / "status"
    command = (
        f"cd {shlex.quote(REPO_ROOT)} && {shlex.quote(sys.executable)} -m tlsprof attach {server.pid} "
        f"--live --interval 0.5 -o {shlex.quote(str(report))}; echo $? > {shlex.quote(str(status))}"
    )
    tmux.start(command)
    tmux.wait_screen(lambda s: "20 connections" in s and "attach" in s, "the attached live view")
    sock = socket_path(channel_dir_for(os.getuid()), server.pid)
    assert client.ping(sock) == server.pid  # hooks in while the view is open
    tmux.keys("q")
    assert _exit_status(tmux, status) == "0"
    doc = json.loads(report.read_text())
    assert doc["target"]["mode"] == "attach" and doc["per_connection"]["connections"] >= 20
    assert not os.path.exists(sock)  # q detached: the shim's socket is gone
    with tls_connect(server.port) as s:  # and the server serves on
        s.sendall(b"ping\n")
        assert s.recv(16) == b"ping\n"
    assert server.proc.poll() is None
