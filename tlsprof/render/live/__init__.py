"""The interactive live view (`tlsprof run --live`, `tlsprof attach PID --live`), built on Textual.

Threads: a poller thread takes a snapshot every `args.interval` seconds (`Session.poll()`), builds
the report (`Session.latest_report()`) and precomputes the table rows; it hands the result to the
UI with `post_message` (thread-safe, never waits for the UI). The UI thread only sorts, filters and
shows one page of rows, so neither a slow target nor 10,000 connections block it.

The view reads only the report (schema tlsprof.report/1), like every other renderer.

Quitting (`q`):
- attach mode (target given as a pid): the view closes at once; the caller detaches.
- run mode, target still running: a small dialog offers `w` (close the view, keep profiling until
  the target exits; the report is written then) or `t` (send SIGTERM to the target, then the same).
- the target has exited: the view closes; `run` writes the report as usual.
See docs/live-view.md.
"""
import datetime
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Input, Static, TabbedContent, TabPane

from tlsprof.collect import client
from tlsprof.model.causes import CAUSES, label
from tlsprof.render.text import MEMORY_LABELS, human_age, human_bytes

PAGE_SIZE = 200           # rows a table holds at once: the rest is paged ([ and ])
TREND_WINDOW_S = 30.0     # the per-connection trend compares with the value this long ago
SPARK = "▁▂▃▄▅▆▇█"
TOP_SITES = 8


# --- the target: a Popen (run) or a pid (attach) --------------------------------------------------

class Target:
    """What the view watches: `subprocess.Popen` (run mode, we are its parent and know its exit
    status) or a pid (attach mode; an optional `is_alive()` callable overrides the check)."""

    def __init__(self, target, is_alive=None):
        self.proc = target if isinstance(target, subprocess.Popen) else None
        self.pid = self.proc.pid if self.proc is not None else int(target)
        self._is_alive = is_alive
        self._psutil = None
        self.exited_at = None

    @property
    def owned(self) -> bool:
        return self.proc is not None

    def returncode(self):
        """Popen.returncode semantics; None while running or when unknown (not our child)."""
        if self.proc is not None:
            return self.proc.poll()
        return None

    def alive(self) -> bool:
        if self.proc is not None:
            alive = self.proc.poll() is None
        elif self._is_alive is not None:
            alive = bool(self._is_alive())
        else:
            try:
                if self._psutil is None:
                    self._psutil = psutil.Process(self.pid)
                alive = self._psutil.is_running() and self._psutil.status() != psutil.STATUS_ZOMBIE
            except psutil.Error:
                alive = False
        if not alive and self.exited_at is None:
            self.exited_at = time.time()
        return alive

    def terminate(self):
        try:
            if self.proc is not None:
                self.proc.terminate()
            else:
                os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


# --- data prepared off the UI thread --------------------------------------------------------------

def _top_cause(by_cause: dict):
    best, most = None, 0
    for cause in CAUSES:
        v = by_cause.get(cause, 0)
        if v > most:
            best, most = cause, v
    return best


def _serial(ident):
    """Sort key of an id such as "conn-12": numeric part first."""
    if isinstance(ident, int):
        return (0, ident, "")
    s = str(ident)
    tail = s.rsplit("-", 1)[-1]
    return (0, int(tail), s) if tail.isdigit() else (1, 0, s)


_STATE_SHORT = {"established": "estab", "handshake": "hshake", "shutdown": "shut"}


class ConnRow:
    """One connection as the table needs it (built in the poller thread)."""
    __slots__ = ("id", "peer", "fd", "state", "age", "bytes", "top", "causes", "search")

    def __init__(self, c: dict):
        self.id = c["id"]
        self.peer = c.get("peer") or ""
        self.fd = c.get("fd")
        self.state = c.get("state") or "?"
        self.age = c.get("age_s")
        self.bytes = (c.get("live_bytes") or 0) + (c.get("context_share_bytes") or 0)
        self.top = _top_cause(c.get("by_cause") or {})
        self.causes = {k for k, v in (c.get("by_cause") or {}).items() if v}
        self.search = " ".join([str(self.id), self.peer, *self.causes,
                                *(label(k) for k in self.causes)]).lower()

    def cells(self):
        star = "*" if self.age is None else ""
        return (Text(f"{self.id}{star}"), Text(self.peer or "-"), "-" if self.fd is None else str(self.fd),
                _STATE_SHORT.get(self.state, self.state), human_age(self.age),
                Text(human_bytes(self.bytes), justify="right"), label(self.top) if self.top else "-")


