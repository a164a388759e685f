"""Issue 7 items 3 and 4: idle cost and scale with N live TLS connections (default 10,000).

    python bench/bench_scale.py [-n 10000] [--idle-seconds 10] [--quick]

For each of bare and tracked, starts the asyncio echo server (tracked = the shim preloaded with its
channel, exactly what `tlsprof run` sets up, but with nobody taking snapshots), connects N idle
clients from a separate process (examples/echo_client.py, 4 KiB client read buffers), waits, then
measures over --idle-seconds the server's CPU time, context switches and thread states (psutil).
Tracked only, afterwards: tracker memory per live OpenSSL block (shim stats tracker_bytes / blocks,
and RSS tracked - RSS bare per block), then 5x end-to-end snapshot time (tlsprof.collect.client.snapshot),
build_report, JSON encoding, text rendering, and Session.poll + ReportSource.latest_report (one refresh of the
live view's data path).
Goals: added idle CPU ~ 0; <= 32 B tracker memory per live block; snapshot <= 100 ms; report <= 1 s.
"""

import argparse
import io
import shutil
import sys
import time

import _common
import _servers
import tlsenv

GOAL_SNAPSHOT_S = 0.100
GOAL_REPORT_S = 1.0
GOAL_BYTES_PER_BLOCK = 32


def idle_window(pid, seconds):
    proc = _common.psutil.Process(pid)
    c0, s0 = _common.cpu_seconds(pid), proc.num_ctx_switches()
    t0 = time.monotonic()
    time.sleep(seconds)
    c1, s1 = _common.cpu_seconds(pid), proc.num_ctx_switches()
    dt = time.monotonic() - t0
    threads = []
    for tid in sorted(t.id for t in proc.threads()):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                wchan = f.read().strip()
        except OSError:
            state, wchan = "?", "?"
        threads.append(f"{tid}:{state}:{wchan}")
    return {
        "cpu_s": c1 - c0,
        "seconds": dt,
        "cpu_percent": 100 * (c1 - c0) / dt,
        "ctx_switches": (s1.voluntary - s0.voluntary) + (s1.involuntary - s0.involuntary),
        "threads": threads,
    }


