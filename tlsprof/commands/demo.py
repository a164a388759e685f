"""`tlsprof demo`: the seed's echo server under the profiler with 200 clients, once with one shared
context and once with a context per connection; prints the two headlines side by side and the finding.

Uses the example programs shipped in the package (examples/ in the repository).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

from rich.console import Console
from rich.table import Table

from tlsprof.collect import launch
from tlsprof.model.causes import LABELS
from tlsprof.errors import TlsprofError
from tlsprof.render.text import MEMORY_LABELS, human_bytes
from tlsprof.analysis.reports import ReportSource
from tlsprof.collect.session import Session

EXAMPLES = os.path.dirname(os.path.abspath(str(__import__("tlsprof._examples", fromlist=["x"]).__file__)))
MODES = (("shared context", []), ("context per connection", ["--ctx-per-conn"]))


def prepare_parser(p):
    p.add_argument("-n", "--connections", type=int, default=200, help="client connections (default 200)")
    p.add_argument("-o", "--output-dir", metavar="DIR", help="also write both JSON reports here")


def _wait_file(path, proc, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return open(path).read().strip()
        if proc.poll() is not None:
            raise TlsprofError(f"demo: the {what} exited early (status {proc.returncode})")
        time.sleep(0.1)
    raise TlsprofError(f"demo: the {what} was not ready after {timeout:.0f}s")


def _profile(label, server_args, n, workdir, err):
    channel_dir = launch.private_dir()
    ready = os.path.join(workdir, f"ready-{len(server_args)}")
    cready = ready + ".clients"
    server_cmd = [
        sys.executable,
        os.path.join(EXAMPLES, "echo_server.py"),
        "--port",
        "0",
        "--ready-file",
        ready,
        "--certdir",
        workdir,
        *server_args,
    ]
    server = launch.spawn(server_cmd, channel_dir, stdout=subprocess.DEVNULL)
    client = None
    try:
        port = _wait_file(ready, server, 30, "echo server")
        session = Session(channel_dir, server.pid, server_cmd, mode="run")
        err.print(f"[bold]{label}[/]: server pid {server.pid}, opening {n} connections…")
        client = subprocess.Popen(
            [
                sys.executable,
                os.path.join(EXAMPLES, "echo_client.py"),
                "--port",
                port,
                "-n",
                str(n),
                "--interval",
                "2",
                "--ready-file",
                cready,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _wait_file(cready, client, 120, "client")
        for i in range(3):  # a few snapshots with every connection established
            session.poll(fresh_agent=i == 2)
            time.sleep(0.5)
        return ReportSource(session).report(at="last")
    finally:
        for p in (client, server):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(channel_dir, ignore_errors=True)


def run(args) -> int:
    err = Console(stderr=False, highlight=False)
    started = time.monotonic()
    reports = []
    with tempfile.TemporaryDirectory(prefix="tlsprof-demo-") as workdir:
        for label, server_args in MODES:
            reports.append(_profile(label, server_args, args.connections, workdir, err))
    if args.output_dir:
        from tlsprof.model.report_io import save_report

        os.makedirs(args.output_dir, exist_ok=True)
        for (label, _), report in zip(MODES, reports):
            path = os.path.join(args.output_dir, label.replace(" ", "-") + ".json")
            save_report(report, path)
            err.print(f"report written to {path}")
    _print(err, reports)
    err.print(f"[dim]demo finished in {time.monotonic() - started:.0f}s[/]")
    return 0


def _part(memory, name):
    return next((p["bytes"] for p in memory.get("parts") or [] if p["name"] == name), 0)


def _largest(largest):
    if not largest:
        return "-"
    if largest["name"].endswith("SSLProtocol._ssl_buffer"):
        name = "asyncio buffer"
    else:
        name = LABELS.get(largest["name"], largest["name"]) if largest["side"] == "native" else largest["name"]
    return f"{name} {human_bytes(largest['bytes'])}"


def _print(out, reports):
    table = Table(title="OpenSSL memory per TLS connection of the seed echo server (asyncio)")
    table.add_column("", no_wrap=True)
    for label, _ in MODES:
        table.add_column(label, justify="right", no_wrap=True)
    per = [r["per_connection"] for r in reports]
    table.add_row("connections", *[str(p["connections"]) for p in per])
    table.add_row("contexts", *[str(len(r["contexts"])) for r in reports])
    table.add_row("[bold]bytes per connection[/]", *[f"[bold]{human_bytes(p['bytes'])}[/]" for p in per])
    table.add_row("  own", *[human_bytes(p["own_bytes"]) for p in per])
    table.add_row("  context share", *[human_bytes(p["context_share_bytes"]) for p in per])
    causes = sorted({c for p in per for c in p["by_cause"]}, key=lambda c: -max(p["by_cause"].get(c, 0) for p in per))
    for c in causes:
        table.add_row(f"  {LABELS.get(c, c)}", *[human_bytes(p["by_cause"].get(c, 0)) for p in per])
    mem = [(r.get("memory") or {}) for r in reports]
    mem_per = [m.get("per_connection") or {} for m in mem]
    if any(m.get("python_bytes") for m in mem_per):
        table.add_row("[bold]+ Python side[/]", *[human_bytes(m.get("python_bytes", 0)) for m in mem_per])
        table.add_row("[bold]= total per connection[/]", *[human_bytes(m.get("total_bytes", 0)) for m in mem_per])
    if any(m.get("largest") for m in mem_per):
        table.add_row("largest part", *[_largest(m.get("largest")) for m in mem_per])
    table.add_row("target RSS", *[human_bytes(r["target"]["rss_bytes"] or 0) for r in reports])
    names = [p["name"] for p in (mem[0].get("parts") or [])]
    for name in names:
        table.add_row(f"  {MEMORY_LABELS.get(name, name)}", *[human_bytes(_part(m, name)) for m in mem])
    out.print(table)
    for (label, _), r in zip(MODES, reports):
        if not r["findings"]:
            out.print(f"{label}: no findings")
        for f in r["findings"]:
            out.print(f"{label}: [bold]{f['severity']}[/] {f['title']} ({f['id']})")
            out.print(f"  {f['detail']}")
            out.print(f"  fix: {f['fix']}")
