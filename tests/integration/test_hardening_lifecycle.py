"""Hardening: exec, exits and signals, on both sides.

- exec: the shim's listener thread and fds (CLOEXEC) do not survive exec; the new image loads a
  fresh shim from LD_PRELOAD (run) and serves the same pid's socket, or runs untracked if the
  environment was cleared. Nothing broken is carried along.
- The target exits, raises, is SIGTERMed (through tlsprof), SIGKILLed, or closes its stdio: the
  report is kept; SIGKILL marks it partial.
- tlsprof itself SIGKILLed: in run mode the target is NOT stopped and runs on (hooks in place, no
  one listening but its own shim); in attach mode the hooks stay until `tlsprof detach PID`, which
  removes them through the socket.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from tlsenv import Proc, start_echo_server
from tlsprof.collect import launch
from tlsprof.collect.channel_paths import channel_dir_path
from tlsprof.collect.client import ask, parse_snapshot

from shim_harness.hardening_util import echo_once, wait_for

TLSPROF = [sys.executable, "-m", "tlsprof"]

TARGET = textwrap.dedent("""
    import os, ssl, sys, time
    ctx = ssl.create_default_context()
    time.sleep(1.0)
    mode = sys.argv[1]
    if mode == "exit":
        sys.exit(3)
    if mode == "raise":
        raise RuntimeError("boom")
    if mode == "closestdio":
        for fd in (0, 1, 2):
            os.close(fd)
        more = [ssl.create_default_context() for _ in range(2)]
        time.sleep(1.0)
        os._exit(0)
    if mode == "wait":
        open(sys.argv[2], "w").close()
        time.sleep(120)
""")


def run_target(tmp_path, mode, *, after_start=None):
    script = tmp_path / "target.py"
    script.write_text(TARGET)
    out = tmp_path / f"{mode}.json"
    ready = tmp_path / "ready"
    p = subprocess.Popen(
        [*TLSPROF, "run", "-o", str(out), "--interval", "0.2", "--", sys.executable, str(script), mode, str(ready)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if after_start:
            wait_for(lambda: ready.exists(), 30, "target ready")
            time.sleep(0.5)  # a snapshot or two
            after_start(p)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    report = json.loads(out.read_text()) if out.exists() else None
    return p.returncode, err, report


def test_target_exits_with_a_status_report_kept(tmp_path):
    rc, err, report = run_target(tmp_path, "exit")
    assert rc == 3 and report and report["partial"] is False
    assert "Traceback" not in err


def test_target_raises_report_kept(tmp_path):
    rc, err, report = run_target(tmp_path, "raise")
    assert rc == 1 and report and report["partial"] is False
    assert "RuntimeError: boom" in err  # the target's own traceback, passed through


def test_target_closes_its_stdio_report_kept(tmp_path):
    rc, err, report = run_target(tmp_path, "closestdio")
    assert rc == 0 and report and report["partial"] is False
    assert "Traceback" not in err


def _target_of(p):
    import psutil

    kids = psutil.Process(p.pid).children()
    assert kids, "no target under tlsprof run"
    return kids[0].pid


def test_sigterm_to_tlsprof_is_forwarded_report_kept(tmp_path):
    rc, err, report = run_target(tmp_path, "wait", after_start=lambda p: p.send_signal(signal.SIGTERM))
    assert rc == 128 + signal.SIGTERM and report and report["partial"] is False
    assert "Traceback" not in err


def test_target_sigkilled_report_marked_partial(tmp_path):
    rc, err, report = run_target(tmp_path, "wait", after_start=lambda p: os.kill(_target_of(p), signal.SIGKILL))
    assert rc == 128 + signal.SIGKILL and report and report["partial"] is True
    assert "Traceback" not in err


def test_tlsprof_run_killed_target_runs_on(cert_dir):
    server = start_echo_server(wrapper=[*TLSPROF, "run", "--interval", "0.2", "--"], certdir=cert_dir)
    target = server.target_pid()
    try:
        os.kill(server.pid, signal.SIGKILL)  # tlsprof, not the target
        wait_for(lambda: server.proc.poll() is not None, 10, "tlsprof to die")
        assert echo_once(server.port)  # the target is not stopped, and still serves
        for _ in range(3):
            assert echo_once(server.port)
        # its hooks can be removed: the run's socket dir is unknown to detach, which falls back to gdb
        if os.path.exists("/usr/bin/gdb"):
            d = subprocess.run([*TLSPROF, "detach", str(target)], capture_output=True, text=True, timeout=90)
            assert d.returncode == 0, d.stderr
            assert echo_once(server.port)
    finally:
        try:
            os.kill(target, signal.SIGTERM)
        except ProcessLookupError:
            pass
        server.stop()


def test_tlsprof_attach_killed_hooks_removable_with_detach(cert_dir):
    if not os.path.exists("/usr/bin/gdb"):
        pytest.skip("gdb needed for attach")
    server = start_echo_server(certdir=cert_dir)
    sock = os.path.join(channel_dir_path(os.geteuid()), f"{server.pid}.sock")
    att = subprocess.Popen(
        [*TLSPROF, "attach", str(server.pid), "--interval", "0.2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: os.path.exists(sock) or att.poll() is not None, 60, "attach")
        assert parse_snapshot(ask(sock, "SNAPSHOT")).stats["slots_patched"] > 0
        att.kill()
        att.wait(10)
        assert echo_once(server.port)  # hooks still in, target unharmed
        assert ask(sock, "PING").startswith("PONG")
        d = subprocess.run([*TLSPROF, "detach", str(server.pid)], capture_output=True, text=True, timeout=60)
        assert d.returncode == 0, d.stderr
        wait_for(lambda: not os.path.exists(sock), 10, "the shim to drop its socket")
        assert echo_once(server.port)
    finally:
        if att.poll() is None:
            att.kill()
        server.stop()


EXEC_SECOND = textwrap.dedent("""
    import ssl, sys, time
    ctx = ssl.create_default_context()
    open(sys.argv[1], "w").close()
    time.sleep(60)
