"""Bytes stay right when glibc's malloc is not what hands OpenSSL its memory (issue 13, item 2):
a server that gives OpenSSL its own allocator (CRYPTO_set_mem_functions, a header in front of each
block), and jemalloc/tcmalloc preloaded for the whole process. Each case is compared with a count
made without tlsprof: the server's own allocator counter, or the process allocator's statistics,
read from inside the server (tests/servers/own_alloc_server.c)."""

import os
import signal

import pytest

from reportcheck import load_checked
from servers.own_alloc import start_own_alloc_server
from tlsenv import start_clients
from test_run import settle, tlsprof_run

CONNECTIONS = 200
LIBDIR = "/usr/lib/x86_64-linux-gnu"
JEMALLOC = os.path.join(LIBDIR, "libjemalloc.so.2")
TCMALLOC = os.path.join(LIBDIR, "libtcmalloc_minimal.so.4")

# (server's OpenSSL allocator, LD_PRELOAD, the ground-truth counter, expected tracker.byte_measure)
CASES = {
    "own-allocator": ("own", None, "own_live_bytes", "requested"),
    "glibc": ("system", None, "mallinfo_uordblks", "glibc_footprint"),
    "jemalloc": ("system", JEMALLOC, "jemalloc_allocated", "usable_size"),
    "tcmalloc": ("system", TCMALLOC, "tcmalloc_allocated", "usable_size"),
}


def measure(tmp_path, case):
    """200 idle connections under `tlsprof run`; returns (report, ground truth bytes per connection)."""
    allocator, preload, counter, _ = CASES[case]
    if preload and not os.path.exists(preload):
        pytest.skip(f"{preload} is not installed (Makefile DEB_PACKAGES)")
    report_path = tmp_path / f"{case}.json"
    env = {"LD_PRELOAD": preload} if preload else None
    server = start_own_alloc_server(wrapper=tlsprof_run(report_path, at="last"), allocator=allocator, env=env)
    clients = None
    try:
        before = server.counts()
        clients = start_clients(server.port, CONNECTIONS, interval=60)
        settle()
        after = server.counts()
        assert after["established"] == CONNECTIONS, after
        settle(1.0)  # a snapshot of the same steady state the counters saw
        os.kill(server.target_pid(), signal.SIGKILL)  # no teardown between the last snapshot and the report
        server.proc.wait(30)
    finally:
        if clients is not None:
            clients.stop()
        server.stop()
    assert counter in after, f"the server did not report {counter}: {after}"
    return load_checked(report_path), (after[counter] - before[counter]) / CONNECTIONS


@pytest.mark.parametrize("case", list(CASES))
def test_bytes_per_connection_match_an_independent_count(tmp_path, case):
    report, truth = measure(tmp_path, case)
    per = report["per_connection"]
    assert per["connections"] == CONNECTIONS
    assert report["tracker"]["byte_measure"] == CASES[case][3]
    said = [n for n in report["notes"] if "tracker.byte_measure" in n]
    assert len(said) == (0 if CASES[case][3] == "glibc_footprint" else 1), report["notes"]
    # the connections' own bytes are what appeared in the allocator when they were opened (the
    # context existed before); the process-wide counters also see the server's and the shim's own
    # few hundred bytes per connection
    assert abs(per["own_bytes"] - truth) <= 0.25 * truth, (per, truth)
    assert 0 < per["requested_bytes"] <= per["own_bytes"]


def test_own_allocator_blocks_are_counted_at_their_requested_size(tmp_path):
    """The server's allocator counts exactly what OpenSSL requested: tlsprof's totals, taken from
    the same idle state, must agree to within a few blocks in flight (not merely ±25 %)."""
    report, truth = measure(tmp_path, "own-allocator")
    per = report["per_connection"]
    assert per["requested_bytes"] == per["own_bytes"]
    assert report["totals"]["requested_bytes"] == report["totals"]["live_bytes"]
    assert abs(per["own_bytes"] - truth) <= 0.02 * truth, (per, truth)


@pytest.mark.skipif(not os.path.exists("/usr/bin/gdb"), reason="attach needs gdb")
def test_attach_to_a_server_that_already_set_its_own_allocator(tmp_path):
    """Attach comes long after CRYPTO_set_mem_functions: the measure is decided from what OpenSSL
    reports (CRYPTO_get_mem_functions) at the first allocation the hooks see."""
    import subprocess
    import sys
    from test_report_never_lost import StderrReader, wait_for

    report_path = tmp_path / "attach.json"
    server = start_own_alloc_server(allocator="own")
    clients = tlsprof = None
    try:
        tlsprof = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tlsprof",
                "attach",
                str(server.target_pid()),
                "-o",
                str(report_path),
                "--interval",
                "0.3",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        err = StderrReader(tlsprof)
        wait_for(lambda: "attached to pid" in err.text() or tlsprof.poll() is not None, 120, "the attach")
        assert tlsprof.poll() is None, err.text(5)
        before = server.counts()
        clients = start_clients(server.port, CONNECTIONS, interval=60)
        settle()
        after = server.counts()
        settle(1.0)
        tlsprof.send_signal(signal.SIGTERM)
        assert tlsprof.wait(60) == 0, err.text(5)
        assert server.alive()
    finally:
        if tlsprof is not None and tlsprof.poll() is None:
            tlsprof.kill()
            tlsprof.wait()
        if clients is not None:
            clients.stop()
        server.stop()
    truth = (after["own_live_bytes"] - before["own_live_bytes"]) / CONNECTIONS
    report = load_checked(report_path)
    per = report["per_connection"]
    assert per["connections"] == CONNECTIONS
    assert report["tracker"]["byte_measure"] == "requested"
    assert abs(per["own_bytes"] - truth) <= 0.25 * truth, (per, truth)
