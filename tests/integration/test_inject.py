"""Injection into running processes with real gdb, real OpenSSL servers on 127.0.0.1.

Uses the built shim when it exports tlsprof_start; otherwise a stub library built here that only
serves PING/DETACH on the channel socket (enough to prove injection and the safe point).
"""

import os
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest

from tlsenv import tls_connect
from tlsprof.collect import client, inject
from tlsprof.collect.channel_paths import channel_dir_for, socket_path
from tlsprof.errors import AttachError, NoOpenSSL, NoSuchProcess, ToolMissing, UnsafeChannelDir

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/gdb"), reason="needs gdb")

STUB_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>
static int started, lfd = -1;
static char path[256];
static void *serve(void *a) {
    for (;;) {
        int c = accept(lfd, 0, 0);
        if (c < 0) return 0;
        char buf[64] = {0}; int n = 0;
        while (n < 63 && read(c, buf + n, 1) == 1 && buf[n] != '\n') n++;
        char out[64];
        int det = !strncmp(buf, "DETACH", 6);
        if (!strncmp(buf, "PING", 4)) snprintf(out, sizeof out, "PONG %d\n", getpid());
        else strcpy(out, det ? "OK\n" : "stub\n");
        if (det) { close(lfd); unlink(path); lfd = -1; started = 0; }
        write(c, out, strlen(out)); close(c);
        if (det) return 0;
    }
}
__attribute__((visibility("default"))) int tlsprof_start(const char *dir) {
    if (__atomic_exchange_n(&started, 1, 0)) return 1;
    snprintf(path, sizeof path, "%s/%d.sock", dir, getpid());
    unlink(path);
    lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    if (bind(lfd, (void *)&a, sizeof a) || listen(lfd, 8)) { close(lfd); started = 0; return -2; }
    pthread_t t; pthread_attr_t at; pthread_attr_init(&at); pthread_attr_setdetachstate(&at, 1);
    pthread_create(&t, &at, serve, 0);
    return 0;
}
__attribute__((visibility("default"))) int tlsprof_stop(void) {
    if (lfd >= 0) { shutdown(lfd, SHUT_RDWR); close(lfd); unlink(path); lfd = -1; }
    started = 0; return 0;
}
"""


def _exports_start(path):
    out = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True, timeout=30).stdout
    return any(line.split()[-1] == "tlsprof_start" for line in out.splitlines() if line.split())


@pytest.fixture(scope="session")
def shim(tmp_path_factory):
    """Path of a library exporting tlsprof_start/tlsprof_stop: the real shim if built."""
    if os.environ.get("TLSPROF_TEST_SHIM"):  # e.g. a shim built from hooks/ by hand
        return os.environ["TLSPROF_TEST_SHIM"]
    try:
        from tlsprof.collect.shim import shim_path

        real = shim_path()
        if _exports_start(real):
            return real
    except Exception:
        pass
    d = tmp_path_factory.mktemp("stub") / "tlsprof"
    d.mkdir()
    src, lib = d / "stub.c", d / "_shim.stub.so"
    src.write_text(STUB_C)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(lib), str(src), "-lpthread"], check=True, timeout=120)
    return str(lib)


@pytest.fixture
def chan():
    return channel_dir_for(os.getuid())


class Target:
    """A process started by a test, stopped by pid at teardown."""

    def __init__(self, argv, **kw):
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **kw
        )
        self.pid = self.proc.pid

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def targets():
    started = []

    def start(argv, **kw):
        t = Target(argv, **kw)
        started.append(t)
        return t

    yield start
    for t in started:
        t.stop()


def _wait_for(pred, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _state(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    return s[s.rfind(")") + 2]


def _wait_libssl(pid):
    def loaded():
        with open(f"/proc/{pid}/maps") as f:
            return "libssl.so" in f.read()

    _wait_for(loaded, what=f"libssl in pid {pid}")


def _run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "tlsprof", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_idle_asyncio_tls_server_is_attached_and_still_serves(spawn, shim, chan):
    server = spawn.server()
    pid = server.target_pid()
    tls_connect(server.port).close()  # idle afterwards, in epoll_wait
    info = inject.preflight(pid, shim)
    assert info.libssl and info.is_python
    stages = []
    inject.inject(pid, shim, chan, on_stage=stages.append)
    assert "safe-point" in stages and stages[-1] == "detached"
    assert client.ping(socket_path(chan, pid)) == pid
    assert _state(pid) in "SR"
    tls = tls_connect(server.port)
    tls.sendall(b"ping\n")
    assert tls.recv(5) == b"ping\n"
    tls.close()
    assert inject.eject(pid, chan, shim) == "socket"
    tls_connect(server.port).close()


def test_idle_openssl_s_server_is_attached_and_handshakes_after(targets, cert_pair, shim, chan):
    cert, key = cert_pair
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = targets(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", cert, "-key", key, "-quiet"],
        stdin=subprocess.DEVNULL,
    )

    def listening():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    _wait_for(listening, what="s_server listening")
    inject.inject(t.pid, shim, chan)
    assert inject.ping(t.pid, chan)
    ctx = ssl.create_default_context(cafile=cert)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version()
    assert t.proc.poll() is None
    assert inject.eject(t.pid, chan, shim) == "socket"


def test_busy_python_target_is_attached_at_an_allocator_breakpoint(targets, shim, chan):
    t = targets([sys.executable, "-c", "import ssl\nwhile True:\n    b = bytearray(100000)\n"])
    _wait_libssl(t.pid)
    stages = []
    inject.inject(t.pid, shim, chan, on_stage=stages.append)
    assert "waiting" in stages and "safe-point" in stages
    assert inject.ping(t.pid, chan)
    assert t.proc.poll() is None


def test_detach_cli_falls_back_to_gdb_when_socket_is_gone(targets, shim, chan):
    t = targets([sys.executable, "-c", "import ssl, time\nwhile True: time.sleep(0.2)\n"])
    _wait_libssl(t.pid)
    inject.inject(t.pid, shim, chan)
    os.unlink(socket_path(chan, t.pid))  # the socket is unreachable now
    assert inject.eject(t.pid, chan, shim) == "gdb"
    assert t.proc.poll() is None


def test_detach_of_a_shim_already_stopped_says_so(targets, shim, chan):
    """After a session detached, the shim stays mapped but inactive; `tlsprof detach` said
    "detached via gdb" as if it had removed hooks."""
    t = targets([sys.executable, "-c", "import ssl, time\nwhile True: time.sleep(0.2)\n"])
    _wait_libssl(t.pid)
    inject.inject(t.pid, shim, chan)
    assert inject.eject(t.pid, chan, shim) == "socket"
    assert inject.eject(t.pid, chan, shim) == "inactive"
    assert t.proc.poll() is None


def _tlsprof_shims_mapped(pid):
    with open(f"/proc/{pid}/maps") as f:
        return {line.split()[-1] for line in f if "/_shim" in line}


def test_attach_starts_the_preloaded_build_not_a_second_shim(targets, chan):
    """`run` preloads the _shim_preload build; attach to such a process (its shim loaded, not
    started) must start that one: dlopen of the injectable build would load a second shim."""
    from tlsprof.collect.shim import shim_path

    preload, injectable = shim_path(preload=True), shim_path()
    if preload == injectable:
        pytest.skip("no separate preload build installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TLSPROF_")}
    env["LD_PRELOAD"] = preload
    t = targets([sys.executable, "-c", "import ssl, time\nwhile True: time.sleep(0.2)\n"], env=env)
    _wait_libssl(t.pid)
    assert _tlsprof_shims_mapped(t.pid) == {os.path.realpath(preload)}
    inject.inject(t.pid, injectable, chan)
    assert inject.ping(t.pid, chan)
    assert _tlsprof_shims_mapped(t.pid) == {os.path.realpath(preload)}
    assert inject.eject(t.pid, chan, injectable) == "socket"
    assert t.proc.poll() is None


def test_no_such_pid_is_one_line_with_exit_code():
    r = _run_cli("detach", "999999")
    assert r.returncode == NoSuchProcess.exit_code
    assert r.stderr.strip() == "tlsprof: no process with pid 999999"
    with pytest.raises(NoSuchProcess):
        inject.preflight(999999)


def test_process_without_openssl_is_refused(targets):
    t = targets(["sleep", "60"])
    with pytest.raises(NoOpenSSL, match="no libssl/libcrypto"):
        inject.preflight(t.pid)


def test_attaching_twice_says_already_attached(spawn, shim, chan):
    server = spawn.server()
    pid = server.target_pid()
    inject.inject(pid, shim, chan)
    with pytest.raises(AttachError, match="already attached"):
        inject.preflight(pid, shim, chan)
    with pytest.raises(AttachError, match="already attached"):
        inject.inject(pid, shim, chan, wait_ready=False)
    inject.eject(pid, chan, shim)


def test_gdb_missing_is_tool_missing(spawn, monkeypatch, tmp_path):
    server = spawn.server()
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing, match="apt-get install gdb"):
        inject.preflight(server.target_pid())


STUCK_IN_FGETS = r"""
#include <openssl/ssl.h>
#include <stdio.h>
int main(void)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    char line[64];
    fgets(line, sizeof line, stdin);   /* blocked in read() under stdin's lock: no safe point */
    SSL_CTX_free(ctx);
    return 0;
}
"""


@pytest.fixture(scope="module")
def stuck_in_fgets(tmp_path_factory):
    """A program whose only thread waits in read() inside fgets() and never calls malloc."""
    d = tmp_path_factory.mktemp("stuck")
    (d / "stuck.c").write_text(STUCK_IN_FGETS)
    subprocess.run(
        ["gcc", "-O1", "-o", str(d / "stuck"), str(d / "stuck.c"), "-lssl", "-lcrypto"], check=True, timeout=120
    )
    return str(d / "stuck")


def test_target_dying_at_the_safe_point_wait_is_one_line_attach_error(targets, shim, chan, stuck_in_fgets):
    # Blocked in read() under fgets(): not a safe point, so gdb waits at allocator breakpoints.
    t = targets([stuck_in_fgets], stdin=subprocess.PIPE)
    _wait_libssl(t.pid)

    def on_stage(stage):
        if stage == "waiting":
            os.kill(t.pid, signal.SIGKILL)

    with pytest.raises(AttachError, match=f"pid {t.pid} exited during attach") as exc:
        inject.inject(t.pid, shim, chan, on_stage=on_stage)
    assert "\n" not in str(exc.value)


def test_no_safe_point_within_timeout_leaves_target_running(targets, shim, chan, stuck_in_fgets):
    t = targets([stuck_in_fgets], stdin=subprocess.PIPE)
    _wait_libssl(t.pid)
    with pytest.raises(AttachError, match=f"no safe point.*thread {t.pid} in read via fgets"):
        inject.inject(t.pid, shim, chan, timeout=6)
    assert t.proc.poll() is None and _state(t.pid) in "SR"
    t.proc.stdin.close()  # it reads EOF and exits normally: the read() was restarted intact
    assert t.proc.wait(timeout=10) == 0


def test_thread_blocked_in_read_is_a_safe_point(targets, shim, chan, tmp_path):
    """read() called directly (Python's buffered stdin) holds no libc lock: attach at once."""
    out = tmp_path / "read.out"
    t = targets(
        [
            sys.executable,
            "-c",
            "import ssl, sys\ndata = sys.stdin.buffer.read()\nopen(sys.argv[1], 'w').write(str(len(data)))\n",
            str(out),
        ],
        stdin=subprocess.PIPE,
    )
    _wait_libssl(t.pid)
    stages = []
    inject.inject(t.pid, shim, chan, timeout=20, on_stage=stages.append)
    assert "waiting" not in stages  # no allocator breakpoint was needed
    assert inject.eject(t.pid, chan) in ("socket", "gdb")
    t.proc.stdin.write(b"x" * 1000)
    t.proc.stdin.close()
    assert t.proc.wait(timeout=10) == 0
    assert out.read_text() == "1000"  # the interrupted read() was restarted: nothing lost


def test_channel_dir_is_private_and_refused_when_open(tmp_path, monkeypatch):
    import tlsprof.collect.channel_paths as cp

    monkeypatch.setattr(cp, "BASE", str(tmp_path))
    d = cp.channel_dir_for(os.getuid())
    assert oct(os.stat(d).st_mode & 0o777) == oct(0o700)
    os.chmod(d, 0o755)
    with pytest.raises(UnsafeChannelDir, match="chmod 700"):
        cp.channel_dir_for(os.getuid())
