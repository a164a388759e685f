"""Hardening: fork. A gunicorn-style pre-fork server (tests/shim_harness/prefork_server.py: the
parent makes the context and the listening socket, forked workers accept) under `tlsprof run` and
with `tlsprof attach` to one worker.

Contract (docs/hardening.md): under `run` every forked child is tracked with its own channel
(<dir>/<child pid>.sock, restarted by the shim's atfork child handler); it inherits the parent's
blocks (they are in its address space too) and counts only its own connections: a connection is
counted in the one process that accepted it, never twice. Forks made while another thread is inside
OpenSSL and the shim do not deadlock the child (prepare locks every shim lock, both sides unlock).
Under `attach` only the attached worker is tracked; the parent and the other workers stay untouched.
"""

import json
import os
import subprocess
import sys
import time

import pytest

from shim_harness.hardening_util import wait_for
from tlsenv import Proc, recv_exactly, tls_connect
from tlsprof.collect.client import ask, parse_snapshot

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFORK = os.path.join(HERE, "shim_harness", "prefork_server.py")


def start_prefork(cert_pair, tmp_path, *extra, wrapper=(), env=None):
    ready = str(tmp_path / "ready")
    proc = Proc([*wrapper, sys.executable, PREFORK, *cert_pair, "--ready-file", ready, *extra], env=env)
    wait_for(lambda: os.path.exists(ready) or not proc.alive(), 60, "the pre-fork server")
    assert os.path.exists(ready), proc.describe()
    fields = open(ready).read().split()
    port, workers = int(fields[0]), [int(f) for f in fields[1:] if f.isdigit()]
    info = dict(f.split("=") for f in fields if "=" in f)
    return proc, port, workers, info


def environ_of(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)


def python_pid_under(proc):
    """The pre-fork parent: the python child of `tlsprof run`."""
    import psutil

    for _ in range(100):
        for c in psutil.Process(proc.pid).children():
            if "prefork_server.py" in " ".join(c.cmdline()):
                return c.pid
        time.sleep(0.05)
    raise AssertionError("no pre-fork parent under tlsprof run")


def connections(sock):
    snap = parse_snapshot(ask(sock, "SNAPSHOT"))
    return snap, [o for o in snap.owners if o.kind == "connection" and o.alive and o.peer not in (None, "-")]


def test_prefork_under_run_children_tracked_own_channel_no_deadlock_no_double_count(cert_pair, tmp_path):
    out = tmp_path / "report.json"
    proc, port, workers, info = start_prefork(
        cert_pair,
        tmp_path,
        "--workers",
        "2",
        "--busy",
        "--forks",
        "15",
        wrapper=[sys.executable, "-m", "tlsprof", "run", "-o", str(out), "--interval", "0.2", "--"],
    )
    try:
        # children forked mid-OpenSSL all finished, but where another thread held one of OpenSSL's
        # own locks at the fork: that hangs them bare too (tests/shim_harness/prefork_server.py)
        assert info["hung"] == "0", info
        assert int(info["forks_ok"]) + int(info["hung_in_openssl_lock"]) == 15, info
        assert int(info["forks_ok"]) >= 10, info
        parent = python_pid_under(proc)
        chan = environ_of(parent)[b"TLSPROF_DIR"].decode()
        socks = {pid: os.path.join(chan, f"{pid}.sock") for pid in [parent, *workers]}
        for pid, sock in socks.items():
            assert os.path.exists(sock), f"no channel for pid {pid} in {chan}: {os.listdir(chan)}"
            assert ask(sock, "PING").strip() == f"PONG {pid}"
        # nothing outside the private directory
        assert not os.path.exists(f"/{workers[0]}.sock")
        clients = [tls_connect(port) for _ in range(6)]
        for c in clients:
            c.sendall(b"hi\n")
            assert recv_exactly(c, 3) == b"hi\n"
        per_worker = {w: connections(socks[w])[1] for w in workers}
        _, in_parent = connections(socks[parent])
        assert in_parent == []  # the parent accepted nothing
        assert sum(len(c) for c in per_worker.values()) == len(clients), (
            [(o.peer, o.fd, o.serial, o.state) for cs in per_worker.values() for o in cs],
            [c.getsockname() for c in clients],
        )
        peers = [o.peer for conns in per_worker.values() for o in conns]
        assert len(set(peers)) == len(clients)
        for c in clients:
            c.close()
        # the workers inherited the context made before fork: counted in each, as it is in each
        for w in workers:
            snap, _ = connections(socks[w])
            assert any(o.kind == "context" for o in snap.owners)
    finally:
        rc = proc.stop_target() if hasattr(proc, "stop_target") else proc.stop()
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["target"]["mode"] == "run"


def test_attach_to_one_prefork_worker_tracks_it_alone(cert_pair, tmp_path):
    if not os.path.exists("/usr/bin/gdb"):
        pytest.skip("gdb needed for attach")
    proc, port, workers, _ = start_prefork(cert_pair, tmp_path, "--workers", "2")
    out = tmp_path / "attach.json"
    try:
        target = workers[0]
        att = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tlsprof",
                "attach",
                str(target),
                "--duration",
                "4",
                "--interval",
                "0.5",
                "-o",
                str(out),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        from tlsprof.collect.channel_paths import channel_dir_path

        sock = os.path.join(channel_dir_path(os.geteuid()), f"{target}.sock")
        wait_for(lambda: os.path.exists(sock) or att.poll() is not None, 60, "attach")
        clients = [tls_connect(port) for _ in range(4)]
        _, err = att.communicate(timeout=90)
        assert att.returncode == 0, err
        for c in clients:
            c.sendall(b"again\n")
            assert recv_exactly(c, 6) == b"again\n"  # the worker runs on after detach
            c.close()
        # only the attached worker was ever tracked; its channel is gone after detach
        d = channel_dir_path(os.geteuid())
        assert not os.path.exists(sock)
        for pid in [proc.pid, workers[1]]:
            assert not os.path.exists(os.path.join(d, f"{pid}.sock"))
            maps = open(f"/proc/{pid}/maps").read()
            assert "_shim" not in maps
        report = json.loads(out.read_text())
        assert report["target"]["mode"] == "attach" and report["target"]["pid"] == target
    finally:
        proc.stop()