""")


def test_exec_loads_a_fresh_shim_for_the_new_image(tmp_path):
    second = tmp_path / "second.py"
    second.write_text(EXEC_SECOND)
    ready = tmp_path / "ready"
    first = (
        f"import os, ssl, sys; c = ssl.create_default_context(); "
        f"os.execv(sys.executable, [sys.executable, {str(second)!r}, {str(ready)!r}])"
    )
    chan = tempfile.mkdtemp(prefix="tlsprof-exec-")
    p = Proc([sys.executable, "-c", first], env=launch.preload_env(chan))
    try:
        wait_for(lambda: ready.exists() or not p.alive(), 30, "the exec'd program")
        sock = os.path.join(chan, f"{p.pid}.sock")
        wait_for(lambda: os.path.exists(sock), 10, "channel")
        assert ask(sock, "PING").strip() == f"PONG {p.pid}"  # the same pid, served by the new image
        snap = parse_snapshot(ask(sock, "SNAPSHOT"))
        assert snap.stats["slots_patched"] > 0 and snap.stats["blocks"] > 0
        # one context made by the new image: the old image's counters did not come along
        assert len([o for o in snap.owners if o.kind == "context"]) == 1
    finally:
        p.stop()


def test_exec_of_a_program_without_openssl_under_run(tmp_path):
    code = "import os, ssl; ssl.create_default_context(); os.execv('/bin/sh', ['sh', '-c', 'exit 7'])"
    p = subprocess.run(
        [*TLSPROF, "run", "--interval", "0.2", "--", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 7
    assert "Traceback" not in p.stderr


def test_exec_with_preload_removed_runs_untracked(tmp_path):
    second = tmp_path / "second.py"
    second.write_text(EXEC_SECOND)
    ready = tmp_path / "ready"
    first = (
        f"import os, ssl, sys; c = ssl.create_default_context(); "
        f"env = {{k: v for k, v in os.environ.items() if k not in ('LD_PRELOAD', 'TLSPROF_DIR')}}; "
        f"os.execve(sys.executable, [sys.executable, {str(second)!r}, {str(ready)!r}], env)"
    )
    chan = tempfile.mkdtemp(prefix="tlsprof-exec-")
    p = Proc([sys.executable, "-c", first], env=launch.preload_env(chan))
    try:
        wait_for(lambda: ready.exists() or not p.alive(), 30, "the exec'd program")
        assert p.alive()
        assert "_shim" not in open(f"/proc/{p.pid}/maps").read()
        assert len(os.listdir(f"/proc/{p.pid}/task")) == 1  # no listener thread carried along
    finally:
        p.stop()


# ---- a daemon that closes every inherited descriptor -----------------------------------------------

DAEMON = textwrap.dedent("""
    import os, socket, ssl, sys, time
    port_file, drop = sys.argv[1], sys.argv[2] == "drop"
    first = ssl.create_default_context()
    time.sleep(1.0)  # tlsprof has polled shim and agent a few times
    os.closerange(3, 4096)  # what daemons do: every inherited descriptor goes, ours with them
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(srv.getsockname()[1]))
    os.rename(port_file + ".tmp", port_file)
    if drop:  # bind as root, then drop privileges: the shim pauses its channel around setuid
        os.setgid(65534)
        os.setuid(65534)
    srv.settimeout(30)
    for _ in range(20):
        c, _ = srv.accept()
        c.sendall(b"hi")
        c.close()
    later = [ssl.create_default_context() for _ in range(2)]
    time.sleep(2.0)  # snapshots of the contexts made after the descriptors went
