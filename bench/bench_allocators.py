"""Accuracy of tlsprof's bytes per connection when glibc's malloc is not what serves OpenSSL
(issue 13, item 2), against a count made without tlsprof inside the same server
(tests/servers/own_alloc_server.c, 200 idle TLS connections on 127.0.0.1):

    own-allocator  the server's CRYPTO_set_mem_functions allocator counts requested bytes itself
    glibc          mallinfo2().uordblks
    jemalloc       LD_PRELOAD libjemalloc.so.2, mallctl("stats.allocated")
    tcmalloc       LD_PRELOAD libtcmalloc_minimal.so.4, generic.current_allocated_bytes

    python bench/bench_allocators.py [-n 200] [--case own-allocator ...]

Prints tlsprof's per-connection own bytes beside the counter's growth per connection; the goal is
±25 %. Never fails on the figures (tests/integration/test_allocators.py asserts them).
"""

import argparse
import json
import os
import signal
import sys
import tempfile
import time

import _common  # noqa: F401  (puts tests/ on sys.path)
from servers.own_alloc import start_own_alloc_server
from tlsenv import start_clients

LIBDIR = "/usr/lib/x86_64-linux-gnu"
CASES = {
    "own-allocator": ("own", None, "own_live_bytes"),
    "glibc": ("system", None, "mallinfo_uordblks"),
    "jemalloc": ("system", os.path.join(LIBDIR, "libjemalloc.so.2"), "jemalloc_allocated"),
    "tcmalloc": ("system", os.path.join(LIBDIR, "libtcmalloc_minimal.so.4"), "tcmalloc_allocated"),
}


def measure(case, n, workdir):
    allocator, preload, counter = CASES[case]
    if preload and not os.path.exists(preload):
        return None
    out = os.path.join(workdir, f"{case}.json")
    wrapper = [sys.executable, "-m", "tlsprof", "run", "-o", out, "--interval", "0.3", "--at", "last", "--"]
    server = start_own_alloc_server(
        wrapper=wrapper, allocator=allocator, env={"LD_PRELOAD": preload} if preload else None
    )
    clients = None
    try:
        before = server.counts()
        clients = start_clients(server.port, n, interval=60)
        time.sleep(1.5)
        after = server.counts()
        time.sleep(1.0)
        os.kill(server.target_pid(), signal.SIGKILL)
        server.proc.wait(30)
    finally:
        if clients is not None:
            clients.stop()
        server.stop()
    with open(out) as f:
        report = json.load(f)
    truth = (after[counter] - before[counter]) / n
    per = report["per_connection"]
    return {
        "case": case,
        "byte_measure": report["tracker"].get("byte_measure"),
        "connections": per["connections"],
        "tlsprof_own_bytes": per["own_bytes"],
        "tlsprof_requested": per["requested_bytes"],
        "truth_counter": counter,
        "truth_per_connection": round(truth, 1),
        "ratio": round(per["own_bytes"] / truth, 4) if truth else None,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=200)
    p.add_argument("--case", action="append", choices=list(CASES))
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-alloc-") as workdir:
        for case in args.case or list(CASES):
            row = measure(case, args.n, workdir)
            if row is None:
                print(f"{case:14s} skipped: allocator not installed")
                continue
            rows.append(row)
            verdict = "meets" if row["ratio"] and abs(row["ratio"] - 1) <= 0.25 else "misses"
            print(
                f"{case:14s} {row['byte_measure']:16s} {row['connections']} conns  tlsprof "
                f"{row['tlsprof_own_bytes']:>7} B/conn  {row['truth_counter']} {row['truth_per_connection']:>9} "
                f"B/conn  ratio {row['ratio']}  (goal ±25 %: {verdict})"
            )
    os.makedirs(_common.RESULTS_DIR, exist_ok=True)
    with open(os.path.join(_common.RESULTS_DIR, "allocators.json"), "w") as f:
        json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
