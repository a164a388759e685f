"""The live view's screens: help, quit, one connection's detail (its drill-down comes from the
report source)."""

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Static

from tlsprof.model.causes import CAUSES, label
from tlsprof.model.words import human_age, human_bytes
from tlsprof.render.live.rows import PAGE_SIZE, TOP_SITES, ViewData


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "close")]

    TEXT = """tlsprof live view — keys

  1 2 3        overview · connections · contexts (or Tab / click)
  o            sort by the next column (or click a header); r reverses
  /            filter by id, peer or cause (Enter applies; empty clears)
  [  ]         previous / next page (a table holds at most {page} rows)
  Enter        drill into the connection under the cursor; Esc goes back
  p            switch process: the tree's total (default), then each
               process of the tree, with connections first
  s            save a report of the newest snapshot now
  q            quit (attach: quit and detach; run: close the view, keep
               profiling or terminate the target — it asks)
  ?            this help

Bytes are heap footprint (usable size + malloc header). A connection's
bytes = its own + its share of its context (context bytes / connections
sharing it). A * after an id: opened before attach, undercounted.
"""

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static(self.TEXT.format(page=PAGE_SIZE))


class QuitScreen(ModalScreen):
    """Run mode, target still running: close the view and keep profiling, or terminate it."""

    BINDINGS = [
        Binding("w", "choose('wait')", "keep profiling"),
        Binding("t", "choose('terminate')", "terminate target"),
        Binding("escape,n", "choose(None)", "stay"),
    ]

    def __init__(self, pid: int):
        super().__init__()
        self.pid = pid

    def compose(self) -> ComposeResult:
        yield Static(
            f"pid {self.pid} is still running.\n\n"
            f"  w    close the view and keep profiling until it exits\n"
            f"       (the report is written then; Ctrl-C stops it)\n"
            f"  t    terminate it now (SIGTERM), then write the report\n"
            f"  Esc  stay in the view",
            id="quit-box",
        )

    def action_choose(self, choice):
        self.dismiss(choice)


class ConnectionScreen(Screen):
    """Drill-down on one connection; follows the newest snapshot while the connection lives."""

    BINDINGS = [
        Binding("escape,backspace,left", "app.pop_screen", "back"),
        Binding("s", "app.save", "save"),
        Binding("q", "app.quit_view", "quit"),
        Binding("question_mark", "app.help", "help"),
    ]

    def __init__(self, conn_id, data: ViewData):
        super().__init__()
        self.conn_id = conn_id
        self.last_conn = None
        self.closed = False
        self.data = data
        self.sites = None  # this connection's call sites, asked of the shim off the UI thread

    def compose(self) -> ComposeResult:
        yield Static(id="detail-head")
        with VerticalScroll(id="detail-body"):
            yield Static(id="detail")
        yield Footer()

    def on_mount(self):
        self.show(self.data)
        self.run_worker(self._fetch_sites, thread=True, exclusive=True)

    def _fetch_sites(self):
        """One OWNER request to the shim: this connection's live blocks per call site."""
        try:
            conn = self.data.conns.get(self.conn_id) or {}
            sites = self.app.source.connection_sites(conn.get("pid", self.data.pid_view), self.conn_id)
        except Exception:  # the target went away, or no snapshot yet: keep the process-wide view
            return
        if sites is not None:
            self.app.call_from_thread(self._got_sites, sites)

    def _got_sites(self, sites):
        self.sites = sites
        self.show(self.data)

    def show(self, data: ViewData):
        self.data = data
        conn = data.conns.get(self.conn_id)
        if conn is None:
            self.closed = True
            conn = self.last_conn
        else:
            self.last_conn = conn
        head = self.query_one("#detail-head", Static)
        body = self.query_one("#detail", Static)
        if conn is None:
            head.update(Text(f"{self.conn_id}: not in the newest snapshot", style="bold"))
            body.update("")
            return
        head.update(render_connection_head(conn, self.closed))
        body.update(render_connection_detail(conn, data, self.sites))


def _where(site: dict) -> str:
    f = site.get("file") or "?"
    while f.startswith("../"):
        f = f[3:]
    return f + (f":{site['line']}" if site.get("line") is not None else "")


def render_connection_head(conn: dict, closed: bool) -> Text:
    t = Text(f"{conn['id']}", style="bold")
    t.append(
        f" · peer {conn.get('peer') or '-'} · fd {conn.get('fd') if conn.get('fd') is not None else '-'}"
        f" · {conn.get('state')} · age {human_age(conn.get('age_s'))}"
    )
    if closed:
        t.append("\nclosed: gone from the newest snapshot; this is its last data", style="bold yellow")
    return t


