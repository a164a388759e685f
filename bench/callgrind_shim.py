"""Instructions per handshake of the echo server bare and under shim variants (valgrind callgrind):
a load-independent measure for a noisy shared machine, and the shim's functions by cost.

    python bench/callgrind_shim.py [-n 200] [--threaded] [--variants full,spin,lto,spinlto,batch,notable]

Each server runs under `valgrind --tool=callgrind --instr-atstart=no`; instrumentation is switched on
(callgrind_control -i on) after a 30-handshake warm-up, n handshakes run (2 at a time), then the
profile is dumped. Ir/handshake ratio bare/variant approximates the rate ratio on a free CPU.
Variants come from bench/shim_variants.py (copies of hooks/ with parts switched off).
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

import _common
import _servers
import hsload
import shim_variants


def totals(outfile):
    """{event: count} of a callgrind file (Ir alone, or with --cache-sim the misses too)."""
    names, best = ["Ir"], {}
    with open(outfile) as f:
        for line in f:
            if line.startswith("events:"):
                names = line.split()[1:]
            elif line.startswith("totals:") or line.startswith("summary:"):
                values = dict(zip(names, map(int, line.split()[1:])))
                if values.get("Ir", 0) >= best.get("Ir", 0):
                    best = values
    return best


# cycles a miss costs, roughly (an L1 miss served by L2/L3, a last-level miss served by memory): the
# model valgrind's manual suggests for comparing cache behaviour, not a measurement
MISS_CYCLES = {"D1": 10, "LL": 100}


def modelled_cycles(ir, d1, ll):
    return ir + MISS_CYCLES["D1"] * d1 + MISS_CYCLES["LL"] * ll


def misses(t):
    d1 = t.get("D1mr", 0) + t.get("D1mw", 0) + t.get("I1mr", 0)
    ll = t.get("DLmr", 0) + t.get("DLmw", 0) + t.get("ILmr", 0)
    return d1, ll


def per_handshake(work, name, env, n, threaded=False, cache_sim=False):
    """The echo server under callgrind with `env` (LD_PRELOAD...): after a 30-handshake warm-up, n
    handshakes (2 at a time) are measured. ({"ir_per_handshake", and with cache_sim "d1_misses",
    "ll_misses", "modelled_cycles"}, the callgrind file)."""
    out = os.path.join(work, f"cg.{name}.%p")
    server = _servers.start(
        "bare",
        *(["--threaded"] if threaded else []),
        env={**os.environ, **env} if env else None,
        wrapper=[
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            *(["--cache-sim=yes"] if cache_sim else []),
            f"--callgrind-out-file={out}",
            "-q",
        ],
    )
    try:
        pid = server.pid  # valgrind runs the target in its own pid
        hsload.run(server.port, 30, 2)
        subprocess.run(["callgrind_control", "-i", "on", str(pid)], capture_output=True, check=True)
        res = hsload.run(server.port, n, 2)
        subprocess.run(["callgrind_control", "-i", "off", str(pid)], capture_output=True, check=True)
    finally:
        _servers.stop(server, cleanup=False)
    outfile = sorted(glob.glob(os.path.join(work, f"cg.{name}.*")), key=os.path.getsize)[-1]
    t = totals(outfile)
    hs = max(1, res["handshakes"])
    r = {"ir_per_handshake": t.get("Ir", 0) / hs, "errors": res["errors"]}
    if cache_sim:
        d1, ll = misses(t)
        r.update(
            d1_misses=d1 / hs,
            ll_misses=ll / hs,
            modelled_cycles=modelled_cycles(t.get("Ir", 0), d1, ll) / hs,
        )
    return r, outfile


def describe(r):
    line = f"{r['ir_per_handshake'] / 1e6:7.3f} M instructions per handshake"
    if "modelled_cycles" in r:
        line += (
            f", {r['d1_misses'] / 1e3:.1f} k L1 misses, {r['ll_misses'] / 1e3:.2f} k LL misses, "
            f"{r['modelled_cycles'] / 1e6:.3f} M modelled cycles"
        )
    return line


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=200)
    p.add_argument("--threaded", action="store_true")
    p.add_argument("--variants", default="full,lto,batch,notable")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--keep", action="store_true", help="keep the callgrind files (their directory is printed)")
    p.add_argument(
        "--cache-sim",
        action="store_true",
        help="also simulate the caches: L1 and last-level misses per handshake, and Ir + 10 x L1 + 100 x LL misses",
    )
    a = p.parse_args(argv)
    if not shutil.which("valgrind"):
        print("skipped: valgrind not installed")
        return 0
    work = tempfile.mkdtemp(prefix="tlsprof-cg-")
    results = {}
    try:
        libs = {k: v for k, v in shim_variants.build(work).items() if k in a.variants.split(",")}
        for mode in ["bare", *libs]:
            env = {} if mode == "bare" else {"LD_PRELOAD": libs[mode], "TLSPROF_DIR": tempfile.mkdtemp(dir=work)}
            results[mode], outfile = per_handshake(work, mode, env, a.n, a.threaded, a.cache_sim)
            print(f"  {mode:8s} {describe(results[mode])}", flush=True)
            if mode == "full":
                ann = subprocess.run(
                    ["callgrind_annotate", "--inclusive=no", outfile], capture_output=True, text=True
                ).stdout.splitlines()
                shim = [
                    ln
                    for ln in ann
                    if "hooks/" in ln
                    or "_shim" in ln
                    or "pthread_mutex" in ln
                    or "malloc_usable" in ln
                    or "full.so" in ln
                    or "/src/" in ln
                ][: a.top]
                results[mode]["top_shim_functions"] = shim
                print("  shim functions (self Ir, whole run):\n" + "\n".join("    " + ln.strip() for ln in shim))
        bare = results["bare"]["ir_per_handshake"]
        print("\n[callgrind] instructions per handshake, ratio bare/variant")
        for m, r in results.items():
            r["ratio"] = bare / r["ir_per_handshake"]
            line = (
                f"  {m:8s} {r['ir_per_handshake'] / 1e6:.3f} M  +{(r['ir_per_handshake'] - bare) / 1e6:.3f} M  "
                f"{r['ratio']:.3f}x"
            )
            if a.cache_sim:
                r["modelled_ratio"] = results["bare"]["modelled_cycles"] / r["modelled_cycles"]
                line += f"   modelled cycles {r['modelled_ratio']:.3f}x"
            print(line)
        _common.save("callgrind_threaded" if a.threaded else "callgrind", {"params": vars(a), "results": results})
    finally:
        if a.keep:
            print(f"[callgrind] files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
