"""Views that read well (issue: causes and accounting): no number split across lines at any width or
when piped, alike rows grouped, and the Python side and the RSS explained in every view."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tlsenv import ECHO_SERVER, Proc, start_clients
from tlsprof.render.text import human_bytes
from tlsprof.model.schema import validate_report

TLSPROF = [sys.executable, "-m", "tlsprof"]
CLIENTS = 24


@pytest.fixture(scope="module")
def report_path(tmp_path_factory, cert_dir):
    """The asyncio seed server under `tlsprof run` with idle clients: a real report, saved."""
    path = str(tmp_path_factory.mktemp("views") / "report.json")
    server = Proc(
        [
            *TLSPROF,
            "run",
            "-o",
            path,
            "--interval",
            "0.3",
            "--",
            sys.executable,
            ECHO_SERVER,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--ready-file",
            "{ready}",
            "--certdir",
            cert_dir,
        ],
        script=ECHO_SERVER,
    )
    clients = None
    try:
        port = int(server.wait_ready(60))
        clients = start_clients(port, CLIENTS, interval=5.0)
        time.sleep(2.0)
    finally:
        server.stop()
        if clients is not None:
            clients.stop()
    with open(path) as f:
        validate_report(json.load(f))
    return path


def _tlsprof(*args, columns=80):
    env = dict(os.environ, COLUMNS=str(columns), NO_COLOR="1")
    out = subprocess.run([*TLSPROF, *args], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout


NUMBER_END = re.compile(r"[0-9][.:,]?$")
NUMBER_START = re.compile(r"^[0-9.:,]")


@pytest.mark.parametrize("columns", [60, 80, 200])
def test_piped_text_never_splits_a_number(report_path, columns):
    report = json.load(open(report_path))
    text = _tlsprof("report", report_path, columns=columns)
    lines = text.splitlines()
    for above, below in zip(lines, lines[1:]):
        assert not (NUMBER_END.search(above.rstrip()) and NUMBER_START.search(below.lstrip())), (above, below)
    per = report["per_connection"]
    whole = [human_bytes(per["bytes"]), human_bytes(per["python_bytes"]), human_bytes(per["total_bytes"])]
    whole += [human_bytes(v) for v in per["by_cause"].values()]
    for site in sorted(report["sites"], key=lambda s: -s["live_bytes"])[:15]:
        whole.append(f"{os.path.basename(site['file'])}:{site['line']}")
    for token in whole:
        assert token in text, (columns, token)


def test_alike_connections_are_one_row(report_path):
    text = _tlsprof("report", report_path, columns=100)
    rows = [line for line in text.splitlines() if "× conn-" in line]
    assert rows, text
    grouped = sum(int(line.split("×")[0].split()[-1]) for line in rows)
    assert grouped >= CLIENTS - 4  # a few may differ (the first handshake's one-off state)
    assert "peers" in rows[0]
    assert "echo_server.py:" in rows[0]  # the line that created them (`180 × conn … created at X`)


def test_text_and_html_carry_the_python_side_and_the_memory(report_path, tmp_path):
    text = _tlsprof("report", report_path, columns=100)
    assert "+ Python side" in text and "largest part: asyncio's TLS read buffer" in text
    assert "Memory: RSS" in text and "OpenSSL heap" in text and "tlsprof tracker" in text
    html_path = str(tmp_path / "r.html")
    _tlsprof("report", report_path, "--html", html_path)
    page = open(html_path).read()
    assert "Memory: RSS" in page and "Python side" in page and "SSLProtocol._ssl_buffer" in page
    assert page.count('class="history-cause"') >= 3  # stacked by cause
    assert "white-space:nowrap" in page and "× conn-" in page
    assert "(right axis" in page and "(left axis" in page


def test_prometheus_and_diff_carry_the_python_side_and_the_memory(report_path):
    prom = _tlsprof("report", report_path, "--format", "prometheus")
    assert re.search(r'^tlsprof_memory_bytes\{part="openssl_heap",pid="\d+"\} ', prom, re.M)
    assert re.search(r"^tlsprof_connection_python_bytes\{pid=\"\d+\"\} 2[0-9.e+]+", prom, re.M)
    assert 'side="python"' in prom
    diff = _tlsprof("diff", report_path, report_path)
    assert "+ Python side" in diff and "OpenSSL heap" in diff and "Python, connections" in diff
