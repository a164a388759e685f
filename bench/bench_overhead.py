"""Issue 7 item 1: handshakes per second of the seed echo server, bare vs `tlsprof run` (and
`memray run --native`, heaptrack where available), asyncio and threaded variants.

    python bench/bench_overhead.py [--rounds 4] [-n 1500] [-c 10] [--variants asyncio,threaded]
                                   [--modes bare,tlsprof,memray,heaptrack] [--quick]

Each round starts one server per mode in a rotated order, warms it up (100 handshakes), then
times n handshakes, c at a time (client threads on the same cores). The ratio of a mode is its
median rate over the bare median; min-max are the per-round ratios (mode / bare of the same round).
Also reported: server-side CPU per handshake (process tree: wrapper, target, helper) and the
CPU ratio bare/mode, which holds up better than the rate when other work shares the machine.
Goal: tlsprof >= 0.95x bare.
"""

import argparse
import sys

import _common
import _servers
import hsload

GOAL = 0.95


def measure(variant, modes, rounds, n, c, warmup):
    rates = {m: [] for m in modes}
    ratios = {m: [] for m in modes}
    cpu_ms = {m: [] for m in modes}  # server-side CPU (whole process tree) per handshake
    extra = ["--threaded"] if variant == "threaded" else []
    ctx = hsload.client_context()
    for r in range(rounds):
        this_round = {}
        for mode in _common.rotate(list(modes), r):
            server = _servers.start(mode, *extra)
            try:
                hsload.run(server.port, warmup, c, ctx=ctx)
                cpu0 = _common.tree_cpu_seconds(server.pid)
                res = hsload.run(server.port, n, c, ctx=ctx)
                cpu_ms[mode].append(1000 * (_common.tree_cpu_seconds(server.pid) - cpu0) / max(1, res["handshakes"]))
            finally:
                _servers.stop(server)
            if res["errors"]:
                print(f"  [{variant} {mode}] {res['errors']} handshakes failed", flush=True)
            this_round[mode] = res["per_s"]
            rates[mode].append(res["per_s"])
            print(
                f"  round {r + 1} {variant:8s} {mode:9s} {res['per_s']:7.0f} handshakes/s, "
                f"{cpu_ms[mode][-1]:.2f} ms server CPU per handshake",
                flush=True,
            )
        for mode in modes:
            if "bare" in this_round and mode in this_round:
                ratios[mode].append(this_round[mode] / this_round["bare"])
    out = {}
    bare_med = _common.median(rates["bare"]) if "bare" in rates else None
    bare_cpu = _common.median(cpu_ms["bare"]) if "bare" in cpu_ms else None
    for mode in modes:
        med = _common.median(rates[mode])
        out[mode] = {
            "per_s": _common.summary(rates[mode]),
            "ratio": med / bare_med if bare_med else None,
            "ratio_rounds": _common.summary(ratios[mode]),
            "cpu_ms_per_handshake": _common.summary(cpu_ms[mode]),
            # what the rate ratio would be with the CPU to ourselves: bare CPU / mode CPU
            "cpu_ratio": bare_cpu / _common.median(cpu_ms[mode]) if bare_cpu else None,
        }
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("-n", type=int, default=1500)
    p.add_argument("-c", type=int, default=10)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--variants", default="asyncio,threaded")
    p.add_argument("--modes", default="bare,tlsprof,memray,heaptrack")
    p.add_argument("--quick", action="store_true", help="2 rounds of 500 handshakes")
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.n = 2, 500
    modes, notes = [], []
    for m in a.modes.split(","):
        if m == "memray":
            ok, why = _common.memray_available()
        elif m == "heaptrack":
            ok, why = _common.heaptrack_available()
        else:
            ok, why = True, None
        if ok:
            modes.append(m)
        else:
            notes.append(f"{m} skipped: {why}")
            print(f"[overhead] {m} skipped: {why}", flush=True)
    if "bare" not in modes:
        modes.insert(0, "bare")
    results = {}
    for variant in a.variants.split(","):
        print(f"[overhead] {variant}: {a.rounds} rounds x {a.n} handshakes, {a.c} at a time, modes {modes}", flush=True)
        results[variant] = measure(variant, modes, a.rounds, a.n, a.c, a.warmup)
    print("\n[overhead] handshakes/s, median (min-max) and ratio to bare (per-round min-max)")
    for variant, res in results.items():
        for mode, r in res.items():
            s, rr = r["per_s"], r["ratio_rounds"]
            goal = f"  goal >= {GOAL}x: {_common.verdict(r['ratio'], GOAL)}" if mode == "tlsprof" else ""
            print(
                f"  {variant:8s} {mode:9s} {s['median']:7.0f}/s ({s['min']:.0f}-{s['max']:.0f})  "
                f"{_common.fmt_ratio(r['ratio'])} ({rr['min']:.2f}-{rr['max']:.2f}); server CPU "
                f"{r['cpu_ms_per_handshake']['median']:.2f} ms/handshake -> {_common.fmt_ratio(r['cpu_ratio'])}{goal}"
            )
    _common.save("overhead", {"params": vars(a), "goal": GOAL, "results": results, "notes": notes})
    return 0


if __name__ == "__main__":
    sys.exit(main())
