"""The live view, headless (Textual's pilot), on a real echo server profiled as `tlsprof run` does:
the shim preloaded with a private channel directory, a Session polling it from this process."""

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tlsenv import ECHO_SERVER
from tlsprof.collect import launch
from tlsprof.analysis.reports import ReportSource
from tlsprof.collect.session import Session
from tlsprof.collect.target import Target
from tlsprof.commands.live import live_app as LiveApp, run_live
from tlsprof.render.live import PAGE_SIZE, ConnectionScreen, PagedTable, QuitScreen, ViewData, sparkline

pytestmark = pytest.mark.timeout(180)

WAIT = 60.0  # bounded waits for data to show up (never a timing assertion)


class ProfiledServer:
    """The seed echo server started with the shim preloaded (launch.preload_env, as `run` does)."""

    def __init__(self, cert_dir, tmp_path, *server_args):
        self.channel_dir = launch.private_dir()
        ready = tmp_path / "ready"
        self.log = open(tmp_path / "server.log", "wb")
        self.cmd = [
            sys.executable,
            ECHO_SERVER,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--ready-file",
            str(ready),
            "--certdir",
            cert_dir,
            *server_args,
        ]
        self.proc = subprocess.Popen(
            self.cmd,
            env=launch.preload_env(self.channel_dir),
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not (ready.exists() and ready.read_text().strip()):
            assert self.proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "server not ready"
            time.sleep(0.05)
        self.port = int(ready.read_text())

    def session(self, mode="run"):
        return Session(self.channel_dir, self.proc.pid, self.cmd, mode=mode)

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.channel_dir, ignore_errors=True)


@pytest.fixture
def server(request, cert_dir, tmp_path):
    s = ProfiledServer(cert_dir, tmp_path, *(getattr(request, "param", None) or []))
    yield s
    s.stop()


def _args(**kw):
    return argparse.Namespace(
        interval=kw.pop("interval", 0.3), output=kw.pop("output", None), at=kw.pop("at", "peak"), **kw
    )


async def _until(pilot, predicate, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.1)


def _conn_count(app):
    return app.data.report["per_connection"]["connections"] if app.data else -1


def _run(coro):
    return asyncio.run(coro)


def test_tables_fill_with_the_real_connections_and_causes(server, spawn):
    spawn.clients(server.port, 12, interval=1.0)
    session = server.session()
    app = LiveApp(session, server.proc, _args())

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await _until(pilot, lambda: _conn_count(app) == 12, "12 connections")
            await pilot.pause(0.2)
            head = _text(app.query_one("#head"))
            assert "12 connections" in head and f"pid {server.proc.pid}" in head
            # the header carries the Python side and the RSS explained (issue: causes and accounting)
            await _until(pilot, lambda: "RSS = " in _text(app.query_one("#head")), "the RSS parts in the header")
            await _until(
                pilot, lambda: "+ Python side" in _text(app.query_one("#head")), "the Python side in the header"
            )
            causes = _text(app.query_one("#causes"))
            # Python sets SSL_MODE_RELEASE_BUFFERS: idle connections hold no record buffers
            assert "CA store" in causes and "cipher state" in causes and "█" in causes
            await pilot.press("2")
            table = app.query_one("#conn-table", PagedTable)
            assert table.row_count == 12
            assert all(str(r.id).startswith("conn-") for r in table.view)
            # the rows are the report's connections (asyncio: peer/fd when the shim can tell)
            assert {(str(r.id), r.fd, r.peer or None) for r in table.view} == {
                (c["id"], c["fd"], c["peer"]) for c in app.data.report["connections"]
            }
            await pilot.press("3")
            ctx = app.query_one("#ctx-table", PagedTable)
            assert ctx.row_count >= 1
            shared = max(ctx.view, key=lambda r: r.conns)
            assert shared.conns == 12 and shared.ca > 0  # one shared context holds the CA store
            assert app.is_running

    _run(scenario())