class CtxRow:
    __slots__ = ("id", "conns", "bytes", "ca", "top", "alive", "search")

    def __init__(self, c: dict):
        self.id = c["id"]
        self.conns = c.get("connections", 0)
        self.bytes = c.get("live_bytes", 0)
        self.ca = c.get("ca_store_bytes", (c.get("by_cause") or {}).get("ca_store", 0))
        self.top = _top_cause(c.get("by_cause") or {})
        self.alive = c.get("alive", True)
        self.search = " ".join([str(self.id), *(c.get("by_cause") or {})]).lower()

    def cells(self):
        name = str(self.id) + ("" if self.alive is not False else " (freed)")
        return (Text(name), str(self.conns), Text(human_bytes(self.bytes), justify="right"),
                Text(human_bytes(self.ca), justify="right"), label(self.top) if self.top else "-")


CONN_COLUMNS = [  # (label, key, sort key on ConnRow, descending first)
    ("Id", "id", lambda r: _serial(r.id), False),
    ("Peer", "peer", lambda r: r.peer, False),
    ("Fd", "fd", lambda r: -1 if r.fd is None else r.fd, False),
    ("State", "state", lambda r: r.state, False),
    ("Age", "age", lambda r: -1 if r.age is None else r.age, True),
    ("Bytes", "bytes", lambda r: r.bytes, True),
    ("Top cause", "top", lambda r: label(r.top) if r.top else "", False),
]
CTX_COLUMNS = [
    ("Id", "id", lambda r: _serial(r.id), False),
    ("Conns", "conns", lambda r: r.conns, True),
    ("Bytes", "bytes", lambda r: r.bytes, True),
    ("CA store", "ca", lambda r: r.ca, True),
    ("Top cause", "top", lambda r: label(r.top) if r.top else "", False),
]


class ViewData:
    """A report and everything derived from it that the UI shows."""

    def __init__(self, report: dict, history, taken_at: float, pid_view=None):
        self.report = report
        self.pid_view = pid_view  # None: the whole tree; else the one process shown
        self.history = list(history or [])
        self.taken_at = taken_at
        self.conn_rows = [ConnRow(c) for c in report.get("connections", [])]
        self.ctx_rows = [CtxRow(c) for c in report.get("contexts", [])]
        self.conns = {c["id"]: c for c in report.get("connections", [])}
        self.ctxs = {c["id"]: c for c in report.get("contexts", [])}


class Poller(threading.Thread):
    """Polls the session every `interval` s and posts ViewData/TargetExited to the app."""

    def __init__(self, app, session, target: Target, interval: float):
        super().__init__(name="tlsprof-live-poller", daemon=True)
        self.app, self.session, self.target, self.interval = app, session, target, interval
        self.stop_event = threading.Event()
        self.wake = threading.Event()

    def run(self):
        first = True
        while not self.stop_event.is_set():
            if not self.target.alive():
                self.app.post_message(TargetExited(self.target.returncode()))
                return
            try:
                snap = self.session.poll()
                pid = self.app.process_pid
                report = self.session.latest_report(pid=pid) if snap is not None else None
                if report is not None:
                    self.app.post_message(NewData(ViewData(report, self.session.history, time.time(), pid)))
                    first = False
            except Exception as exc:  # keep the view alive; show what went wrong
                self.app.post_message(PollError(f"{type(exc).__name__}: {exc}"))
            delay = min(0.1, self.interval) if first else self.interval
            self.wake.wait(delay)
            self.wake.clear()

    def stop(self):
        self.stop_event.set()
        self.wake.set()


class NewData(Message):
    def __init__(self, data: ViewData):
        super().__init__()
        self.data = data


class TargetExited(Message):
    def __init__(self, returncode):
        super().__init__()
        self.returncode = returncode


class PollError(Message):
    def __init__(self, text: str):
        super().__init__()
        self.text = text


# --- rich renderables -----------------------------------------------------------------------------

def sparkline(values, width: int) -> str:
    values = list(values)[-width:]
    if not values:
        return ""
    top = max(values)
    if top <= 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))] for v in values)


