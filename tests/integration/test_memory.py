"""The RSS explained: the report's `memory` section splits the target's RSS into measured parts
(OpenSSL heap, the Python side of connections, the rest of the malloc heap, stacks, tlsprof's
tracker, file-backed pages) and names the largest per-connection part on either side."""

import threading

from test_causes import _profiled_seed_server
from tlsprof.analysis.memory import account
from tlsprof.collect.process_memory import read_process


def test_memory_parts_add_up_to_the_rss_and_name_asyncios_read_buffer(tmp_path, cert_dir):
    report = _profiled_seed_server(tmp_path, cert_dir, 60)
    memory = report["memory"]
    parts = {p["name"]: p["bytes"] for p in memory["parts"]}
    assert abs(sum(parts.values()) - memory["rss_bytes"]) <= 0.05 * memory["rss_bytes"], memory
    assert parts["openssl_heap"] == report["totals"]["live_bytes"]
    assert parts["tlsprof_tracker"] > 0 and parts["file_backed"] > 0 and parts["thread_stacks"] > 0
    per = memory["per_connection"]
    assert per["connections"] >= 57
    assert per["largest"]["side"] == "python"
    assert per["largest"]["name"] == "asyncio.sslproto.SSLProtocol._ssl_buffer"
    assert 256 * 1024 <= per["largest"]["bytes"] < 300 * 1024
    assert per["total_bytes"] == per["native_bytes"] + per["python_bytes"]


def test_thread_stacks_are_found_in_smaps_of_this_process():
    before = read_process(_own_pid())
    stop = threading.Event()
    threads = [threading.Thread(target=stop.wait, args=(30,)) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        during = read_process(_own_pid())
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    # every live thread's stack is found (glibc may keep exited threads' stacks mapped: >=)
    assert during["threads"] >= before["threads"] + 4 - 1  # another test's thread may have ended
    assert during["stacks_found"] >= during["threads"]
    assert during["rss"] == during["anonymous"] + during["file_backed"]


def test_account_never_explains_more_than_it_measured():
    report = {"totals": {"live_bytes": 5000, "python_bytes": 0}, "per_connection": {"connections": 0}}
    process = {
        "rss": 10000,
        "anonymous": 4000,
        "file_backed": 6000,
        "thread_stacks": 0,
        "stacks_found": 1,
        "threads": 1,
    }
    section = account(report, process, {"tracker_bytes": 100, "malloc_in_use": 6000, "malloc_free": 900})
    parts = {p["name"]: p["bytes"] for p in section["parts"]}
    assert parts["malloc_free"] == 0 and parts["other_anonymous"] == 0  # nothing left to explain
    assert "not resident" in section["note"]
    assert account(report, None, {}) is None


def _own_pid():
    import os

    return os.getpid()


def test_demo_table_carries_the_python_side_and_the_memory_parts():
    import subprocess
    import sys

    env = dict(__import__("os").environ, COLUMNS="80", NO_COLOR="1")
    out = subprocess.run(
        [sys.executable, "-m", "tlsprof", "demo", "-n", "20"], capture_output=True, text=True, timeout=240, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    for words in (
        "+ Python side",
        "= total per connection",
        "asyncio buffer",
        "CA store",
        "target RSS",
        "OpenSSL heap",
        "tlsprof tracker",
        "code and files",
    ):
        assert words in text, (words, text)
