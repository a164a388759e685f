"""Cost of the pprof export (`tlsprof report --format pprof`, `--pprof DIR`): build time, samples and
size of one profile, for a real report and for the same report with its connections repeated up to
10,000 (what a large server's snapshot would give `--pprof` at every interval).

    python bench/pprof_export.py [--clients 200] [--report R.json]

Prints figures; asserts nothing (timing goals live here, never in tests).
"""

import argparse
import copy
import json
import time

import _common
import _servers
import tlsenv

from tlsprof.render import pprof


def real_report(clients):
    server = _servers.start("tlsprof")
    connected = None
    try:
        connected = tlsenv.start_clients(server.port, clients, interval=1.0)
        time.sleep(2.0)
    finally:
        if connected is not None:
            connected.stop()
        _servers.stop(server, cleanup=False)
    with open(server.out) as f:
        return json.load(f)


def widened(report, n):
    """The report with its connections repeated to n (new ids), totals recomputed."""
    out = copy.deepcopy(report)
    base = report["connections"]
    out["connections"] = [dict(base[i % len(base)], id=f"conn-x{i}") for i in range(n)]
    totals = {}
    for owner in out["contexts"] + out["connections"] + [out["process"]]:
        for cause, v in owner["by_cause"].items():
            totals[cause] = totals.get(cause, 0) + v
    out["totals"]["by_cause"] = totals
    out["totals"]["live_bytes"] = sum(totals.values())
    return out


def measure(label, report, rounds=3):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        data = pprof.encode(report)
        times.append(time.perf_counter() - t0)
    samples = len(pprof.build_profile(report).sample)
    print(
        f"{label:>34}: {len(report['connections']):>6} connections, {samples:>7} samples, "
        f"{_common.median(times):6.3f} s (median of {rounds}), {len(data) / 1024:7.1f} KiB"
    )
    return {"connections": len(report["connections"]), "samples": samples, "seconds": times, "bytes": len(data)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--report", help="use this saved report instead of running the echo server")
    a = p.parse_args(argv)
    if a.report:
        with open(a.report) as f:
            report = json.load(f)
    else:
        report = real_report(a.clients)
    results = [measure("real report", report)]
    for n in (1000, 10000):
        results.append(measure(f"connections repeated to {n}", widened(report, n)))
    _common.save("pprof_export", {"results": results})


if __name__ == "__main__":
    main()
