"""Issue 18: every row of the overhead goal table, measured side by side in one run.

    python bench/overhead_goals.py [--quick]
                                   [--only rss,ctx,ctxir,handshakes,hsir,snapshot,synthetic,walk,breakdown]
                                   [--shim OTHER.so]

Rows (bare = the same program without the shim; tracked = the shim preloaded with its channel,
which is what `tlsprof run` sets up):
  rss         process RSS tracked / bare, a client holding N sessions each with its own context and
              system CA store (examples/ca_per_request_client.py; 200, --quick 50); also the
              tracker's bytes per live block on that workload, from the shim's own stats
  ctx         building ssl.create_default_context(): bare time / tracked time (a speed ratio),
              median of alternating rounds
  handshakes  handshakes/s tracked / bare, asyncio and threaded seed servers (bench_overhead.py),
              median of >= 4 alternating rounds
  snapshot    10,000 idle connections (--quick 2,000) of the asyncio seed server: snapshot end to
              end (shim answer + parse), live-view refresh (Session.poll + latest_report), tracker
              bytes per live block (bench_scale.py's tracked half)
  synthetic   100,000 connections of synthetic shim state (SSL objects over memory BIOs in one
              process: this machine's ulimit -n is 20,000): snapshot end to end, split
  walk        heap walk (WALK) of a ~2 GB heap (--quick ~0.5 GB) of SSL objects: the target's pause
              (the fork) and the walk's time
  ctxir       the ctx row in instructions (valgrind callgrind): per context, bare / tracked. Load-
              and machine-independent where the timed ratio is neither (0.70-1.21 per round on a
              shared 2-core VM); approximates the time ratio on a free CPU. The note adds valgrind's
              cache simulation: L1 and last-level misses, and "modelled cycles" (Ir + 10 per L1 miss
              + 100 per last-level miss), where the shim's extra misses show
  hsir        the asyncio handshakes row in the same terms: the seed asyncio server under callgrind
              with what `run` puts in the target (the shim and the Python agent, without the
              collector's polling), instructions and modelled cycles per handshake, bare / tracked
              (bench/callgrind_shim.py's measurement; 150 handshakes, --quick 60)
  breakdown   where the ctx and asyncio rows' time goes (bench/shim_variants.py: an idle thread,
              hooks, thread-state guard, young blocks, survivors, agent), quoted in their notes
Prints each figure against its goal; never fails on timing (exit 1 only if a row could not run).
Results: bench/results/overhead_goals.json.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback

import _common
import tlsenv

ROWS = ("rss", "ctx", "ctxir", "handshakes", "hsir", "snapshot", "synthetic", "walk", "breakdown")


def _use_shim(path):
    """--shim: every preloaded target of this run (not `tlsprof run` servers) gets this build
    instead of the installed one, to compare a change with what it replaces."""
    from tlsprof.collect import launch

    installed = launch.preload_env

    def preload_env(channel_dir, *args, **kwargs):
        env = installed(channel_dir, *args, **kwargs)
        rest = env["LD_PRELOAD"].split(":")[1:]
        env["LD_PRELOAD"] = ":".join([os.path.abspath(path), *rest])
        return env

    launch.preload_env = preload_env


def _preload_env():
    from tlsprof.collect import launch

    channel_dir = launch.private_dir(prefix="tlsprof-goals-")
    return launch.preload_env(channel_dir), channel_dir


def _stats(sock, timeout=60):
    from tlsprof.collect import client

    return client.snapshot(sock, timeout=timeout).stats


def _tracker_split(st):
    blocks = st.get("blocks") or 0
    if not blocks:
        return {}
    return {
        "blocks": blocks,
        "tracker_bytes": st.get("tracker_bytes"),
        "tracker_table_bytes": st.get("tracker_table_bytes"),
        "per_block_total": st.get("tracker_bytes", 0) / blocks,
        "per_block_table": (st.get("tracker_table_bytes") or 0) / blocks,
        "blocks_wide": st.get("blocks_wide"),
    }


def row_rss(a, out):
    n = 50 if a.quick else 200
    server = tlsenv.start_echo_server()
    try:
        res = {}
        for mode in ("bare", "tracked"):
            env, channel_dir = (None, None) if mode == "bare" else _preload_env()
            t0 = time.monotonic()
            client = tlsenv.start_ca_per_request_client(server.port, n, hold=0, env=env, timeout=60 + 2 * n)
            try:
                res[f"{mode}_connect_s"] = time.monotonic() - t0
                time.sleep(1)
                res[f"{mode}_rss"] = tlsenv.rss_bytes(client.pid)
                if mode == "tracked":
                    res["tracker"] = _tracker_split(_stats(_common.wait_channel_socket(channel_dir, client.pid)))
            finally:
                client.stop()
                if channel_dir:
                    shutil.rmtree(channel_dir, ignore_errors=True)
        ratio = res["tracked_rss"] / res["bare_rss"]
        t = res["tracker"]
        out["rss"] = res
        add(
            f"RSS tracked / bare, {n} ctx+CA-store sessions",
            ratio,
            1.20,
            False,
            f"{res['bare_rss'] / 2**20:.0f} -> {res['tracked_rss'] / 2**20:.0f} MiB; "
            f"{(res['tracked_rss'] - res['bare_rss']) / n / 1024:.0f} KiB/session added",
            fmt="{:.3f}x",
        )
        add(
            f"tracker bytes per live block, CA-store workload ({t['blocks']} blocks)",
            t["per_block_total"],
            16,
            False,
            f"block table {t['per_block_table']:.1f} B/block, wide (unpacked) blocks {t['blocks_wide']}",
            fmt="{:.1f} B",
        )
        add(
            f"ctx+CA-store sessions opened: tracked / bare speed ({n} sessions)",
            res["bare_connect_s"] / res["tracked_connect_s"],
            0.80,
            True,
            f"{res['bare_connect_s']:.1f} s bare, {res['tracked_connect_s']:.1f} s tracked (one round)",
            fmt="{:.3f}x",
        )
    finally:
        server.stop()


CTX_LOOP = textwrap.dedent("""
    import ssl, sys, time
    ssl.create_default_context()  # one-time library and provider set-up, outside the timing
    n = int(sys.argv[1]); keep = []
    t0 = time.perf_counter()
    for _ in range(n):
        keep.append(ssl.create_default_context())
    print(time.perf_counter() - t0)
