"""The inline SVG charts of the HTML report (tlsprof/render/html.py): bytes by cause per context and
connection, and the history of bytes and connections with the report's moments marked. Every string
taken from the report goes through `_e`."""

import html

from tlsprof.model.causes import CAUSES, label
from tlsprof.render.text import human_bytes

# One colour per cause, in CAUSES order (colour-blind-friendly Tableau 10). Tests look for these.
COLOURS = {
    "ca_store": "#4e79a7",
    "own_certificate": "#f28e2b",
    "peer_certificate": "#e15759",
    "record_buffers": "#76b7b2",
    "compression": "#59a14f",
    "handshake": "#edc948",
    "session": "#b07aa1",
    "cipher_state": "#ff9da7",
    "bio": "#9c755f",
    "connection": "#86bcb6",
    "context": "#d4a6c8",
    "thread_state": "#fabfd2",
    "library": "#79706e",
    "other": "#bab0ac",
}
assert set(COLOURS) == set(CAUSES)
BYTES_COLOUR = "#4e79a7"
CONNS_COLOUR = "#e15759"

MAX_BARS = 30


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def _bar_rows(report):
    """(label, tooltip, {cause: bytes}) per bar: the mean, then the largest connections with their
    context share split by the context's causes."""
    per = report.get("per_connection") or {}
    conns = report.get("connections") or []
    rows = []
    if not conns:
        totals = report.get("totals") or {}
        rows.append(
            ("all live bytes", "every live OpenSSL byte (no live connection)", dict(totals.get("by_cause") or {}))
        )
        return rows, 0
    rows.append(
        (
            "mean per connection",
            f"mean over {per.get('connections', len(conns))} live connections",
            dict(per.get("by_cause") or {}),
        )
    )
    contexts = {c.get("id"): c for c in report.get("contexts") or []}

    def stacked(conn):
        parts = {k: float(v) for k, v in (conn.get("by_cause") or {}).items()}
        ctx = contexts.get(conn.get("context"))
        if ctx and ctx.get("connections"):
            n = ctx["connections"]
            for k, v in (ctx.get("by_cause") or {}).items():
                parts[k] = parts.get(k, 0.0) + float(v) / n
        return parts

    bars = sorted(((stacked(c), c) for c in conns), key=lambda pc: -sum(pc[0].values()))
    for parts, c in bars[:MAX_BARS]:
        tip = f"{c.get('id')} (context {c.get('context')}, {c.get('state')}, peer {c.get('peer') or '-'})"
        rows.append((str(c.get("id")), tip, parts))
    return rows, max(0, len(bars) - MAX_BARS)


def _stacked_chart(report) -> str:
    rows, hidden = _bar_rows(report)
    width, left, right, row_h, gap = 1100, 170, 90, 20, 6
    top = 8
    scale_max = max([sum(parts.values()) for _, _, parts in rows] + [1])
    plot_w = width - left - right
    height = top + len(rows) * (row_h + gap) + 10
    out = [
        f'<svg id="per-connection-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" role="img" aria-label="bytes per connection by cause">'
    ]
    for i, (name, tip, parts) in enumerate(rows):
        y = top + i * (row_h + gap)
        out.append(f'<text x="{left - 8}" y="{y + row_h - 5}" text-anchor="end">{_e(name)}</text>')
        x = float(left)
        total = sum(parts.values())
        for cause in CAUSES:
            v = parts.get(cause, 0)
            if not v:
                continue
            w = plot_w * v / scale_max
            out.append(
                f'<rect class="seg" data-cause="{cause}" x="{x:.2f}" y="{y}" width="{max(w, 0.5):.2f}" '
                f'height="{row_h}" fill="{COLOURS[cause]}"><title>{_e(tip)}: {_e(label(cause))} '
                f"{_e(human_bytes(v))}</title></rect>"
            )
            x += w
        out.append(f'<text x="{x + 6:.2f}" y="{y + row_h - 5}">{_e(human_bytes(total))}</text>')
    out.append("</svg>")
    legend = "".join(f'<span><i class="sw" style="background:{COLOURS[c]}"></i>{_e(label(c))}</span>' for c in CAUSES)
    more = f'<p class="muted">{hidden} smaller connections not drawn.</p>' if hidden else ""
    return "".join(out) + f'<div class="legend">{legend}</div>' + more


