"""`tlsprof report FILE --html OUT.html`: one self-contained page, rendered in headless Chromium.

The Chromium tests drive Debian's chromium over the DevTools protocol on a pipe
(`--remote-debugging-pipe`: fds 3 and 4, NUL-separated JSON; no websocket library needed) to see
every network request and console message, and check the screenshot's pixels with a tiny PNG decoder.
"""

import base64
import fcntl
import html.parser
import json
import os
import select
import signal
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib

import pytest

from tlsenv import REPO_ROOT, free_port, start_clients, start_echo_server

from test_findings import report_with
from tlsprof.model.causes import CAUSES
from tlsprof.render.html import BYTES_COLOUR, COLOURS, STYLE, render_html
from tlsprof.model.schema import validate_report

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1200,1600",
]
WAIT = 60.0

HOSTILE = [
    '<img src="http://127.0.0.1:9/x.png">',
    "<script>console.error('xss')</script>",
    "\"'><svg onload=alert(1)>",
    "<style>@import url(http://127.0.0.1:9/s.css)</style>",
]

needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true",
    reason=f"{CHROMIUM} is absent (apt-get install chromium); required when CI=true",
)


# --- a real report -------------------------------------------------------------------------------
def _scrape_connections(url, pid):
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    got = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("pid") == str(pid):
                got[s.name] = s.value
    return got


@pytest.fixture(scope="module")
def real_report(tmp_path_factory):
    """A report of a real profiled echo server (a context per connection, 5 clients), with history,
    and with hostile strings where a report carries free text."""
    out = tmp_path_factory.mktemp("html") / "r.json"
    port = free_port()
    wrapper = [
        sys.executable,
        "-m",
        "tlsprof",
        "run",
        "-o",
        str(out),
        "--at",
        "last",
        "--interval",
        "0.2",
        "--metrics",
        f"127.0.0.1:{port}",
        "--",
    ]
    server = start_echo_server("--ctx-per-conn", wrapper=wrapper, cwd=REPO_ROOT, timeout=90)
    clients = None
    try:
        pid = server.target_pid()
        clients = start_clients(server.port, 5, interval=60.0)
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + WAIT
        first = None
        while True:  # two snapshots that see all 5 connections, so the history ends flat
            m = _scrape_connections(url, pid)
            if m.get("tlsprof_connections") == 5:
                first = first or m["tlsprof_snapshots"]
                if m["tlsprof_snapshots"] >= first + 2:
                    break
            assert time.monotonic() < deadline, "the profiled server never showed 5 connections"
            time.sleep(0.1)
    finally:
        # SIGKILL freezes the last snapshot with all 5 connections (a SIGTERM lets the server close
        # them first, and the peak may fall in the handshake burst, before all 5 are up)
        try:
            os.kill(server.target_pid(), signal.SIGKILL)
            server.proc.wait(60)
        finally:
            server.stop()
            if clients is not None:
                clients.stop()
    report = json.loads(out.read_text())
    assert len(report["history"]) >= 2 and report["connections"]
    report["target"]["command"] = HOSTILE + report["target"]["command"]
    report["notes"] = report.get("notes", []) + HOSTILE
    for f in report["findings"]:
        f["title"] += HOSTILE[0]
        f["detail"] += HOSTILE[1]
    report["sites"][0]["file"] = HOSTILE[2]
    report["connections"][0]["peer"] = HOSTILE[3]
    validate_report(report)
    return report


# --- static checks -------------------------------------------------------------------------------
class _Refs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.refs, self.handlers, self.styles = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href", "xlink:href", "action", "srcset", "poster", "data"):
                self.refs.append((tag, k, v))
            if k.startswith("on"):
                self.handlers.append((tag, k))
            if k == "style":
                self.styles.append(v)


