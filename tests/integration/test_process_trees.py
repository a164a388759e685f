"""Process trees (issue 13, item 1): `run` follows every process of the tree that loads OpenSSL and
the report describes the tree: the headline over every connection of every process, one entry per
process (pid, command, role, connections, bytes by cause), processes without connections listed and
never taken for "the" target. Real servers from Debian packages on 127.0.0.1, started and stopped
by pid here: nginx (a master, 2 workers), PostgreSQL (a backend per connection), and a pre-fork
Python server for the report built from real snapshots."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from reportcheck import check_report, load_checked
from test_attach import _http_keepalive
from tlsenv import free_port, recv_exactly, tls_connect
from tlsprof.collect import client, launch
from tlsprof.render.metrics import exposition
from tlsprof.analysis.tree_report import build_tree_report
from tlsprof.model.observation import ProcessObservation

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFORK = os.path.join(HERE, "shim_harness", "prefork_server.py")
TLSPROF = [sys.executable, "-m", "tlsprof"]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PG_BIN = "/usr/lib/postgresql/15/bin"


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def listening(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def stop_tlsprof(proc, timeout=60, signum=signal.SIGTERM):
    """A stop signal to tlsprof: one last look at the tree, then the signal is forwarded to the target."""
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise


def _kill_tree(proc):
    """After a failure: tlsprof and every process it started (the server's tree), by pid."""
    if proc.poll() is None:
        try:
            tree = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        proc.kill()
        for p in tree:
            try:
                p.kill()
            except psutil.Error:
                pass
    proc.wait(30)


# --- the tree report from real snapshots ------------------------------------------------------


def test_tree_report_from_real_snapshots_of_a_prefork_server(cert_pair, tmp_path):
    channel = launch.private_dir()
    ready = tmp_path / "ready"
    env = launch.preload_env(channel)
    proc = subprocess.Popen(
        [sys.executable, PREFORK, *cert_pair, "--workers", "2", "--ready-file", str(ready)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    clients = []
    try:
        wait_for(
            lambda: ready.exists() and ready.read_text().strip() or proc.poll() is not None, 60, "the pre-fork server"
        )
        fields = ready.read_text().split()
        port, workers = int(fields[0]), [int(f) for f in fields[1:] if f.isdigit()]
        for _ in range(12):
            c = tls_connect(port)
            c.sendall(b"hi\n")
            assert recv_exactly(c, 3) == b"hi\n"
            clients.append(c)
        snaps = {}
        for pid in [proc.pid, *workers]:
            snap = client.snapshot(os.path.join(channel, f"{pid}.sock"))
            snaps[pid] = ProcessObservation.of(
                snap,
                taken_at=time.time(),
                rss_bytes=psutil.Process(pid).memory_info().rss,
                command=psutil.Process(pid).cmdline(),
                ppid=psutil.Process(pid).ppid(),
            )
    finally:
        for c in clients:
            c.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(channel, ignore_errors=True)
    report = check_report(build_tree_report(snaps, root_pid=proc.pid, command=["prefork"], mode="run"))
    procs = {p["pid"]: p for p in report["processes"]}
    assert set(procs) == set(snaps)
    assert procs[proc.pid]["connections"] == 0 and procs[proc.pid]["role"] == "parent"
    assert all(procs[w]["role"] == "child" for w in workers)
    # the headline: every connection of every process, and the process sums add up
    assert report["per_connection"]["connections"] == 12 == sum(p["connections"] for p in procs.values())
    assert report["target"]["pid"] == proc.pid
    assert (
        report["totals"]["live_bytes"]
        == sum(p["live_bytes"] for p in procs.values())
        == sum(s.live_bytes for s in snaps.values())
    )
    holding = [p for p in procs.values() if p["connections"]]
    weighted = sum(p["per_connection"]["bytes"] * p["connections"] for p in holding) / 12
    assert abs(report["per_connection"]["bytes"] - weighted) <= 2
    # ids stay unique and connections point at their own process's contexts
    ids = [c["id"] for c in report["connections"]] + [c["id"] for c in report["contexts"]]
    assert len(ids) == len(set(ids))
    ctx_pid = {c["id"]: c["pid"] for c in report["contexts"]}
    for c in report["connections"]:
        assert ctx_pid[c["context"]] == c["pid"]
    # Prometheus: one series per process
    text = exposition(report)
    for pid, p in procs.items():
        assert f'tlsprof_connections{{pid="{pid}"}} {float(p["connections"])}' in text


# --- nginx: a master and 2 workers --------------------------------------------------------------

NGINX_CONF = """
daemon off;
master_process on;
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;
    uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
    keepalive_timeout 300s;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port} ssl reuseport;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 "hello\\n"; }}
    }}
}}
"""


def _nginx_workers(master):
    return [c for c in psutil.Process(master).children() if "worker process" in " ".join(c.cmdline())]


def _nginx_rss_per_connection(conf, port, n):
    """Ground truth without tlsprof: the workers' RSS growth per keep-alive connection."""
    nginx = subprocess.Popen(
        [NGINX, "-c", str(conf), "-p", str(conf.parent)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    socks = []
    try:
        wait_for(lambda: len(_nginx_workers(nginx.pid)) == 2 and listening(port), 30, "bare nginx")
        socks = _http_keepalive(port, 5)  # warm the workers up
        time.sleep(0.5)
        before = sum(w.memory_info().rss for w in _nginx_workers(nginx.pid))
        socks += _http_keepalive(port, n)
        time.sleep(0.5)
        after = sum(w.memory_info().rss for w in _nginx_workers(nginx.pid))
        return (after - before) / n
    finally:
        for s in socks:
            s.close()
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(30)


@pytest.mark.skipif(not os.path.exists(NGINX), reason="needs Debian's nginx (make test installs nginx-light)")
def test_nginx_two_workers_200_http_keepalive(cert_pair, tmp_path):
    cert, key = cert_pair
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=tmp_path, port=port, cert=cert, key=key))
    rss_per_conn = _nginx_rss_per_connection(conf, port, 200)
    out = tmp_path / "nginx.json"
    tool = subprocess.Popen(
        [*TLSPROF, "run", "-o", str(out), "--interval", "0.3", "--", NGINX, "-c", str(conf), "-p", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    socks = []
    try:

        def master_of():
            return next(
                (c.pid for c in psutil.Process(tool.pid).children() if "master process" in " ".join(c.cmdline())), None
            )

        wait_for(
            lambda: tool.poll() is None and master_of() and len(_nginx_workers(master_of())) == 2 and listening(port),
            30,
            "nginx under tlsprof",
        )
        master = master_of()
        workers = sorted(w.pid for w in _nginx_workers(master))
        socks = _http_keepalive(port, 200)
        time.sleep(1.5)  # several snapshots of the settled connections
        stop_tlsprof(tool)
    finally:
        for s in socks:
            s.close()
        _kill_tree(tool)
    report = load_checked(out)
    procs = {p["pid"]: p for p in report["processes"]}
    per = report["per_connection"]
    print(
        f"nginx: {per['connections']} connections, {per['bytes']} B each by tlsprof "
        f"({per['by_cause']}); workers' RSS growth without tlsprof {rss_per_conn:.0f} B per connection; "
        f"processes: {[(p['pid'], p['role'], p['connections'], p['per_connection']['bytes']) for p in procs.values()]}"
    )
    assert abs(per["connections"] - 200) <= 10
    assert report["target"]["pid"] == master
    assert procs[master]["role"] == "master" and procs[master]["connections"] == 0
    assert set(workers) <= set(procs)
    assert all(procs[w]["role"] == "worker" for w in workers)
    assert sum(procs[w]["connections"] for w in workers) == per["connections"]
    for w in workers:
        if procs[w]["connections"]:
            assert (
                procs[w]["per_connection"]["by_cause"].get("record_buffers", 0)
                + procs[w]["per_connection"]["by_cause"].get("cipher_state", 0)
                > 0
            )
    assert {c["pid"] for c in report["connections"]} <= set(workers)
    # both workers number their sockets from the same low fds: that is no fd reused by a newer connection
    assert "leaked-connections" not in [f["id"] for f in report["findings"]], report["findings"]
    # OpenSSL's share of what a connection costs the workers: below their RSS growth, and a real part of it
    assert 0.2 * rss_per_conn <= per["bytes"] <= 1.5 * rss_per_conn, (per["bytes"], rss_per_conn)
    shown = subprocess.run([*TLSPROF, "report", str(out)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "in 2 of 3 processes" in shown.stdout or "in 1 of 3 processes" in shown.stdout
    assert any(line.split()[:3] == [str(master), "master", "0"] for line in shown.stdout.splitlines()), shown.stdout
    diff = subprocess.run(
        [*TLSPROF, "diff", str(out), str(out), "--format", "json"], capture_output=True, text=True, timeout=60
    )
    assert diff.returncode == 0, diff.stderr
    rows = json.loads(diff.stdout)["processes"]
    assert sorted(r["role"] for r in rows) == ["master", "worker", "worker"]
    assert all(r["pid_before"] == r["pid_after"] and r["connections"]["delta"] == 0 for r in rows)


# --- a command that daemonizes: nginx as its unit starts it (`daemon on`, the default) ---------------


@pytest.mark.skipif(not os.path.exists(NGINX), reason="needs Debian's nginx (make test installs nginx-light)")
def test_run_follows_a_command_that_daemonizes(cert_pair, tmp_path):
    """`tlsprof run -- nginx` as people type it: nginx forks its master and exits 0 at once. tlsprof
    follows what it left running (it ended with an empty report, "nginx exited after 0.0s"), counts
    the workers' connections, and its SIGTERM stops the daemon it followed."""
    cert, key = cert_pair
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.replace("daemon off;\n", "").format(dir=tmp_path, port=port, cert=cert, key=key))
    out = tmp_path / "daemon.json"
    tool = subprocess.Popen(
        [*TLSPROF, "run", "-o", str(out), "--interval", "0.3", "--", NGINX, "-c", str(conf), "-p", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    pid_file = tmp_path / "nginx.pid"
    socks = []
    master = None
    try:
        wait_for(lambda: tool.poll() is None and pid_file.exists() and listening(port), 30, "daemonized nginx")
        master = int(pid_file.read_text())
        wait_for(lambda: len(_nginx_workers(master)) == 2, 30, "nginx's workers")
        workers = sorted(w.pid for w in _nginx_workers(master))
        socks = _http_keepalive(port, 40)
        time.sleep(1.5)  # several snapshots of the settled connections
        assert tool.poll() is None, "tlsprof ended when nginx's launcher exited"
        stop_tlsprof(tool)
        err = tool.stderr.read()
    finally:
        for s in socks:
            s.close()
        _kill_tree(tool)
        if master is not None and psutil.pid_exists(master):
            os.kill(master, signal.SIGKILL)
    assert tool.returncode == 0, err
    assert "nginx daemonized" in err, err
    wait_for(lambda: not psutil.pid_exists(master), 30, "nginx's master to stop")
    report = load_checked(out)
    procs = {p["pid"]: p for p in report["processes"]}
    assert report["per_connection"]["connections"] == 40, report["per_connection"]
    assert set(workers) <= set(procs) and sum(procs[w]["connections"] for w in workers) == 40
    assert any("daemonized" in n for n in report["notes"]), report["notes"]


# --- PostgreSQL: a backend process per connection -------------------------------------------------


def _pg_cluster(cert_pair):
    """A fresh cluster in a temp dir owned by postgres, ssl=on with the test certificate."""
    root = tempfile.mkdtemp(prefix="tlsprof-pg-")
    os.chmod(root, 0o755)
    data = os.path.join(root, "data")
    shutil.chown(root, "postgres", "postgres")
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            f"{PG_BIN}/initdb",
            "-D",
            data,
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    for src, name, mode in ((cert_pair[0], "server.crt", 0o644), (cert_pair[1], "server.key", 0o600)):
        dst = os.path.join(data, name)
        shutil.copy(src, dst)
        os.chmod(dst, mode)
        shutil.chown(dst, "postgres", "postgres")
    with open(os.path.join(data, "postgresql.conf"), "a") as f:
        f.write(
            "ssl = on\nmax_connections = 120\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{root}'\nfsync = off\n"
        )
    with open(os.path.join(data, "pg_hba.conf"), "w") as f:
        f.write("local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
    return root, data


def _psql_sessions(port, n):
    """n psql processes, each holding one sslmode=require session open (ready when it printed)."""
    procs = []
    for _ in range(n):
        p = subprocess.Popen(
            [
                f"{PG_BIN}/psql",
                f"host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=require",
                "-X",
                "-q",
                "-A",
                "-t",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        p.stdin.write("select ssl from pg_stat_ssl where pid = pg_backend_pid();\n")
        p.stdin.flush()
        procs.append(p)
    for p in procs:
        assert p.stdout.readline().strip() == "t", p.stderr.read() if p.poll() is not None else "no answer"
    return procs


@pytest.mark.skipif(not os.path.exists(f"{PG_BIN}/postgres"), reason="needs postgresql-15")
def test_postgresql_50_tls_sessions_one_per_backend(cert_pair, tmp_path):
    root, data = _pg_cluster(cert_pair)
    port = free_port()
    out = tmp_path / "pg.json"
    tool = subprocess.Popen(
        [
            *TLSPROF,
            "run",
            "--user",
            "postgres",
            "-o",
            str(out),
            "--interval",
            "0.5",
            "--",
            f"{PG_BIN}/postgres",
            "-D",
            data,
            "-p",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    sessions = []
    try:
        wait_for(
            lambda: (
                tool.poll() is not None
                or subprocess.run(
                    [f"{PG_BIN}/pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)], timeout=10
                ).returncode
                == 0
            ),
            60,
            "postgres to accept connections",
        )
        assert tool.poll() is None, tool.stderr.read()
        sessions = _psql_sessions(port, 50)
        titles = {c.pid: " ".join(c.cmdline()) for c in psutil.Process(tool.pid).children(recursive=True)}
        backends = {pid for pid, title in titles.items() if "postgres: postgres postgres 127.0.0.1" in title}
        assert len(backends) == 50, titles
        time.sleep(2.0)
        stop_tlsprof(tool, signum=signal.SIGINT)  # the postmaster's "fast" shutdown: clients are let go
    finally:
        for p in sessions:
            p.kill()
            p.wait(10)
        _kill_tree(tool)
        shutil.rmtree(root, ignore_errors=True)
    report = load_checked(out)
    procs = {p["pid"]: p for p in report["processes"]}
    per = report["per_connection"]
    print(
        f"postgres: {per['connections']} connections, {per['bytes']} B each (own {per['own_bytes']} + context "
        f"share {per['context_share_bytes']}; {per['by_cause']}); "
        f"{len(procs)} processes, roles {sorted({str(p['role']) for p in procs.values()})}"
    )
    assert per["connections"] == 50
    holding = {pid: p for pid, p in procs.items() if p["connections"]}
    assert set(holding) == backends
    assert all(p["connections"] == 1 and p["role"] == "backend" for p in holding.values())
    postmaster = [p for p in procs.values() if p["command"][:1] == [f"{PG_BIN}/postgres"]]
    assert len(postmaster) == 1 and postmaster[0]["connections"] == 0


# --- attach to a tree -------------------------------------------------------------------------------


def _start_nginx(conf, port, wrapper=()):
    proc = subprocess.Popen(
        [*wrapper, NGINX, "-c", str(conf), "-p", str(conf.parent)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )

    def master():
        me = psutil.Process(proc.pid)
        for p in [me, *me.children()]:
            if "master process" in " ".join(p.cmdline()):
                return p.pid
        return None

    wait_for(
        lambda: proc.poll() is not None or (master() and len(_nginx_workers(master())) == 2 and listening(port)),
        30,
        "nginx",
    )
    assert proc.poll() is None, proc.stderr.read()
    return proc, master()


def _stop(proc, signum=signal.SIGQUIT):
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)


@pytest.mark.skipif(not os.path.exists(NGINX) or not shutil.which("gdb"), reason="needs nginx and gdb")
def test_attach_to_nginx_master_follows_its_workers(cert_pair, tmp_path):
    cert, key = cert_pair
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=tmp_path, port=port, cert=cert, key=key))
    nginx, master = _start_nginx(conf, port)
    socks = []
    out = tmp_path / "attach.json"
    try:
        workers = sorted(w.pid for w in _nginx_workers(master))
        att = subprocess.Popen(
            [*TLSPROF, "attach", str(master), "--duration", "6", "--interval", "0.3", "-o", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(
            lambda: (
                att.poll() is not None
                or all(os.path.exists(f"/tmp/tlsprof-{psutil.Process(w).uids().effective}/{w}.sock") for w in workers)
            ),
            90,
            "the workers' shims",
        )
        socks = _http_keepalive(port, 40)
        _, err = att.communicate(timeout=120)
        assert att.returncode == 0, err
        for pid in [master, *workers]:
            assert f"detached from pid {pid}" in err, err
        report = load_checked(out)
        procs = {p["pid"]: p for p in report["processes"]}
        assert set(procs) == {master, *workers}
        assert procs[master]["connections"] == 0 and procs[master]["role"] == "master"
        assert report["per_connection"]["connections"] == 40 == sum(procs[w]["connections"] for w in workers)
        socks += _http_keepalive(port, 5)  # still serving after detach
        alone = tmp_path / "alone.json"
        one = subprocess.run(
            [
                *TLSPROF,
                "attach",
                str(master),
                "--no-children",
                "--duration",
                "2",
                "--interval",
                "0.3",
                "-o",
                str(alone),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert one.returncode == 0, one.stderr
        assert [p["pid"] for p in load_checked(alone)["processes"]] == [master]
        assert not any(f"pid {w}" in one.stderr for w in workers), one.stderr
    finally:
        for s in socks:
            s.close()
        _stop(nginx)


@pytest.mark.skipif(not os.path.exists(NGINX) or not shutil.which("gdb"), reason="needs nginx and gdb")
def test_attach_to_a_process_tlsprof_run_already_tracks_says_so(cert_pair, tmp_path):
    cert, key = cert_pair
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=tmp_path, port=port, cert=cert, key=key))
    tool, master = _start_nginx(conf, port, wrapper=[*TLSPROF, "run", "-o", str(tmp_path / "run.json"), "--"])
    try:
        worker = _nginx_workers(master)[0].pid
        att = subprocess.run(
            [*TLSPROF, "attach", str(worker), "--duration", "1"], capture_output=True, text=True, timeout=120
        )
        assert att.returncode == 7, att.stderr
        lines = att.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in att.stderr, att.stderr
        assert f"pid {worker} is already profiled by another tlsprof session (pid {tool.pid}:" in lines[0]
    finally:
        _stop(tool, signal.SIGTERM)
    assert load_checked(tmp_path / "run.json")["per_connection"]["connections"] == 0


# --- the live view: the tree's total, then one process at a time ----------------------------------


def test_live_view_switches_between_the_tree_and_each_process(cert_pair, tmp_path):
    import argparse
    import asyncio
    from tlsprof.commands.live import live_app as LiveApp
    from tlsprof.collect.session import Session

    channel = launch.private_dir()
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, PREFORK, *cert_pair, "--workers", "2", "--ready-file", str(ready)],
        env=launch.preload_env(channel),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    clients = []
    try:
        wait_for(
            lambda: ready.exists() and ready.read_text().strip() or proc.poll() is not None, 60, "the pre-fork server"
        )
        fields = ready.read_text().split()
        port, workers = int(fields[0]), [int(f) for f in fields[1:] if f.isdigit()]
        for _ in range(6):
            c = tls_connect(port)
            c.sendall(b"hi\n")
            assert recv_exactly(c, 3) == b"hi\n"
            clients.append(c)
        session = Session(channel, proc.pid, ["prefork"], mode="run")
        app = LiveApp(session, proc, argparse.Namespace(interval=0.3, output=None, at="steady"))

        def head():
            from rich.console import Console

            console = Console(width=120, record=True, file=open(os.devnull, "w"))
            console.print(app.query_one("#head").content)
            return console.export_text()

        async def until(pilot, pred, what):
            deadline = time.monotonic() + 60
            while not pred():
                assert time.monotonic() < deadline, f"timed out waiting for {what}: {head()}"
                await pilot.pause(0.1)

        async def scenario():
            async with app.run_test(size=(100, 30)) as pilot:
                await until(
                    pilot,
                    lambda: app.data and app.data.report["per_connection"]["connections"] == 6,
                    "the tree's 6 connections",
                )
                assert "whole tree, 3 processes" in head()
                assert "newest snapshot: 6 connections" in head() and "steady state: 6 connections at" in head()
                seen = {}
                for _ in range(3):
                    await pilot.press("p")
                    await until(pilot, lambda: app.data.pid_view == app.process_pid, "the switch")
                    seen[app.process_pid] = app.data.report["per_connection"]["connections"]
                    assert f"pid {app.process_pid}" in head()
                assert set(seen) == {proc.pid, *workers}
                assert seen[proc.pid] == 0 and sum(seen[w] for w in workers) == 6
                await pilot.press("p")  # back to the tree
                await until(pilot, lambda: app.process_pid is None and app.data.pid_view is None, "the tree again")
                assert app.data.report["per_connection"]["connections"] == 6
                app.exit("quit")

        asyncio.run(scenario())
    finally:
        for c in clients:
            c.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(channel, ignore_errors=True)


CLEAN_ENV_LAUNCHER = """
import os, subprocess, sys
# dovecot starts its login processes so: exec'd with an environment of its own, LD_PRELOAD gone
child = subprocess.Popen([sys.executable, *sys.argv[1:]], env={"PATH": os.environ.get("PATH", "/usr/bin")})
print(child.pid, flush=True)
child.wait()
"""


def test_run_names_tree_processes_it_cannot_see(cert_dir, tmp_path):
    """A process of the tree that holds TLS connections without a shim (started with a cleaned
    environment, as dovecot's imap-login) left the report at 0 connections, silently. The report
    and stderr now name it."""
    from tlsenv import ECHO_SERVER

    launcher = tmp_path / "launcher.py"
    launcher.write_text(CLEAN_ENV_LAUNCHER)
    ready = tmp_path / "port"
    out = tmp_path / "clean.json"
    tool = subprocess.Popen(
        [*TLSPROF, "run", "-o", str(out), "--interval", "0.3", "--", sys.executable, str(launcher), ECHO_SERVER]
        + ["--port", "0", "--ready-file", str(ready), "--certdir", cert_dir],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    held = []
    child = None
    try:
        child = int(tool.stdout.readline())
        wait_for(lambda: ready.exists(), 30, "the echo server")
        port = int(ready.read_text())
        held = [tls_connect(port) for _ in range(3)]
        time.sleep(1.0)
        stop_tlsprof(tool)  # SIGTERM reaches the launcher only: the child outlives it
    finally:
        for s in held:
            s.close()
        _kill_tree(tool)
        if child is not None and psutil.pid_exists(child):
            os.kill(child, signal.SIGKILL)  # it holds tlsprof's stderr open too
    err = tool.stderr.read()
    report = load_checked(out)
    notes = [n for n in report["notes"] if "no tlsprof shim serves in them" in n]
    assert notes and f"{child} (python" in notes[0] and "3 TCP" in notes[0], report["notes"]
    assert f"{child} (python" in err