def timed(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def scale_figures(pid, channel_dir):
    from tlsprof.collect import client
    from tlsprof.model import report_io
    from tlsprof.analysis.report import build_report
    from tlsprof.render.text import render_text
    from tlsprof.analysis.reports import ReportSource
    from tlsprof.collect.session import Session
    from tlsprof.collect.channel_paths import socket_path

    sock = socket_path(channel_dir, pid)
    snap, snap_t = timed(lambda: client.snapshot(sock, timeout=30), 5)
    report, build_t = timed(lambda: build_report(snap, command=["echo_server"], mode="run"), 3)
    text, json_t = timed(lambda: report_io.dumps(report), 3)
    _, render_t = timed(lambda: render_text(report, file=io.StringIO()), 3)
    raw, ask_t = timed(lambda: client.ask(sock, "SNAPSHOT", 30), 3)  # the shim's side + transfer
    _, parse_t = timed(lambda: client.parse_snapshot(raw), 3)  # parsing in Python
    session = Session(channel_dir, pid, ["echo_server"], mode="run")
    source = ReportSource(session)
    _, poll_t = timed(session.poll, 3)
    _, latest_t = timed(lambda: source.report(at="last"), 2)

    def refresh():
        session.poll()
        return source.latest_report()

    _, refresh_t = timed(refresh, 2)
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.runcall(source.report, at="last")
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(14)
    print("  cProfile of Session.report(at='last') (the live view's per-refresh report):")
    print("\n".join("    " + ln for ln in buf.getvalue().splitlines() if ln.strip())[-2600:], flush=True)
    return snap, {
        "connections": len(snap.connections),
        "owners": len(snap.owners),
        "sites": len(snap.sites),
        "snapshot_text_bytes": len(client.ask(sock, "SNAPSHOT", 30)),
        "report_json_bytes": len(text),
        "snapshot_s": _common.summary(snap_t),
        "build_report_s": _common.summary(build_t),
        "json_dumps_s": _common.summary(json_t),
        "render_text_s": _common.summary(render_t),
        "report_total_s": _common.median(build_t) + _common.median(json_t),
        "refresh_s": _common.summary(refresh_t),
        "shim_answer_s": _common.summary(ask_t),
        "parse_s": _common.summary(parse_t),
        "session_poll_s": _common.summary(poll_t),
        "session_report_s": _common.summary(latest_t),
        "report_profile": buf.getvalue()[-4000:],
    }


def one(mode, n, idle_s, concurrency):
    from tlsprof.collect import launch

    env, channel_dir = None, None
    if mode == "tracked":
        channel_dir = launch.private_dir(prefix="tlsprof-bench-")
        env = launch.preload_env(channel_dir)
    server = _servers.start("bare", env=env)  # the shim comes in through env when tracked
    pid = server.target_pid()
    clients = None
    try:
        rss0 = tlsenv.rss_bytes(pid)
        t0 = time.monotonic()
        clients = tlsenv.start_clients(
            server.port, n, "--read-buffer", "4096", interval=1e6, concurrency=concurrency, timeout=60 + 0.1 * n
        )
        setup_s = time.monotonic() - t0
        time.sleep(3)  # let the last handshakes' garbage settle
        rss1 = tlsenv.rss_bytes(pid)
        idle = idle_window(pid, idle_s)
        res = {
            "connect_s": setup_s,
            "rss_before": rss0,
            "rss_after": rss1,
            "rss_per_conn": (rss1 - rss0) / n,
            "idle": idle,
        }
        print(
            f"  {mode:8s} {n} connections up in {setup_s:.1f} s; RSS {rss1 / 2**20:.0f} MiB "
            f"({res['rss_per_conn'] / 1024:.0f} KiB/conn); idle {idle_s:.0f} s: "
            f"CPU {idle['cpu_s'] * 1000:.1f} ms ({idle['cpu_percent']:.3f} %), "
            f"{idle['ctx_switches']} context switches, threads {idle['threads']}",
            flush=True,
        )
        if mode == "tracked":
            snap, figs = scale_figures(pid, channel_dir)
            st = snap.stats
            res["tracker_bytes"] = st.get("tracker_bytes")
            res["blocks"] = st.get("blocks")
            res["tracker_table_bytes"] = st.get("tracker_table_bytes")  # the per-block part
            res["tracker_bytes_per_block"] = st["tracker_bytes"] / st["blocks"] if st.get("blocks") else None
            res["live_openssl_bytes"] = snap.live_bytes
            res.update(figs)
            print(
                f"  tracked: {st.get('blocks')} live OpenSSL blocks ({snap.live_bytes / 2**20:.0f} MiB), "
                f"tracker {st.get('tracker_bytes', 0) / 2**20:.1f} MiB = "
                f"{res['tracker_bytes_per_block']:.1f} B/block; snapshot {figs['snapshot_s']['median'] * 1000:.0f} ms "
                f"({figs['snapshot_text_bytes'] / 2**20:.1f} MiB of text), build_report "
                f"{figs['build_report_s']['median'] * 1000:.0f} ms, JSON {figs['json_dumps_s']['median'] * 1000:.0f} ms, "
                f"text {figs['render_text_s']['median'] * 1000:.0f} ms, poll+report "
                f"{figs['refresh_s']['median'] * 1000:.0f} ms; split: shim answer "
                f"{figs['shim_answer_s']['median'] * 1000:.0f} ms + parse {figs['parse_s']['median'] * 1000:.0f} ms; "
                f"Session.poll {figs['session_poll_s']['median'] * 1000:.0f} ms + Session.report "
                f"{figs['session_report_s']['median'] * 1000:.0f} ms",
                flush=True,
            )
        return res
    finally:
        if clients:
            clients.stop()
        _servers.stop(server)
        if channel_dir:
            shutil.rmtree(channel_dir, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=10000)
    p.add_argument("--idle-seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--quick", action="store_true", help="1,000 connections, 5 s idle")
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.idle_seconds = 1000, 5.0
    print(f"[scale] {a.n} idle TLS connections, asyncio echo server, bare then tracked", flush=True)
    bare = one("bare", a.n, a.idle_seconds, a.concurrency)
    tracked = one("tracked", a.n, a.idle_seconds, a.concurrency)
    added_cpu = tracked["idle"]["cpu_s"] - bare["idle"]["cpu_s"]
    rss_per_block = (tracked["rss_after"] - bare["rss_after"]) / tracked["blocks"] if tracked.get("blocks") else None
    summary = {
        "added_idle_cpu_s": added_cpu,
        "added_idle_cpu_percent": 100 * added_cpu / a.idle_seconds,
        "added_idle_ctx_switches": tracked["idle"]["ctx_switches"] - bare["idle"]["ctx_switches"],
        "tracker_bytes_per_block": tracked.get("tracker_bytes_per_block"),
        "rss_delta_per_block": rss_per_block,
        "snapshot_s": tracked["snapshot_s"]["median"],
        "report_s": tracked["report_total_s"],
        "refresh_s": tracked["refresh_s"]["median"],
    }
    print(f"\n[scale] {a.n} connections")
    print(
        f"  added idle CPU over {a.idle_seconds:.0f} s: {added_cpu * 1000:+.1f} ms "
        f"({summary['added_idle_cpu_percent']:+.3f} % of a core), "
        f"{summary['added_idle_ctx_switches']:+d} context switches (goal ~0)"
    )
    print(
        f"  tracker memory: {summary['tracker_bytes_per_block']:.1f} B per live block (goal <= {GOAL_BYTES_PER_BLOCK}: "
        f"{_common.verdict(summary['tracker_bytes_per_block'], GOAL_BYTES_PER_BLOCK, False)}); "
        f"RSS tracked-bare: {rss_per_block:.1f} B per block"
    )
    print(
        f"  snapshot end to end {summary['snapshot_s'] * 1000:.0f} ms (goal <= 100 ms: "
        f"{_common.verdict(summary['snapshot_s'], GOAL_SNAPSHOT_S, False)}); report "
        f"{summary['report_s'] * 1000:.0f} ms (goal <= 1 s: {_common.verdict(summary['report_s'], GOAL_REPORT_S, False)}); "
        f"poll + report (live view data path) {summary['refresh_s'] * 1000:.0f} ms"
    )
    _common.save("scale", {"params": vars(a), "bare": bare, "tracked": tracked, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