def test_page_is_self_contained_and_escapes_every_report_string(real_report):
    page = render_html(real_report)
    p = _Refs()
    p.feed(page)
    assert p.refs == [] and p.handlers == []
    assert "script" not in p.tags and "img" not in p.tags and "link" not in p.tags and "iframe" not in p.tags
    assert p.tags.count("style") == 1 and f"<style>{STYLE}</style>" in page
    assert not [v for v in p.styles + [STYLE] if "url(" in v or "@import" in v]
    for s in HOSTILE:
        assert s not in page
    assert "&lt;img src=&quot;http://127.0.0.1:9/x.png&quot;&gt;" in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


def test_page_shows_chart_history_tables_sites_and_findings(real_report):
    page = render_html(real_report)
    assert 'id="per-connection-chart"' in page and 'id="history-chart"' in page
    assert page.count('class="seg" data-cause="ca_store"') >= 1 + 5  # the mean bar and every connection
    for section in ("Bytes per connection by cause", "Findings", "History", "Contexts (", "Connections (", "Sites ("):
        assert section in page
    assert "ca-store-per-connection" in page
    # every connection and context is on a row of its own or counted in a group of alike ones
    import re

    for kind, entries in (("conn", real_report["connections"]), ("ctx", real_report["contexts"])):
        alone = sum(1 for c in entries if f"<td>{c['id']}</td>" in page)
        grouped = sum(int(n) for n in re.findall(rf"<td>(\d+) × {kind}-\d+…</td>", page))
        assert alone + grouped == len(entries), (kind, alone, grouped)


def test_report_without_history_or_connections_still_renders():
    report = report_with([(900_000, 0)])
    validate_report(report)
    page = render_html(report)
    assert "carries no history" in page
    assert "all live bytes" in page and 'data-cause="ca_store"' in page
    assert 'id="history-chart"' not in page


