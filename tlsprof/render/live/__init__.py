"""The interactive live view (`tlsprof run --live`, `tlsprof attach PID --live`), built on Textual.

Threads: the collector thread (tlsprof/collect/collector.py) takes a snapshot every `args.interval`
seconds; on that thread the app asks its report source (tlsprof/analysis/reports.py) for the newest
report and precomputes the table rows, and hands the result to the UI with `post_message`
(thread-safe, never waits for the UI). The UI thread only sorts, filters and shows one page of rows,
so neither a slow target nor 10,000 connections block it.

The view reads only the report source (reports, and one connection's call sites for the drill-down),
like every other renderer: it never opens the target's socket. The layout is in live.tcss.

Quitting (`q`):
- attach mode (target given as a pid): the view closes at once; the caller detaches.
- run mode, target still running: a small dialog offers `w` (close the view, keep profiling until
  the target exits; the report is written then) or `t` (send SIGTERM to the target, then the same).
- the target has exited: the view closes; `run` writes the report as usual.
See docs/live-view.md.
"""

from tlsprof.render.live.rows import (
    CONN_COLUMNS,
    CTX_COLUMNS,
    PAGE_SIZE,
    SPARK,
    TOP_SITES,
    TREND_WINDOW_S,
    ConnRow,
    CtxRow,
    ViewData,
    _top_cause,
)
from tlsprof.render.live.messages import NewData, PollError, TargetExited
from tlsprof.render.live.widgets import CauseBars, PagedTable, sparkline
from tlsprof.render.live.screens import (
    ConnectionScreen,
    HelpScreen,
    QuitScreen,
    render_connection_detail,
    render_connection_head,
    render_findings,
)
from tlsprof.render.live.app import LiveApp

__all__ = [
    "CONN_COLUMNS",
    "CTX_COLUMNS",
    "PAGE_SIZE",
    "SPARK",
    "TOP_SITES",
    "TREND_WINDOW_S",
    "ConnRow",
    "CtxRow",
    "ViewData",
    "_top_cause",
    "NewData",
    "PollError",
    "TargetExited",
    "CauseBars",
    "PagedTable",
    "sparkline",
    "ConnectionScreen",
    "HelpScreen",
    "QuitScreen",
    "render_connection_detail",
    "render_connection_head",
    "render_findings",
    "LiveApp",
]