""")


def row_ctx(a, out):
    n, rounds = (10, 4) if a.quick else (20, 6)
    times = {"bare": [], "tracked": []}
    ratios = []
    for r in range(rounds):
        this = {}
        for mode in _common.rotate(["bare", "tracked"], r):
            env, channel_dir = (None, None) if mode == "bare" else _preload_env()
            try:
                p = subprocess.run(
                    [sys.executable, "-c", CTX_LOOP, str(n)], env=env, capture_output=True, text=True, timeout=300
                )
                if p.returncode:
                    raise RuntimeError(p.stderr[-500:])
                this[mode] = float(p.stdout.split()[-1]) / n
                times[mode].append(this[mode])
            finally:
                if channel_dir:
                    shutil.rmtree(channel_dir, ignore_errors=True)
        ratios.append(this["bare"] / this["tracked"])
    bare, tracked = _common.median(times["bare"]), _common.median(times["tracked"])
    out["ctx"] = {"n": n, "rounds": rounds, "times": times, "ratios": ratios}
    add(
        "create_default_context(): tracked / bare speed",
        bare / tracked,
        0.80,
        True,
        f"{bare * 1000:.1f} ms bare, {tracked * 1000:.1f} ms tracked per context; per-round "
        f"{min(ratios):.2f}-{max(ratios):.2f}, {rounds} rounds",
        fmt="{:.3f}x",
    )


def _ctx_events(env, contexts, work):
    """(instructions, L1 misses, last-level misses) of the ctx loop with `contexts` contexts, the
    whole process (callgrind with its cache simulation)."""
    from callgrind_shim import misses, totals

    outfile = os.path.join(work, f"cg.{contexts}.{'tracked' if env else 'bare'}")
    command = ["valgrind", "--tool=callgrind", "--cache-sim=yes", "-q", f"--callgrind-out-file={outfile}"]
    p = subprocess.run(
        [*command, sys.executable, "-c", CTX_LOOP, str(contexts)], env=env, capture_output=True, text=True, timeout=1800
    )
    if p.returncode:
        raise RuntimeError(p.stderr[-500:])
    t = totals(outfile)
    return (t.get("Ir", 0), *misses(t))


def _bare_then_tracked(prefix, measure):
    """{"bare": ..., "tracked": ...}: measure(mode, env, work) run without the shim (env None) and
    with it preloaded as `run` does (its channel removed after), in one scratch directory."""
    work = tempfile.mkdtemp(prefix=prefix)
    res = {}
    try:
        for mode in ("bare", "tracked"):
            env, channel_dir = (None, None) if mode == "bare" else _preload_env()
            try:
                res[mode] = measure(mode, env, work)
            finally:
                if channel_dir:
                    shutil.rmtree(channel_dir, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return res


def _cache_note(bare, tracked):
    """The cache simulation's part of a row's note, bare -> tracked."""
    return (
        f"L1 misses {bare['d1_misses'] / 1e3:.1f} k -> {tracked['d1_misses'] / 1e3:.1f} k, last-level "
        f"{bare['ll_misses'] / 1e3:.2f} k -> {tracked['ll_misses'] / 1e3:.2f} k; modelled cycles "
        f"{bare['modelled_cycles'] / tracked['modelled_cycles']:.3f}x"
    )


def row_ctxir(a, out):
    if not shutil.which("valgrind"):
        print("  skipped: valgrind not installed")
        return
    from callgrind_shim import modelled_cycles

    n = 2 if a.quick else 4

    def per_context(mode, env, work):
        # the difference of two runs: start-up, imports and the first context cancel out
        more, one = _ctx_events(env, 1 + n, work), _ctx_events(env, 1, work)
        ir, d1, ll = ((x - y) / n for x, y in zip(more, one))
        return {"ir": ir, "d1_misses": d1, "ll_misses": ll, "modelled_cycles": modelled_cycles(ir, d1, ll)}

    events = _bare_then_tracked("tlsprof-ctxir-", per_context)
    per = {mode: e["ir"] for mode, e in events.items()}
    out["ctxir"] = per
    out["ctxir_events"] = events
    b, t = events["bare"], events["tracked"]
    add(
        "create_default_context(): instructions bare / tracked (callgrind)",
        per["bare"] / per["tracked"],
        0.80,
        True,
        f"{per['bare'] / 1e6:.1f} M bare, {per['tracked'] / 1e6:.1f} M tracked per context ({n} contexts); "
        + _cache_note(b, t),
        fmt="{:.3f}x",
    )


def row_hsir(a, out):
    """The asyncio handshakes row in instructions and modelled cycles (callgrind_shim.py's measure)."""
    if not shutil.which("valgrind"):
        print("  skipped: valgrind not installed")
        return
    from callgrind_shim import describe, per_handshake

    n = 60 if a.quick else 150

    def measure(mode, env, work):
        r, _ = per_handshake(work, mode, env, n, cache_sim=True)
        print(f"  {mode:8s} {describe(r)}", flush=True)
        return r

    res = _bare_then_tracked("tlsprof-hsir-", measure)
    out["hsir"] = res
    b, t = res["bare"], res["tracked"]
    add(
        "handshakes asyncio: instructions bare / tracked (callgrind)",
        b["ir_per_handshake"] / t["ir_per_handshake"],
        0.97,
        True,
        f"{b['ir_per_handshake'] / 1e6:.3f} M bare, {t['ir_per_handshake'] / 1e6:.3f} M tracked per handshake "
        f"({n} handshakes; shim and Python agent, as `run` puts them in the target); " + _cache_note(b, t),
        fmt="{:.3f}x",
    )


def row_handshakes(a, out):
    import bench_overhead

    n = 500 if a.quick else 1500
    for variant in ("asyncio", "threaded"):
        res = bench_overhead.measure(variant, ("bare", "tlsprof"), 4, n, 10, 100)
        out[f"handshakes_{variant}"] = res
        t = res["tlsprof"]
        add(
            f"handshakes/s {variant}: run / bare (4 rounds, {n} each)",
            t["ratio"],
            0.97,
            True,
            f"{res['bare']['per_s']['median']:.0f} vs {t['per_s']['median']:.0f}/s; rounds "
            f"{t['ratio_rounds']['min']:.2f}-{t['ratio_rounds']['max']:.2f}; server CPU ratio {t['cpu_ratio']:.2f}",
            fmt="{:.3f}x",
        )


def row_breakdown(a, out):
    """Where the speed rows' time goes: bench/shim_variants.py's variants side by side, quoted in the
    ctx and asyncio rows' notes (not a goal row of its own)."""
    import shim_variants

    wanted = ("bare", "thread", "hooks", "guard", "young", "full", "run")
    res = shim_variants.breakdown(["ctx", "asyncio"], 4 if a.quick else 6, wanted)
    out["breakdown"] = res
    for prefix, workload in (("create_default_context()", "ctx"), ("handshakes/s asyncio", "asyncio")):
        for row in TABLE:
            if row["figure"].startswith(prefix):
                row["note"] += f"; of bare (shim_variants.py): {shim_variants.steps_sentence(res[workload])}"


def row_snapshot(a, out):
    import bench_scale

    n = 2000 if a.quick else 10000
    res = bench_scale.one("tracked", n, 1.0, 50)
    out["snapshot"] = {k: v for k, v in res.items() if k != "report_profile"}
    add(
        f"snapshot end to end, {n} connections",
        res["snapshot_s"]["median"],
        0.100,
        False,
        f"shim answer {res['shim_answer_s']['median'] * 1000:.0f} ms + parse {res['parse_s']['median'] * 1000:.0f} ms",
        fmt="{:.3f} s",
    )
    add(
        f"live view refresh (poll + report), {n} connections",
        res["refresh_s"]["median"],
        1.0,
        False,
        "",
        fmt="{:.3f} s",
    )
    table = res.get("tracker_table_bytes") or 0
    add(
        f"tracker bytes per live block, {n} connections ({res['blocks']} blocks)",
        res["tracker_bytes_per_block"],
        16,
        False,
        f"block table {table / res['blocks']:.1f} B/block; the rest is {res['owners']} owner records "
        f"and the site tables",
        fmt="{:.1f} B",
    )


SYNTHETIC = textwrap.dedent("""
    import os, ssl, sys, time
    n = int(sys.argv[1])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    objs = [ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO()) for _ in range(n)]
    print("ready", len(objs), flush=True)
    sys.stdin.read()  # until the bench closes our stdin
""")


def _synthetic(n, fn):
    env, channel_dir = _preload_env()
    p = subprocess.Popen(
        [sys.executable, "-c", SYNTHETIC, str(n)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        line = p.stdout.readline()  # bounded by the objects' creation; the process exits on error
        if not line.startswith("ready"):
            raise RuntimeError(f"synthetic target did not start: {line!r}")
        return fn(p.pid, _common.wait_channel_socket(channel_dir, p.pid))
    finally:
        p.stdin.close()
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
        shutil.rmtree(channel_dir, ignore_errors=True)


def row_synthetic(a, out):
    from tlsprof.collect import client

    n = 100_000

    def measure(pid, sock):
        res = {"rss": tlsenv.rss_bytes(pid)}
        ends, asks, parses = [], [], []
        snap = raw = None
        for _ in range(3):
            snap = raw = None  # the previous round's objects would tax this round's parse
            t0 = time.perf_counter()
            snap = client.snapshot(sock, timeout=60)
            ends.append(time.perf_counter() - t0)
        connections, tracker = len(snap.connections), _tracker_split(snap.stats)
        for _ in range(3):
            snap = raw = None
            t0 = time.perf_counter()
            raw = client.ask(sock, "SNAPSHOT", 60)
            asks.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            snap = client.parse_snapshot(raw)
            parses.append(time.perf_counter() - t0)
        res.update(
            connections=connections, text_bytes=len(raw), end_s=ends, ask_s=asks, parse_s=parses, tracker=tracker
        )
        return res

    res = _synthetic(n, measure)
    out["synthetic"] = res
    add(
        f"snapshot, {res['connections']} connections (synthetic shim state)",
        _common.median(res["end_s"]),
        1.0,
        False,
        f"shim answer + transfer {_common.median(res['ask_s']) * 1000:.0f} ms, parse in Python "
        f"{_common.median(res['parse_s']) * 1000:.0f} ms, {res['text_bytes'] / 2**20:.1f} MiB of text; "
        f"tracker {res['tracker'].get('per_block_total', 0):.1f} B/block",
        fmt="{:.3f} s",
    )


FORK_COST = textwrap.dedent("""
    import os, ssl, sys, time
    n = int(sys.argv[1])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    objs = [ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO()) for _ in range(n)]
    costs = []
    for _ in range(3):
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        costs.append(time.perf_counter() - t0)
        os.waitpid(pid, 0)
    print(sorted(costs)[1])
""")


def row_walk(a, out):
    from tlsprof.collect import client

    n = 50_000 if a.quick else 200_000  # ~10 KB of heap per SSL object

    def measure(pid, sock):
        # three walks, the one of median pause: the bare fork below is a median of three too
        rss = tlsenv.rss_bytes(pid)
        walks = []
        for _ in range(3):
            w = client.walk(sock, timeout=120)
            if not w.ok:
                raise RuntimeError(f"walk {w.status}: {w.reason}")
            walks.append(dict(w.stats))
        walks.sort(key=lambda s: s.get("pause_us", 0))
        return {"rss": rss, "stats": walks[1], "pauses_us": [s.get("pause_us", 0) for s in walks]}

    res = _synthetic(n, measure)
    # the fork's own cost: the same heap in a process without tlsprof, os.fork() in the parent
    p = subprocess.run([sys.executable, "-c", FORK_COST, str(n)], capture_output=True, text=True, timeout=600)
    res["bare_fork_s"] = float(p.stdout.split()[-1]) if p.returncode == 0 else None
    out["walk"] = res
    st = res["stats"]
    heap_gb = st.get("heap_bytes", 0) / 1e9
    if res["bare_fork_s"]:
        pause = st.get("pause_us", 0) / 1e6
        add(
            f"heap walk, {heap_gb:.2f} GB heap: target's pause / a bare fork of the same heap",
            pause / res["bare_fork_s"],
            1.0,
            False,
            f"pause {pause * 1000:.1f} ms (the shim's clone; median of "
            f"{', '.join(f'{u / 1000:.1f}' for u in res['pauses_us'])}), bare os.fork() "
            f"{res['bare_fork_s'] * 1000:.1f} ms (median of 3; the ratio swings with the VM)",
            fmt="{:.2f}x",
        )
    add(
        f"heap walk, {heap_gb:.2f} GB heap: walk time",
        st.get("walk_ms_total", 0) / 1000,
        10.0,
        False,
        f"{st.get('chunks', '?')} chunks; RSS {res['rss'] / 2**30:.2f} GiB",
        fmt="{:.2f} s",
    )


TABLE = []


def add(figure, value, goal, higher_is_better, note, fmt="{:.3f}"):
    v = _common.verdict(value, goal, higher_is_better)
    miss = ""
    if v == "misses":
        miss = f" (by {abs(value - goal) / goal * 100:.0f} %)"
    row = {
        "figure": figure,
        "value": value,
        "goal": goal,
        "goal_op": ">=" if higher_is_better else "<=",
        "verdict": v + miss,
        "note": note,
    }
    TABLE.append(row)
    print(
        f"  -> {figure}: {fmt.format(value)} (goal {row['goal_op']} {fmt.format(goal)}: {v}{miss}) {note}", flush=True
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller workloads (~3 min instead of ~10)")
    p.add_argument("--only", default=",".join(ROWS))
    p.add_argument(
        "--shim",
        help="preload this shim build instead of the installed one (the "
        "handshakes row's `tlsprof run` servers keep the installed one)",
    )
    a = p.parse_args(argv)
    if a.shim:
        _use_shim(a.shim)
    m = _common.machine()
    print(f"machine: {m['cpu']}, {m['cores']} cores, load {os.getloadavg()[0]:.2f}", flush=True)
    out, failed = {}, []
    for name in a.only.split(","):
        t0 = time.monotonic()
        print(f"\n== {name} ==", flush=True)
        try:
            globals()[f"row_{name}"](a, out)
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"== {name}: {time.monotonic() - t0:.0f} s ==", flush=True)
    print("\n| figure | measured | goal | verdict | where it goes |")
    print("|---|---|---|---|---|")
    for r in TABLE:
        print(f"| {r['figure']} | {r['value']:.3f} | {r['goal_op']} {r['goal']} | {r['verdict']} | {r['note']} |")
    _common.save("overhead_goals" + ("_shim" if a.shim else ""), {"params": vars(a), "table": TABLE, "raw": out})
    if failed:
        print(f"rows that could not run: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
