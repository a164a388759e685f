"""Issue 14: the heap walk's cost to the target, per 100 MB of heap, and the walk's own time.

    python bench/bench_walk.py [--steps 50,100,200,400] [--rounds 3] [--load]

A threaded echo server with a context (and CA store, ~0.85 MB) per connection is started with the
shim preloaded; at each step it holds that many idle connections (its heap grows ~1 MB each), and
the `WALK` command is sent `--rounds` times. Printed per step: the heap walked, the target's pause
(the `clone()` in the target's channel thread, measured by the shim: `pause_us`), that pause per
100 MB of heap, and the walk's time in the child. With --load, two client threads make handshakes
throughout and the slowest handshake seen during the walks is printed beside the quiet one (what a
client of the target notices). Never fails on timing; exits 0 unless it could not run.
"""

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

import _common
import tlsenv
from tlsprof.collect import client
from tlsprof.collect.channel_paths import socket_path
from tlsprof.collect.shim import shim_path


def handshake_seconds(port):
    t0 = time.monotonic()
    with tlsenv.tls_connect(port):  # returns once welcome! is read: a whole handshake
        pass
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="50,100,200,400")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--load", action="store_true", help="handshakes throughout; print the slowest")
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    channel = tempfile.mkdtemp(prefix="tlsprof-bench-walk-")
    os.chmod(channel, 0o700)
    server = tlsenv.start_echo_server(
        "--threaded", "--ctx-per-conn", env={"LD_PRELOAD": shim_path(preload=True), "TLSPROF_DIR": channel}
    )
    clients, rows = [], []
    stop = threading.Event()
    slow = {"quiet": 0.0, "walking": 0.0}
    walking = threading.Event()

    loading = threading.Event()  # the load runs only while a step walks (it slows the clients' set-up)

    def load():
        while not stop.is_set():
            if not loading.wait(0.1):
                continue
            try:
                dt = handshake_seconds(server.port)
            except OSError:
                continue
            key = "walking" if walking.is_set() else "quiet"
            slow[key] = max(slow[key], dt)

    loaders = [threading.Thread(target=load, daemon=True) for _ in range(2)] if args.load else []
    try:
        sock = socket_path(channel, server.pid)
        held = 0
        for loader in loaders:
            loader.start()
        for n in steps:
            clients.append(tlsenv.start_clients(server.port, n - held, interval=100000))
            held = n
            pauses, walks, heaps = [], [], []
            loading.set()
            time.sleep(1.0 if args.load else 0)  # quiet handshakes first
            for _ in range(args.rounds):
                walking.set()
                walk = client.walk(sock)
                walking.clear()
                if not walk.ok:
                    print(f"walk {walk.status}: {walk.reason}")
                    return 1
                pauses.append(walk.stats["pause_us"] / 1000)
                walks.append(walk.stats["walk_ms_total"])
                heaps.append(walk.stats["heap_bytes"] / 1e6)
                time.sleep(0.3)
            loading.clear()
            heap = statistics.median(heaps)
            row = {
                "connections": n,
                "heap_mb": round(heap, 1),
                "pause_ms_max": round(max(pauses), 2),
                "pause_ms_median": round(statistics.median(pauses), 2),
                "pause_ms_per_100mb": round(max(pauses) / heap * 100, 2),
                "walk_ms_median": statistics.median(walks),
                "walk_ms_per_100mb": round(statistics.median(walks) / heap * 100, 1),
            }
            rows.append(row)
            print(
                f"{n:5d} connections  heap {heap:7.1f} MB  pause max {row['pause_ms_max']:6.2f} ms "
                f"(median {row['pause_ms_median']:.2f})  = {row['pause_ms_per_100mb']:.2f} ms per 100 MB  "
                f"walk {row['walk_ms_median']} ms ({row['walk_ms_per_100mb']} ms per 100 MB)",
                flush=True,
            )
    finally:
        stop.set()
        for loader in loaders:
            loader.join(15)
        for c in clients:
            c.stop()
        server.stop()
    if args.load:
        print(f"slowest handshake: quiet {slow['quiet'] * 1000:.1f} ms, during walks {slow['walking'] * 1000:.1f} ms")
    _common.save(
        "bench_walk", {"rows": rows, "slowest_handshake_s": slow if args.load else None, "machine": _common.machine()}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
