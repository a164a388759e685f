"""Text rendering of a report (any valid `tlsprof.report/2` or `/1` dict) with rich.

Reads only the report; strings from the report are never parsed as rich markup. Colour only on a
terminal; laid out for 80 columns.
"""

import os
import sys

from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from tlsprof.analysis import grouping
from tlsprof.model.causes import CAUSES, label
from tlsprof.model.words import MEMORY_LABELS, human_age, human_bytes  # noqa: F401 (others import them here)

TOP_CONTEXTS = 10
TOP_CONNECTIONS = 10
TOP_SITES = 15
MAX_WIDTH = 100


def _pct(part, whole) -> str:
    if not whole:
        return "-"
    return f"{100.0 * part / whole:.1f}%"


def _plural(n, word) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _cell(value) -> Text:
    return Text("-" if value is None else str(value))


def _top_cause(by_cause: dict) -> str:
    best, most = None, 0
    for cause in CAUSES:
        if by_cause.get(cause, 0) > most:
            best, most = cause, by_cause[cause]
    return label(best) if best else "-"


def _short_file(path) -> str:
    if not path:
        return "?"
    while path.startswith("../"):
        path = path[3:]
    if len(path) > 36:
        path = "…" + path[-35:]
    return path


def _table(title: str, *columns) -> Table:
    """Cells never wrap: a folded cell split numbers and addresses over two lines (`127.0.0.1:3528`
    then `8`). A table wider than the terminal is printed at its own width instead (wide mode)."""
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        expand=False,
        show_edge=False,
    )
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)
    return table


def _printer(console):
    """console.print, with tables at their natural width when the terminal is narrower."""

    def out(*items, **kwargs):
        if len(items) == 1 and isinstance(items[0], Table):
            need = console.measure(items[0], options=console.options.update(width=10_000)).maximum
            if need > console.width:
                width = console.width
                console.width = need
                try:
                    console.print(*items, **kwargs)
                finally:
                    console.width = width
                return
        console.print(*items, **kwargs)

    return out


def _snapshot_line(report: dict) -> str:
    from tlsprof.analysis.moments import words

    peak = report.get("peak")
    if not isinstance(peak, dict):
        return "Single snapshot"
    n = peak.get("snapshots")
    of = f" (of {n} snapshots)" if isinstance(n, int) else ""
    said = words(report)
    if said:
        return said[0].upper() + said[1:] + of
    of = f" of {n}" if isinstance(n, int) else ""
    if peak.get("chosen") == "peak":
        at = peak.get("live_bytes_at_peak")
        at = f" ({human_bytes(at)} live)" if at is not None else ""
        return f"Peak snapshot{of}{at}"
    return f"Last snapshot{of}"


