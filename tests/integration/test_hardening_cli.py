"""Hardening: bad input. Every subcommand with missing or invalid arguments is a usage error (exit 2,
no traceback); `tlsprof diff` fed malformed, truncated or mutated JSON (hypothesis) says so in one
line and exits 2, never a traceback. (The report reader's own fuzzing is in test_report_format.py.)
"""

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlsprof import cli

from test_report_format import bad_report, good_report

HAVE_DIFF = os.path.exists(os.path.join(os.path.dirname(cli.__file__), "commands", "diff.py"))

BAD_ARGS = {
    "no command": [],
    "unknown command": ["frobnicate"],
    "run no cmd": ["run"],
    "run only dashes": ["run", "--"],
    "run bad interval": ["run", "--interval", "abc", "--", "true"],
    "run zero interval": ["run", "--interval", "0", "--", "true"],
    "run negative interval": ["run", "--interval", "-1", "--", "true"],
    "run bad at": ["run", "--at", "middle", "--", "true"],
    "run bad format": ["run", "--format", "xml", "--", "true"],
    "run -o no value": ["run", "-o"],
    "attach no pid": ["attach"],
    "attach pid not int": ["attach", "abc"],
    "attach pid zero": ["attach", "0"],
    "attach pid negative": ["attach", "-5"],
    "attach bad duration": ["attach", "1", "--duration", "x"],
    "attach zero duration": ["attach", "1", "--duration", "0"],
    "attach bad interval": ["attach", "1", "--interval", "0"],
    "attach unknown option": ["attach", "1", "--frob"],
    "detach no pid": ["detach"],
    "detach pid not int": ["detach", "pid"],
    "detach pid zero": ["detach", "0"],
    "report no file": ["report"],
    "report bad format": ["report", "x.json", "--format", "yaml"],
    "report extra arg": ["report", "a.json", "b.json"],
    "diff no files": ["diff"],
    "diff one file": ["diff", "a.json"],
    "diff bad growth": ["diff", "a.json", "b.json", "--fail-on-growth", "lots"],
    "diff negative growth": ["diff", "a.json", "b.json", "--fail-on-growth", "-3"],
    "diff bad format": ["diff", "a.json", "b.json", "--format", "html"],
    "demo unknown option": ["demo", "--frob"],
}


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tlsprof", *args], capture_output=True, text=True, timeout=60)


def test_every_subcommand_has_a_bad_args_case():
    covered = {v[0] for v in BAD_ARGS.values() if v}
    for name in cli.COMMANDS:
        assert name in covered, f"no bad-argument case for `tlsprof {name}`"


@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_missing_or_invalid_arguments_are_usage_errors(case):
    argv = BAD_ARGS[case]
    if argv and argv[0] == "diff" and not HAVE_DIFF:
        pytest.skip("tlsprof diff not built yet")
    p = run_cli(*argv)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    assert p.stderr.strip(), "a usage error must say something"
    # argparse's usage block (may wrap) then one error line, or just the one error line
    assert p.stderr.strip().splitlines()[-1].startswith("tlsprof: ")


# ---- diff, fuzzed in-process (a subprocess per example would be too slow) ----


def _diff(a_bytes, b_bytes, tmp):
    a, b = os.path.join(tmp, "a.json"), os.path.join(tmp, "b.json")
    with open(a, "wb") as f:
        f.write(a_bytes)
    with open(b, "wb") as f:
        f.write(b_bytes)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = cli.main(["diff", a, b])
        except SystemExit as exc:
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


VALID = json.dumps(good_report()).encode()


def _mutations():
    leaf = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=20)
    )
    return leaf


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return str(tmp_path_factory.mktemp("diff-fuzz"))


def _assert_clean_reject(rc, out, err):
    assert rc == 2, (rc, out[:300], err[:300])
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tlsprof: ")


@pytest.mark.skipif(not HAVE_DIFF, reason="tlsprof diff not built yet")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=len(VALID) - 1), which=st.booleans())
def test_diff_truncated_report_exit_2(scratch, cut, which):
    bad = VALID[:cut]
    rc, out, err = _diff(bad, VALID, scratch) if which else _diff(VALID, bad, scratch)
    _assert_clean_reject(rc, out, err)


@pytest.mark.skipif(not HAVE_DIFF, reason="tlsprof diff not built yet")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_diff_arbitrary_bytes_exit_2(scratch, data):
    rc, out, err = _diff(data, VALID, scratch)
    _assert_clean_reject(rc, out, err)


def _paths(doc, prefix=()):
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


PATHS = list(_paths(good_report()))


@pytest.mark.skipif(not HAVE_DIFF, reason="tlsprof diff not built yet")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), value=_mutations(), drop=st.booleans())
def test_diff_mutated_report_never_tracebacks(scratch, path, value, drop):
    doc = good_report()
    node = doc
    for k in path[:-1]:
        node = node[k]
    if drop and isinstance(node, dict):
        node.pop(path[-1])
    else:
        node[path[-1]] = value
    try:
        data = json.dumps(doc).encode()
    except ValueError:
        return
    rc, out, err = _diff(data, json.dumps(bad_report()).encode(), scratch)
    # a mutation may leave a valid report: then diff works (0); else one clean line, exit 2
    assert "Traceback" not in err
    if rc == 0:
        assert out
    else:
        _assert_clean_reject(rc, out, err)
