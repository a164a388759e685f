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


def total_ir(outfile):
    best = 0
    with open(outfile) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                best = max(best, int(line.split()[1]))
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=200)
    p.add_argument("--threaded", action="store_true")
    p.add_argument("--variants", default="full,lto,batch,notable")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--keep", action="store_true", help="keep the callgrind files (their directory is printed)")
    a = p.parse_args(argv)
    if not shutil.which("valgrind"):
        print("skipped: valgrind not installed")
        return 0
    work = tempfile.mkdtemp(prefix="tlsprof-cg-")
    results = {}
    try:
        libs = {k: v for k, v in shim_variants.build(work).items() if k in a.variants.split(",")}
        for mode in ["bare", *libs]:
            out = os.path.join(work, f"cg.{mode}.%p")
            env = {}
            if mode != "bare":
                chan = tempfile.mkdtemp(dir=work)
                env = {"LD_PRELOAD": libs[mode], "TLSPROF_DIR": chan}
            server = _servers.start(
                "bare",
                *(["--threaded"] if a.threaded else []),
                env=env,
                wrapper=["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", "-q"],
            )
            try:
                pid = server.pid  # valgrind runs the target in its own pid
                hsload.run(server.port, 30, 2)
                subprocess.run(["callgrind_control", "-i", "on", str(pid)], capture_output=True, check=True)
                res = hsload.run(server.port, a.n, 2)
                subprocess.run(["callgrind_control", "-i", "off", str(pid)], capture_output=True, check=True)
            finally:
                _servers.stop(server, cleanup=False)
            files = sorted(glob.glob(os.path.join(work, f"cg.{mode}.*")), key=os.path.getsize)
            ir = total_ir(files[-1])
            results[mode] = {"ir_per_handshake": ir / max(1, res["handshakes"]), "errors": res["errors"]}
            print(f"  {mode:8s} {ir / res['handshakes'] / 1e6:7.3f} M instructions per handshake", flush=True)
            if mode == "full":
                ann = subprocess.run(
                    ["callgrind_annotate", "--inclusive=no", files[-1]], capture_output=True, text=True
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
            print(
                f"  {m:8s} {r['ir_per_handshake'] / 1e6:.3f} M  +{(r['ir_per_handshake'] - bare) / 1e6:.3f} M  "
                f"{r['ratio']:.3f}x"
            )
        _common.save("callgrind_threaded" if a.threaded else "callgrind", {"params": vars(a), "results": results})
    finally:
        if a.keep:
            print(f"[callgrind] files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
