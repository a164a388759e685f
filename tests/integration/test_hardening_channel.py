"""Hardening: the channel is private, checks its peer, and no peer can stall or crash the target.

Proves: directory 0700 + socket 0600; the shim refuses a directory open to others; a client of
another uid (`nobody`, via setuid in a forked child) is refused by the filesystem, and, even when the
socket is deliberately left open to everyone, by SO_PEERCRED: closed without one byte, DETACH
ignored; garbage, oversized, silent, slow-reading and vanishing peers get nothing and the target keeps
serving TLS all along (the listener is its own thread with 2 s socket timeouts and MSG_NOSIGNAL).
"""

import os
import pwd
import socket
import stat
import tempfile
import time

import pytest


from shim_harness.hardening_util import Tracked, echo_once, wait_for
from tlsprof.collect import launch
from tlsenv import start_echo_server


def as_other_uid(fn, user="nobody"):
    """Run fn() in a forked child that dropped to `user`; returns what fn returned (repr'd) or the
    exception's name."""
    if os.geteuid() != 0:
        pytest.skip("needs root to setuid to another user")
    pw = pwd.getpwnam(user)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            try:
                out = repr(fn())
            except Exception as exc:
                out = "EXC " + type(exc).__name__
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        d = os.read(r, 65536)
        if not d:
            break
        chunks.append(d)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


def raw_exchange(path, payload, read_timeout=5.0):
    """Connect, send payload, half-close, read everything: bytes received (b'' = closed silently)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(read_timeout)
        s.connect(path)
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        got = b""
        while True:
            try:
                d = s.recv(65536)
            except OSError:
                break
            if not d:
                break
            got += d
        return got


@pytest.fixture
def tracked(cert_dir):
    t = Tracked(certdir=cert_dir)
    yield t
    t.stop()


def test_channel_dir_is_0700_and_socket_0600(tracked):
    assert stat.S_IMODE(os.stat(tracked.dir).st_mode) == 0o700
    st = os.stat(tracked.sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    assert tracked.ask("PING").startswith("PONG ")


def test_shim_refuses_a_channel_dir_open_to_others_and_target_runs_untracked(cert_dir):
    d = tempfile.mkdtemp(prefix="tlsprof-open-")
    os.chmod(d, 0o755)
    server = start_echo_server(env=launch.preload_env(d), certdir=cert_dir)
    try:
        assert echo_once(server.port)
        assert not os.path.exists(os.path.join(d, f"{server.pid}.sock"))
    finally:
        server.stop()
        os.rmdir(d)


def test_another_uid_cannot_reach_the_socket(tracked):
    out = as_other_uid(lambda: raw_exchange(tracked.sock, b"SNAPSHOT\n"))
    assert out == "EXC PermissionError"
    assert echo_once(tracked.server.port)


def test_another_uid_is_refused_by_peercred_even_if_the_socket_is_left_open(tracked):
    # simulate an operator mistake: directory searchable and socket writable by everyone
    os.chmod(tracked.dir, 0o711)
    os.chmod(tracked.sock, 0o666)
    for cmd in (b"PING\n", b"SNAPSHOT\n", b"DETACH\n"):
        out = as_other_uid(lambda: raw_exchange(tracked.sock, cmd))  # noqa: B023  (called at once)
        assert out == "b''", f"{cmd!r} as nobody got {out[:200]}"
    # DETACH from nobody was ignored: still tracked, still serving TLS
    snap = tracked.snapshot()
    assert snap.stats["slots_patched"] > 0
    assert echo_once(tracked.server.port)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\xff" * 4096,  # binary garbage, no newline, more than the command buffer
        b"SNAPSHOT" * 100 + b"\n",  # a too-long line
        b"snapshot\n",  # unknown command
        b"\n",  # empty command
        os.urandom(200),
    ],
    ids=["binary", "long-line", "unknown", "empty", "random"],
)
def test_garbage_gets_nothing_useful_and_target_unharmed(tracked, payload):
    got = raw_exchange(tracked.sock, payload)
    assert b"tlsprof-snapshot" not in got and b"O " not in got
    assert got in (b"", b"ERR unknown command\n")
    assert tracked.ask("PING").startswith("PONG ")
    assert echo_once(tracked.server.port)


def test_silent_slow_and_vanishing_peers_cannot_stall_the_target(tracked):
    port = tracked.server.port
    # a peer that connects and says nothing: holds the listener at most its 2 s receive timeout
    silent = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    for s in silent:
        s.connect(tracked.sock)
    # meanwhile the target's TLS service does not wait for the listener
    for _ in range(5):
        assert echo_once(port)
    # a peer that asks for a snapshot and never reads it (tiny receive buffer)
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    slow.connect(tracked.sock)
    slow.sendall(b"SNAPSHOT\n")
    # peers that ask and vanish at once: the shim's send hits EPIPE/ECONNRESET, never SIGPIPE
    for _ in range(5):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(tracked.sock)
        s.sendall(b"SNAPSHOT\n")
        s.close()
    assert echo_once(port)
    # the listener gets through all of them in bounded time, then answers again
    wait_for(lambda: _pings(tracked), 40, "the listener to answer after hostile peers")
    for s in silent + [slow]:
        s.close()
    assert tracked.server.alive()
    assert echo_once(port)


def _pings(tracked):
    try:
        return tracked.ask("PING", timeout=2).startswith("PONG")
    except Exception:
        return False


def test_sockets_of_processes_gone_are_removed_and_live_ones_kept(tmp_path):
    """A target that ended with _exit() or a signal leaves its socket behind; the next attach's
    channel-directory check removes it, never a live process's socket nor a file that is not one."""
    import subprocess
    from tlsprof.collect.channel_paths import remove_stale_sockets

    gone = subprocess.Popen(["true"])
    gone.wait(10)
    d = tmp_path / "chan"
    d.mkdir(mode=0o700)
    socks = []
    for name in (f"{gone.pid}.sock", f"{gone.pid}.py.sock", f"{os.getpid()}.sock"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(d / name))
        socks.append(s)
    (d / "999999999.sock").write_text("not a socket")
    removed = remove_stale_sockets(str(d))
    for s in socks:
        s.close()
    assert sorted(os.path.basename(p) for p in removed) == sorted([f"{gone.pid}.py.sock", f"{gone.pid}.sock"])
    assert sorted(os.listdir(d)) == sorted([f"{os.getpid()}.sock", "999999999.sock"])
