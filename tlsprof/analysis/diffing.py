"""What grew between two reports (tlsprof.report/1): the logic behind `tlsprof diff`.

`compare(a, b)` returns a plain dict (JSON-ready); `render_diff(d)` turns it into text. Growth of
the per-connection bytes is the figure `--fail-on-growth` checks: it is the one that scales with
traffic, where totals scale with the number of connections.
"""

from tlsprof.model.causes import CAUSES, label
from tlsprof.analysis.findings import human

DIFF_SCHEMA = "tlsprof.diff/1"


def _pct(before, after):
    """Growth in percent; None when there is no base to compare with."""
    if not before:
        return None if not after else float("inf")
    return (after - before) * 100.0 / before


def _row(before, after):
    before, after = before or 0, after or 0
    pct = _pct(before, after)
    return {
        "before": before,
        "after": after,
        "delta": after - before,
        "pct": None if pct is None or pct == float("inf") else round(pct, 2),
        "new": pct == float("inf"),
    }


def _by_cause(a: dict, b: dict) -> dict:
    a, b = a or {}, b or {}
    return {c: _row(a.get(c, 0), b.get(c, 0)) for c in CAUSES if a.get(c) or b.get(c)}


def _alive(items):
    return [x for x in items if x.get("alive", True)]


def compare(a: dict, b: dict) -> dict:
    pa, pb = a.get("per_connection", {}), b.get("per_connection", {})
    fa = {f["id"]: f for f in a.get("findings", [])}
    fb = {f["id"]: f for f in b.get("findings", [])}
    per_bytes = _row(pa.get("bytes", 0), pb.get("bytes", 0))
    return {
        "schema": DIFF_SCHEMA,
        "before": {
            "captured_at": a.get("captured_at"),
            "pid": a.get("target", {}).get("pid"),
            "command": a.get("target", {}).get("command"),
        },
        "after": {
            "captured_at": b.get("captured_at"),
            "pid": b.get("target", {}).get("pid"),
            "command": b.get("target", {}).get("command"),
        },
        "totals": {
            "live_bytes": _row(a["totals"].get("live_bytes"), b["totals"].get("live_bytes")),
            "by_cause": _by_cause(a["totals"].get("by_cause"), b["totals"].get("by_cause")),
        },
        "per_connection": {
            "bytes": per_bytes,
            "own_bytes": _row(pa.get("own_bytes"), pb.get("own_bytes")),
            "context_share_bytes": _row(pa.get("context_share_bytes"), pb.get("context_share_bytes")),
            "by_cause": _by_cause(pa.get("by_cause"), pb.get("by_cause")),
        },
        "connections": _row(len(_alive(a.get("connections", []))), len(_alive(b.get("connections", [])))),
        "contexts": _row(len(_alive(a.get("contexts", []))), len(_alive(b.get("contexts", [])))),
        "rss_bytes": _row(a.get("target", {}).get("rss_bytes"), b.get("target", {}).get("rss_bytes")),
        "python_bytes": _row(pa.get("python_bytes"), pb.get("python_bytes")),
        "total_bytes": _row(pa.get("total_bytes"), pb.get("total_bytes")),
        "memory": _memory_parts(a.get("memory"), b.get("memory")),
        "processes": _processes(a.get("processes") or [], b.get("processes") or []),
        "new_findings": [fb[i] for i in fb if i not in fa],
        "resolved_findings": [fa[i] for i in fa if i not in fb],
        "kept_findings": [i for i in fb if i in fa],
    }


def _process_key(p: dict, rank: int):
    return (p.get("role") or "process", rank)


def _ranked(processes: list) -> dict:
    """Processes keyed by (role, rank among that role by connections): pids differ between two
    runs, roles do not (nginx's 'worker' #0 and #1, PostgreSQL's 'backend' #0 … #49)."""
    out, seen = {}, {}
    for p in sorted(processes, key=lambda p: (-(p.get("connections") or 0), p.get("pid") or 0)):
        role = p.get("role") or "process"
        rank = seen.get(role, 0)
        seen[role] = rank + 1
        out[_process_key(p, rank)] = p
    return out


def _processes(a: list, b: list) -> list:
    """One row per process of either tree (matched by role and rank), when either is a tree."""
    if len(a) < 2 and len(b) < 2:
        return []
    ra, rb = _ranked(a), _ranked(b)
    rows = []
    for key in list(ra) + [k for k in rb if k not in ra]:
        pa, pb = ra.get(key) or {}, rb.get(key) or {}
        rows.append(
            {
                "role": key[0],
                "rank": key[1],
                "pid_before": pa.get("pid"),
                "pid_after": pb.get("pid"),
                "connections": _row(pa.get("connections"), pb.get("connections")),
                "live_bytes": _row(pa.get("live_bytes"), pb.get("live_bytes")),
                "bytes_per_connection": _row(
                    (pa.get("per_connection") or {}).get("bytes"), (pb.get("per_connection") or {}).get("bytes")
                ),
            }
        )
    return rows


