"""Overhead of `tlsprof run --tracemalloc` (tracemalloc-ext) and of the Python agent.

    .venv/bin/python bench/tracemalloc_overhead.py [--contexts 20] [--handshakes 300] [--rounds 2]

Runs one workload in a fresh python3 per mode (create_default_context() N times, then N in-process
TLS handshakes over a socketpair) and prints seconds and the ratio to bare Python. Never asserts.
Modes: bare; tracemalloc(25 frames) alone; shim+agent (what `tlsprof run` adds); shim+agent+ext
(`--tracemalloc`: OpenSSL blocks registered with PyTraceMalloc_Track, 25 frames).
"""

import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

WORK = r"""
import socket, ssl, sys, time, os
sys.path.insert(0, {examples!r})
from certs import ensure_cert
cert, key = ensure_cert({certdir!r})
if os.environ.get("BENCH_TM"):
    import tracemalloc; tracemalloc.start(25)
n_ctx, n_hs = {n_ctx}, {n_hs}
t0 = time.perf_counter()
keep = [ssl.create_default_context() for _ in range(n_ctx)]
t1 = time.perf_counter()
srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); srv.load_cert_chain(cert, key)
cli = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cli.check_hostname = False; cli.verify_mode = ssl.CERT_NONE
for _ in range(n_hs):
    bios = {{}}
    si, so, ci, co = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    s = srv.wrap_bio(si, so, server_side=True)
    c = cli.wrap_bio(ci, co)
    for _ in range(10):
        for x, out, peer_in in ((c, co, si), (s, so, ci)):
            try: x.do_handshake()
            except ssl.SSLWantReadError: pass
            data = out.read()
            if data: peer_in.write(data)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--contexts", type=int, default=20)
    p.add_argument("--handshakes", type=int, default=300)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    from tlsprof.collect.launch import preload_env

    chan = tempfile.mkdtemp(prefix="tlsprof-bench-")
    certdir = tempfile.mkdtemp(prefix="tlsprof-bench-certs-")
    code = WORK.format(
        examples=os.path.join(os.path.dirname(HERE), "examples"),
        certdir=certdir,
        n_ctx=args.contexts,
        n_hs=args.handshakes,
    )
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "TLSPROF_DIR", "PYTHONPATH")}
    modes = {
        "bare": dict(base),
        "tracemalloc(25) alone": dict(base, BENCH_TM="1"),
        "shim + agent (run)": preload_env(chan, base=base),
        "shim + agent + --tracemalloc": preload_env(chan, base=base, tracemalloc=True),
    }
    results = {m: [] for m in modes}
    for _ in range(args.rounds):
        for m, env in modes.items():
            out = subprocess.run(["python3", "-c", code], env=env, capture_output=True, text=True, timeout=600)
            if out.returncode:
                print(m, "failed:", out.stderr[-500:])
                continue
            results[m].append(tuple(float(x) for x in out.stdout.split()))
    bare = [min(r[i] for r in results["bare"]) for i in (0, 1)]
    print(f"{args.contexts} create_default_context(), {args.handshakes} handshakes; best of {args.rounds}")
    print(f"{'mode':32} {'contexts s':>10} {'ratio':>6} {'handshakes s':>12} {'ratio':>6}")
    for m, rs in results.items():
        if not rs:
            continue
        best = [min(r[i] for r in rs) for i in (0, 1)]
        print(f"{m:32} {best[0]:10.3f} {best[0] / bare[0]:6.2f} {best[1]:12.3f} {best[1] / bare[1]:6.2f}")


if __name__ == "__main__":
    main()
