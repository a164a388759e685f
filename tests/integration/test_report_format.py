"""The report contract (tlsprof.report/1) and everything that reads it: load, validate, render,
`tlsprof report`. Reports here are built by hand only as reader input; nothing is measured."""

import io
import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlsprof import cli
from tlsprof.model.causes import CAUSES, DESCRIPTIONS, LABELS
from tlsprof.errors import BadReport
from tlsprof.analysis.findings import compute_findings
from tlsprof.render.text import human_bytes, render_text
from tlsprof.model.report_io import dumps, load_report, parse_report, save_report
from tlsprof.model.schema import SCHEMA_PATH, check_structure, load_schema, validate_report

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KiB = 1024
CA_STORE = 837 * KiB  # a Debian CA store, heap footprint


def build_report(contexts, conn_own=40 * KiB, partial=False, chosen="peak", extras=True):
    """contexts: list of (ca_store_bytes, connections, other_context_bytes)."""
    ctx_docs, conn_docs = [], []
    totals = dict.fromkeys(CAUSES, 0)
    conn_id = 0
    for cid, (ca, nconn, other) in enumerate(contexts, start=1):
        by_cause = {"ca_store": ca, "own_certificate": other}
        ctx = {"id": cid, "connections": nconn, "live_bytes": ca + other, "by_cause": by_cause}
        if extras:
            ctx.update(
                requested_bytes=(ca + other) * 9 // 10,
                live_blocks=(ca + other) // 70,
                ca_store_bytes=ca,
                alive=True,
                kind="server",
            )
        ctx_docs.append(ctx)
        for cause, b in by_cause.items():
            totals[cause] += b
        for _ in range(nconn):
            conn_id += 1
            cb = {"record_buffers": conn_own - 6 * KiB, "cipher_state": 4 * KiB, "bio": 2 * KiB}
            conn = {
                "id": conn_id,
                "context": cid,
                "fd": 6 + conn_id,
                "peer": f"127.0.0.1:{40000 + conn_id}",
                "state": "established",
                "age_s": 1.5 * conn_id,
                "live_bytes": conn_own,
                "by_cause": cb,
            }
            if extras:
                conn.update(
                    requested_bytes=conn_own - 512, live_blocks=30, since_attach=True, alive=True, kind="server"
                )
            conn_docs.append(conn)
            for cause, b in cb.items():
                totals[cause] += b
    n = len(conn_docs)
    own = conn_own if n else 0
    share = sum(c["live_bytes"] for c in ctx_docs if c["connections"]) / n if n else 0
    per_cause = {}
    if n:
        for cause in CAUSES:
            v = sum(c["by_cause"].get(cause, 0) for c in conn_docs) / n
            v += sum(c["by_cause"].get(cause, 0) for c in ctx_docs if c["connections"]) / n
            if v:
                per_cause[cause] = v
    live = sum(totals.values())
    doc = {
        "schema": "tlsprof.report/1",
        "tool": {"name": "tlsprof", "version": "0.1.0"},
        "partial": partial,
        "captured_at": "2026-11-26T10:41:00+00:00",
        "target": {
            "pid": 4242,
            "command": ["python3", "examples/echo_server.py", "--port", "8443"],
            "mode": "run",
            "openssl": "OpenSSL 3.0.19 27 Jan 2026",
            "rss_bytes": 64 * 1024 * KiB,
        },
        "totals": {"live_bytes": live, "live_blocks": live // 70, "by_cause": {c: b for c, b in totals.items() if b}},
        "per_connection": {
            "connections": n,
            "own_bytes": own,
            "context_share_bytes": share,
            "bytes": own + share,
            "by_cause": per_cause,
        },
        "contexts": ctx_docs,
        "connections": conn_docs,
        "sites": [
            {
                "file": "../crypto/x509/x_name.c",
                "line": 100,
                "cause": "ca_store",
                "live_bytes": totals["ca_store"] // 3,
                "live_blocks": 4000,
            },
            {
                "file": "../ssl/record/ssl3_buffer.c",
                "line": 73,
                "cause": "record_buffers",
                "live_bytes": totals["record_buffers"],
                "live_blocks": n * 2,
            },
            {
                "file": "../crypto/evp/evp_enc.c",
                "line": 93,
                "cause": "cipher_state",
                "live_bytes": totals["cipher_state"],
                "live_blocks": n * 3,
            },
        ],
        "findings": [],
    }
    if extras:
        doc["totals"].update(requested_bytes=live * 9 // 10, untracked_bytes=0)
        doc["per_connection"]["requested_bytes"] = (own + share) * 0.9
        doc["peak"] = {"chosen": chosen, "snapshots": 12, "live_bytes_at_peak": live}
        doc["history"] = [
            {"t": 0.0, "live_bytes": 0, "connections": 0},
            {"t": 1.0, "live_bytes": live, "connections": n},
        ]
        doc["process"] = {"live_bytes": 12 * KiB, "by_cause": {"other": 12 * KiB}}
        doc["notes"] = ["hand-built fixture for the reader tests"]
        for site in doc["sites"]:
            site.update(requested_bytes=site["live_bytes"] * 9 // 10, library="libcrypto.so.3")
    doc["findings"] = compute_findings(doc)
    return doc


def bad_report():
    """A context per connection, each with its own CA store: the seed's pattern."""
    return build_report([(CA_STORE, 1, 6 * KiB)] * 5)


def good_report():
    """One shared context serving many connections."""
    return build_report([(CA_STORE, 40, 6 * KiB)], chosen="last")


def minimal_report():
    """Only the required keys, no connections at all."""
    return build_report([], extras=False)


FIXTURES = {"bad": bad_report, "good": good_report, "minimal": minimal_report}


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), COLUMNS="80", NO_COLOR="1")
    return subprocess.run(
        [sys.executable, "-m", "tlsprof", *args], capture_output=True, text=True, env=env, timeout=60, cwd=REPO
    )


# ---- vocabulary and schema file ---------------------------------------------------------------


def test_cause_vocabulary_is_the_schema_enum_and_has_labels():
    assert list(CAUSES) == load_schema()["$defs"]["cause"]["enum"]
    assert len(set(CAUSES)) == len(CAUSES) == 14
    assert all(LABELS[c] and DESCRIPTIONS[c] for c in CAUSES)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixtures_pass_validate_report_and_jsonschema(name):
    jsonschema = pytest.importorskip("jsonschema")
    doc = FIXTURES[name]()
    validate_report(doc)
    validator = jsonschema.Draft202012Validator(load_schema())
    jsonschema.Draft202012Validator.check_schema(load_schema())
    assert list(validator.iter_errors(doc)) == []


def test_schema_file_is_packaged_beside_the_module():
    assert os.path.isfile(SCHEMA_PATH)
    assert SCHEMA_PATH.endswith(os.path.join("tlsprof", "model", "schema", "report.schema.json"))


# ---- validation rejects what the contract forbids --------------------------------------------


def _mutated(mutate):
    doc = bad_report()
    mutate(doc)
    return doc


BAD_DOCS = {
    "negative bytes": lambda d: d["totals"].__setitem__("live_bytes", -1),
    "negative cause bytes": lambda d: d["contexts"][0]["by_cause"].__setitem__("ca_store", -5),
    "unknown cause": lambda d: d["totals"]["by_cause"].__setitem__("zlib", 10),
    "missing totals": lambda d: d.pop("totals"),
    "missing connection state": lambda d: d["connections"][0].pop("state"),
    "bad state": lambda d: d["connections"][0].__setitem__("state", "open"),
    "bad mode": lambda d: d["target"].__setitem__("mode", "spawn"),
    "bool as bytes": lambda d: d["totals"].__setitem__("live_bytes", True),
    "string bytes": lambda d: d["sites"][0].__setitem__("live_bytes", "12"),
    "float cause bytes": lambda d: d["totals"]["by_cause"].__setitem__("ca_store", 1.5),
    "command not a list": lambda d: d["target"].__setitem__("command", "python3 x.py"),
    "bad severity": lambda d: d["findings"][0].__setitem__("severity", "fatal"),
    "contexts not a list": lambda d: d.__setitem__("contexts", {}),
    "bad peak": lambda d: d["peak"].__setitem__("chosen", "max"),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCS))