class CauseBars:
    """One bar per cause: bytes per connection (bar length) and all live bytes of that cause."""

    def __init__(self, per_cause: dict, total_cause: dict, title="Bytes per connection by cause"):
        self.per_cause, self.total_cause, self.title = per_cause, total_cause, title

    def __rich_console__(self, console, options):
        width = options.max_width
        causes = [c for c in CAUSES if self.per_cause.get(c) or self.total_cause.get(c)]
        basis = self.per_cause if any(self.per_cause.values()) else self.total_cause
        causes.sort(key=lambda c: (-basis.get(c, 0), -self.total_cause.get(c, 0)))
        yield Text(f"{self.title:<{max(0, width - 30)}}{'per conn':>10} {'all live':>10}"[:width],
                   style="bold")
        if not causes:
            yield Text("(no OpenSSL bytes live yet)", style="dim")
            return
        whole = max(basis.values()) if basis else 0
        bar_w = max(4, width - 16 - 2 - 22)
        for c in causes:
            v = basis.get(c, 0)
            n = int(round(bar_w * v / whole)) if whole else 0
            line = Text(f"{label(c):<16.16} ")
            line.append("█" * n, style="red" if c in ("ca_store", "compression") else "cyan")
            line.append(" " * (bar_w - n + 1))
            line.append(f"{human_bytes(self.per_cause.get(c, 0)):>10} {human_bytes(self.total_cause.get(c, 0)):>10}")
            yield line


# --- widgets --------------------------------------------------------------------------------------

