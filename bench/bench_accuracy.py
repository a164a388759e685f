"""Issue 7 item 6: accuracy.

(a) ca_store per connection reported by `tlsprof run` for the ctx-per-conn asyncio echo server vs
    the RSS-measured cost of a context with the system CA store: (RSS growth per connection of the
    bare ctx-per-conn server) - (RSS growth per connection of the bare shared-context server), N idle
    connections each. Goal: within +-10 %.
(b) live OpenSSL bytes reported by tlsprof (run mode: shim preloaded, snapshot over its channel) vs
    an independent count, bench/count_preload.c (symbol interposition, footprint = usable + 8), on
    the same deterministic workload (bench/acc_workload.py: contexts, in-memory connections, data,
    teardown), compared at each checkpoint. Goal: within +-1 %.

    python bench/bench_accuracy.py [-n 300] [--rounds 2] [--quick] [--only a|b]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import _common
import _servers
import tlsenv

GOAL_A = 0.10
GOAL_B = 0.01


def grow_per_conn(mode, server_args, n, report=None):
    """RSS growth per connection of the echo server (bare or under tlsprof run), N idle clients."""
    server = _servers.start(mode, *server_args)
    pid = server.target_pid()
    clients = None
    try:
        time.sleep(0.5)
        rss0 = tlsenv.rss_bytes(pid)
        clients = tlsenv.start_clients(server.port, n, interval=1e6, concurrency=20)
        time.sleep(2.5)  # >= 2 snapshots by tlsprof run
        rss1 = tlsenv.rss_bytes(pid)
    finally:
        if clients:
            clients.stop()
        _servers.stop(server, cleanup=False)
    if mode == "tlsprof":
        with open(server.out) as f:
            report = json.load(f)
    shutil.rmtree(server.workdir, ignore_errors=True)
    return (rss1 - rss0) / n, report


def part_a(n, rounds):
    shared, per_conn = [], []
    for r in range(rounds):
        s, _ = grow_per_conn("bare", [], n)
        c, _ = grow_per_conn("bare", ["--ctx-per-conn"], n)
        shared.append(s)
        per_conn.append(c)
        print(
            f"  round {r + 1}: RSS per connection shared {s / 1024:.0f} KiB, ctx-per-conn {c / 1024:.0f} KiB, "
            f"context cost {(c - s) / 1024:.0f} KiB",
            flush=True,
        )
    _, report = grow_per_conn("tlsprof", ["--ctx-per-conn"], n)
    pc = report["per_connection"]
    ca = pc["by_cause"].get("ca_store", 0)
    ctx_cost = _common.median(per_conn) - _common.median(shared)
    diffs = [c - s for c, s in zip(per_conn, shared)]
    res = {
        "n": n,
        "rss_per_conn_shared": _common.summary(shared),
        "rss_per_conn_ctx": _common.summary(per_conn),
        "rss_context_cost": ctx_cost,
        "rss_context_cost_rounds": _common.summary(diffs),
        "reported_ca_store_per_conn": ca,
        "reported_context_share_per_conn": pc["context_share_bytes"],
        "reported_connections": pc["connections"],
        "reported_per_conn_bytes": pc["bytes"],
        "ratio": ca / ctx_cost if ctx_cost else None,
    }
    print(
        f"  tlsprof: {pc['connections']} connections, ca_store {ca / 1024:.0f} KiB per connection "
        f"(context share {pc['context_share_bytes'] / 1024:.0f} KiB); RSS-measured context cost "
        f"{ctx_cost / 1024:.0f} KiB (rounds {min(diffs) / 1024:.0f}-{max(diffs) / 1024:.0f}): "
        f"ratio {res['ratio']:.3f}",
        flush=True,
    )
    return res


def build_counter(workdir):
    so = os.path.join(workdir, "count_preload.so")
    subprocess.run(
        [
            "gcc",
            "-O2",
            "-Wall",
            "-shared",
            "-fPIC",
            "-o",
            so,
            os.path.join(_common.BENCH_DIR, "count_preload.c"),
            "-ldl",
        ],
        check=True,
    )
    return so


def run_workload(env, args):
    full = dict(os.environ, PYTHONHASHSEED="0", **env)
    out = subprocess.run(
        [sys.executable, os.path.join(_common.BENCH_DIR, "acc_workload.py"), *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"workload failed: {out.stderr[-2000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def part_b(contexts, conns, rounds):
    from tlsprof.collect import launch

    workdir = tempfile.mkdtemp(prefix="tlsprof-bench-acc-")
    try:
        so = build_counter(workdir)
        args = ["--certdir", tlsenv.default_certdir(), "--contexts", str(contexts), "--conns", str(conns)]
        rows = {}
        for _ in range(rounds):
            counted = run_workload({"LD_PRELOAD": so}, args)
            chan = launch.private_dir(prefix="tlsprof-bench-")
            try:
                tracked = run_workload(launch.preload_env(chan, base={}), args)
            finally:
                shutil.rmtree(chan, ignore_errors=True)
            for c, t in zip(counted, tracked):
                name = c["checkpoint"]
                rows.setdefault(name, []).append(
                    (
                        c["counter"]["bytes"],
                        t["tlsprof"]["bytes"],
                        c["counter"]["blocks"],
                        t["tlsprof"]["blocks"],
                        t["tlsprof"]["untracked_bytes"],
                    )
                )
        res = {"contexts": contexts, "conns": conns, "rounds": rounds, "checkpoints": {}}
        worst = 0.0
        for name, vals in rows.items():
            errs = [(t - c) / c for c, t, *_ in vals if c]
            res["checkpoints"][name] = {
                "counter_bytes": [v[0] for v in vals],
                "tlsprof_bytes": [v[1] for v in vals],
                "counter_blocks": [v[2] for v in vals],
                "tlsprof_blocks": [v[3] for v in vals],
                "untracked_bytes": [v[4] for v in vals],
                "rel_error": errs,
            }
            worst = max([worst] + [abs(e) for e in errs])
            print(
                f"  {name:12s} counter {vals[0][0]:>9d} B {vals[0][2]:>6d} blocks | tlsprof {vals[0][1]:>9d} B "
                f"{vals[0][3]:>6d} blocks | error {', '.join(f'{e * 100:+.3f} %' for e in errs)}",
                flush=True,
            )
        res["worst_abs_rel_error"] = worst
        return res
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=300, help="connections for (a)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--contexts", type=int, default=4, help="CA-store contexts in (b)'s workload")
    p.add_argument("--conns", type=int, default=50, help="in-memory connections in (b)'s workload")
    p.add_argument("--only", choices=("a", "b"))
    p.add_argument("--quick", action="store_true", help="(a) with 100 connections, 1 round")
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.rounds = 100, 1
    out = {"params": vars(a), "goal_a": GOAL_A, "goal_b": GOAL_B}
    if a.only in (None, "a"):
        print(f"[accuracy a] ca_store per connection vs RSS cost of a CA-store context, {a.n} connections", flush=True)
        out["a"] = part_a(a.n, a.rounds)
    if a.only in (None, "b"):
        print(
            f"[accuracy b] live OpenSSL bytes: tlsprof vs bench/count_preload.c, {a.contexts} contexts + "
            f"{a.conns} connections",
            flush=True,
        )
        out["b"] = part_b(a.contexts, a.conns, a.rounds)
    print()
    if "a" in out:
        r = out["a"]["ratio"]
        print(
            f"[accuracy a] ca_store / RSS context cost = {r:.3f} (goal within +-10 %: "
            f"{'meets' if r is not None and abs(r - 1) <= GOAL_A else 'misses'})"
        )
    if "b" in out:
        w = out["b"]["worst_abs_rel_error"]
        print(
            f"[accuracy b] worst |tlsprof - counter| / counter = {w * 100:.3f} % (goal <= 1 %: "
            f"{'meets' if w <= GOAL_B else 'misses'})"
        )
    _common.save("accuracy" if a.only is None else f"accuracy_{a.only}", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
