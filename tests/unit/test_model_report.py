"""The model fed a parsed fixed snapshot: the report's shape, the per-connection sums and the causes,
with no server and no shim (tests/wire_text.py holds the text)."""

from reportcheck import check_report
from tlsprof.model.wire import parse_snapshot
from tlsprof.analysis.report import build_report
from wire_text import SNAPSHOT, replace_line

PROCESS_BYTES = 8000 + 300000
CONTEXT_BYTES = 800000 + 12000
CONNECTION_BYTES = 34000 + 900 + 8500


def report_of(text=SNAPSHOT):
    return build_report(parse_snapshot(text), command=["server"], mode="run")


def test_the_report_is_valid_and_totals_every_owner():
    report = check_report(report_of())
    assert report["schema"] == "tlsprof.report/2" and report["partial"] is False
    assert report["target"]["pid"] == 4242 and report["target"]["openssl"] == "OpenSSL 3.0.19 27 Jan 2026"
    totals = report["totals"]
    assert totals["live_bytes"] == PROCESS_BYTES + CONTEXT_BYTES + 2 * CONNECTION_BYTES
    assert totals["live_blocks"] == 40 + 5000 + 11000 + 170 + 2 * 23
    assert totals["by_cause"] == {
        "ca_store": 800000,
        "record_buffers": 68000,
        "handshake": 1800,
        "connection": 17000,
        "context": 12000,
        "thread_state": 8000,
        "library": 300000,
    }
    assert totals["untracked_bytes"] == 16
    assert report["process"]["live_bytes"] == PROCESS_BYTES


def test_each_connection_carries_its_own_bytes_and_its_share_of_the_context():
    report = report_of()
    conns = {c["id"]: c for c in report["connections"]}
    assert set(conns) == {"conn-7", "conn-8"}
    a = conns["conn-7"]
    assert (a["context"], a["fd"], a["peer"], a["state"], a["live_bytes"], a["live_blocks"]) == (
        "ctx-1",
        9,
        "127.0.0.1:40312",
        "established",
        CONNECTION_BYTES,
        23,
    )
    assert a["by_cause"] == {"record_buffers": 34000, "handshake": 900, "connection": 8500}
    assert a["context_share_bytes"] == CONTEXT_BYTES // 2
    assert (a["fd_open"], a["fd_inode"], a["predates_attach"]) == (True, 1234567, False)
    assert conns["conn-8"]["predates_attach"] is True and conns["conn-8"]["state"] == "handshake"


def test_per_connection_is_the_mean_of_own_bytes_plus_context_share():
    per = report_of()["per_connection"]
    assert per["connections"] == 2
    assert per["own_bytes"] == CONNECTION_BYTES
    assert per["context_share_bytes"] == CONTEXT_BYTES // 2
    assert per["bytes"] == CONNECTION_BYTES + CONTEXT_BYTES // 2
    assert per["by_cause"] == {
        "ca_store": 400000,
        "record_buffers": 34000,
        "handshake": 900,
        "connection": 8500,
        "context": 6000,
    }
    assert sum(per["by_cause"].values()) == per["bytes"]


def test_contexts_and_sites():
    report = report_of()
    (ctx,) = report["contexts"]
    assert (ctx["id"], ctx["connections"], ctx["live_bytes"], ctx["ca_store_bytes"], ctx["release_buffers"]) == (
        "ctx-1",
        2,
        CONTEXT_BYTES,
        800000,
        True,
    )
    sites = report["sites"]
    assert [s["live_bytes"] for s in sites] == sorted((s["live_bytes"] for s in sites), reverse=True)
    assert sum(s["live_bytes"] for s in sites) == report["totals"]["live_bytes"]
    assert {s["file"] for s in sites if s["library"] is None} == {"my dir/ssl_lib.c"}


def test_the_byte_measure_is_named_by_the_shims_vocabulary():
    assert report_of()["tracker"]["byte_measure"] == "glibc_footprint"
    text = replace_line(
        SNAPSHOT, "measures=glibc_footprint,usable_size,requested", "measures=requested,usable_size,glibc_footprint"
    )
    assert report_of(text)["tracker"]["byte_measure"] == "requested"
    text = replace_line(SNAPSHOT, "measures=glibc_footprint,", "measures=sampled,")
    assert report_of(text)["tracker"]["byte_measure"] == "unknown"
