"""Debian's uWSGI 2.0 (python3 plugin) under `tlsprof run`: a master and two workers terminating TLS
themselves (--https-socket), the app in an embedded interpreter.

Without threads uWSGI keeps the GIL in C for good. An agent asked there waits for the GIL forever,
and a worker forked meanwhile inherited CPython's pending request to hand the GIL over: at SIGTERM
it hung in its atexit until the master killed it 60 s later (tlsprof/collect/gil_keepers.py). Such
agents are never asked now, and the report says so; with --enable-threads (on the command line, or
in an .ini file) they answer. Servers on 127.0.0.1, stopped by pid."""

import os
import shutil
import socket
import ssl
import subprocess
import time

import psutil
import pytest

from reportcheck import load_checked
from test_process_trees import TLSPROF, _kill_tree, listening, stop_tlsprof, wait_for
from tlsenv import free_port

UWSGI = "/usr/bin/uwsgi"
PLUGIN = "/usr/lib/uwsgi/plugins/python311_plugin.so"
APP = """
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello\\n"]
"""

pytestmark = pytest.mark.skipif(
    not (os.path.exists(UWSGI) and os.path.exists(PLUGIN)),
    reason="needs Debian's uwsgi-core and uwsgi-plugin-python3 (make test installs them)",
)


def _request(port, timeout=10):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=timeout)) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
        assert b"hello" in answer, answer


def _stacks(root_pid) -> str:
    """gdb's backtraces of every process under `root_pid`: what a failure message carries."""
    if not shutil.which("gdb"):
        return "(no gdb)"
    out = []
    try:
        tree = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return "(gone)"
    for p in tree:
        bt = subprocess.run(
            ["gdb", "-p", str(p.pid), "-batch", "-nx", "-ex", "thread apply all bt 12"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        out.append(f"== {p.pid}\n" + "\n".join(ln[:140] for ln in bt.splitlines() if ln.startswith(("#", "Thread"))))
    return "\n".join(out)


def _first_answer(port, root_pid, bound=60):
    """uWSGI binds its socket before its workers run: the first request may wait for them (a
    loaded CI machine). Bounded: past it, the failure says where every process of the tree is."""
    deadline = time.monotonic() + bound
    while True:
        try:
            return _request(port, timeout=5)
        except (OSError, ssl.SSLError):
            if time.monotonic() > deadline:
                raise AssertionError(f"uWSGI answered no request in {bound} s:\n{_stacks(root_pid)}") from None


@pytest.mark.parametrize("threads", ["none", "command-line", "ini"])
def test_uwsgi_stops_at_once_and_its_agents_are_asked_only_with_threads(tmp_path, cert_pair, threads):
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    log = tmp_path / "uwsgi.log"
    command = [UWSGI, "--plugin", "python3", "--https-socket", f"127.0.0.1:{port},{cert_pair[0]},{cert_pair[1]}"]
    command += ["--wsgi-file", str(tmp_path / "app.py"), "--master", "--processes", "2", "--die-on-term"]
    command += ["--logto", str(log)]
    if threads == "command-line":
        command.append("--enable-threads")
    elif threads == "ini":
        (tmp_path / "uwsgi.ini").write_text("[uwsgi]\nenable-threads = true\n")
        command += ["--ini", str(tmp_path / "uwsgi.ini")]
    out = tmp_path / "report.json"
    tool = subprocess.Popen(
        [*TLSPROF, "run", "-o", str(out), "--interval", "0.3", "--", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: listening(port), 60, "uWSGI under tlsprof")
        _first_answer(port, tool.pid)
        for _ in range(20):
            _request(port)
        time.sleep(7)  # past the session's first agent asks (and a silent agent's 5 s)
        stopped = time.monotonic()
        stop_tlsprof(tool, timeout=90)
        took = time.monotonic() - stopped
    finally:
        _kill_tree(tool)
    text = log.read_text(errors="replace")
    assert "NO MERCY" not in text, text[-2000:]
    assert took < 10, f"tlsprof ended {took:.1f} s after SIGTERM"
    report = load_checked(out)
    notes = " ".join(report["notes"])
    if threads == "none":
        assert "was not asked: uWSGI without --enable-threads" in notes, report["notes"]
        assert report.get("python") is None
    else:
        assert "not asked" not in notes and "never answered" not in notes, report["notes"]
        assert report["python"] is not None and report["python"]["join"] == "on", report["python"]