def render_text(report: dict, file=None, width=None) -> None:
    """Print the report for a person: headline, causes, contexts, connections, sites, findings.

    Colour only when `file` is a terminal; `width` defaults to the terminal's (80 otherwise), at
    most 100.
    """
    file = sys.stdout if file is None else file
    console = Console(file=file, width=width, highlight=False, emoji=False, markup=False)
    if width is None and console.width > MAX_WIDTH:
        console.width = MAX_WIDTH
    out = _printer(console)

    target = report["target"]
    tool = report["tool"]
    per = report["per_connection"]
    totals = report["totals"]
    n = per["connections"]

    if report.get("partial"):
        out(Text("PARTIAL REPORT: collection did not finish; figures cover only what was seen.", style="bold red"))
    command = " ".join(target.get("command") or []) or "?"
    out(Text(f"{tool['name']} {tool['version']} · pid {target['pid']} ({target['mode']}) · {command}"))
    openssl = target.get("openssl") or "OpenSSL version unknown"
    rss = target.get("rss_bytes")
    rss_text = f" · RSS {human_bytes(rss)}" if rss is not None else ""
    out(Text(f"{openssl}{rss_text}", style="dim"))
    out(Text(_snapshot_line(report), style="bold"))
    out(Text(f"captured {report['captured_at']}", style="dim"))
    out()

    first = f"{_plural(n, 'connection')} · {human_bytes(per['bytes'])} per connection"
    processes = report.get("processes") or []
    if len(processes) > 1:
        holding = sum(1 for p in processes if p.get("connections"))
        first = (
            f"{_plural(n, 'connection')} in {holding} of {len(processes)} processes · "
            f"{human_bytes(per['bytes'])} per connection"
        )
    parts = f"(own {human_bytes(per['own_bytes'])} + context share {human_bytes(per['context_share_bytes'])})"
    if len(first) + 1 + len(parts) <= console.width:
        out(Text(f"{first} {parts}", style="bold"))
    else:
        out(Text(first, style="bold"))
        out(Text(f"  {parts}", style="bold"))
    if per.get("python_bytes") is not None:  # joined by the in-target Python agent (tlsprof/analysis/python_join.py)
        out(
            Text(
                f"  + Python side {human_bytes(per['python_bytes'])} = {human_bytes(per.get('total_bytes'))} "
                f"per connection (native + Python)",
                style="bold",
            )
        )
    largest = ((report.get("memory") or {}).get("per_connection") or {}).get("largest")
    if largest and n:
        out(
            Text(
                f"  largest part: {largest.get('label') or largest.get('name')} "
                f"{human_bytes(largest.get('bytes'))} per connection",
                style="bold",
            )
        )
    live = f"OpenSSL heap live: {human_bytes(totals['live_bytes'])} in {totals['live_blocks']} blocks"
    if totals.get("requested_bytes") is not None:
        live += f" ({human_bytes(totals['requested_bytes'])} requested)"
    if totals.get("untracked_bytes"):
        live += f"; {human_bytes(totals['untracked_bytes'])} untracked"
    out(Text(live))
    process = report.get("process")
    if isinstance(process, dict) and process.get("live_bytes"):
        out(Text(f"Owned by no context or connection: {human_bytes(process['live_bytes'])}"))
    out()

    _render_memory(out, report.get("memory"))
    _render_processes(out, report.get("processes") or [])
    _render_copies(out, report.get("openssl_copies") or [])
    _render_causes(out, per, totals)
    _render_contexts(out, report.get("contexts", []))
    _render_connections(out, report.get("connections", []))
    _render_sites(out, report.get("sites", []))
    _render_python(out, report)
    _render_findings(out, report.get("findings", []))
    notes = report.get("notes") or []
    if notes:
        out(Text("Notes", style="bold"))
        for note in notes:
            out(Text(f"- {note}"))


def process_label(p: dict) -> str:
    """'pid 1234 worker' or 'pid 1234 (nginx)'."""
    name = p.get("role") or os.path.basename((p.get("command") or ["?"])[0].split(" ")[0])
    return f"pid {p.get('pid')} {name}"


def _render_processes(out, processes: list) -> None:
    """One row per process of the tree; with connections first. A single process needs no table."""
    if len(processes) < 2:
        return
    holding = [p for p in processes if p.get("connections")]
    table = _table(
        f"Processes ({len(processes)}; {len(holding)} with connections)",
        ("PID", "right"),
        ("Role", "left"),
        ("Conns", "right"),
        ("Per conn", "right"),
        ("Live", "right"),
        ("Largest cause", "left"),
    )
    for p in sorted(processes, key=lambda p: (-(p.get("connections") or 0), p.get("pid") or 0)):
        per = p.get("per_connection") or {}
        role = p.get("role") or os.path.basename((p.get("command") or ["?"])[0].split(" ")[0])
        table.add_row(
            _cell(p.get("pid")),
            Text(role[:24], overflow="ellipsis", no_wrap=True),
            str(p.get("connections", 0)),
            human_bytes(per.get("bytes")) if p.get("connections") else "-",
            human_bytes(p.get("live_bytes", 0)),
            _top_cause(p.get("by_cause") or {}),
        )
    out(table)
    for p in sorted(holding, key=lambda p: -p["connections"]):
        per = p.get("per_connection") or {}
        causes = sorted(((v, c) for c, v in (per.get("by_cause") or {}).items() if v), reverse=True)[:4]
        if causes:
            out(
                Text(
                    f"  {process_label(p)}: "
                    + ", ".join(f"{label(c)} {human_bytes(v)}" for v, c in causes)
                    + " per connection",
                    style="dim",
                )
            )
    out()


def _render_copies(out, copies: list) -> None:
    """Which OpenSSL copies the target has and how each is seen (only worth a word when static)."""
    if not any(c.get("kind") != "shared" for c in copies):
        return
    out(Text("OpenSSL copies", style="bold"))
    how = {
        "hooks": "hooked entry points: per connection",
        "mem-functions": "its allocator: process-wide",
        "too-late": "NOT tracked (already in use when found)",
        "not-tracked": "NOT tracked (found at attach)",
    }
    for c in copies:
        line = (
            f"- {os.path.basename(c['path'])} ({c['kind']}): {how.get(c['tracking'], c['tracking'])}, "
            f"{human_bytes(c.get('live_bytes', 0))} live"
        )
        if c.get("ownership") == "heap walk":
            line += (
                f"; {c.get('connections', 0)} connections, each with its bytes: ownership from the heap "
                f"walk (measured: walked)"
            )
        est = c.get("estimated_bytes_per_connection")
        if est:
            line += (
                f"; {c.get('connections')} connections (Python objects), ≈ {human_bytes(est['bytes'])} each (estimate)"
            )
        out(Text(line))
    out()