def test_html_option_writes_the_page(tmp_path, real_report):
    src, out = tmp_path / "r.json", tmp_path / "out.html"
    src.write_text(json.dumps(real_report))
    r = subprocess.run(
        [sys.executable, "-m", "tlsprof", "report", str(src), "--html", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr.strip() == f"tlsprof: HTML report written to {out}"
    assert out.read_text(encoding="utf-8") == render_html(real_report)
    bad = subprocess.run(
        [sys.executable, "-m", "tlsprof", "report", str(src), "--html", str(tmp_path / "missing" / "out.html")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


# --- Chromium ------------------------------------------------------------------------------------
class Chromium:
    """Headless Chromium driven over --remote-debugging-pipe. Bounded waits; stopped by pid."""

    def __init__(self, timeout=WAIT):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="tlsprof-chromium-")
        to_r, self.w = os.pipe()
        self.r, from_w = os.pipe()
        # park the child's ends at high close-on-exec fds, then dup2 them onto 3 and 4 in the child
        hi_r = fcntl.fcntl(to_r, fcntl.F_DUPFD_CLOEXEC, 100)
        hi_w = fcntl.fcntl(from_w, fcntl.F_DUPFD_CLOEXEC, 100)
        os.close(to_r)
        os.close(from_w)

        def child():
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        self.stderr_path = os.path.join(self.profile, "stderr.log")
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [
                    CHROMIUM,
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={self.profile}",
                    "--remote-debugging-pipe",
                    "about:blank",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=child,
                pass_fds=(3, 4),
                start_new_session=True,
            )
        os.close(hi_r)
        os.close(hi_w)
        self.buf, self.next_id, self.events = b"", 0, []

    def send(self, method, params=None, session=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._read(deadline, method)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise AssertionError(f"{method}: {m['error']}")
                return m.get("result", {})
            if "method" in m:
                self.events.append(m)

    def wait_event(self, method):
        deadline = time.monotonic() + self.timeout
        while not any(e["method"] == method for e in self.events):
            m = self._read(deadline, method)
            if "method" in m:
                self.events.append(m)
                if m["method"] == "Page.javascriptDialogOpening":  # a dialog would block the load
                    self.send("Page.handleJavaScriptDialog", {"accept": False}, session=m.get("sessionId"))

    def _read(self, deadline, what):
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"chromium: no answer to {what} in {self.timeout:.0f} s\n{self.stderr()}")
            ready, _, _ = select.select([self.r], [], [], left)
            if ready:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    raise AssertionError(f"chromium closed the pipe during {what}\n{self.stderr()}")
                self.buf += chunk
        msg, _, self.buf = self.buf.partition(b"\0")
        return json.loads(msg)

    def stderr(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read()[-3000:]

    def close(self):
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close")
                except (AssertionError, OSError):
                    pass
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.kill(self.proc.pid, 9)
                    self.proc.wait(10)
        finally:
            os.close(self.w)
            os.close(self.r)
            shutil.rmtree(self.profile, ignore_errors=True)


def load_page(path):
    """-> (events, screenshot PNG bytes, chart box {x, y, width, height} in CSS px = screenshot px)."""
    browser = Chromium()
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})
        session = browser.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1200, "height": 1600, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        browser.send("Page.navigate", {"url": "file://" + os.path.abspath(path)}, session=session)
        browser.wait_event("Page.loadEventFired")
        box = browser.send(
            "Runtime.evaluate",
            {
                "expression": "JSON.stringify(document.getElementById('per-connection-chart').getBoundingClientRect())",
                "returnByValue": True,
            },
            session=session,
        )
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)
        return list(browser.events), base64.b64decode(shot["data"]), json.loads(box["result"]["value"])
    finally:
        browser.close()


def decode_png(data):
    """-> (width, height, rows of (r, g, b) tuples). 8-bit RGB/RGBA, non-interlaced: what Chromium writes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    bpp = 4 if colour == 6 else 3
    raw, stride = zlib.decompress(idat), width * bpp
    prev, rows, i = bytearray(stride), [], 0
    for _ in range(height):
        ftype, line = raw[i], bytearray(raw[i + 1 : i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], prev[x - bpp] if x >= bpp else 0
            if ftype == 1:
                line[x] = (line[x] + a) & 255
            elif ftype == 2:
                line[x] = (line[x] + b) & 255
            elif ftype == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x : x + 3]) for x in range(0, stride, bpp)])
        prev = line
    return width, height, rows


def _rgb(hex_colour):
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))


def count_colour(rows, colour, box=None, tol=6):
    x0, y0, x1, y1 = box or (0, 0, len(rows[0]), len(rows))
    return sum(1 for row in rows[y0:y1] for px in row[x0:x1] if all(abs(p - q) <= tol for p, q in zip(px, colour)))


@needs_chromium
def test_html_renders_in_chromium_without_errors_or_network_and_draws_the_bars(real_report, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render_html(real_report), encoding="utf-8")
    events, png, box = load_page(page)

    url = "file://" + str(page)
    requests = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
    assert requests == [url]  # the page itself, nothing else
    console = [
        e["params"]
        for e in events
        if e["method"] in ("Runtime.consoleAPICalled", "Runtime.exceptionThrown", "Page.javascriptDialogOpening")
    ]
    assert console == []
    logged = [
        e["params"]["entry"]
        for e in events
        if e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] in ("error", "warning")
    ]
    assert logged == []

    width, height, rows = decode_png(png)
    assert (width, height) == (1200, 1600)
    chart = (int(box["x"]), int(box["y"]), int(box["x"] + box["width"]), int(box["y"] + box["height"]))
    assert chart[3] <= height, f"the chart is below the screenshot: {box}"
    # six bars (mean + 5 connections), CA store dominating each: thousands of its pixels in the chart
    ca = count_colour(rows, _rgb(COLOURS["ca_store"]), chart)
    assert ca > 6 * 20 * 100, ca
    other_causes = {c: count_colour(rows, _rgb(COLOURS[c]), chart) for c in CAUSES if c != "ca_store"}
    assert sum(v > 0 for v in other_causes.values()) >= 2, other_causes
    # the history line is drawn somewhere below the chart
    assert count_colour(rows, _rgb(BYTES_COLOUR), (0, chart[3], width, height), tol=40) > 100