def test_validate_report_and_jsonschema_both_reject(case):
    doc = _mutated(BAD_DOCS[case])
    with pytest.raises(BadReport) as info:
        validate_report(doc)
    assert "\n" not in str(info.value)
    jsonschema = pytest.importorskip("jsonschema")
    assert not jsonschema.Draft202012Validator(load_schema()).is_valid(doc)


@pytest.mark.parametrize(
    "doc, words",
    [
        ([1, 2], "top level is a list"),
        ({"tool": {}}, "no 'schema' key"),
        ({"schema": "tlsprof.report/3"}, "not supported"),
        ({"schema": "memray/1"}, "not a tlsprof report"),
    ],
)
def test_foreign_documents_are_named_as_such(doc, words):
    with pytest.raises(BadReport, match=words):
        validate_report(doc)


def test_semantic_checks_beyond_the_json_schema():
    doc = bad_report()
    doc["captured_at"] = "yesterday-ish"
    with pytest.raises(BadReport, match="captured_at"):
        validate_report(doc)
    doc = bad_report()
    doc["per_connection"]["bytes"] += 10_000
    with pytest.raises(BadReport, match="own_bytes"):
        validate_report(doc)
    doc = bad_report()
    doc["totals"]["live_bytes"] = 2**70
    with pytest.raises(BadReport, match="out of range"):
        validate_report(doc)


