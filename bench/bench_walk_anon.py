"""The heap walk's scan of anonymous memory that is not malloc's (a JIT's or a GC's heap, a big mmap).

    python bench/bench_walk_anon.py [--gb 0,2,8] [--rounds 3]

The walk reads every private anonymous mapping that is no thread heap, page by page where no chunk
chain starts (docs/heap-walk.md: a main arena that could not grow with brk continues in such
mappings). Its cost then grows with the process's anonymous memory, not with its heap. A Python
target with the shim preloaded holds 2,000 SSL objects and GB gigabytes of private anonymous memory,
every page written (resident, no chunk in it); at each size the `WALK` command is sent `--rounds`
times. Printed per size: the target's pause (the fork, which grows with mapped memory anyway), the
walk's time in the child, and the walk's time per GB beside the 0 GB target, measured in the same
run. Never fails on timing; exits 0 unless it could not run.
"""

import argparse
import shutil
import statistics
import subprocess
import sys

import _common
from tlsprof.collect import client, launch

TARGET = """
import mmap, ssl, sys
size = int(float(sys.argv[1]) * (1 << 30))
if size:
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for off in range(0, size, mmap.PAGESIZE):
        m[off] = 1
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
objs = [ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO()) for _ in range(2000)]
print("ready", flush=True)
sys.stdin.read()
"""


def measure(gb, rounds):
    channel_dir = launch.private_dir(prefix="tlsprof-walk-anon-")
    p = subprocess.Popen(
        [sys.executable, "-c", TARGET, str(gb)],
        env=launch.preload_env(channel_dir),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if not p.stdout.readline().startswith("ready"):  # bounded: the target exits on error
            raise RuntimeError(f"target of {gb} GB did not start")
        sock = _common.wait_channel_socket(channel_dir, p.pid)
        walks = []
        for _ in range(rounds):
            w = client.walk(sock, timeout=120)
            if not w.ok:
                raise RuntimeError(f"walk {w.status}: {w.reason}")
            walks.append(dict(w.stats))
        return {
            "gb": gb,
            "pause_ms": statistics.median(s["pause_us"] / 1000 for s in walks),
            "walk_ms": statistics.median(s["walk_ms_total"] for s in walks),
            "connections": walks[0].get("connections"),
            "arena_pieces": walks[0].get("arena_pieces"),
        }
    finally:
        p.stdin.close()
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
        shutil.rmtree(channel_dir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", default="0,2,8")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sizes = sorted({0.0, *(float(g) for g in args.gb.split(","))})
    try:
        rows = [measure(gb, args.rounds) for gb in sizes]
    except (RuntimeError, OSError) as e:
        print(f"bench_walk_anon: {e}", file=sys.stderr)
        return 1
    base = rows[0]["walk_ms"]
    for r in rows:
        per_gb = (r["walk_ms"] - base) / r["gb"] if r["gb"] else 0.0
        r["walk_ms_per_gb_added"] = round(per_gb, 1)
        print(
            f"{r['gb']:4.1f} GB anonymous  pause {r['pause_ms']:7.1f} ms  walk {r['walk_ms']:5.0f} ms"
            f" (+{per_gb:.0f} ms per GB over 0 GB)  connections {r['connections']}  pieces {r['arena_pieces']}",
            flush=True,
        )
    _common.save("bench_walk_anon", {"rows": rows, "machine": _common.machine()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