def _moment_marks(moments, t0, span, left, pw, top, ph) -> str:
    """A labelled vertical line at each moment the report keeps (steady state, peak, last)."""
    out = []
    for i, name in enumerate(("steady", "peak", "last")):
        m = (moments or {}).get(name)
        if not isinstance(m, dict) or not isinstance(m.get("t"), (int, float)):
            continue
        x = left + pw * min(max((m["t"] - t0) / span, 0), 1)
        out.append(
            f'<line class="moment-{name}" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" '
            f'stroke="#555" stroke-dasharray="2 2"/><text x="{x + 3:.1f}" y="{top + 12 + 12 * i}" '
            f'font-size="11">{_e(name)}</text>'
        )
    return "".join(out)


def _history_chart(history, moments=None) -> str:
    """Live OpenSSL bytes over time, stacked by cause where the history has them (left axis, blue
    labels), and the connection count as a dashed red line (right axis, red labels)."""
    pts = [h for h in history if isinstance(h, dict) and h.get("t") is not None]
    if len(pts) < 2:
        return '<p class="muted">This report carries no history (fewer than two snapshots).</p>'
    width, height, left, right, top, bottom = 1100, 260, 90, 90, 12, 30
    pw, ph = width - left - right, height - top - bottom
    t0, t1 = pts[0]["t"], pts[-1]["t"]
    span = (t1 - t0) or 1
    bmax = max(max(h.get("live_bytes", 0) for h in pts), 1)
    cmax = max(max(h.get("connections", 0) for h in pts), 1)

    def x(h):
        return left + pw * (h["t"] - t0) / span

    def y(v, vmax):
        return top + ph - ph * v / vmax

    def line(key, vmax):
        return " ".join(f"{x(h):.1f},{y(h.get(key, 0), vmax):.1f}" for h in pts)

    layers = []
    if all(isinstance(h.get("by_cause"), dict) for h in pts):
        below = [0.0] * len(pts)
        for cause in CAUSES:
            values = [float(h["by_cause"].get(cause, 0)) for h in pts]
            if not any(values):
                continue
            above = [b + v for b, v in zip(below, values)]
            upper = [f"{x(h):.1f},{y(a, bmax):.1f}" for h, a in zip(pts, above)]
            lower = [f"{x(h):.1f},{y(b, bmax):.1f}" for h, b in reversed(list(zip(pts, below)))]
            layers.append(
                f'<polygon class="history-cause" data-cause="{cause}" points="{" ".join(upper + lower)}" '
                f'fill="{COLOURS[cause]}" fill-opacity="0.85"><title>{_e(label(cause))}</title></polygon>'
            )
            below = above
        bytes_line = ""
    else:  # a report from before histories carried causes
        bytes_line = (
            f'<polyline points="{line("live_bytes", bmax)}" fill="none" stroke="{BYTES_COLOUR}" stroke-width="2"/>'
        )
    legend = (
        '<div class="legend">'
        + (
            f"<span>areas: live OpenSSL bytes by cause (left axis, "
            f'<b style="color:{BYTES_COLOUR}">blue</b> labels)</span>'
            if layers
            else f'<span><i class="sw" style="background:{BYTES_COLOUR}"></i>live OpenSSL bytes (left axis)</span>'
        )
        + f'<span><i class="sw" style="background:{CONNS_COLOUR}"></i>connections, dashed (right axis, '
        f'<b style="color:{CONNS_COLOUR}">red</b> labels)</span></div>'
    )
    return "".join(
        [
            f'<svg id="history-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'role="img" aria-label="live bytes by cause and connections over time">',
            f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>',
            *layers,
            bytes_line,
            f'<polyline points="{line("connections", cmax)}" fill="none" stroke="{CONNS_COLOUR}" '
            f'stroke-width="2.5" stroke-dasharray="6 3"/>',
            f'<text x="{left - 6}" y="{top + 10}" text-anchor="end" fill="{BYTES_COLOUR}">{_e(human_bytes(bmax))}</text>',
            f'<text x="{left - 6}" y="{top + ph}" text-anchor="end" fill="{BYTES_COLOUR}">0 B</text>',
            f'<text x="{left - 6}" y="{top + ph / 2:.0f}" text-anchor="end" fill="{BYTES_COLOUR}">bytes</text>',
            f'<text x="{left + pw + 6}" y="{top + 10}" fill="{CONNS_COLOUR}">{_num(cmax)} conns</text>',
            f'<text x="{left + pw + 6}" y="{top + ph}" fill="{CONNS_COLOUR}">0 conns</text>',
            f'<text x="{left}" y="{height - 8}">{t0:.1f} s</text>',
            f'<text x="{left + pw}" y="{height - 8}" text-anchor="end">{t1:.1f} s</text>',
            _moment_marks(moments, t0, span, left, pw, top, ph),
            "</svg>",
            legend,
        ]
    )