@pytest.mark.parametrize("server", [["--threaded"]], indirect=True)
def test_sorting_filtering_and_drill_down(server, spawn):
    """Threaded server (SSLSocket): connections have an fd and a peer to filter on."""
    spawn.clients(server.port, 8, interval=1.0)
    session = server.session()
    app = LiveApp(session, server.proc, _args())

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await _until(pilot, lambda: _conn_count(app) == 8, "8 connections")
            await pilot.press("2")
            await pilot.pause(0.2)
            table = app.query_one("#conn-table", PagedTable)
            # every column sorts, both ways; the table shows the sorted order
            for i, (_, _, key, _) in enumerate(table.columns_spec):
                table.sort_by(i) if table.sort_index != i else None
                for _ in range(2):
                    keys = [key(r) for r in table.view]
                    assert keys == sorted(keys, reverse=table.descending)
                    shown = [table.coordinate_to_cell_key((n, 0)).row_key.value for n in range(table.row_count)]
                    assert shown == [str(r.id) for r in table.view]
                    await pilot.press("r")
            assert app.focused is table, app.focused
            # `o` moves to the next column
            before = table.sort_index
            await pilot.press("o")
            assert table.sort_index == (before + 1) % len(table.columns_spec)

            # filter by peer: one connection's port
            target = table.view[0]
            await pilot.press("slash")
            for ch in target.peer.split(":")[1]:
                await pilot.press(ch)
            await pilot.press("enter")
            await pilot.pause(0.2)
            assert [r.id for r in table.view] == [target.id]
            # filter by cause label, then clear
            await pilot.press("slash", "ctrl+u")
            for ch in "record":
                await pilot.press(ch)
            await pilot.press("enter")
            assert len(table.view) == 8
            await pilot.press("slash", "ctrl+u", "enter")
            assert table.filter == "" and len(table.view) == 8

            # drill into the connection under the cursor
            table.focus()
            table.move_cursor(row=2)
            chosen = table.current_id()
            await pilot.press("enter")
            await pilot.pause(0.2)
            assert isinstance(app.screen, ConnectionScreen) and app.screen.conn_id == chosen
            for _ in range(50):  # the connection's own call sites arrive from the shim off the UI thread
                if app.screen.sites is not None:
                    break
                await pilot.pause(0.1)
            text = _text(app.screen.query_one("#detail"))
            assert "own" in text and "context share" in text and "cipher state" in text
            assert "shared by 8 connection(s)" in text
            assert "Call sites of this connection" in text and "≈" in text
            assert app.screen.sites and all(site["blocks"] > 0 for site in app.screen.sites)
            head = _text(app.screen.query_one("#detail-head"))
            assert chosen in head and "127.0.0.1:" in head
            await pilot.press("escape")
            assert not isinstance(app.screen, ConnectionScreen)

    _run(scenario())


def _text(widget) -> str:
    return _plain(widget.content)


def _plain(renderable) -> str:
    from rich.console import Console

    console = Console(width=120, record=True, file=open(os.devnull, "w"))
    console.print(renderable)
    return console.export_text()


def test_q_in_attach_mode_quits_at_once_and_leaves_the_target_running(server, spawn):
    """With a pid target (attach), `q` ends the view immediately; the caller then detaches."""
    spawn.clients(server.port, 3, interval=1.0)
    session = server.session(mode="attach")
    app = LiveApp(session, server.proc.pid, _args())

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await _until(pilot, lambda: _conn_count(app) == 3, "3 connections")
            assert "(attach)" in _text(app.query_one("#head"))
            await pilot.press("q")
            await pilot.pause(0.1)
        return app.return_value

    assert _run(scenario()) == "quit"
    assert server.proc.poll() is None  # the target runs on


def test_q_in_run_mode_asks_then_terminates_and_keeps_the_data(server, spawn):
    spawn.clients(server.port, 2, interval=1.0)
    session = server.session()
    app = LiveApp(session, server.proc, _args())

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await _until(pilot, lambda: _conn_count(app) == 2, "2 connections")
            await pilot.press("q")
            await pilot.pause(0.1)
            assert isinstance(app.screen, QuitScreen)
            await pilot.press("escape")  # stay
            assert not isinstance(app.screen, QuitScreen) and app.is_running
            await pilot.press("q", "t")
            await pilot.pause(0.1)
        return app.return_value

    assert _run(scenario()) == "wait"
    assert server.proc.wait(10) == 0  # SIGTERM: the echo server closes and exits 0
    # the data stays: a snapshot may land while the server closes its connections after SIGTERM,
    # so the history (not only the last snapshot) must show both connections
    assert session.last is not None and max(h["connections"] for h in session.history) == 2