def render_connection_detail(conn: dict, data: ViewData, own_sites=None):
    parts = []
    own = conn.get("live_bytes", 0)
    share = conn.get("context_share_bytes", 0) or 0
    ctx = data.ctxs.get(conn.get("context"))
    parts.append(
        Text(f"{human_bytes(own + share)} = own {human_bytes(own)} + context share {human_bytes(share)}", style="bold")
    )
    share_cause = {}
    if ctx is not None:
        n = max(1, ctx.get("connections", 1))
        share_cause = {k: v / n for k, v in (ctx.get("by_cause") or {}).items()}
        parts.append(
            Text(
                f"context {ctx['id']}: shared by {ctx.get('connections', 0)} connection(s), "
                f"{human_bytes(ctx.get('live_bytes', 0))} live, CA store "
                f"{human_bytes(ctx.get('ca_store_bytes', 0))}"
            )
        )
    else:
        parts.append(Text(f"context {conn.get('context') or 'unknown'}"))
    if conn.get("age_s") is None:  # the contract: age_s is null when it predates attach
        parts.append(Text("opened before attach: its earlier allocations are not counted", style="yellow"))
    parts.append(Text(""))
    own_cause = conn.get("by_cause") or {}
    table = Table(title="By cause", title_justify="left", title_style="bold", box=None, pad_edge=False)
    for name, justify in (("Cause", "left"), ("Own", "right"), ("Ctx share", "right"), ("Total", "right")):
        table.add_column(name, justify=justify)
    causes = [c for c in CAUSES if own_cause.get(c) or share_cause.get(c)]
    causes.sort(key=lambda c: -(own_cause.get(c, 0) + share_cause.get(c, 0)))
    for c in causes:
        o, s = own_cause.get(c, 0), share_cause.get(c, 0)
        table.add_row(label(c), human_bytes(o), human_bytes(s), human_bytes(o + s))
    if not causes:
        table.add_row("(nothing live)", "", "", "")
    parts.append(table)
    parts.append(Text(""))
    held = set(causes)
    if own_sites is not None:
        st = Table(
            title="Call sites of this connection's own blocks (counts exact; bytes ≈ count × "
            "the site's mean block size)",
            title_justify="left",
            title_style="bold",
            box=None,
            pad_edge=False,
        )
        for name, justify in (("Site", "left"), ("Cause", "left"), ("Blocks", "right"), ("≈ Bytes", "right")):
            st.add_column(name, justify=justify)
        for s in own_sites[:TOP_SITES]:
            st.add_row(Text(_where(s)), label(s.get("cause")), str(s["blocks"]), "≈ " + human_bytes(s["approx_bytes"]))
        if not own_sites:
            st.add_row("(no live blocks of its own)", "", "", "")
    else:
        sites = [s for s in data.report.get("sites", []) if s.get("cause") in held][:TOP_SITES]
        st = Table(
            title="Top call sites of these causes (process-wide)",
            title_justify="left",
            title_style="bold",
            box=None,
            pad_edge=False,
        )
        for name, justify in (("Site", "left"), ("Cause", "left"), ("Live", "right")):
            st.add_column(name, justify=justify)
        for s in sites:
            st.add_row(Text(_where(s)), label(s.get("cause")), human_bytes(s.get("live_bytes", 0)))
        if not sites:
            st.add_row("(none)", "", "")
    parts.append(st)
    py = conn.get("python")
    if isinstance(py, dict):
        parts.append(Text(""))
        parts.append(Text("Python", style="bold"))
        line = Text(f"object: {py.get('type') or '?'}")
        if py.get("python_bytes") is not None:
            line.append(f" · Python-side bytes {human_bytes(py['python_bytes'])}")
        parts.append(line)
        frames = py.get("created_by") or []
        if frames:
            parts.append(Text("created by:"))
            for fr in frames:
                if isinstance(fr, dict):
                    where = f"{fr.get('file') or fr.get('filename') or '?'}:{fr.get('line') or fr.get('lineno') or '?'}"
                    fn = fr.get("function") or fr.get("name")
                    parts.append(Text(f"  {where}" + (f" in {fn}" if fn else "")))
                else:
                    parts.append(Text(f"  {fr}"))
        refs = py.get("referrers") or []
        if refs:
            parts.append(Text("referrers:"))
            for r in refs[:10]:
                parts.append(Text(f"  {r if not isinstance(r, dict) else ', '.join(f'{k}={v}' for k, v in r.items())}"))
    return Group(*parts)


def render_findings(findings):
    if not findings:
        return Text("Findings: none so far", style="dim")
    style = {"critical": "bold red", "warning": "bold yellow", "info": "bold cyan"}
    parts = [Text(f"Findings ({len(findings)})", style="bold")]
    for f in findings:
        t = Text(f"[{f.get('severity')}] ", style=style.get(f.get("severity"), "bold"))
        t.append(str(f.get("title", "")), style="bold")
        if f.get("bytes_per_connection") is not None:
            t.append(f" · {human_bytes(f['bytes_per_connection'])}/conn")
        if f.get("saving_bytes"):
            t.append(f" · saving {human_bytes(f['saving_bytes'])}")
        parts.append(t)
        if f.get("fix"):
            parts.append(Text("  Fix: " + str(f["fix"]), style="dim"))
    return Group(*parts)


def _uptime(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
