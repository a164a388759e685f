"""A report (tlsprof.report/2) as one self-contained HTML page: `tlsprof report FILE --html OUT.html`.

No script and no fetch of any kind: the charts are inline SVG, the style is inline, and a
Content-Security-Policy forbids loading anything, so the page can be mailed or attached to a ticket.
Every string taken from the report goes through `_e` (HTML-escaped, quotes included).
"""

from tlsprof.analysis import grouping
from tlsprof.model.causes import CAUSES, description, label
from tlsprof.render.html_charts import BYTES_COLOUR, COLOURS, _e, _history_chart, _num, _stacked_chart  # noqa: F401
from tlsprof.render.text import MEMORY_LABELS, _top_cause, human_bytes

MAX_CONTEXTS = 100
MAX_CONNECTIONS = 200
MAX_SITES = 50

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff;max-width:1150px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:4px 0}th,td{padding:3px 8px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top;white-space:nowrap}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.w{white-space:normal;min-width:18em}.scroll{overflow-x:auto}
.muted{color:#666}.sev-critical{color:#b00020;font-weight:bold}.sev-warning{color:#a15c00;
font-weight:bold}.sev-info{color:#155}.finding{border-left:4px solid #ccc;padding:4px 12px;margin:10px 0}
.legend span{display:inline-block;margin-right:14px}.sw{display:inline-block;width:12px;height:12px;
margin-right:4px;vertical-align:-1px}code{font-size:13px}svg text{font:12px system-ui,sans-serif;fill:#333}
"""


def _memory_section(report) -> str:
    memory = report.get("memory")
    if not isinstance(memory, dict) or not memory.get("parts"):
        return ""
    rss = memory.get("rss_bytes") or 0
    rows = [
        [
            _e(MEMORY_LABELS.get(p["name"], p["name"])),
            _e(human_bytes(p["bytes"])),
            f"{100.0 * p['bytes'] / rss:.1f}%" if rss else "-",
            _e(p.get("what")),
            _e(p.get("measured")),
        ]
        for p in memory["parts"]
    ]
    per = memory.get("per_connection") or {}
    lines = ""
    if per:
        lines = (
            f"<p>Per connection: {_e(human_bytes(per.get('native_bytes')))} in OpenSSL + "
            f"{_e(human_bytes(per.get('python_bytes')))} on the Python side = "
            f"<b>{_e(human_bytes(per.get('total_bytes')))}</b>"
        )
        largest = per.get("largest")
        if largest:
            lines += (
                f"; the largest part: <b>{_e(largest.get('label') or largest.get('name'))}</b> "
                f"{_e(human_bytes(largest.get('bytes')))}"
            )
        lines += "</p>"
        if per.get("python_parts"):
            lines += _table(
                ["Python object (largest per connection)", "bytes per connection"],
                [
                    [f"<code>{_e(p['holder'])}</code>", _e(human_bytes(p["bytes_per_connection"]))]
                    for p in per["python_parts"]
                ],
                (1,),
            )
    note = f'<p class="muted">{_e(memory["note"])}</p>' if memory.get("note") else ""
    return (
        f"<h2>Memory: RSS {_e(human_bytes(rss))} explained</h2>"
        + lines
        + _table(["part", "bytes", "share", "what", "measured by"], rows, (1, 2))
        + note
    )


def _causes_text(by_cause) -> str:
    items = sorted(((v, c) for c, v in (by_cause or {}).items() if v), key=lambda vc: -vc[0])
    return ", ".join(f"{_e(label(c))} {_e(human_bytes(v))}" for v, c in items[:4]) or "-"


def _table(headers, rows, numeric=()) -> str:
    head = "".join(
        f'<th class="n">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>" for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td class="n">{cell}</td>' if i in numeric else f"<td>{cell}</td>" for i, cell in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _more(total, shown, what) -> str:
    return f'<p class="muted">{total - shown} more {_e(what)} not shown.</p>' if total > shown else ""


def _findings(findings) -> str:
    if not findings:
        return '<p class="muted">No findings.</p>'
    out = []
    for f in findings:
        sev = f.get("severity", "info")
        sev_cls = sev if sev in ("info", "warning", "critical") else "info"
        extra = []
        if f.get("bytes_per_connection") is not None:
            extra.append(f"{_e(human_bytes(f['bytes_per_connection']))} per connection")
        if f.get("saving_bytes") is not None:
            extra.append(f"fixing it frees {_e(human_bytes(f['saving_bytes']))}")
        out.append(
            f'<div class="finding"><div><span class="sev-{sev_cls}">{_e(sev)}</span> '
            f'<b>{_e(f.get("title"))}</b> <code class="muted">{_e(f.get("id"))}</code>'
            f"{' <b>(at the peak only)</b>' if f.get('only_at') == 'peak' else ''}</div>"
            f"<p>{_e(f.get('detail'))}</p><p><b>Fix:</b> {_e(f.get('fix'))}</p>"
            f'<p class="muted">{"; ".join(extra)}</p></div>'
        )
    return "".join(out)


def render_html(report) -> str:
    target = report.get("target") or {}
    totals = report.get("totals") or {}
    per = report.get("per_connection") or {}
    contexts = report.get("contexts") or []
    conns = report.get("connections") or []
    sites = report.get("sites") or []
    command = " ".join(str(a) for a in target.get("command") or []) or "(unknown command)"
    peak = report.get("peak") or {}

    summary = _table(
        ["", ""],
        [
            ["target", f"pid {_e(target.get('pid'))}, <code>{_e(command)}</code> ({_e(target.get('mode'))})"],
            ["OpenSSL", _e(target.get("openssl") or "unknown")],
            [
                "captured",
                f"{_e(report.get('captured_at'))} ({_e(peak.get('chosen', 'snapshot'))} of "
                f"{_e(peak.get('snapshots', '?'))} snapshots)" + (" — <b>partial</b>" if report.get("partial") else ""),
            ],
            [
                "live OpenSSL bytes",
                f"{_e(human_bytes(totals.get('live_bytes')))} in {_num(totals.get('live_blocks'))} "
                f"blocks; untracked {_e(human_bytes(totals.get('untracked_bytes', 0)))}",
            ],
            ["target RSS", _e(human_bytes(target.get("rss_bytes")))],
            [
                "per connection",
                f"{_e(human_bytes(per.get('bytes')))} over {_num(per.get('connections'))} connections "
                f"(own {_e(human_bytes(per.get('own_bytes')))} + context share "
                f"{_e(human_bytes(per.get('context_share_bytes')))})"
                + (
                    f" + Python side {_e(human_bytes(per.get('python_bytes')))} = "
                    f"<b>{_e(human_bytes(per.get('total_bytes')))}</b>"
                    if per.get("python_bytes") is not None
                    else ""
                ),
            ],
        ],
    )
    from tlsprof.analysis.moments import words

    moment = words(report)
    if moment:
        summary = f'<p class="moment"><b>{_e(moment[0].upper() + moment[1:])}</b></p>' + summary
    notes = "".join(f"<li>{_e(n)}</li>" for n in report.get("notes") or [])
    processes = report.get("processes") or []
    proc_rows = [
        [
            _e(p.get("pid")),
            _e(p.get("role") or "-"),
            f"<code>{_e(' '.join(p.get('command') or []))}</code>",
            _num(p.get("connections")),
            _e(human_bytes((p.get("per_connection") or {}).get("bytes"))) if p.get("connections") else "-",
            _e(human_bytes(p.get("live_bytes"))),
            _causes_text(
                (p.get("per_connection") or {}).get("by_cause") if p.get("connections") else p.get("by_cause")
            ),
        ]
        for p in sorted(processes, key=lambda p: (-(p.get("connections") or 0), p.get("pid") or 0))
    ]
    proc_section = (
        ""
        if len(processes) < 2
        else "".join(
            [
                f"<h2>Processes ({len(processes)}; {sum(1 for p in processes if p.get('connections'))} with connections)</h2>",
                '<p class="muted">The headline is over every connection of every process; causes are per connection '
                "for processes with connections, else the process's live bytes.</p>",
                _table(
                    ["pid", "role", "command", "connections", "per connection", "live bytes", "causes"],
                    proc_rows,
                    (3, 4, 5),
                ),
            ]
        )
    )

    ctx_groups = grouping.groups(contexts, lambda c: grouping.context_key(c, _top_cause))
    ctx_rows = [
        [
            _e(grouping.group_id(m)),
            _num(c.get("connections")),
            _e(human_bytes(grouping.mean(m, "live_bytes"))),
            _e(human_bytes(sum(grouping.ca_store_bytes(x) for x in m) / len(m))),
            _causes_text(c.get("by_cause")),
            _e(grouping.created_at(c) or "-"),
            "yes" if c.get("alive", True) is not False else "freed",
        ]
        for c, m in ctx_groups[:MAX_CONTEXTS]
    ]
    conn_groups = grouping.groups(conns, lambda c: grouping.connection_key(c, _top_cause))
    conn_rows = []
    for c, m in conn_groups[:MAX_CONNECTIONS]:
        ages = [x["age_s"] for x in m if isinstance(x.get("age_s"), (int, float))]
        age = c.get("age") or (
            "?"
            if not ages
            else f"{min(ages):.1f} s"
            if len(ages) == 1 or min(ages) == max(ages)
            else f"{min(ages):.1f}–{max(ages):.1f} s"
        )
        conn_rows.append(
            [
                _e(grouping.group_id(m)),
                _e(grouping.contexts_text(m)),
                _e(grouping.peers_text(m)),
                _e(c.get("state")),
                _e(age),
                _e(human_bytes(grouping.mean(m, "live_bytes"))),
                _e(human_bytes(grouping.mean(m, "context_share_bytes"))) if "context_share_bytes" in c else "-",
                _causes_text(c.get("by_cause")),
            ]
        )
    site_rows = [
        [
            f"<code>{_e(s.get('file'))}:{_e(s.get('line'))}</code>",
            _e(s.get("library") or ""),
            _e(label(s.get("cause"))),
            _e(human_bytes(s.get("live_bytes"))),
            _num(s.get("live_blocks")),
        ]
        for s in sites[:MAX_SITES]
    ]
    cause_rows = [
        [
            f'<i class="sw" style="background:{COLOURS[c]}"></i>{_e(label(c))}',
            _e(human_bytes((totals.get("by_cause") or {}).get(c, 0))),
            _e(human_bytes((per.get("by_cause") or {}).get(c, 0))),
            _e(description(c)),
        ]
        for c in CAUSES
        if (totals.get("by_cause") or {}).get(c) or (per.get("by_cause") or {}).get(c)
    ]

    title = f"tlsprof report — pid {target.get('pid')}"
    return "".join(
        [
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
            f"<h1>{_e(title)}</h1>",
            summary,
            f"<ul>{notes}</ul>" if notes else "",
            proc_section,
            "<h2>Bytes per connection by cause</h2>",
            '<p class="muted">Each bar: a connection\'s own bytes plus its share of its context, by cause.</p>',
            _stacked_chart(report),
            "<h2>Findings</h2>",
            _findings(report.get("findings") or []),
            "<h2>History</h2>",
            _history_chart(report.get("history") or [], report.get("moments")),
            "<h2>By cause</h2>",
            _table(["cause", "total", "per connection", "what it is"], cause_rows, (1, 2)),
            _memory_section(report),
            f"<h2>Contexts ({len(contexts)}, alike ones grouped)</h2>",
            '<div class="scroll">',
            _table(
                ["id", "connections", "live bytes", "CA store", "largest causes", "created at", "alive"],
                ctx_rows,
                (1, 2, 3),
            ),
            "</div>",
            _more(len(ctx_groups), MAX_CONTEXTS, "groups of contexts"),
            f"<h2>Connections ({len(conns)}, alike ones grouped)</h2>",
            '<div class="scroll">',
            _table(
                ["id", "context", "peer", "state", "age", "own bytes", "context share", "largest causes"],
                conn_rows,
                (4, 5, 6),
            ),
            "</div>",
            _more(len(conn_groups), MAX_CONNECTIONS, "groups of connections"),
            f"<h2>Sites ({len(sites)})</h2>",
            _table(["site", "library", "cause", "live bytes", "blocks"], site_rows, (3, 4)),
            _more(len(sites), MAX_SITES, "sites"),
            f'<p class="muted">{_e((report.get("tool") or {}).get("name", "tlsprof"))} '
            f"{_e((report.get('tool') or {}).get('version', ''))}, schema {_e(report.get('schema'))}</p>",
            "</body></html>\n",
        ]
    )


def write_html(report, path) -> None:
    """Write the page atomically (temp file in the same directory, then rename)."""
    import os
    import tempfile

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tlsprof-", suffix=".html", dir=directory)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render_html(report))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
