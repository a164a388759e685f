"""Issue 15: node's statically linked OpenSSL, measured by the heap walk (docs/openssl-copies.md).

    python bench/bench_node_walk.py [-n 200] [--rounds 3] [--ctx-per-conn]

For each round: node's examples/node_echo_server.js with n idle connections (1) without tlsprof,
with a preloaded counter of glibc's in-use heap (tests/workloads/heap_in_use.c), TLS and the plain
TCP twin (--plain): the independent count is the heap growth per TLS connection minus per plain
one, RSS beside it; (2) under `tlsprof attach` (the walk right after the inject); (3) under
`tlsprof run` (the walk at the last look). Printed: connections found, walked own bytes per
connection against the independent count, the target's pause (clone) and the walk's time. With
--ctx-per-conn: node building a secure context per connection (the client sends SNI); the
ca-store-per-connection finding's saving per connection against the RSS per connection it costs
(with minus without). Never fails on timing.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import _common
import tlsenv

NODE_SERVER = os.path.join(tlsenv.EXAMPLES_DIR, "node_echo_server.js")
HEAP_SRC = os.path.join(os.path.dirname(tlsenv.__file__), "workloads", "heap_in_use.c")
TLSPROF = [sys.executable, "-m", "tlsprof"]


def wait_port(path, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and os.path.getsize(path):
            return int(open(path).read())
        if proc.poll() is not None:
            raise SystemExit("node exited early")
        time.sleep(0.1)
    raise SystemExit("node did not start")


def growth(work, cert, key, lib, n, server_flags, client_flags):
    heap_file = os.path.join(work, f"heap-{time.monotonic_ns()}")
    ready = os.path.join(work, f"ready-{time.monotonic_ns()}")
    env = dict(os.environ, LD_PRELOAD=lib, HEAP_IN_USE_FILE=heap_file)
    node = subprocess.Popen(
        ["node", NODE_SERVER, cert, key, "0", ready, *server_flags], stdout=subprocess.DEVNULL, env=env
    )
    clients = None

    def sample():
        time.sleep(1.0)
        used, mapped = map(int, open(heap_file).read().split())
        return used + mapped, _common.psutil.Process(node.pid).memory_info().rss

    try:
        port = wait_port(ready, node)
        tlsenv.start_clients(port, 5, *client_flags, interval=1000).stop()
        time.sleep(1.0)
        h0, r0 = sample()
        clients = tlsenv.start_clients(port, n, *client_flags, interval=1000)
        time.sleep(1.0)
        h1, r1 = sample()
    finally:
        if clients:
            clients.stop()
        node.kill()
        node.wait(30)
    return (h1 - h0) / n, (r1 - r0) / n


def attach(work, cert, key, n, server_flags, client_flags):
    ready = os.path.join(work, f"ready-{time.monotonic_ns()}")
    out = os.path.join(work, "attach.json")
    node = subprocess.Popen(["node", NODE_SERVER, cert, key, "0", ready, *server_flags], stdout=subprocess.DEVNULL)
    clients = None
    try:
        port = wait_port(ready, node)
        clients = tlsenv.start_clients(port, n, *client_flags, interval=2)
        time.sleep(1.0)
        subprocess.run(
            [*TLSPROF, "attach", str(node.pid), "--duration", "1", "-o", out],
            check=True,
            capture_output=True,
            timeout=600,
        )
    finally:
        if clients:
            clients.stop()
        node.kill()
        node.wait(30)
    return json.load(open(out))


def run(work, cert, key, n, server_flags, client_flags):
    ready = os.path.join(work, f"ready-{time.monotonic_ns()}")
    out = os.path.join(work, "run.json")
    tool = subprocess.Popen(
        [*TLSPROF, "run", "-o", out, "--at", "last", "--", "node", NODE_SERVER, cert, key, "0", ready, *server_flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    clients = None
    try:
        port = wait_port(ready, tool)
        clients = tlsenv.start_clients(port, n, *client_flags, interval=2)
        time.sleep(2.0)
        tool.send_signal(signal.SIGTERM)
        tool.wait(300)
    finally:
        if clients:
            clients.stop()
        if tool.poll() is None:
            tool.kill()
            tool.wait()
    return json.load(open(out))


def figures(report):
    per, walk = report["per_connection"], report["walk"]
    found = [f for f in report.get("findings", []) if f["id"] == "ca-store-per-connection"]
    return {
        "connections": per["connections"],
        "own_bytes": per["own_bytes"],
        "bytes": per["bytes"],
        "pause_ms": walk.get("pause_us", 0) / 1000,
        "walk_ms": walk.get("walk_ms_total"),
        "heap_mib": walk.get("heap_bytes", 0) / 2**20,
        "ca_saving_per_conn": found[0]["saving_bytes"] / per["connections"] if found else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ctx-per-conn", action="store_true")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="tlsprof-bench-node-")
    cert, key = tlsenv.ensure_cert(work)
    lib = os.path.join(work, "heap_in_use.so")
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", lib, HEAP_SRC, "-lpthread"], check=True)
    sni = ("--server-name", "localhost")
    rows = []
    for _ in range(args.rounds):
        if args.ctx_per_conn:
            heap_c, rss_c = growth(work, cert, key, lib, args.n, ("--ctx-per-conn",), sni)
            heap_s, rss_s = growth(work, cert, key, lib, args.n, (), sni)
            truth = {
                "rss_saving_per_conn": (rss_c - rss_s) * (args.n - 1) / args.n,
                "heap_per_conn_ctx": heap_c,
                "rss_per_conn_ctx": rss_c,
            }
            modes = {"run": run(work, cert, key, args.n, ("--ctx-per-conn",), sni)}
        else:
            heap_t, rss_t = growth(work, cert, key, lib, args.n, (), ())
            heap_p, rss_p = growth(work, cert, key, lib, args.n, ("--plain",), ("--plain",))
            truth = {"heap_per_conn": heap_t - heap_p, "rss_per_conn": rss_t - rss_p}
            modes = {"attach": attach(work, cert, key, args.n, (), ()), "run": run(work, cert, key, args.n, (), ())}
        row = {"truth": truth, **{m: figures(rep) for m, rep in modes.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    _common.save("node_walk" + ("_ctx" if args.ctx_per_conn else ""), {"n": args.n, "rounds": rows})


if __name__ == "__main__":
    main()
