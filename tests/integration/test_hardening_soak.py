"""Hardening: the CI version of the soak (bench/soak.py; the 30-minute run is not for CI).

2 minutes: 1,000 client connections churning against the seed's echo server while tlsprof attaches
and detaches every 20 s (60 s in longer runs). Zero failed handshakes, every attach produced a report, the target lives,
and its RSS after warm-up stays within the soak's slack. TLSPROF_SOAK_MINUTES overrides the length
(e.g. 30 for the full soak through pytest).
"""

import json
import os
import subprocess
import sys

import pytest

SOAK = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench", "soak.py")


@pytest.mark.timeout(0)  # bounded below by subprocess.run(timeout=...)
def test_soak_ci_version_churn_with_attach_detach(tmp_path):
    if not os.path.exists("/usr/bin/gdb"):
        pytest.skip("gdb needed for attach")
    minutes = float(os.environ.get("TLSPROF_SOAK_MINUTES", "2"))
    out = tmp_path / "soak.json"
    p = subprocess.run(
        [
            sys.executable,
            SOAK,
            "--minutes",
            str(minutes),
            "--connections",
            "1000",
            "--attach-every",
            "20" if minutes <= 5 else "60",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=minutes * 60 + 240,
    )
    summary = json.loads(out.read_text())
    brief = {k: v for k, v in summary.items() if k != "rss_samples"}
    assert summary["checks"]["no_failed_handshakes"], brief
    assert summary["checks"]["attaches_ok"], brief
    assert summary["checks"]["target_alive"], brief
    samples = summary["rss_samples"]  # (s, KiB), thinned: the curve says growth from a spike
    assert summary["checks"]["rss_flat"], {**brief, "rss_samples": samples[:: max(1, len(samples) // 40)]}
    assert p.returncode == 0, p.stderr[-2000:]
