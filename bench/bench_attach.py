"""Issue 7 item 5: attach and detach times against the asyncio echo server with idle connections.

    python bench/bench_attach.py [--rounds 3] [-n 100] [--api] [--quick]

CLI mode (default; runs when `tlsprof attach --help` works, else prints "skipped: attach not
available"): starts `tlsprof attach PID`, times until the target's shim first answers SNAPSHOT on
its channel (the attach's first snapshot); then sends SIGINT to `tlsprof attach` and times until
it has exited and the target's socket is gone (detach).
--api: the same through tlsprof.collect.inject.inject() / client.snapshot() / inject.eject(), the calls the
CLI is built on (usable before the CLI exists).
Goals: attach -> first snapshot <= 2 s; detach <= 1 s. The target must keep serving afterwards.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

import _common
import _servers
import hsload
import tlsenv

GOAL_ATTACH_S = 2.0
GOAL_DETACH_S = 1.0


def cli_available():
    exe = _common.tlsprof_bin()
    if not exe:
        return False
    r = subprocess.run([exe, "attach", "--help"], capture_output=True, text=True, timeout=60)
    return r.returncode == 0


def wait_snapshot(sock, deadline):
    from tlsprof.collect import client
    from tlsprof.errors import ChannelError

    while time.monotonic() < deadline:
        if os.path.exists(sock):
            try:
                return client.snapshot(sock, timeout=5)
            except ChannelError:
                pass
        time.sleep(0.005)
    return None


def one_cli(pid, timeout=30):
    from tlsprof.collect.channel_paths import channel_dir_path, socket_path

    sock = socket_path(channel_dir_path(os.getuid()), pid)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [_common.tlsprof_bin(), "attach", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        snap = wait_snapshot(sock, t0 + timeout)
        attach_s = time.monotonic() - t0 if snap else None
        time.sleep(1.0)
        t1 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout)
        while os.path.exists(sock) and time.monotonic() < t1 + timeout:
            time.sleep(0.005)
        detach_s = time.monotonic() - t1
        return attach_s, detach_s, snap, proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def one_api(pid):
    from tlsprof.collect import client, inject, launch
    from tlsprof.collect.channel_paths import socket_path
    from tlsprof.collect.shim import shim_path

    chan = launch.private_dir(prefix="tlsprof-bench-")
    try:
        t0 = time.monotonic()
        inject.inject(pid, shim_path(), chan)
        snap = client.snapshot(socket_path(chan, pid), timeout=10)
        attach_s = time.monotonic() - t0
        time.sleep(1.0)
        t1 = time.monotonic()
        inject.eject(pid, chan)
        detach_s = time.monotonic() - t1
        return attach_s, detach_s, snap, 0
    finally:
        shutil.rmtree(chan, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("-n", type=int, default=100, help="idle connections on the target")
    p.add_argument("--api", action="store_true", help="use tlsprof.inject directly instead of the CLI")
    p.add_argument("--quick", action="store_true", help="1 round")
    a = p.parse_args(argv)
    if a.quick:
        a.rounds = 1
    how = "api" if a.api else "cli"
    if how == "cli" and not cli_available():
        print("[attach] skipped: attach not available (`tlsprof attach --help` failed)", flush=True)
        _common.save("attach", {"params": vars(a), "skipped": "attach not available"})
        return 0
    attach_t, detach_t, conns, ok = [], [], [], []
    for r in range(a.rounds):
        server = _servers.start("bare")
        pid = server.target_pid()
        clients = None
        try:
            clients = tlsenv.start_clients(server.port, a.n, interval=1e6, concurrency=20)
            at, dt, snap, rc = (one_api if a.api else one_cli)(pid)
            still = hsload.run(server.port, 20, 2)  # the target serves on after detach
            attach_t.append(at if at is not None else float("inf"))
            detach_t.append(dt)
            conns.append(len(snap.connections) if snap else None)
            ok.append(still["errors"] == 0)
            print(
                f"  round {r + 1}: attach -> first snapshot {at if at is not None else float('nan'):.3f} s "
                f"({conns[-1]} connections seen, pre-attach), detach {dt:.3f} s, rc {rc}, "
                f"serving after detach: {ok[-1]}",
                flush=True,
            )
        finally:
            if clients:
                clients.stop()
            _servers.stop(server)
    res = {
        "how": how,
        "attach_s": _common.summary(attach_t),
        "detach_s": _common.summary(detach_t),
        "connections_seen": conns,
        "serving_after": ok,
    }
    print(
        f"\n[attach] ({how}) attach -> first snapshot median {res['attach_s']['median']:.3f} s "
        f"(goal <= {GOAL_ATTACH_S} s: {_common.verdict(res['attach_s']['median'], GOAL_ATTACH_S, False)}); "
        f"detach median {res['detach_s']['median']:.3f} s "
        f"(goal <= {GOAL_DETACH_S} s: {_common.verdict(res['detach_s']['median'], GOAL_DETACH_S, False)})"
    )
    _common.save("attach" if how == "cli" else "attach_api", {"params": vars(a), **res})
    return 0


if __name__ == "__main__":
    sys.exit(main())
