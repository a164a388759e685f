"""Findings computed from hand-built report dicts (reader input only; nothing is measured)."""

import pytest

from tlsprof.model.causes import CAUSES
from tlsprof.analysis.findings import CA_MIN_STORE_BYTES, REGISTRY, compute_findings, finding
from tlsprof.model.schema import validate_report

KiB = 1024
MiB = 1024 * KiB
CA_STORE = 837 * KiB


def report_with(contexts, conn_own=40 * KiB):
    """contexts: list of (ca_store_bytes, live connections[, alive]); a valid tlsprof.report/1."""
    ctx_docs, conn_docs = [], []
    for cid, spec in enumerate(contexts, start=1):
        ca, nconn = spec[0], spec[1]
        ctx = {
            "id": cid,
            "connections": nconn,
            "live_bytes": ca + 4 * KiB,
            "by_cause": {"ca_store": ca, "own_certificate": 4 * KiB},
            "ca_store_bytes": ca,
        }
        if len(spec) > 2:
            ctx["alive"] = spec[2]
        ctx_docs.append(ctx)
        for _ in range(nconn):
            conn_docs.append(
                {
                    "id": len(conn_docs) + 1,
                    "context": cid,
                    "fd": None,
                    "peer": None,
                    "state": "established",
                    "age_s": 3.0,
                    "live_bytes": conn_own,
                    "by_cause": {"record_buffers": conn_own},
                }
            )
    n = len(conn_docs)
    ctx_live = sum(c["live_bytes"] for c in ctx_docs if c["connections"])
    share = ctx_live / n if n else 0
    own = conn_own if n else 0
    live = sum(c["live_bytes"] for c in ctx_docs) + own * n
    ca_total = sum(c["ca_store_bytes"] for c in ctx_docs)
    by_cause = {"ca_store": ca_total, "own_certificate": 4 * KiB * len(ctx_docs), "record_buffers": own * n}
    per_cause = {}
    if n:
        per_cause = {c: sum(x["by_cause"].get(c, 0) for x in ctx_docs if x["connections"]) / n for c in CAUSES}
        per_cause["record_buffers"] += own
    return {
        "schema": "tlsprof.report/1",
        "tool": {"name": "tlsprof", "version": "0.1.0"},
        "partial": False,
        "captured_at": "2026-11-26T10:00:00Z",
        "target": {"pid": 99, "command": ["server"], "mode": "attach", "openssl": None, "rss_bytes": None},
        "totals": {"live_bytes": live, "live_blocks": 1000, "by_cause": by_cause},
        "per_connection": {
            "connections": n,
            "own_bytes": own,
            "context_share_bytes": share,
            "bytes": own + share,
            "by_cause": per_cause,
        },
        "contexts": ctx_docs,
        "connections": conn_docs,
        "sites": [],
        "findings": [],
    }


def only(findings, finding_id="ca-store-per-connection"):
    return [f for f in findings if f["id"] == finding_id]


def test_context_per_connection_trips_with_numbers_and_fix():
    report = report_with([(CA_STORE, 1)] * 6)
    validate_report(report)
    [f] = only(compute_findings(report))
    assert f["bytes_per_connection"] == CA_STORE
    assert f["saving_bytes"] == 5 * (CA_STORE + 4 * KiB)  # the other contexts, whole
    assert f["evidence"]["ca_store_saving_bytes"] == 5 * CA_STORE
    assert f["evidence"]["contexts"] == 6 and f["evidence"]["connections"] == 6
    assert "6 live contexts" in f["detail"] and "837.0 KiB" in f["detail"]
    for api in ("ssl.create_default_context()", "OpenSSL.SSL.Context", "SSL_CTX", "SSL_new(ctx)"):
        assert api in f["fix"]
    report["findings"] = [f]
    validate_report(report)  # the finding itself fits the contract


def test_two_connections_per_context_still_trips():
    [f] = only(compute_findings(report_with([(CA_STORE, 2)] * 4)))
    assert f["bytes_per_connection"] == pytest.approx(CA_STORE / 2)
    assert f["saving_bytes"] == 3 * (CA_STORE + 4 * KiB)


def test_many_contexts_is_critical_few_is_warning():
    assert only(compute_findings(report_with([(CA_STORE, 1)] * 50)))[0]["severity"] == "critical"
    assert only(compute_findings(report_with([(CA_STORE, 1)] * 2)))[0]["severity"] == "warning"


@pytest.mark.parametrize(
    "contexts",
    [
        pytest.param([(CA_STORE, 300)], id="one shared context, many connections"),
        pytest.param([(CA_STORE, 1)], id="one context, one connection"),
        pytest.param([(CA_STORE, 150), (CA_STORE, 150)], id="two busy contexts"),
        pytest.param([(CA_STORE, 3)] * 4, id="three connections per context"),
        pytest.param([(0, 1)] * 20, id="contexts without CA store"),
        pytest.param([(CA_MIN_STORE_BYTES, 1)] * 20, id="CA store at the threshold"),
        pytest.param([(CA_STORE, 0)] * 5 + [(CA_STORE, 40)], id="idle contexts are not per connection"),
        pytest.param([(CA_STORE, 1, False)] * 5, id="freed contexts"),
        pytest.param([], id="no contexts"),
    ],
)
def test_healthy_shapes_do_not_trip(contexts):
    report = report_with(contexts)
    validate_report(report)
    assert only(compute_findings(report)) == []


def test_falls_back_to_by_cause_when_ca_store_bytes_is_absent():
    report = report_with([(CA_STORE, 1)] * 3)
    for ctx in report["contexts"]:
        del ctx["ca_store_bytes"]
    [f] = only(compute_findings(report))
    assert f["bytes_per_connection"] == CA_STORE


def test_existing_findings_key_is_ignored():
    report = report_with([(CA_STORE, 1)] * 3)
    report["findings"] = [{"id": "stale"}]
    assert [f["id"] for f in compute_findings(report)] == ["ca-store-per-connection"]


def test_registry_plugs_in_new_findings():
    @finding("test-always")
    def always(report):
        return {
            "id": "test-always",
            "severity": "info",
            "title": "t",
            "detail": "d",
            "bytes_per_connection": None,
            "fix": "f",
        }

    try:
        ids = [f["id"] for f in compute_findings(report_with([(CA_STORE, 1)] * 3))]
        assert ids == ["ca-store-per-connection", "test-always"]  # warning sorts before info
        with pytest.raises(ValueError):
            finding("test-always")(always)
    finally:
        REGISTRY.pop("test-always", None)