def _render_causes(out, per: dict, totals: dict) -> None:
    by_cause = per.get("by_cause", {})
    total_by_cause = totals.get("by_cause", {})
    whole = sum(by_cause.values())
    causes = [c for c in CAUSES if by_cause.get(c) or total_by_cause.get(c)]
    causes.sort(key=lambda c: (-by_cause.get(c, 0), -total_by_cause.get(c, 0), CAUSES.index(c)))
    table = _table(
        "Bytes per connection by cause",
        ("Cause", "left"),
        ("Per connection", "right"),
        ("Share", "right"),
        ("All live", "right"),
    )
    for cause in causes:
        mine = by_cause.get(cause, 0)
        table.add_row(label(cause), human_bytes(mine), _pct(mine, whole), human_bytes(total_by_cause.get(cause, 0)))
    if not causes:
        table.add_row("(no OpenSSL bytes live)", "", "", "")
    table.add_row(
        Text("total", style="bold"), human_bytes(per["bytes"]), _pct(whole, whole), human_bytes(totals["live_bytes"])
    )
    out(table)
    out()


def _render_memory(out, memory) -> None:
    """The RSS explained: each measured part and its share (tlsprof/analysis/memory.py)."""
    if not isinstance(memory, dict) or not memory.get("parts"):
        return
    rss = memory.get("rss_bytes") or 0
    table = _table(
        f"Memory: RSS {human_bytes(rss)} explained",
        ("Part", "left"),
        ("Bytes", "right"),
        ("Share", "right"),
        ("Measured by", "left"),
    )
    for part in memory["parts"]:
        table.add_row(
            MEMORY_LABELS.get(part["name"], part["name"]),
            human_bytes(part["bytes"]),
            _pct(part["bytes"], rss),
            Text(str(part.get("measured") or ""), style="dim"),
        )
    out(table)
    if memory.get("note"):
        out(Text(f"  {memory['note']}", style="dim"))
    out()


def _render_contexts(out, contexts: list) -> None:
    if not contexts:
        return
    ranked = sorted(contexts, key=lambda c: -c["live_bytes"])
    shown = grouping.groups(ranked, lambda c: grouping.context_key(c, _top_cause))[:TOP_CONTEXTS]
    title = f"Top contexts ({sum(len(m) for _, m in shown)} of {len(contexts)}, alike ones grouped)"
    table = _table(
        title,
        ("Context", "left"),
        ("Conns", "right"),
        ("Live", "right"),
        ("CA store", "right"),
        ("Largest cause", "left"),
        ("Created at", "left"),
    )
    for ctx, members in shown:
        name = grouping.group_id(members)
        if ctx.get("alive") is False:
            name += " (freed)"
        ca = sum(grouping.ca_store_bytes(m) for m in members) / len(members)
        table.add_row(
            _cell(name),
            str(ctx["connections"]),
            human_bytes(grouping.mean(members, "live_bytes")),
            human_bytes(ca),
            _top_cause(ctx["by_cause"]),
            _cell(grouping.created_at(ctx) or "-"),
        )
    out(table)
    out()


