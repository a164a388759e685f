"""Debian's gunicorn 20.1 with TLS on (gthread workers): a context built per connection, found,
placed and measured.

Its gthread worker wraps every accepted socket with the deprecated module function
ssl.wrap_socket(), which builds a new SSLContext (certificate and key parsed again) each time.
`tlsprof run` names that line and what sharing one context saves; the ground truth is glibc's bytes
in use (mallinfo2, asked by the app itself) per held connection of the same gunicorn, bare, with
and without one shared context (a config file that replaces ssl.wrap_socket). Servers on 127.0.0.1,
stopped by pid."""

import os
import socket
import ssl
import subprocess
import time

import psutil
import pytest

from reportcheck import load_checked
from test_attach import _http_keepalive
from test_process_trees import TLSPROF, _kill_tree, listening, stop_tlsprof, wait_for
from tlsenv import free_port

GUNICORN = "/usr/bin/gunicorn"
CONNECTIONS = 200
WARM = 20

APP = """
import ctypes, os


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


_libc = ctypes.CDLL(None)
_libc.mallinfo2.restype = _Mallinfo2


def app(environ, start_response):
    if environ["PATH_INFO"] == "/heap":  # the ground truth: glibc's bytes in use, every arena
        info = _libc.mallinfo2()
        body = f"{os.getpid()} {info.uordblks + info.hblkhd}\\n".encode()
    else:
        body = b"hello\\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

# gunicorn -c: one context per (certfile, keyfile) behind ssl.wrap_socket (20.1 has no ssl_context hook)
SHARED_CONTEXT = """
import ssl

_contexts = {}


def wrap_socket(sock, keyfile=None, certfile=None, server_side=False, **options):
    ctx = _contexts.get((certfile, keyfile))
    if ctx is None:
        ctx = _contexts[(certfile, keyfile)] = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile, keyfile)
    return ctx.wrap_socket(sock, server_side=server_side)


ssl.wrap_socket = wrap_socket
"""

pytestmark = pytest.mark.skipif(not os.path.exists(GUNICORN), reason="needs Debian's gunicorn (make test installs it)")


def _command(tmp_path, cert_pair, port, shared, workers=2):
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "shared_context.py").write_text(SHARED_CONTEXT)
    config = ["-c", str(tmp_path / "shared_context.py")] if shared else []
    return [GUNICORN, *config, "--chdir", str(tmp_path), "-b", f"127.0.0.1:{port}", "-w", str(workers)] + [
        "-k",
        "gthread",
        "--threads",
        "4",
        "--keep-alive",
        "600",
        "--certfile",
        cert_pair[0],
        "--keyfile",
        cert_pair[1],
        "app:app",
    ]


def _heap_in_use(port):
    """glibc's bytes in use in the (one) worker, asked over a connection of its own."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10)) as s:
        s.sendall(b"GET /heap HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    return int(answer.split()[-1])


def _master_and_workers(root_pid):
    """gunicorn's master (the process whose children are the workers) and its 2 workers."""
    for p in [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]:
        workers = [c for c in p.children() if "gunicorn" in " ".join(c.cmdline())]
        if "gunicorn" in " ".join(p.cmdline()) and len(workers) == 2:
            return p, workers
    return None, []


def _bare_heap_per_connection(tmp_path, cert_pair, shared):
    """glibc's bytes in use per held keep-alive connection, without tlsprof: one worker, asked
    before and after (mallinfo2 from inside the app)."""
    port = free_port()
    server = subprocess.Popen(
        _command(tmp_path, cert_pair, port, shared, workers=1),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    socks = []
    try:
        wait_for(lambda: listening(port), 30, "bare gunicorn")
        socks = _http_keepalive(port, WARM)  # every worker thread past its first request (its arena)
        before = _heap_in_use(port)
        socks += _http_keepalive(port, CONNECTIONS)
        return (_heap_in_use(port) - before) / CONNECTIONS
    finally:
        for s in socks:
            s.close()
        _kill_tree(server)


def _report_under_run(tmp_path, cert_pair, shared):
    port = free_port()
    out = tmp_path / f"gunicorn-{'shared' if shared else 'default'}.json"
    tool = subprocess.Popen(
        [*TLSPROF, "run", "-o", str(out), "--interval", "0.3", "--", *_command(tmp_path, cert_pair, port, shared)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    socks = []
    try:
        wait_for(lambda: _master_and_workers(tool.pid)[0] and listening(port), 60, "gunicorn under tlsprof")
        socks = _http_keepalive(port, CONNECTIONS)
        time.sleep(1.5)  # several snapshots of the settled connections
        stop_tlsprof(tool)
    finally:
        for s in socks:
            s.close()
        _kill_tree(tool)
    return load_checked(out)


def test_gunicorn_builds_a_context_per_connection(tmp_path, cert_pair):
    own_contexts = _bare_heap_per_connection(tmp_path, cert_pair, shared=False)
    one_context = _bare_heap_per_connection(tmp_path, cert_pair, shared=True)
    report = _report_under_run(tmp_path, cert_pair, shared=False)
    ids = [f["id"] for f in report["findings"]]
    found = next((f for f in report["findings"] if f["id"] == "context-per-connection"), None)
    print(
        f"gunicorn: bare heap in use per connection {own_contexts:.0f} B, with one shared context {one_context:.0f} B; "
        f"tlsprof: {report['per_connection']['connections']} connections, {report['per_connection']['bytes']} B "
        f"each, findings {ids}, context per connection {found and found['bytes_per_connection']:.0f} B"
    )
    assert report["per_connection"]["connections"] == CONNECTIONS
    assert "leaked-connections" not in ids  # the two workers number their sockets alike
    assert found is not None, ids
    assert found["evidence"]["contexts"] == CONNECTIONS
    assert found["created_at"]["file"].endswith("gunicorn/workers/gthread.py"), found["created_at"]
    assert found["created_at"]["api"] == "ssl" and "ssl.wrap_socket()" in found["fix"]
    # what sharing saves per connection, against what it saves of the worker's heap without tlsprof
    saved = own_contexts - one_context
    assert 0.8 * saved <= found["bytes_per_connection"] <= 1.2 * saved, (found["bytes_per_connection"], saved)
    assert found["saving_bytes"] >= (CONNECTIONS - 2) * 0.9 * found["bytes_per_connection"]

    shared = _report_under_run(tmp_path, cert_pair, shared=True)
    assert shared["per_connection"]["connections"] == CONNECTIONS
    assert [f["id"] for f in shared["findings"]] == [], shared["findings"]
