"""The live view's widgets and rich renderables: the cause bars, sparklines, the paged table."""

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from tlsprof.model.causes import CAUSES, label
from tlsprof.model.words import human_bytes
from tlsprof.render.live.rows import PAGE_SIZE, SPARK


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
        yield Text(f"{self.title:<{max(0, width - 30)}}{'per conn':>10} {'all live':>10}"[:width], style="bold")
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
        chunk = self.view[self.page * PAGE_SIZE : (self.page + 1) * PAGE_SIZE]
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
