"""`make bench`: every issue-7 benchmark in turn; each is also runnable alone (see bench/README.md).

    python bench/run_all.py [--quick] [--only overhead,throughput,scale,attach,accuracy]

Prints ratios and verdicts; never fails on timing (exit 1 only if a benchmark crashed).
Results: bench/results/<name>.json (with the machine they ran on).
"""

import argparse
import sys
import time
import traceback

import _common

BENCHES = ("overhead", "throughput", "scale", "attach", "accuracy")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short versions (a few minutes in all)")
    p.add_argument("--only", default=",".join(BENCHES))
    a = p.parse_args()
    m = _common.machine()
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, {m['mem_gb']} GB, {m['os']}, Python {m['python']}, {m['openssl']}",
        flush=True,
    )
    failed = []
    for name in a.only.split(","):
        mod = __import__(f"bench_{name}")
        argv = ["--quick"] if a.quick else []
        t0 = time.monotonic()
        print(f"\n===== {name} =====", flush=True)
        try:
            mod.main(argv)
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"===== {name}: {time.monotonic() - t0:.0f} s =====", flush=True)
    if failed:
        print(f"benchmarks that could not run: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
