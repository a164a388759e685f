"""Issue 7 item 2: echo throughput (bytes/s through established TLS connections), bare vs tracked
(`tlsprof run`), asyncio and threaded variants of the seed echo server.

    python bench/bench_throughput.py [--rounds 4] [--seconds 3] [--conns 4] [--chunk 16384] [--quick]

Each connection (one client thread each) writes a chunk and reads its echo back, over and over, for
--seconds after a warm-up; bytes/s = echoed bytes / time. Alternating rounds, medians, per-round
ratios. Goal: tracked >= 0.97x bare.
"""

import argparse
import os
import socket
import sys
import threading
import time

import _common
import _servers
import hsload

GOAL = 0.97


def recv_exactly(tls, n):
    got = 0
    while got < n:
        data = tls.recv(min(n - got, 1 << 20))
        if not data:
            raise ConnectionError("closed")
        got += len(data)


def pump(port, conns, chunk, seconds, warmup_s=0.5):
    ctx = hsload.client_context()
    payload = os.urandom(chunk)
    socks = []
    for _ in range(conns):
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        recv_exactly(tls, len(hsload.WELCOME))
        socks.append(tls)
    start_at = time.perf_counter() + warmup_s
    stop_at = start_at + seconds
    counted = [0] * conns

    def worker(i):
        tls = socks[i]
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            tls.sendall(payload)
            recv_exactly(tls, chunk)
            if now >= start_at:
                counted[i] += chunk

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for tls in socks:
        tls.close()
    return sum(counted) / seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--conns", type=int, default=4)
    p.add_argument("--chunk", type=int, default=16384)
    p.add_argument("--variants", default="asyncio,threaded")
    p.add_argument("--quick", action="store_true", help="2 rounds of 1.5 s")
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.seconds = 2, 1.5
    modes = ["bare", "tlsprof"]
    results = {}
    for variant in a.variants.split(","):
        extra = ["--threaded"] if variant == "threaded" else []
        rates = {m: [] for m in modes}
        ratios = []
        for r in range(a.rounds):
            this = {}
            for mode in _common.rotate(modes, r):
                server = _servers.start(mode, *extra)
                try:
                    this[mode] = pump(server.port, a.conns, a.chunk, a.seconds)
                finally:
                    _servers.stop(server)
                rates[mode].append(this[mode])
                print(f"  round {r + 1} {variant:8s} {mode:8s} {this[mode] / 1e6:7.1f} MB/s", flush=True)
            ratios.append(this["tlsprof"] / this["bare"])
        bare, tracked = _common.median(rates["bare"]), _common.median(rates["tlsprof"])
        results[variant] = {
            "bare_Bps": _common.summary(rates["bare"]),
            "tracked_Bps": _common.summary(rates["tlsprof"]),
            "ratio": tracked / bare,
            "ratio_rounds": _common.summary(ratios),
        }
    print("\n[throughput] echo bytes/s, median (min-max), tracked/bare (per-round min-max)")
    for variant, r in results.items():
        b, t, rr = r["bare_Bps"], r["tracked_Bps"], r["ratio_rounds"]
        print(
            f"  {variant:8s} bare {b['median'] / 1e6:.1f} MB/s ({b['min'] / 1e6:.1f}-{b['max'] / 1e6:.1f})  "
            f"tracked {t['median'] / 1e6:.1f} MB/s ({t['min'] / 1e6:.1f}-{t['max'] / 1e6:.1f})  "
            f"{_common.fmt_ratio(r['ratio'])} ({rr['min']:.2f}-{rr['max']:.2f})  "
            f"goal >= {GOAL}x: {_common.verdict(r['ratio'], GOAL)}"
        )
    _common.save("throughput", {"params": vars(a), "goal": GOAL, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
