"""`tlsprof diff A.json B.json [--fail-on-growth PCT] [--format text|json]`

What grew between two reports: totals and per-connection bytes by cause, context and connection
counts, findings that are new in B. Exit 0; with --fail-on-growth, exit 1 when the per-connection
bytes grew by more than PCT percent (for CI). A missing or corrupt report: one line, exit 2.
"""

import json
import sys

from tlsprof.analysis.diffing import compare, per_connection_growth_pct, render_diff
from tlsprof.errors import UsageError
from tlsprof.model.report_io import load_report


def prepare_parser(p):
    p.add_argument("before", metavar="A.json", help="the earlier report (baseline)")
    p.add_argument("after", metavar="B.json", help="the later report")
    p.add_argument(
        "--fail-on-growth",
        type=float,
        metavar="PCT",
        default=None,
        help="exit 1 when per-connection bytes grew by more than PCT percent",
    )
    p.add_argument(
        "--format", choices=("text", "json"), default="text", help="text for people (default) or the comparison as JSON"
    )


def run(args) -> int:
    if args.fail_on_growth is not None and not (args.fail_on_growth >= 0):
        raise UsageError("--fail-on-growth must be a percentage >= 0")
    a = load_report(args.before)
    b = load_report(args.after)
    d = compare(a, b)
    growth = per_connection_growth_pct(d)
    failed = args.fail_on_growth is not None and growth is not None and growth > args.fail_on_growth
    if args.format == "json":
        d["fail_on_growth"] = args.fail_on_growth
        d["per_connection_growth_pct"] = None if growth is None or growth == float("inf") else growth
        d["failed"] = failed
        sys.stdout.write(json.dumps(d, indent=2, allow_nan=False) + "\n")
    else:
        sys.stdout.write(render_diff(d, args.fail_on_growth))
    sys.stdout.flush()
    return 1 if failed else 0