def _render_connections(out, connections: list) -> None:
    if not connections:
        return
    ranked = sorted(connections, key=lambda c: -c["live_bytes"])
    tree = any("pid" in c for c in ranked)  # ids "PID:conn-N" are wide: the Ctx column goes (JSON has it)
    shown = grouping.groups(ranked, lambda c: grouping.connection_key(c, _top_cause))[:TOP_CONNECTIONS]
    title = f"Top connections by own bytes ({sum(len(m) for _, m in shown)} of {len(connections)}, alike ones grouped)"
    created = any(grouping.created_at(c) for c in ranked)  # Python targets: the line that made them
    columns = (
        [("Conn", "left")]
        + ([] if tree else [("Ctx", "left")])
        + [("Peer", "left"), ("State", "left"), ("Age", "right"), ("Own", "right"), ("Largest cause", "left")]
        + ([("Created at", "left")] if created else [])
    )
    table = _table(title, *columns)
    for conn, members in shown:
        name = grouping.group_id(members)
        if conn.get("since_attach") is False:
            name += "*"
        ages = [m.get("age_s") for m in members if isinstance(m.get("age_s"), (int, float))]
        if conn.get("age"):
            age = conn["age"]
        elif len(members) > 1 and ages:
            age = f"{human_age(min(ages))}–{human_age(max(ages))}"
        else:
            age = human_age(conn.get("age_s"))
        cells = (
            [_cell(name)]
            + ([] if tree else [_cell(grouping.contexts_text(members))])
            + [
                _cell(grouping.peers_text(members)),
                conn["state"],
                age,
                human_bytes(grouping.mean(members, "live_bytes")),
                _top_cause(conn["by_cause"]),
            ]
            + ([_cell(grouping.created_at(conn) or "-")] if created else [])
        )
        table.add_row(*cells)
    out(table)
    if any(c.get("since_attach") is False and not c.get("walked_bytes") for c in ranked):
        out(Text("* opened before attach: its earlier allocations are not counted", style="dim"))
    elif any(c.get("since_attach") is False for c in ranked):
        out(
            Text(
                "* opened before attach: its bytes from before were found by the heap walk (measured: walked)",
                style="dim",
            )
        )
    out()


def _render_sites(out, sites: list) -> None:
    if not sites:
        return
    ranked = sorted(sites, key=lambda s: -s["live_bytes"])[:TOP_SITES]
    table = _table(
        f"Top allocation sites ({len(ranked)} of {len(sites)})",
        ("Site", "left"),
        ("Cause", "left"),
        ("Live", "right"),
        ("Blocks", "right"),
    )
    for site in ranked:
        where = _short_file(site.get("file"))
        if site.get("line") is not None:
            where += f":{site['line']}"
        table.add_row(_cell(where), label(site["cause"]), human_bytes(site["live_bytes"]), str(site["live_blocks"]))
    out(table)
    out()


def _render_python(out, report: dict) -> None:
    """Who created the top objects and, for leaks, what holds them (from the Python agent)."""
    info = report.get("python")
    if not isinstance(info, dict):
        return
    from tlsprof.analysis.creation import frame_text, user_frame

    out(Text("Python objects", style="bold"))
    if info.get("message"):
        out(Padding(Text(str(info["message"])), (0, 0, 0, 2)))
    items = [
        e
        for e in report.get("contexts", [])[:3] + report.get("connections", [])[:3]
        if isinstance(e.get("python"), dict)
    ]
    items += [
        e
        for e in report.get("contexts", []) + report.get("connections", [])
        if isinstance(e.get("python"), dict) and e["python"].get("leak") and e not in items
    ][:5]
    for e in items:
        py = e["python"]
        line = f"{e['id']}: {py.get('type') or '(no Python object)'}, {human_bytes(py.get('python_bytes'))} Python"
        if py.get("leak"):
            line += f" · LEAK: {py['leak']}"
        out(Padding(Text(line), (0, 0, 0, 2)))
        frame = user_frame(py.get("created_by"))
        if frame:
            out(Padding(Text("created at " + frame_text(frame)), (0, 0, 0, 4)))
        elif py.get("created_by_source"):
            out(Padding(Text(f"created at {py['created_by_source']}", style="dim"), (0, 0, 0, 4)))
        if py.get("referrers"):
            out(Padding(Text("held by " + " <- ".join(py["referrers"])), (0, 0, 0, 4)))
    out()


_SEVERITY_STYLE = {"critical": "bold red", "warning": "bold yellow", "info": "bold cyan"}


def _render_findings(out, findings: list) -> None:
    if not findings:
        out(Text("No findings."))
        out()
        return
    out(Text(f"Findings ({len(findings)})", style="bold"))
    for f in findings:
        head = Text(f"[{f['severity']}] ", style=_SEVERITY_STYLE.get(f["severity"], "bold"))
        head.append(f"{f['title']} ({f['id']})", style="bold")
        if f.get("only_at") == "peak":
            head.append(" · at the peak only", style="bold")
        out(head)
        extras = []
        if f.get("bytes_per_connection") is not None:
            extras.append(f"{human_bytes(f['bytes_per_connection'])} per connection")
        if f.get("saving_bytes"):
            extras.append(f"saving {human_bytes(f['saving_bytes'])}")
        if extras:
            out(Padding(Text(" · ".join(extras)), (0, 0, 0, 2)))
        if f.get("detail"):
            out(Padding(Text(f["detail"]), (0, 0, 0, 2)))
        if f.get("fix"):
            out(Padding(Text("Fix: " + f["fix"]), (0, 0, 0, 2)))
        out()