# ---- saving and loading -----------------------------------------------------------------------


def test_save_then_load_round_trips_exactly(tmp_path):
    doc = bad_report()
    path = tmp_path / "r.json"
    save_report(doc, path)
    assert load_report(path) == doc
    assert json.loads(path.read_text()) == doc
    assert not [p for p in os.listdir(tmp_path) if p != "r.json"], "temp file left behind"


def test_save_refuses_an_invalid_report_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "r.json"
    save_report(good_report(), path)
    before = path.read_bytes()
    doc = bad_report()
    doc["totals"]["live_bytes"] = -3
    with pytest.raises(BadReport):
        save_report(doc, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["r.json"]


def test_json_format_re_emits_the_validated_document(tmp_path):
    doc = bad_report()
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))  # compact, as another writer might
    proc = run_cli("report", str(path), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == doc
    assert proc.stdout == dumps(doc)
    assert proc.stdout.startswith("{\n  ")


# ---- text rendering ---------------------------------------------------------------------------


def _render(doc, width=80):
    buf = io.StringIO()
    render_text(doc, file=buf, width=width)
    return buf.getvalue()


def test_text_shows_headline_causes_contexts_sites_and_finding():
    doc = bad_report()
    text = _render(doc, width=100)
    per = doc["per_connection"]
    headline = (
        f"5 connections · {human_bytes(per['bytes'])} per connection "
        f"(own {human_bytes(per['own_bytes'])} + context share "
        f"{human_bytes(per['context_share_bytes'])})"
    )
    assert headline in text
    assert "5 connections · 883.0 KiB per connection (own 40.0 KiB + context share 843.0 KiB)" in text
    narrow = _render(doc, width=80)
    assert "5 connections · 883.0 KiB per connection\n" in narrow
    assert "  (own 40.0 KiB + context share 843.0 KiB)\n" in narrow
    assert "CA store" in text and "record buffers" in text
    assert "Peak snapshot of 12 (4.3 MiB live)" in text
    assert "Top contexts (5 of 5, alike ones grouped)" in text
    assert "crypto/x509/x_name.c:100" in text
    assert "ca-store-per-connection" in text
    assert "SSL_new(ctx)" in text and "create_default_context()" in text
    assert "\x1b[" not in text, "colour codes in a non-terminal"


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_text_fits_80_columns(name):
    text = _render(FIXTURES[name]())
    too_wide = [line for line in text.splitlines() if len(line) > 80]
    assert too_wide == []


def test_text_of_healthy_report_has_no_findings_and_says_last_snapshot():
    text = _render(good_report())
    assert "40 connections ·" in text
    assert "No findings." in text
    assert "Last snapshot of 12" in text


def test_text_marks_partial_and_survives_no_connections():
    doc = minimal_report()
    doc["partial"] = True
    text = _render(doc)
    assert "PARTIAL REPORT" in text
    assert "0 connections · 0 B per connection" in text


def test_text_never_interprets_report_strings_as_markup():
    doc = bad_report()
    doc["sites"][0]["file"] = "[bold]x[/nope]"
    doc["target"]["command"] = ["[/]", "[red]"]
    doc["findings"][0]["detail"] = "[link=file:///etc]x[/link] [/]"
    text = _render(doc)
    assert "[/]" in text and "[/nope]" in text


def test_human_bytes():
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(837 * 1024) == "837.0 KiB"
    assert human_bytes(3 * 1024 * 1024 + 1) == "3.0 MiB"


def test_cli_text_output(tmp_path):
    path = tmp_path / "r.json"
    save_report(bad_report(), path)
    proc = run_cli("report", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "5 connections · " in proc.stdout
    assert "Each connection builds its own CA store" in proc.stdout
    assert proc.stderr == ""


# ---- corrupt and foreign files: exit 2, one line, no traceback --------------------------------


def _valid_bytes():
    return dumps(bad_report()).encode()


CORRUPT = {
    "truncated": lambda: _valid_bytes()[: len(_valid_bytes()) // 2],
    "binary garbage": lambda: bytes(range(256)) * 4,
    "wrong schema": lambda: json.dumps({**bad_report(), "schema": "heaptrack/3"}).encode(),
    "newer schema": lambda: json.dumps({**bad_report(), "schema": "tlsprof.report/3"}).encode(),
    "missing keys": lambda: json.dumps(
        {k: v for k, v in bad_report().items() if k not in ("totals", "sites")}
    ).encode(),
    "negative bytes": lambda: _valid_bytes().replace(b'"live_bytes": ', b'"live_bytes": -', 1),
    "list not object": lambda: json.dumps([bad_report()]).encode(),
    "empty": lambda: b"",
    "whitespace only": lambda: b"  \n",
    "NaN": lambda: _valid_bytes().replace(b'"age_s": 1.5', b'"age_s": NaN', 1),
    "trailing junk": lambda: _valid_bytes() + b"}",
    "deep nesting": lambda: b"[" * 100000 + b"]" * 100000,
}


def _assert_one_clean_error(proc, words=()):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tlsprof: ")
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0]
    assert proc.stdout == ""


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_file_gives_exit_2_and_one_line(tmp_path, case):
    path = tmp_path / "report.json"
    path.write_bytes(CORRUPT[case]())
    proc = run_cli("report", str(path))
    _assert_one_clean_error(proc, [str(path)])


def test_nonexistent_file_and_directory(tmp_path):
    proc = run_cli("report", str(tmp_path / "nope.json"))
    _assert_one_clean_error(proc, ["nope.json", "no such file"])
    proc = run_cli("report", str(tmp_path))
    _assert_one_clean_error(proc, ["directory"])


def test_specific_messages():
    data = _valid_bytes()
    with pytest.raises(BadReport, match="truncated JSON"):
        parse_report(data[:-3], "f.json")
    with pytest.raises(BadReport, match="empty file"):
        parse_report(b"", "f.json")
    with pytest.raises(BadReport, match="not supported"):
        parse_report(json.dumps({**bad_report(), "schema": "tlsprof.report/3"}).encode(), "f.json")
    with pytest.raises(BadReport, match=r"totals\.live_bytes: must be >= 0"):
        doc = bad_report()
        doc["totals"]["live_bytes"] = -1
        parse_report(json.dumps(doc).encode(), "f.json")


# ---- property: no input produces a traceback ---------------------------------------------------

VALID_TEXT = dumps(bad_report()).encode()
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(list(CAUSES) + ["handshake", "peak", "run", "tlsprof.report/1", "[/]"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


ALL_PATHS = [p for p in _paths(bad_report()) if p]


def _apply(doc, path, action, value):
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if action == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


@st.composite
def mutated_reports(draw):
    doc = bad_report()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(ALL_PATHS))
        action = draw(st.sampled_from(["set", "delete"]))
        try:
            _apply(doc, path, action, draw(JSON_VALUES))
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed or replaced the parent
    return doc


def _run_in_process(tmp_path, data: bytes, capsys, fmt="text"):
    path = tmp_path / "r.json"
    path.write_bytes(data)
    code = cli.main(["report", str(path), "--format", fmt])
    out, err = capsys.readouterr()
    assert code in (0, 2)
    if code == 2:
        assert len(err.splitlines()) == 1 and err.startswith("tlsprof: ")
    else:
        assert err == ""
    return code


SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@SETTINGS
@given(cut=st.integers(min_value=0, max_value=len(VALID_TEXT)))
def test_truncations_never_raise(tmp_path, capsys, cut):
    code = _run_in_process(tmp_path, VALID_TEXT[:cut], capsys)
    assert code == 2 or cut >= len(VALID_TEXT.rstrip())


@SETTINGS
@given(pos=st.integers(min_value=0, max_value=len(VALID_TEXT) - 1), byte=st.integers(0, 255))
def test_byte_flips_never_raise(tmp_path, capsys, pos, byte):
    data = bytearray(VALID_TEXT)
    data[pos] = byte
    _run_in_process(tmp_path, bytes(data), capsys)


@SETTINGS
@given(doc=mutated_reports(), fmt=st.sampled_from(["text", "json"]))
def test_mutated_reports_never_raise(tmp_path, capsys, doc, fmt):
    _run_in_process(tmp_path, json.dumps(doc).encode(), capsys, fmt)


@settings(max_examples=200, deadline=None)
@given(doc=mutated_reports())
def test_structure_checker_agrees_with_jsonschema(doc):
    jsonschema = pytest.importorskip("jsonschema")
    expected = jsonschema.Draft202012Validator(load_schema()).is_valid(doc)
    try:
        check_structure(doc)
        ours = True
    except BadReport:
        ours = False
    assert ours == expected


def test_text_marks_pre_attach_connections_and_freed_contexts():
    doc = bad_report()
    doc["target"]["mode"] = "attach"
    doc["connections"][0].update(since_attach=False, age_s=None, peer=None, fd=9)
    doc["contexts"][0]["alive"] = False
    doc["contexts"][1]["by_cause"]["ca_store"] = 3.0  # 3.0 is an integer in JSON Schema
    validate_report(doc)
    text = _render(doc)
    assert "1*" in text and "opened before attach" in text
    assert "fd 9" in text
    assert "1 (freed)" in text


def test_one_connection_is_singular():
    text = _render(build_report([(CA_STORE, 1, 0)]))
    assert "1 connection · " in text