""")


@pytest.mark.parametrize("drop", ["keep", "drop"])
def test_daemon_closing_every_descriptor_keeps_its_sockets_and_the_channel(tmp_path, drop):
    """The daemon's own listening socket gets the number the shim's socket had. tlsprof must never
    accept on it, shut it down or close it (the shim's pause around setuid once shut a real server's
    listening socket down: every client refused), and both channels come back on new descriptors:
    the contexts made afterwards are in the report and joined to their Python objects."""
    if drop == "drop" and os.geteuid() != 0:
        pytest.skip("dropping privileges needs root")
    script = tmp_path / "daemon.py"
    script.write_text(DAEMON)
    os.chmod(tmp_path, 0o755)  # the dropped user reads the script
    port_file = tmp_path / "port"
    out = tmp_path / "r.json"
    p = subprocess.Popen(
        [*TLSPROF, "run", "-o", str(out), "--interval", "0.2", "--", sys.executable, str(script), str(port_file), drop],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(port_file.exists, 30, "the daemon's port")
        port = int(port_file.read_text())
        answers = []
        for _ in range(20):
            import socket

            with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                answers.append(c.recv(2))
            time.sleep(0.05)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert answers == [b"hi"] * 20, answers
    assert p.returncode == 0, err
    report = json.loads(out.read_text())
    assert len([c for c in report["contexts"] if c["alive"]]) == 3, report["contexts"]
    assert report["python"]["joined_contexts"] == 3, report["python"]


CHROOTED = textwrap.dedent("""
    import os, ssl, sys, time
    first = ssl.create_default_context()
    time.sleep(1.0)
    os.chroot(sys.argv[1])  # Debian's haproxy.cfg (and stunnel set up with a jail): chroot, then drop root
    os.chdir("/")
    os.setgid(65534)
    os.setuid(65534)
    later = [ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER) for _ in range(2)]
    time.sleep(2.0)
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot and dropping privileges need root")
def test_chroot_then_setuid_keeps_the_channel(tmp_path):
    """The shim pauses its listener around setuid; resumed inside a chroot it could not bind its
    socket's path again, and tlsprof saw nothing after the chroot. The socket now stays open across
    the pause: the contexts made in the chroot are in the report."""
    script = tmp_path / "chrooted.py"
    script.write_text(CHROOTED)
    jail = tmp_path / "jail"
    jail.mkdir()
    out = tmp_path / "r.json"
    p = subprocess.run(
        [*TLSPROF, "run", "-o", str(out), "--interval", "0.2", "--", sys.executable, str(script), str(jail)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    report = json.loads(out.read_text())
    assert report["history"][-1]["t"] > 2.5, "no snapshot after the chroot"
    assert len([c for c in report["contexts"] if c["alive"]]) == 3, report["contexts"]