class PagedTable(DataTable):
    """A DataTable holding one page (PAGE_SIZE rows) of a sorted, filtered list of rows."""

    BINDINGS = [
        Binding("o", "next_sort", "sort", show=True),
        Binding("r", "reverse_sort", "reverse", show=False),
        Binding("]", "page(1)", "next page", show=False),
        Binding("[", "page(-1)", "prev page", show=False),
    ]

    def __init__(self, columns, **kw):
        super().__init__(cursor_type="row", zebra_stripes=False, **kw)
        self.columns_spec = columns
        self.rows_all = []
        self.view = []
        self.sort_index = next(i for i, c in enumerate(columns) if c[1] == "bytes")
        self.descending = columns[self.sort_index][3]
        self.filter = ""
        self.page = 0
        self.selected_id = None

    def on_mount(self):
        for name, key, _, _ in self.columns_spec:
            self.add_column(name, key=key)

    def set_rows(self, rows):
        self.rows_all = rows
        self.refresh_view()

    def refresh_view(self):
        rows = self.rows_all
        if self.filter:
            f = self.filter.lower()
            rows = [r for r in rows if f in r.search]
        _, _, key, _ = self.columns_spec[self.sort_index]
        self.view = sorted(rows, key=key, reverse=self.descending)
        pages = max(1, (len(self.view) + PAGE_SIZE - 1) // PAGE_SIZE)
        self.page = min(self.page, pages - 1)
        if self.row_count and 0 <= self.cursor_row < self.row_count:
            try:
                self.selected_id = self.coordinate_to_cell_key((self.cursor_row, 0)).row_key.value
            except Exception:
                pass
        cursor = self.cursor_row
        chunk = self.view[self.page * PAGE_SIZE:(self.page + 1) * PAGE_SIZE]
        self.clear()
        for r in chunk:
            self.add_row(*r.cells(), key=str(r.id))
        if chunk:
            ids = [str(r.id) for r in chunk]
            if self.selected_id in ids:
                cursor = ids.index(self.selected_id)
            self.move_cursor(row=min(max(cursor, 0), len(chunk) - 1), animate=False, scroll=True)
        for i, (name, key, _, _) in enumerate(self.columns_spec):
            arrow = (" ▼" if self.descending else " ▲") if i == self.sort_index else ""
            self.columns[key].label = Text(name + arrow)
        self.post_message(self.ViewChanged(self))

    def status(self) -> str:
        n = len(self.view)
        lo = self.page * PAGE_SIZE + 1 if n else 0
        hi = min(n, (self.page + 1) * PAGE_SIZE)
        name = self.columns_spec[self.sort_index][0]
        parts = [f"rows {lo}–{hi} of {n}"]
        if self.filter:
            parts.append(f"filter “{self.filter}” ({len(self.rows_all)} in all)")
        parts.append(f"sorted by {name} {'▼' if self.descending else '▲'}")
        return " · ".join(parts)

    class ViewChanged(Message):
        def __init__(self, table):
            super().__init__()
            self.table = table

    def sort_by(self, index: int):
        if index == self.sort_index:
            self.descending = not self.descending
        else:
            self.sort_index = index
            self.descending = self.columns_spec[index][3]
        self.page = 0
        self.refresh_view()

    def action_next_sort(self):
        self.sort_index = (self.sort_index + 1) % len(self.columns_spec)
        self.descending = self.columns_spec[self.sort_index][3]
        self.page = 0
        self.refresh_view()

    def action_reverse_sort(self):
        self.descending = not self.descending
        self.refresh_view()

    def action_page(self, step: int):
        pages = max(1, (len(self.view) + PAGE_SIZE - 1) // PAGE_SIZE)
        new = min(max(self.page + step, 0), pages - 1)
        if new != self.page:
            self.page = new
            self.selected_id = None
            self.move_cursor(row=0)
            self.refresh_view()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected):
        event.stop()
        self.sort_by(event.column_index)

    def current_id(self):
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key((self.cursor_row, 0)).row_key.value
        except Exception:
            return None


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
    BINDINGS = [Binding("w", "choose('wait')", "keep profiling"),
                Binding("t", "choose('terminate')", "terminate target"),
                Binding("escape,n", "choose(None)", "stay")]

    def __init__(self, pid: int):
        super().__init__()
        self.pid = pid

    def compose(self) -> ComposeResult:
        yield Static(f"pid {self.pid} is still running.\n\n"
                     f"  w    close the view and keep profiling until it exits\n"
                     f"       (the report is written then; Ctrl-C stops it)\n"
                     f"  t    terminate it now (SIGTERM), then write the report\n"
                     f"  Esc  stay in the view", id="quit-box")

    def action_choose(self, choice):
        self.dismiss(choice)


class ConnectionScreen(Screen):
    """Drill-down on one connection; follows the newest snapshot while the connection lives."""
    BINDINGS = [Binding("escape,backspace,left", "app.pop_screen", "back"),
                Binding("s", "app.save", "save"),
                Binding("q", "app.quit_view", "quit"),
                Binding("question_mark", "app.help", "help")]

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
            session = self.app.session
            conn = self.data.conns.get(self.conn_id) or {}
            obs = session.last
            pid = conn.get("pid", self.data.pid_view)
            snap = obs.snaps.get(pid) or obs.snaps[obs.pid]
            serial = int(str(self.conn_id).rsplit("-", 1)[-1])
            sites = client.owner_sites(session.socket_of(snap.pid), serial, snap)
        except Exception:  # the target went away, or no snapshot yet: keep the process-wide view
            return
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
    t.append(f" · peer {conn.get('peer') or '-'} · fd {conn.get('fd') if conn.get('fd') is not None else '-'}"
             f" · {conn.get('state')} · age {human_age(conn.get('age_s'))}")
    if closed:
        t.append("\nclosed: gone from the newest snapshot; this is its last data", style="bold yellow")
    return t


def render_connection_detail(conn: dict, data: ViewData, own_sites=None):
    parts = []
    own = conn.get("live_bytes", 0)
    share = conn.get("context_share_bytes", 0) or 0
    ctx = data.ctxs.get(conn.get("context"))
    parts.append(Text(f"{human_bytes(own + share)} = own {human_bytes(own)} + context share {human_bytes(share)}",
                      style="bold"))
    share_cause = {}
    if ctx is not None:
        n = max(1, ctx.get("connections", 1))
        share_cause = {k: v / n for k, v in (ctx.get("by_cause") or {}).items()}
        parts.append(Text(f"context {ctx['id']}: shared by {ctx.get('connections', 0)} connection(s), "
                          f"{human_bytes(ctx.get('live_bytes', 0))} live, CA store "
                          f"{human_bytes(ctx.get('ca_store_bytes', 0))}"))
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
        st = Table(title="Call sites of this connection's own blocks (counts exact; bytes ≈ count × "
                         "the site's mean block size)", title_justify="left", title_style="bold",
                   box=None, pad_edge=False)
        for name, justify in (("Site", "left"), ("Cause", "left"), ("Blocks", "right"), ("≈ Bytes", "right")):
            st.add_column(name, justify=justify)
        for s in own_sites[:TOP_SITES]:
            st.add_row(Text(_where(s)), label(s.get("cause")), str(s["blocks"]), "≈ " + human_bytes(s["approx_bytes"]))
        if not own_sites:
            st.add_row("(no live blocks of its own)", "", "", "")
    else:
        sites = [s for s in data.report.get("sites", []) if s.get("cause") in held][:TOP_SITES]
        st = Table(title="Top call sites of these causes (process-wide)", title_justify="left",
                   title_style="bold", box=None, pad_edge=False)
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


# --- the app --------------------------------------------------------------------------------------

class LiveApp(App):
    """Full-screen live view. Result of run(): "exited" (target gone), "quit" (attach: detach),
    "wait" (run: close the view, keep profiling), "hangup" (terminal went away)."""

    TITLE = "tlsprof"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #head { height: auto; max-height: 5; padding: 0 1; background: $boost; }
    #tabs { height: 1fr; }
    #tabs ContentSwitcher { height: 1fr; }
    #tabs TabPane { height: 1fr; padding: 0; }
    #overview { padding: 0 1; }
    #causes, #sparks, #findings { height: auto; }
    #sparks { margin-top: 1; }
    #findings { margin-top: 1; }
    .status { height: 1; padding: 0 1; color: $text-muted; }
    #filter { dock: bottom; display: none; }
    #filter.visible { display: block; }
    PagedTable { height: 1fr; }
    QuitScreen, HelpScreen { align: center middle; }
    #quit-box { width: 62; height: auto; border: thick $warning; padding: 1 2; background: $panel; }
    #help { width: 78; height: auto; max-height: 22; border: round $accent; padding: 0 1; background: $panel; }
    #detail-head { height: auto; padding: 0 1; background: $boost; }
    #detail-body { padding: 0 1; }
    """
    BINDINGS = [
        Binding("1", "tab('overview')", "overview", show=False),
        Binding("2", "tab('connections')", "conns", show=False),
        Binding("3", "tab('contexts')", "contexts", show=False),
        Binding("enter", "drill", "drill in", show=True),
        Binding("slash", "filter", "filter", show=True),
        Binding("p", "next_process", "process", show=True),
        Binding("s", "save", "save", show=True),
        Binding("q", "quit_view", "quit", show=True),
        Binding("ctrl+c", "quit_view", "quit", show=False, priority=True),
        Binding("question_mark", "help", "help", show=True),
    ]

    def __init__(self, session, target, args=None, mode=None, is_alive=None):
        super().__init__()
        self.session = session
        self.target = target if isinstance(target, Target) else Target(target, is_alive)
        self.args = args
        self.interval = float(getattr(args, "interval", None) or 1.0)
        self.output = getattr(args, "output", None)
        self.mode = mode or getattr(session, "mode", None) or ("run" if self.target.owned else "attach")
        self.data = None
        self.exited = False
        self.returncode = None
        self.error = None
        self.trend = []  # (monotonic t, bytes per connection)
        self.saved = []  # paths saved with `s`
        self.poller = None
        self.process_pid = None  # None: the whole tree; else the one process the view shows
        self.processes = []  # the tree's processes in the newest snapshot (pid, role, connections)

    # layout
    def compose(self) -> ComposeResult:
        yield Static(Text("tlsprof: waiting for the first snapshot…"), id="head")
        with TabbedContent(initial="overview", id="tabs"):
            with TabPane("Overview", id="overview"):
                with VerticalScroll():
                    yield Static(id="causes")
                    yield Static(id="sparks")
                    yield Static(id="findings")
            with TabPane("Connections", id="connections"):
                with Vertical():
                    yield Static(id="conn-status", classes="status")
                    yield PagedTable(CONN_COLUMNS, id="conn-table")
            with TabPane("Contexts", id="contexts"):
                with Vertical():
                    yield Static(id="ctx-status", classes="status")
                    yield PagedTable(CTX_COLUMNS, id="ctx-table")
        yield Input(placeholder="filter by id, peer or cause (Enter applies, empty clears, Esc cancels)",
                    id="filter", disabled=True)
        yield Footer()

    def on_mount(self):
        self.set_interval(1.0, self._tick)  # uptime and staleness, independent of the target
        self.poller = Poller(self, self.session, self.target, self.interval)
        self.poller.start()
        self._render_head()

    def on_unmount(self):
        if self.poller is not None:
            self.poller.stop()

    # data arriving from the poller
    def on_new_data(self, message: NewData):
        data = message.data
        if data.pid_view != self.process_pid:
            return  # built before the last process switch
        self.data = data
        self.error = None
        per = data.report["per_connection"]
        now = time.monotonic()
        self.trend.append((now, per["bytes"] if per["connections"] else None))
        while len(self.trend) > 2 and now - self.trend[1][0] >= TREND_WINDOW_S:
            self.trend.pop(0)
        self._render_head()
        self._render_overview()
        self.query_one("#conn-table", PagedTable).set_rows(data.conn_rows)
        self.query_one("#ctx-table", PagedTable).set_rows(data.ctx_rows)
        if isinstance(self.screen, ConnectionScreen):
            self.screen.show(data)

    def on_target_exited(self, message: TargetExited):
        self.exited = True
        self.returncode = message.returncode
        self._render_head()
        if self.target.owned:
            self.notify("the target exited: the last data stays on screen; q quits and writes the report",
                        timeout=8)
        else:
            self.notify("the target exited: the last data stays on screen; q quits", timeout=8)

    def on_poll_error(self, message: PollError):
        self.error = message.text
        self._render_head()

    def on_paged_table_view_changed(self, message: PagedTable.ViewChanged):
        status = "#conn-status" if message.table.id == "conn-table" else "#ctx-status"
        self.query_one(status, Static).update(message.table.status())

    def _tick(self):
        self._render_head()

    # rendering
    def _trend_text(self) -> str:
        pts = [(t, v) for t, v in self.trend if v is not None]
        if len(pts) < 2:
            return ""
        (t0, v0), (t1, v1) = pts[0], pts[-1]
        delta = v1 - v0
        span = f"{t1 - t0:.0f}s"
        if abs(delta) < max(64, 0.01 * max(v0, 1)):
            return f" · steady over {span}"
        arrow = "↑" if delta > 0 else "↓"
        return f" · {arrow}{human_bytes(abs(delta))}/{span}"

    def _render_head(self):
        head = self.query_one("#head", Static)
        cmd = " ".join(self.session.command) or "?"
        up = time.time() - self.session.started
        t = Text()
        status = ""
        if self.exited:
            rc = self.returncode
            how = f"status {rc}" if rc is not None and rc >= 0 else (
                f"signal {-rc}" if rc is not None else "exit status unknown")
            status = f"TARGET EXITED ({how}) — last data kept; q quits"
        pid = self.data.report["target"]["pid"] if self.data else self.target.pid
        t.append(f"pid {pid} ({self.mode}) · up {_uptime(up)} · ", style="bold")
        t.append(cmd, style="bold")
        t.no_wrap = True
        t.overflow = "ellipsis"
        lines = [t]
        if status:
            lines.append(Text(status, style="bold white on red"))
        if self.data is None:
            lines.append(Text("waiting for the first snapshot…" if not self.exited else
                              "no snapshot was taken", style="dim"))
        else:
            r = self.data.report
            rss = r["target"].get("rss_bytes")
            per = r["per_connection"]
            age = time.time() - self.data.taken_at
            stale = f" · snapshot {age:.0f}s old" if age >= max(3 * self.interval, 3) and not self.exited else ""
            lines.append(Text(f"RSS {human_bytes(rss) if rss else '?'} · OpenSSL live "
                              f"{human_bytes(r['totals']['live_bytes'])} · {len(r['contexts'])} contexts · "
                              f"{per['connections']} connections{stale}"))
            python = (f" + Python side {human_bytes(per['python_bytes'])} = {human_bytes(per.get('total_bytes'))}"
                      if per.get("python_bytes") is not None else "")
            lines.append(Text(f"per connection {human_bytes(per['bytes'])} (own {human_bytes(per['own_bytes'])}"
                              f" + ctx share {human_bytes(per['context_share_bytes'])}){python}"
                              f"{self._trend_text()}", style="bold"))
            memory = r.get("memory") or {}
            if memory.get("parts"):  # the RSS explained (tlsprof/memory.py), largest parts first
                parts = sorted(memory["parts"], key=lambda p: -p["bytes"])[:5]
                largest = (memory.get("per_connection") or {}).get("largest")
                text = "RSS = " + " + ".join(f"{MEMORY_LABELS.get(p['name'], p['name'])} {human_bytes(p['bytes'])}"
                                             for p in parts) + " + …"
                if largest:
                    text += f" · largest per connection: {largest.get('label') or largest.get('name')}"
                lines.append(Text(text, style="dim"))
            view = self._process_view_text()
            if view:
                lines.append(Text(view))
            from tlsprof.analysis.moments import words
            said = words(r)
            if said:
                lines.append(Text(said.replace("showing the last snapshot", "newest snapshot", 1), style="dim"))
        if self.error and not self.exited:
            lines.append(Text(f"snapshot failed: {self.error}", style="yellow"))
        head.update(Group(*lines))

    def _render_overview(self):
        r = self.data.report
        self.query_one("#causes", Static).update(
            CauseBars(r["per_connection"].get("by_cause", {}), r["totals"].get("by_cause", {})))
        hist = self.data.history
        width = max(10, self.size.width - 30)
        lb = [h["live_bytes"] for h in hist]
        cn = [h["connections"] for h in hist]
        sp = Text()
        sp.append(f"{'OpenSSL live':<13}", style="bold")
        sp.append(sparkline(lb, width), style="green")
        sp.append(f" {human_bytes(lb[-1]) if lb else '-'}\n")
        sp.append(f"{'connections':<13}", style="bold")
        sp.append(sparkline(cn, width), style="magenta")
        sp.append(f" {cn[-1] if cn else '-'}")
        self.query_one("#sparks", Static).update(sp)
        self.query_one("#findings", Static).update(render_findings(r.get("findings", [])))

    def _process_view_text(self) -> str:
        processes = self.session_processes()
        if len(processes) < 2:
            return ""
        if self.process_pid is None:
            holding = sum(1 for p in processes if p.get("connections"))
            return f"view: whole tree, {len(processes)} processes ({holding} with connections) · p: one process"
        p = next((p for p in processes if p.get("pid") == self.process_pid), {"pid": self.process_pid})
        from tlsprof.render.text import process_label
        return f"view: {process_label(p)} only ({p.get('connections', 0)} connections) · p: next"

    def session_processes(self) -> list:
        tree = self.session.latest_report()  # cached by the session for the newest observation
        return list((tree or {}).get("processes") or [])

    # actions
    def action_next_process(self):
        """Tree total -> each process (with connections first) -> tree total."""
        processes = sorted(self.session_processes(), key=lambda p: (-(p.get("connections") or 0), p.get("pid") or 0))
        order = [None] + [p["pid"] for p in processes] if len(processes) > 1 else [None]
        i = order.index(self.process_pid) if self.process_pid in order else 0
        self.process_pid = order[(i + 1) % len(order)]
        self._refresh_process_view()

    @work(thread=True, exclusive=True, group="process-view")
    def _refresh_process_view(self):
        report = self.session.latest_report(pid=self.process_pid)
        if report is not None:
            self.call_from_thread(self.post_message,
                                  NewData(ViewData(report, self.session.history, time.time(), self.process_pid)))

    def check_action(self, action: str, parameters) -> bool:
        if action in ("drill", "filter", "tab"):
            return len(self.screen_stack) == 1  # the main view only, not drill-down or dialogs
        return True

    def action_tab(self, name: str):
        self.query_one("#tabs", TabbedContent).active = name
        if name in ("connections", "contexts"):
            table = self.query_one("#conn-table" if name == "connections" else "#ctx-table")
            table.focus()
            self.call_after_refresh(table.focus)

    def _active_table(self):
        active = self.query_one("#tabs", TabbedContent).active
        if active == "connections":
            return self.query_one("#conn-table", PagedTable)
        if active == "contexts":
            return self.query_one("#ctx-table", PagedTable)
        return None

    def action_drill(self):
        table = self._active_table()
        if table is None or table.id != "conn-table" or self.data is None:
            return
        conn_id = table.current_id()
        if conn_id is not None:
            self.push_screen(ConnectionScreen(conn_id, self.data))

    @on(DataTable.RowSelected, "#conn-table")
    def _row_selected(self, event: DataTable.RowSelected):
        if self.data is not None and event.row_key is not None:
            self.push_screen(ConnectionScreen(event.row_key.value, self.data))

    def action_filter(self):
        if self._active_table() is None:
            self.action_tab("connections")
        box = self.query_one("#filter", Input)
        box.value = self._active_table().filter
        box.disabled = False
        box.add_class("visible")
        box.focus()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted):
        table = self._active_table()
        if table is not None:
            table.filter = event.value.strip()
            table.page = 0
            table.refresh_view()
        self._close_filter()

    def on_key(self, event):
        box = self.query_one("#filter", Input)
        if event.key == "escape" and box.has_class("visible"):
            event.stop()
            self._close_filter()

    def _close_filter(self):
        box = self.query_one("#filter", Input)
        box.remove_class("visible")
        box.disabled = True
        table = self._active_table()
        if table is not None:
            table.focus()

    def action_help(self):
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_save(self):
        self._save()

    @work(thread=True, exclusive=True, group="save")
    def _save(self):
        from tlsprof.model.report_io import save_report
        report = self.session.report(at="last")
        if report is None:
            self.call_from_thread(self.notify, "nothing to save yet: no snapshot taken", severity="warning")
            return
        pid = report["target"]["pid"]
        path = self.output or os.path.join(
            os.getcwd(), f"tlsprof-{pid}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
        try:
            save_report(report, path)
        except Exception as exc:
            self.call_from_thread(self.notify, f"could not save: {exc}", severity="error", timeout=8)
            return
        self.saved.append(path)
        self.call_from_thread(self.notify, f"report saved to {path}", timeout=8)

    def action_quit_view(self):
        if self.exited or not self.target.owned:
            self.exit("exited" if self.exited else "quit")
            return
        if not self.target.alive():  # exited since the last poll
            self.exit("exited")
            return
        if isinstance(self.screen, QuitScreen):
            return

        def chosen(choice):
            if choice == "terminate":
                self.target.terminate()
                self.exit("wait")
            elif choice == "wait":
                self.exit("wait")
        self.push_screen(QuitScreen(self.target.pid), chosen)


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


# --- entry point ------------------------------------------------------------------------------------

def run_live(session, target, args, *, is_alive=None, mode=None):
    """Show the live view until the user quits; return the target's returncode.

    `target`: the `subprocess.Popen` of a target we started (run), or its pid (attach; `is_alive`
    may override how liveness is checked; `target=None` with `is_alive` uses session.main_pid).
    Returns Popen.returncode semantics in run mode; None for a pid target (its exit status is not
    ours to know). The caller writes the report (and detaches, when attached) after this returns.
    Without a terminal on stdout, it collects without a view (the caller prints the text report).
    """
    session.agent_async = True  # a refresh never waits for the Python agent's scan
    if target is None:
        target = session.main_pid
    tgt = Target(target, is_alive)
    interval = float(getattr(args, "interval", None) or 1.0)
    if not sys.stdout.isatty():
        print("tlsprof: stdout is not a terminal: no live view; the text report follows at the end",
              file=sys.stderr)
        return _wait_for_target(session, tgt, interval)

    app = LiveApp(session, tgt, args, mode=mode)
    previous = {}

    def forward(signum, frame):
        if tgt.owned:
            try:
                tgt.proc.send_signal(signum)
            except ProcessLookupError:
                pass
        if signum == signal.SIGHUP or not tgt.owned:  # attached: a stop signal ends the session
            app.exit("hangup" if signum == signal.SIGHUP else "signal")
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        previous[s] = signal.signal(s, forward)
    try:
        app.run()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    for path in app.saved:
        print(f"tlsprof: report snapshot saved to {path}", file=sys.stderr)
    if tgt.owned and tgt.alive():
        print(f"tlsprof: live view closed; still profiling pid {tgt.pid} until it exits "
              f"(Ctrl-C stops it; the report follows)", file=sys.stderr)
        return _wait_for_target(session, tgt, interval)
    return tgt.returncode()


def _wait_for_target(session, tgt: Target, interval: float):
    """Keep collecting until the target exits (what `run` does without a view)."""
    if tgt.owned:
        from tlsprof.commands.run import _collect  # the same loop and signal forwarding as `run`
        return _collect(tgt.proc, session, interval)
    while tgt.alive():
        session.poll()
        time.sleep(interval)
    return None
