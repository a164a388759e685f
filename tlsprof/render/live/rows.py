"""The rows the live view's tables show, prepared off the UI thread from one report."""

from rich.text import Text

from tlsprof.model.causes import CAUSES, label
from tlsprof.model.words import human_age, human_bytes

PAGE_SIZE = 200  # rows a table holds at once: the rest is paged ([ and ])
TREND_WINDOW_S = 30.0  # the per-connection trend compares with the value this long ago
SPARK = "▁▂▃▄▅▆▇█"
TOP_SITES = 8


def _top_cause(by_cause: dict):
    best, most = None, 0
    for cause in CAUSES:
        v = by_cause.get(cause, 0)
        if v > most:
            best, most = cause, v
    return best


def _natural_order(ident):
    """Sort key of an id such as "conn-12": ids in the order people count them (conn-9 before
    conn-10). Only for sorting rows: nothing is looked up by the number."""
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
        self.search = " ".join([str(self.id), self.peer, *self.causes, *(label(k) for k in self.causes)]).lower()

    def cells(self):
        star = "*" if self.age is None else ""
        return (
            Text(f"{self.id}{star}"),
            Text(self.peer or "-"),
            "-" if self.fd is None else str(self.fd),
            _STATE_SHORT.get(self.state, self.state),
            human_age(self.age),
            Text(human_bytes(self.bytes), justify="right"),
            label(self.top) if self.top else "-",
        )


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
        return (
            Text(name),
            str(self.conns),
            Text(human_bytes(self.bytes), justify="right"),
            Text(human_bytes(self.ca), justify="right"),
            label(self.top) if self.top else "-",
        )


CONN_COLUMNS = [  # (label, key, sort key on ConnRow, descending first)
    ("Id", "id", lambda r: _natural_order(r.id), False),
    ("Peer", "peer", lambda r: r.peer, False),
    ("Fd", "fd", lambda r: -1 if r.fd is None else r.fd, False),
    ("State", "state", lambda r: r.state, False),
    ("Age", "age", lambda r: -1 if r.age is None else r.age, True),
    ("Bytes", "bytes", lambda r: r.bytes, True),
    ("Top cause", "top", lambda r: label(r.top) if r.top else "", False),
]
CTX_COLUMNS = [
    ("Id", "id", lambda r: _natural_order(r.id), False),
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
