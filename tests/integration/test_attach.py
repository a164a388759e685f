"""`tlsprof attach PID` on running processes: Python asyncio and threaded servers, openssl s_server,
an nginx worker; detach leaves the target serving; error cases end in one line (issue: attach)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import psutil
import pytest

from reportcheck import load_checked
from tlsenv import free_port, tls_connect
from tlsprof.collect import client, jail
from tlsprof.collect.channel_paths import agent_socket_path, channel_dir_for, socket_path

pytestmark = pytest.mark.skipif(not shutil.which("gdb"), reason="attach needs gdb (make test installs it)")

TLSPROF = [sys.executable, "-m", "tlsprof"]


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def shim_answers(pid):
    """The shim serves in the private directory of the target's uid (nginx workers: www-data)."""
    try:
        uid = psutil.Process(pid).uids().effective
        # a chrooted target serves inside its jail (tlsprof/collect/jail.py)
        return client.ping(socket_path(jail.channel_dir(pid, uid, create=False), pid)) == pid
    except Exception:
        return False


class Attached:
    """`tlsprof attach PID --duration S -o FILE` in the background, until its shim answers."""

    def __init__(self, pid, report, duration, *extra):
        self.pid = pid
        self.report = report
        self.proc = subprocess.Popen(
            [*TLSPROF, "attach", str(pid), "--duration", str(duration), "--interval", "0.3", "-o", str(report), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: shim_answers(pid) or self.proc.poll() is not None, 40, "the shim to answer")
        if self.proc.poll() is not None:
            raise AssertionError(f"attach failed: {self.proc.communicate()[1]}")

    def finish(self, timeout=60):
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        assert "detached" in err
        assert not shim_answers(self.pid)
        return load_checked(self.report)


def handshakes_ok(port, n, cafile=None):
    failures = 0
    for _ in range(n):
        try:
            with tls_connect(port, cafile=cafile) as s:
                s.sendall(b"ping\n")
                if s.recv(16) != b"ping\n":
                    failures += 1
        except OSError:
            failures += 1
    return failures


def test_attach_lists_old_and_new_connections_then_detaches_cleanly(spawn, tmp_path):
    server = spawn.server()
    spawn.clients(server.port, 100, interval=1)  # opened before attach
    # without the heap walk (tests/integration/test_heap_walk.py has it): older connections are counted, not measured
    session = Attached(server.pid, tmp_path / "attach.json", 8, "--no-walk")
    spawn.clients(server.port, 100, interval=1)  # opened while attached
    report = session.finish()
    assert report["target"]["mode"] == "attach"
    assert report["target"]["pid"] == server.pid
    conns = report["connections"]
    assert len(conns) >= 200, len(conns)
    old = [c for c in conns if c["predates_attach"] and not c["since_attach"]]
    new = [c for c in conns if c["since_attach"] and not c["predates_attach"]]
    assert len(old) >= 100 and len(new) >= 100
    for c in new:  # measured from their first byte
        assert c["live_bytes"] > 0 and c["by_cause"]
    assert any("before tlsprof attached" in n for n in report["notes"])
    summary = report["attach"]
    assert summary["connections_before_attach"] == len(old)
    est = summary["estimate_for_older"]
    assert est["estimate"] is True and est["sample"] == len(new) and est["bytes_per_connection"] > 0
    # detached: the server serves 200 more handshakes correctly
    assert handshakes_ok(server.port, 200) == 0
    assert server.proc.poll() is None


def test_attach_to_python_starts_the_agent_and_detach_removes_it(spawn, tmp_path):
    server = spawn.server()
    spawn.clients(server.port, 10, interval=1)
    session = Attached(server.pid, tmp_path / "py.json", 5)
    spawn.clients(server.port, 10, interval=1)
    report = session.finish()
    agent_sock = agent_socket_path(channel_dir_for(os.getuid()), server.pid)
    assert not os.path.exists(agent_sock)  # the agent went away with the hooks
    assert report["python"]["join"] == "on"
    joined = [c for c in report["connections"] if c.get("python")]
    assert len(joined) >= 20
    for c in joined:
        assert c["python"]["type"] == "ssl.SSLObject" and c["python"]["python_bytes"] >= 256 * 1024
        if c["predates_attach"]:
            assert not c["python"]["created_by"]  # made before attach: never guessed
        else:
            assert c["python"]["created_by"]
    assert handshakes_ok(server.port, 20) == 0


def test_attach_to_context_per_connection_server_finds_ca_store(spawn, tmp_path):
    server = spawn.server("--ctx-per-conn")
    session = Attached(server.pid, tmp_path / "ctx.json", 6)
    spawn.clients(server.port, 30, interval=1)
    report = session.finish()
    finding = next(f for f in report["findings"] if f["id"] == "ca-store-per-connection")
    assert finding["bytes_per_connection"] > 500_000


def test_attach_to_threaded_server_reports_fd_and_peer(spawn, tmp_path):
    server = spawn.server("--threaded")
    session = Attached(server.pid, tmp_path / "threaded.json", 4)
    socks = [tls_connect(server.port) for _ in range(10)]
    try:
        local = {f"127.0.0.1:{s.getsockname()[1]}" for s in socks}
        time.sleep(1.5)
        report = session.finish()
    finally:
        for s in socks:
            s.close()
    peers = {c["peer"] for c in report["connections"] if c["since_attach"]}
    assert local <= peers


def test_attach_to_openssl_s_server(cert_pair, tmp_path):
    cert, key = cert_pair
    port = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", cert, "-key", key, "-quiet"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    s_client = None
    try:
        wait_for(
            lambda: (
                port in {c.laddr.port for c in psutil.Process(server.pid).net_connections() if c.status == "LISTEN"}
            ),
            20,
            "s_server to listen",
        )
        session = Attached(server.pid, tmp_path / "s_server.json", 3)
        s_client = subprocess.Popen(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-quiet"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        report = session.finish()
        assert report["per_connection"]["connections"] >= 1
        assert report["connections"][0]["peer"].startswith("127.0.0.1:")
        assert server.poll() is None
    finally:
        for p in (s_client, server):
            if p and p.poll() is None:
                p.kill()
                p.wait()


NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;
    uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 "hello\\n"; }}
    }}
}}
"""


@contextmanager
def nginx_worker(cert_pair, directory, conf=None):
    """nginx (master + one worker) on a free 127.0.0.1 port, configured in `directory`, started and,
    whatever happens, stopped by pid (SIGQUIT, then SIGKILL). Yields (worker pid, port, sockets):
    the test appends the client sockets it opens, closed at the end."""
    cert, key = cert_pair
    port = free_port()
    path = directory / "nginx.conf"
    path.write_text((conf or NGINX_CONF).format(dir=directory, port=port, cert=cert, key=key))
    nginx = subprocess.Popen(
        [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(path), "-p", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    socks = []
    try:
        wait_for(lambda: psutil.Process(nginx.pid).children(), 20, "an nginx worker")
        worker = psutil.Process(nginx.pid).children()[0].pid
        wait_for(
            lambda: any(c.laddr.port == port for c in psutil.net_connections("tcp") if c.status == "LISTEN"),
            20,
            "nginx to listen",
        )
        yield worker, port, socks
    finally:
        for sock in socks:
            sock.close()
        nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(15)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait()


def _http_keepalive(port, n):
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    socks = []
    for _ in range(n):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert b"200" in s.recv(4096)
        socks.append(s)
    return socks


@pytest.mark.skipif(
    not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"),
    reason="needs Debian's nginx (make test installs nginx-light)",
)
def test_attach_to_nginx_worker(cert_pair, tmp_path):
    with nginx_worker(cert_pair, tmp_path) as (worker, port, socks):
        session = Attached(worker, tmp_path / "nginx.json", 4)
        socks += _http_keepalive(port, 20)
        report = session.finish()
        assert report["per_connection"]["connections"] >= 20
        peers = {c["peer"] for c in report["connections"]}
        assert {f"127.0.0.1:{s.getsockname()[1]}" for s in socks} <= peers
        assert all(c["fd"] is not None for c in report["connections"])
        socks += _http_keepalive(port, 5)  # still serving after detach


def test_twenty_attach_detach_cycles_under_handshake_load(spawn, tmp_path):
    server = spawn.server()
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}

    def load():
        while not stop.is_set():
            failed = handshakes_ok(server.port, 1)
            counts["failed" if failed else "ok"] += 1

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(20):
            session = Attached(server.pid, tmp_path / f"cycle{i}.json", 0.3)
            session.finish()
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert server.proc.poll() is None
    assert counts["failed"] == 0 and counts["ok"] > 20, counts


def _cli(*args, timeout=60):
    return subprocess.run([*TLSPROF, *args], capture_output=True, text=True, timeout=timeout)


def test_attach_errors_are_one_line():
    p = subprocess.Popen(["sleep", "60"])
    try:
        out = _cli("attach", str(p.pid), "--duration", "1")
        assert out.returncode == 5 and "no libssl" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    finally:
        p.kill()
        p.wait()
    dead = subprocess.Popen(["true"])
    dead.wait()
    out = _cli("attach", str(dead.pid))
    assert out.returncode == 3 and len(out.stderr.strip().splitlines()) == 1
    for bad in (["attach"], ["attach", "x"], ["attach", "1", "--duration", "-1"]):
        out = _cli(*bad)
        assert out.returncode == 2 and "Traceback" not in out.stderr


def test_attaching_twice_is_refused_and_detach_command_works(spawn, tmp_path):
    server = spawn.server()
    session = Attached(server.pid, tmp_path / "first.json", 30)
    out = _cli("attach", str(server.pid), "--duration", "1")
    assert out.returncode != 0 and "already attached" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    # the first session's CLI dies: `tlsprof detach` removes the hooks
    session.proc.kill()
    session.proc.wait()
    out = _cli("detach", str(server.pid))
    assert out.returncode == 0, out.stderr
    assert not shim_answers(server.pid)
    assert handshakes_ok(server.port, 20) == 0


def test_target_exiting_while_attached_gives_partial_report(spawn, tmp_path):
    server = spawn.server()
    spawn.clients(server.port, 10, interval=1)
    session = Attached(server.pid, tmp_path / "dies.json", 30)
    time.sleep(1.5)
    os.kill(server.pid, signal.SIGKILL)
    out, err = session.proc.communicate(timeout=60)
    assert session.proc.returncode == 0, err
    report = load_checked(tmp_path / "dies.json")
    assert report["partial"] is True
    assert report["per_connection"]["connections"] >= 1


def test_attach_serves_metrics_while_attached(spawn, tmp_path):
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families

    server = spawn.server()
    spawn.clients(server.port, 10, interval=1)
    port = free_port()
    session = Attached(server.pid, tmp_path / "m.json", 4, "--metrics", f"127.0.0.1:{port}")
    values = {}
    deadline = time.monotonic() + 30
    while values.get("tlsprof_connections", 0) < 10:
        assert time.monotonic() < deadline, values
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            time.sleep(0.2)
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("pid") == str(server.pid) and not sample.labels.get("cause"):
                    values[sample.name] = sample.value
        time.sleep(0.2)
    report = session.finish()
    assert values["tlsprof_connections"] >= 10 and report["per_connection"]["connections"] >= 10
