"""The compatibility matrix of docs/compatibility.md, measured: for each real server, what
`tlsprof run` reports with N idle TLS connections beside a ground truth measured in a separate,
bare run (no tlsprof): the kernel's count of established connections and the memory growth of the
server's processes (RSS and USS, summed over the tree) per connection.

    python bench/compat_matrix.py [--only nginx,apache,...] [--rounds 1] [--json OUT]

Prints one table (Markdown, ready for docs/compatibility.md). Never fails on a figure; exit 1 only
if a server could not run at all.
"""

import argparse
import json
import statistics
import sys
import traceback

import _common  # noqa: F401  (sys.path: the repo and tests/)

from servers import SERVERS, hold_measured, start  # noqa: E402
from servers.base import ServerUnavailable  # noqa: E402
import tlsenv  # noqa: E402

KiB = 1024


def bare(name, cert, key):
    """Ground truth without tlsprof: kernel count, RSS and USS growth per connection."""
    n = SERVERS[name].connections
    with start(name, cert, key) as running:
        with hold_measured(running, n) as truth:
            truth["processes"] = len(running.tree())
    return truth


def profiled(name, cert, key):
    """`tlsprof run` with the same connections: the report, and the kernel's count in that run."""
    n = SERVERS[name].connections
    with start(name, cert, key, profile=True) as running:
        with hold_measured(running, n) as truth:
            running.stop()
        report = running.report()
    return report, truth


def top_causes(by_cause, k=3):
    items = sorted(((b, c) for c, b in by_cause.items() if b > 0), reverse=True)[:k]
    return ", ".join(f"{c} {b / KiB:.1f}" for b, c in items) or "-"


def row(name, report, truth_run, truths_bare):
    n = SERVERS[name].connections
    per = report["per_connection"]
    processes = report.get("processes") or []
    rss = statistics.median(t["rss_per_conn"] for t in truths_bare)
    uss = statistics.median(t["uss_per_conn"] for t in truths_bare)
    return {
        "server": name,
        "expected": n,
        "seen": per["connections"],
        "kernel": truth_run["held_by_kernel"],
        "holders": len(truth_run["holders"]),
        "server_processes": truths_bare[0]["processes"],
        "report_pid": report["target"]["pid"],
        # what the report's own process holds, by the kernel's count: the focus process of a tree
        "held_by_report_pid": truth_run["holders"].get(report["target"]["pid"], 0),
        "report_processes": 1 + len(processes),
        "bytes": per["bytes"],
        "own_bytes": per["own_bytes"],
        "context_share_bytes": per["context_share_bytes"],
        "by_cause": per["by_cause"],
        "byte_measure": (report.get("tracker") or {}).get("byte_measure"),
        "rss_per_conn": rss,
        "uss_per_conn": uss,
    }


def table(rows):
    out = [
        "| server | processes (holding connections) | connections: tlsprof / open (held by the report's "
        "process) | tlsprof KiB per connection: total (own + context share) | top causes, KiB | "
        "ground truth, bare run: RSS / USS KiB per connection |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['server']} | - | - | - | {r['error']} | - |")
            continue
        out.append(
            f"| {r['server']} | {r['server_processes']} ({r['holders']}) | "
            f"{r['seen']} / {r['expected']} ({r['held_by_report_pid']}) | "
            f"{r['bytes'] / KiB:.1f} ({r['own_bytes'] / KiB:.1f} + {r['context_share_bytes'] / KiB:.1f}) | "
            f"{top_causes(r['by_cause'])} | {r['rss_per_conn'] / KiB:.1f} / {r['uss_per_conn'] / KiB:.1f} |"
        )
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(SERVERS), help="servers, comma-separated: " + ", ".join(SERVERS))
    p.add_argument("--rounds", type=int, default=1, help="bare runs per server (median)")
    p.add_argument("--json", metavar="OUT", help="also write the rows as JSON here")
    a = p.parse_args(argv)
    cert, key = tlsenv.ensure_cert(tlsenv.default_certdir())
    rows, failed = [], []
    for name in a.only.split(","):
        print(f"{name} ...", file=sys.stderr, flush=True)
        try:
            truths = [bare(name, cert, key) for _ in range(max(1, a.rounds))]
            report, truth_run = profiled(name, cert, key)
            rows.append(row(name, report, truth_run, truths))
        except ServerUnavailable as exc:
            rows.append({"server": name, "error": f"not run: {exc}"})
        except Exception as exc:
            traceback.print_exc()
            rows.append({"server": name, "error": f"failed: {exc}"})
            failed.append(name)
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
