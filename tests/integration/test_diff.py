"""`tlsprof diff A.json B.json`: two real reports of the seed server (before/after adding
connections, and shared context vs a context per connection), --fail-on-growth, corrupt input."""

import json
import subprocess
import sys
import time

import pytest

from tlsenv import ECHO_SERVER, Proc, start_clients

TLSPROF = [sys.executable, "-m", "tlsprof"]


def tlsprof(*args):
    return subprocess.run([*TLSPROF, *args], capture_output=True, text=True, timeout=60)


def profile_seed(path, cert_dir, n, *server_args):
    """The seed echo server under `tlsprof run` with n idle clients; returns the report path."""
    server = Proc(
        [
            *TLSPROF,
            "run",
            "-o",
            str(path),
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
            *server_args,
        ],
        script=ECHO_SERVER,
    )
    clients = None
    try:
        port = int(server.wait_ready(60))
        clients = start_clients(port, n, interval=1.0)
        time.sleep(1.5)
    finally:
        server.stop_target()
        if clients is not None:
            clients.stop()
    assert path.exists(), server.describe()
    return str(path)


@pytest.fixture(scope="module")
def reports(tmp_path_factory, cert_pair):
    import os

    cert_dir = os.path.dirname(cert_pair[0])
    d = tmp_path_factory.mktemp("diff")
    return {
        "few": profile_seed(d / "few.json", cert_dir, 10),
        "many": profile_seed(d / "many.json", cert_dir, 40),
        "per_conn": profile_seed(d / "per_conn.json", cert_dir, 10, "--ctx-per-conn"),
    }


def load(path):
    with open(path) as f:
        return json.load(f)


def test_diff_after_adding_connections(reports):
    r = tlsprof("diff", reports["few"], reports["many"], "--format", "json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    few, many = load(reports["few"]), load(reports["many"])
    assert d["connections"]["before"] == few["per_connection"]["connections"]
    assert d["connections"]["after"] == many["per_connection"]["connections"]
    assert d["connections"]["delta"] > 0
    assert d["contexts"] == {"before": 1, "after": 1, "delta": 0, "pct": 0.0, "new": False}
    assert d["totals"]["live_bytes"]["before"] == few["totals"]["live_bytes"]
    assert d["totals"]["live_bytes"]["after"] == many["totals"]["live_bytes"]
    assert d["totals"]["live_bytes"]["delta"] > 0
    row = d["per_connection"]["bytes"]
    assert (row["before"], row["after"]) == (few["per_connection"]["bytes"], many["per_connection"]["bytes"])
    assert set(d["per_connection"]["by_cause"]) == (
        set(few["per_connection"]["by_cause"]) | set(many["per_connection"]["by_cause"])
    )
    assert d["new_findings"] == [] and d["failed"] is False
    # the shared context is spread over more connections: per-connection bytes do not grow much
    assert tlsprof("diff", reports["few"], reports["many"], "--fail-on-growth", "25").returncode == 0


def test_diff_text_names_counts_causes_and_verdict(reports):
    r = tlsprof("diff", reports["few"], reports["per_conn"], "--fail-on-growth", "50")
    assert r.returncode == 1, r.stdout + r.stderr
    for text in (
        "connections",
        "contexts",
        "Per connection",
        "CA store",
        "Totals",
        "New findings",
        "ca-store-per-connection",
        "limit +50%): FAIL",
    ):
        assert text in r.stdout, (text, r.stdout)


def test_fail_on_growth_when_each_connection_gets_a_context(reports):
    plain = tlsprof("diff", reports["few"], reports["per_conn"], "--format", "json")
    assert plain.returncode == 0  # without the flag, growth is reported, not failed
    d = json.loads(plain.stdout)
    assert d["per_connection"]["bytes"]["pct"] > 100
    assert d["contexts"]["after"] >= 10
    assert [f["id"] for f in d["new_findings"]] == ["ca-store-per-connection"]
    assert d["per_connection"]["by_cause"]["ca_store"]["delta"] > 500 * 1024
    assert tlsprof("diff", reports["few"], reports["per_conn"], "--fail-on-growth", "10").returncode == 1
    # the other way round it shrank: fine for CI, and the finding is listed as gone
    back = tlsprof("diff", reports["per_conn"], reports["few"], "--fail-on-growth", "10", "--format", "json")
    assert back.returncode == 0
    assert [f["id"] for f in json.loads(back.stdout)["resolved_findings"]] == ["ca-store-per-connection"]
    assert tlsprof("diff", reports["few"], reports["few"], "--fail-on-growth", "0").returncode == 0


@pytest.mark.parametrize(
    "content,expect",
    [
        (b'{"schema": "tlsprof.report/1", "tool":', "truncated JSON"),
        (b"not json at all", "not valid JSON"),
        (b"", "empty file"),
        (b'{"schema": "tlsprof.report/9"}', "not supported"),
    ],
)
def test_corrupt_input_is_one_line_exit_2(tmp_path, reports, content, expect):
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    for args in ((reports["few"], str(bad)), (str(bad), reports["few"])):
        r = tlsprof("diff", *args)
        assert r.returncode == 2
        assert r.stdout == ""
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tlsprof: ") and str(bad) in lines[0], r.stderr
        assert expect in lines[0]


def test_missing_file_and_bad_threshold(tmp_path, reports):
    r = tlsprof("diff", reports["few"], str(tmp_path / "nope.json"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "no such file" in r.stderr
    r = tlsprof("diff", reports["few"], reports["few"], "--fail-on-growth", "-5")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