def test_target_exit_is_shown_and_the_last_data_kept(server, spawn, tmp_path):
    spawn.clients(server.port, 4, interval=1.0)
    session = server.session()
    out = tmp_path / "saved.json"
    app = LiveApp(session, server.proc, _args(output=str(out)))

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await _until(pilot, lambda: _conn_count(app) == 4, "4 connections")
            await pilot.press("s")  # save a report snapshot now, to -o
            await _until(pilot, lambda: app.saved, "the saved report")
            # SIGKILL: no graceful close, so the last snapshot still has the 4 connections
            os.kill(server.proc.pid, signal.SIGKILL)
            await _until(pilot, lambda: app.exited, "the exit to be noticed")
            await pilot.pause(0.2)
            head = _text(app.query_one("#head"))
            assert "TARGET EXITED (signal 9)" in head
            assert "4 connections" in head  # the last data stays
            await pilot.press("2")
            assert app.query_one("#conn-table", PagedTable).row_count == 4
            await pilot.press("q")  # no question once it has exited
            await pilot.pause(0.1)
        return app.return_value

    assert _run(scenario()) == "exited"
    saved = json.loads(out.read_text())
    assert saved["schema"] == "tlsprof.report/2" and saved["per_connection"]["connections"] == 4


def test_run_live_without_a_terminal_collects_and_returns_the_exit_status(server, spawn, capsys):
    spawn.clients(server.port, 2, interval=1.0)
    session = server.session()
    os.kill(server.proc.pid, signal.SIGTERM)
    rc = run_live(session, server.proc, _args())  # pytest's stdout is not a tty
    assert rc == 0
    assert "not a terminal" in capsys.readouterr().err


def test_paging_bounds_the_rows_held_by_the_table(server):
    """10,000 connections: the table holds one page; paging walks the rest (synthetic rows on top
    of a real report, so the test needs no 10k sockets)."""
    session = server.session()
    deadline = time.monotonic() + WAIT
    while session.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    report = dict(ReportSource(session).latest_report())
    report["connections"] = [
        {
            "id": f"conn-{i}",
            "context": None,
            "fd": None,
            "peer": f"127.0.0.1:{10000 + i % 50000}",
            "state": "established",
            "age_s": float(i % 100),
            "live_bytes": 1000 + i,
            "context_share_bytes": 0,
            "by_cause": {"record_buffers": 1000 + i},
        }
        for i in range(10_000)
    ]
    data = ViewData(report, session.history, time.time())
    app = LiveApp(session, server.proc, _args(interval=3600))

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            app.poller.stop()  # only the synthetic data from here on
            app.poller.join(10)
            new_data = __import__("tlsprof.render.live", fromlist=["NewData"]).NewData
            app.post_message(new_data(data))
            await pilot.press("2")
            table = app.query_one("#conn-table", PagedTable)
            for _ in range(300):  # a poll still in flight when stopped may land after ours: post again
                if app.data is data and table.row_count:
                    break
                if app.data is not data:
                    app.post_message(new_data(data))
                await pilot.pause(0.1)
            await _until(pilot, lambda: app.data is data and table.row_count, "the synthetic rows")
            assert len(table.view) == 10_000 and table.row_count == PAGE_SIZE
            assert table.current_id() == "conn-9999"  # bytes, largest first
            await pilot.press("]")
            assert table.page == 1 and table.row_count == PAGE_SIZE
            assert str(table.view[PAGE_SIZE].id) == table.current_id()
            assert "rows 201–400 of 10000" in table.status()
            await pilot.press("[")
            assert table.page == 0

    _run(scenario())


def test_target_accepts_popen_pid_or_callable(server):
    assert Target(server.proc).alive() and Target(server.proc.pid).alive()
    assert Target(server.proc.pid, is_alive=lambda: False).alive() is False
    assert Target(server.proc.pid).returncode() is None


def test_sparkline_scales_to_the_largest_value():
    assert sparkline([0, 5, 10], 10) == "▁▅█"
    assert sparkline([1, 2, 3, 4], 2) == "▆█"
    assert sparkline([], 5) == ""
