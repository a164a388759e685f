"""Attach to processes whose every thread is blocked in a system call other than the classic waits
(issue 14, item 5): `openssl s_server -rev` holding one connection blocked in read(), and an HTTPS
client (http.client, what requests/urllib3 use underneath) blocked in read() waiting for its
response. The interrupted read is restarted: no byte is lost or duplicated. A process with no safe
point is refused with the call each thread is in."""

import hashlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from reportcheck import load_checked
from tlsenv import free_port

pytestmark = pytest.mark.skipif(not shutil.which("gdb"), reason="attach needs gdb (make test installs it)")
TLSPROF = [sys.executable, "-m", "tlsprof"]
READ, RECVFROM = 0, 45


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def blocked_in(pid):
    """System call numbers the threads of `pid` are blocked in (-1: running)."""
    calls = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                word = f.read().split()[0]
            calls.append(int(word) if word.lstrip("-").isdigit() else -1)
        except OSError:
            continue
    return calls


def _client_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_attach_to_s_server_blocked_in_read_and_it_still_echoes(cert_pair, tmp_path):
    cert, key = cert_pair
    port = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-rev", "-accept", f"127.0.0.1:{port}", "-cert", cert, "-key", key, "-quiet"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sock = None
    try:
        wait_for(
            lambda: (
                port in {c.laddr.port for c in psutil.Process(server.pid).net_connections() if c.status == "LISTEN"}
            ),
            20,
            "s_server to listen",
        )
        sock = _client_ctx().wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20))
        wait_for(lambda: blocked_in(server.pid) == [READ], 10, "s_server to block in read()")

        # lines keep arriving while gdb holds the target and while the shim is in it: every one
        # must come back reversed, once, in order (a read restarted wrongly loses or repeats them)
        sent, stop = [], threading.Event()

        def writer():
            i = 0
            while not stop.is_set() and i < 400:
                line = f"line-{i:04d}\n".encode()
                sock.sendall(line)
                sent.append(line)
                i += 1
                time.sleep(0.02)

        report = tmp_path / "s_server.json"
        attach = subprocess.Popen(
            [*TLSPROF, "attach", str(server.pid), "--duration", "2", "--interval", "0.3", "-o", str(report)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        w = threading.Thread(target=writer)
        w.start()
        try:
            _out, err = attach.communicate(timeout=120)
        finally:
            stop.set()
            w.join(30)
        assert attach.returncode == 0, err
        assert "attached" in err and "detached" in err
        sock.sendall(b"after detach\n")
        sent.append(b"after detach\n")
        want = b"".join(line[:-1][::-1] + b"\n" for line in sent)
        got = b""
        while len(got) < len(want):
            chunk = sock.recv(65536)
            assert chunk, "s_server closed the connection"
            got += chunk
        assert got == want
        assert server.poll() is None
        doc = load_checked(report)
        # -rev reads through libssl's own SSL BIO (calls inside libssl, which no hook sees): the
        # pre-attach connection is for the heap walk to find; here the attach itself is the point
        assert doc["target"]["mode"] == "attach" and doc["target"]["pid"] == server.pid
    finally:
        if sock is not None:
            sock.close()
        server.kill()
        server.wait()


CLIENT = textwrap.dedent("""
    import hashlib, http.client, ssl, sys
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[1]), context=ctx)
    conn.request("GET", "/slow")
    body = conn.getresponse().read()   # blocks in read() until the server answers
    print(len(body), hashlib.sha256(body).hexdigest())
""")


REQUESTS_CLIENT = textwrap.dedent("""
    import hashlib, sys, requests, urllib3
    urllib3.disable_warnings()
    body = requests.get("https://127.0.0.1:%s/slow" % sys.argv[1], verify=False, timeout=None).content
    print(len(body), hashlib.sha256(body).hexdigest())
""")
SYSTEM_PYTHON = "/usr/bin/python3"  # with Debian's python3-requests


def _has_requests():
    return (
        os.path.exists(SYSTEM_PYTHON)
        and subprocess.run([SYSTEM_PYTHON, "-c", "import requests"], capture_output=True, timeout=60).returncode == 0
    )


@pytest.mark.parametrize(
    "client_argv",
    [
        pytest.param([sys.executable, "-c", CLIENT], id="http.client"),
        pytest.param(
            [SYSTEM_PYTHON, "-c", REQUESTS_CLIENT],
            id="requests",
            marks=pytest.mark.skipif(not _has_requests(), reason="needs python3-requests (make test installs it)"),
        ),
    ],
)
def test_attach_to_https_client_blocked_in_read_and_its_response_arrives_whole(client_argv, cert_pair, tmp_path):
    """A requests client (and http.client, underneath it): one thread, blocked in SSL_read ->
    read() waiting for its response."""
    cert, key = cert_pair
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    answer = threading.Event()
    body = bytes(range(256)) * 1024  # 256 KiB, more than one TLS record
    served = []

    def server():
        conn, _ = listener.accept()
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.settimeout(60)
            request = b""
            while b"\r\n\r\n" not in request:
                request += tls.recv(4096)
            answer.wait(90)
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            served.append(True)

    t = threading.Thread(target=server, daemon=True)
    t.start()
    client = subprocess.Popen([*client_argv, str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: blocked_in(client.pid) in ([READ], [RECVFROM]), 20, "the client to block in read()")
        report = tmp_path / "client.json"
        r = subprocess.run(
            [*TLSPROF, "attach", str(client.pid), "--duration", "1.5", "--interval", "0.3", "-o", str(report)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert "detached" in r.stderr
        assert client.poll() is None
        answer.set()
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, err
        assert out.split() == [str(len(body)), hashlib.sha256(body).hexdigest()]
        assert served
        assert load_checked(report)["target"]["mode"] == "attach"
    finally:
        answer.set()
        if client.poll() is None:
            client.kill()
            client.wait()
        listener.close()


STUCK_IN_FGETS = r"""
#include <openssl/ssl.h>
#include <stdio.h>
int main(void)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());   /* libssl loaded and used */
    char line[64];
    printf("ready\n");
    fflush(stdout);
    fgets(line, sizeof line, stdin);             /* blocks in read() holding stdin's lock */
    SSL_CTX_free(ctx);
    return 0;
}
"""


@pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc (make test installs it)")
def test_no_safe_point_names_the_call_of_each_thread(tmp_path):
    """A thread blocked in read() inside fgets() holds stdin's lock: not a safe point. With no
    other thread and no malloc call, attach gives up in one line naming the call."""
    src = tmp_path / "stuck.c"
    src.write_text(STUCK_IN_FGETS)
    exe = tmp_path / "stuck"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(src), "-lssl", "-lcrypto"], check=True, timeout=120)
    target = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout.readline().strip() == "ready"
        wait_for(lambda: blocked_in(target.pid) == [READ], 10, "the target to block in read()")
        r = subprocess.run(
            [*TLSPROF, "attach", str(target.pid), "--duration", "1", "--timeout", "6"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 7, r.stderr
        assert len(lines) == 1, r.stderr
        assert "no safe point" in lines[0]
        assert f"thread {target.pid} in read via fgets" in lines[0], lines[0]
        # untouched: it still reads its line and exits normally
        target.stdin.write("bye\n")
        target.stdin.flush()
        assert target.wait(20) == 0
    finally:
        if target.poll() is None:
            target.kill()
            target.wait()


BLOCKED = {
    # a lock wait: Event.wait -> sem_wait/pthread_cond_wait -> futex; SIGUSR1's handler sets it
    "futex": (
        "import ssl, signal, sys, threading\n"
        "ev = threading.Event()\n"
        "signal.signal(signal.SIGUSR1, lambda *a: ev.set())\n"
        "print('ready', flush=True)\n"
        "ev.wait()\n"
        "open(sys.argv[1], 'w').write('woken')\n"
    ),
    "rt_sigtimedwait": (
        "import ssl, signal, sys\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n"
        "print('ready', flush=True)\n"
        "open(sys.argv[1], 'w').write(str(signal.sigwait({signal.SIGUSR1})))\n"
    ),
    "wait4": (
        "import os, ssl, signal, subprocess, sys\n"
        "child = subprocess.Popen(['sleep', '30'])\n"
        "signal.signal(signal.SIGUSR1, lambda *a: child.kill())\n"
        "print('ready', flush=True)\n"
        "open(sys.argv[1], 'w').write(str(child.wait()))\n"
    ),
}
EXPECTED = {"futex": "woken", "rt_sigtimedwait": str(int(signal.SIGUSR1)), "wait4": str(-int(signal.SIGKILL))}


@pytest.mark.parametrize("call", sorted(BLOCKED))
def test_python_blocked_in_call_is_attached_at_once_and_resumes(call, tmp_path):
    """futex (a lock), sigwait, wait4: attached without waiting for an allocator; afterwards the
    call still completes as it would have."""
    from tlsprof.collect import inject
    from tlsprof.collect.channel_paths import channel_dir_for
    from tlsprof.collect.shim import shim_path

    out = tmp_path / "out"
    target = subprocess.Popen([sys.executable, "-c", BLOCKED[call], str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout.readline().strip() == "ready"
        names = inject.syscall_names()
        wait_for(lambda: [names.get(n) for n in blocked_in(target.pid)] == [call], 10, f"a block in {call}")
        chan = channel_dir_for(os.getuid())
        stages = []
        inject.inject(target.pid, shim_path(), chan, timeout=30, on_stage=stages.append)
        assert "waiting" not in stages  # no allocator breakpoint was needed
        assert inject.eject(target.pid, chan) in ("socket", "gdb")
        assert target.poll() is None
        os.kill(target.pid, signal.SIGUSR1)
        assert target.wait(20) == 0
        assert out.read_text() == EXPECTED[call]
    finally:
        if target.poll() is None:
            target.kill()
            target.wait()