def per_connection_growth_pct(d: dict):
    """Percent growth of per-connection bytes (inf when the first report had no connections but
    the second has), or None when neither has any."""
    row = d["per_connection"]["bytes"]
    if row["new"]:
        return float("inf")
    return row["pct"] if row["pct"] is not None else None


def _fmt_pct(row) -> str:
    if row["new"]:
        return "new"
    if row["pct"] is None:
        return "-"
    return f"{row['pct']:+.1f}%"


def _fmt_bytes_row(name: str, row: dict) -> str:
    delta = ("+" if row["delta"] >= 0 else "-") + human(abs(row["delta"]))
    return f"  {name:<22} {human(row['before']):>11} -> {human(row['after']):>11}  {delta:>11}  {_fmt_pct(row)}"


def _fmt_count_row(name: str, row: dict) -> str:
    return f"  {name:<22} {row['before']:>11} -> {row['after']:>11}  {row['delta']:>+11}  {_fmt_pct(row)}"


def _memory_parts(a, b) -> dict:
    """{part name: row} of the two reports' RSS explanations (tlsprof/analysis/memory.py), in report order."""
    pa = {p["name"]: p["bytes"] for p in (a or {}).get("parts") or []}
    pb = {p["name"]: p["bytes"] for p in (b or {}).get("parts") or []}
    return {name: _row(pa.get(name, 0), pb.get(name, 0)) for name in list(pa) + [n for n in pb if n not in pa]}


def render_diff(d: dict, fail_pct=None) -> str:
    out = [
        f"tlsprof diff: {d['before']['captured_at']} (pid {d['before']['pid']}) -> "
        f"{d['after']['captured_at']} (pid {d['after']['pid']})",
        "",
    ]
    out.append("Counts")
    out.append(_fmt_count_row("connections", d["connections"]))
    out.append(_fmt_count_row("contexts", d["contexts"]))
    out.append("")
    out.append("Per connection (context share included)")
    out.append(_fmt_bytes_row("bytes", d["per_connection"]["bytes"]))
    out.append(_fmt_bytes_row("own", d["per_connection"]["own_bytes"]))
    out.append(_fmt_bytes_row("context share", d["per_connection"]["context_share_bytes"]))
    for cause, row in d["per_connection"]["by_cause"].items():
        out.append(_fmt_bytes_row(f"  {label(cause)}", row))
    if (d.get("python_bytes") or {}).get("before") or (d.get("python_bytes") or {}).get("after"):
        out.append(_fmt_bytes_row("+ Python side", d["python_bytes"]))
        out.append(_fmt_bytes_row("= total", d["total_bytes"]))
    out.append("")
    out.append("Totals (all live OpenSSL bytes)")
    out.append(_fmt_bytes_row("live bytes", d["totals"]["live_bytes"]))
    for cause, row in d["totals"]["by_cause"].items():
        out.append(_fmt_bytes_row(f"  {label(cause)}", row))
    if d["rss_bytes"]["before"] or d["rss_bytes"]["after"]:
        out.append(_fmt_bytes_row("process RSS", d["rss_bytes"]))
    from tlsprof.model.words import MEMORY_LABELS

    for name, row in (d.get("memory") or {}).items():
        out.append(_fmt_bytes_row(f"  {MEMORY_LABELS.get(name, name)}", row))
    out.append("")
    if d.get("processes"):
        out.append("Processes (matched by role; pid before -> after)")
        for p in d["processes"]:
            name = f"{p['role']} {p['pid_before'] or '-'}->{p['pid_after'] or '-'}"
            out.append(_fmt_count_row(f"{name} conns", p["connections"]))
            out.append(_fmt_bytes_row(f"{name} live", p["live_bytes"]))
        out.append("")
    if d["new_findings"]:
        out.append("New findings")
        for f in d["new_findings"]:
            out.append(f"  [{f['severity']}] {f['id']}: {f['title']}")
    else:
        out.append("New findings: none")
    if d["resolved_findings"]:
        out.append("Gone since the first report: " + ", ".join(f["id"] for f in d["resolved_findings"]))
    if fail_pct is not None:
        growth = per_connection_growth_pct(d)
        shown = "n/a" if growth is None else ("new" if growth == float("inf") else f"{growth:+.1f}%")
        verdict = "FAIL" if growth is not None and growth > fail_pct else "ok"
        out.append("")
        out.append(f"Per-connection growth {shown} (limit +{fail_pct:g}%): {verdict}")
    return "\n".join(out) + "\n"
