"""The live view's app: the layout, the head line, key bindings; data arrive from the collector
thread as messages."""

import datetime
import os
import time

from rich.console import Group
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import DataTable, Footer, Input, Static, TabbedContent, TabPane

from tlsprof.model.words import MEMORY_LABELS, human_bytes
from tlsprof.render.live.rows import CONN_COLUMNS, CTX_COLUMNS, TREND_WINDOW_S, ViewData
from tlsprof.render.live.messages import NewData, PollError, TargetExited
from tlsprof.render.live.widgets import CauseBars, PagedTable, sparkline
from tlsprof.render.live.screens import _uptime, ConnectionScreen, HelpScreen, QuitScreen, render_findings


# --- the app --------------------------------------------------------------------------------------


class LiveApp(App):
    """Full-screen live view. Result of run(): "exited" (target gone), "quit" (attach: detach),
    "wait" (run: close the view, keep profiling), "hangup" (terminal went away)."""

    TITLE = "tlsprof"
    ENABLE_COMMAND_PALETTE = False
    CSS_PATH = "live.tcss"
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

    def __init__(self, source, target, args=None, mode=None, collector=None):
        """`source`: the report source (tlsprof/analysis/reports.py), all the view reads.
        `target`: the profiled process (tlsprof/collect/target.py): alive, exit status, terminate.
        `collector`: started on mount, it polls and calls back (tlsprof/collect/collector.py)."""
        super().__init__()
        self.source = source
        self.target = target
        self.args = args
        self.interval = float(getattr(args, "interval", None) or 1.0)
        self.output = getattr(args, "output", None)
        self.mode = mode or getattr(source, "mode", None) or ("run" if self.target.owned else "attach")
        self.data = None
        self.exited = False
        self.returncode = None
        self.error = None
        self.trend = []  # (monotonic t, bytes per connection)
        self.saved = []  # paths saved with `s`
        self.poller = collector
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
        yield Input(
            placeholder="filter by id, peer or cause (Enter applies, empty clears, Esc cancels)",
            id="filter",
            disabled=True,
        )
        yield Footer()

    def on_mount(self):
        self.set_interval(1.0, self._tick)  # uptime and staleness, independent of the target
        if self.poller is not None:
            self.poller.start(
                on_observation=self._observed,
                on_exit=lambda rc: self.post_message(TargetExited(rc)),
                on_error=lambda exc: self.post_message(PollError(f"{type(exc).__name__}: {exc}")),
            )
        self._render_head()

    def on_unmount(self):
        if self.poller is not None:
            self.poller.stop()

    # data arriving from the collector thread
    def _observed(self, observation):
        """On the collector thread: the report of the newest observation, its rows precomputed."""
        pid = self.process_pid
        report = self.source.latest_report(pid=pid)
        if report is not None:
            self.post_message(NewData(ViewData(report, self.source.history, time.time(), pid)))

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
            self.notify("the target exited: the last data stays on screen; q quits and writes the report", timeout=8)
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
        cmd = " ".join(self.source.command) or "?"
        up = time.time() - self.source.started
        t = Text()
        status = ""
        if self.exited:
            rc = self.returncode
            how = (
                f"status {rc}"
                if rc is not None and rc >= 0
                else (f"signal {-rc}" if rc is not None else "exit status unknown")
            )
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
            lines.append(
                Text("waiting for the first snapshot…" if not self.exited else "no snapshot was taken", style="dim")
            )
        else:
            r = self.data.report
            rss = r["target"].get("rss_bytes")
            per = r["per_connection"]
            age = time.time() - self.data.taken_at
            stale = f" · snapshot {age:.0f}s old" if age >= max(3 * self.interval, 3) and not self.exited else ""
            lines.append(
                Text(
                    f"RSS {human_bytes(rss) if rss else '?'} · OpenSSL live "
                    f"{human_bytes(r['totals']['live_bytes'])} · {len(r['contexts'])} contexts · "
                    f"{per['connections']} connections{stale}"
                )
            )
            python = (
                f" + Python side {human_bytes(per['python_bytes'])} = {human_bytes(per.get('total_bytes'))}"
                if per.get("python_bytes") is not None
                else ""
            )
            lines.append(
                Text(
                    f"per connection {human_bytes(per['bytes'])} (own {human_bytes(per['own_bytes'])}"
                    f" + ctx share {human_bytes(per['context_share_bytes'])}){python}"
                    f"{self._trend_text()}",
                    style="bold",
                )
            )
            memory = r.get("memory") or {}
            if memory.get("parts"):  # the RSS explained (tlsprof/analysis/memory.py), largest parts first
                parts = sorted(memory["parts"], key=lambda p: -p["bytes"])[:5]
                largest = (memory.get("per_connection") or {}).get("largest")
                text = (
                    "RSS = "
                    + " + ".join(f"{MEMORY_LABELS.get(p['name'], p['name'])} {human_bytes(p['bytes'])}" for p in parts)
                    + " + …"
                )
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
            CauseBars(r["per_connection"].get("by_cause", {}), r["totals"].get("by_cause", {}))
        )
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
        tree = self.source.latest_report()  # cached by the source for the newest observation
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
        report = self.source.latest_report(pid=self.process_pid)
        if report is not None:
            self.call_from_thread(
                self.post_message, NewData(ViewData(report, self.source.history, time.time(), self.process_pid))
            )

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

        report = self.source.report(at="last")
        if report is None:
            self.call_from_thread(self.notify, "nothing to save yet: no snapshot taken", severity="warning")
            return
        pid = report["target"]["pid"]
        path = self.output or os.path.join(
            os.getcwd(), f"tlsprof-{pid}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
        )
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
