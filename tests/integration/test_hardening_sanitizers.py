"""Hardening: the shim under AddressSanitizer and ThreadSanitizer, 8 threads of TLS at once.

The shim's sources are built with -fsanitize into a separate .so (tests/shim_harness/build.py) and
preloaded with the sanitizer runtime into a Python workload (tests/shim_harness/workload.py): 8
threads doing handshakes and I/O on shared and private contexts while the main thread takes
snapshots over the channel. Only reports whose stack shows a shim frame (hooks/*.c) count: Python
and OpenSSL are not built with the sanitizer. Counts must be consistent at the end: every tracked
block is in exactly one owner and one site, and nothing was dropped.
"""

import json
import os
import re
import subprocess
import sys
import tempfile

import pytest

from shim_harness import build as shim_build
from tlsprof.collect.client import parse_snapshot

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKLOAD = os.path.join(HERE, "shim_harness", "workload.py")


def _run_workload(env_extra, cert_pair, tmp_path, rounds=30):
    chan = tempfile.mkdtemp(prefix="tlsprof-san-")  # 0700, ours
    env = dict(os.environ, TLSPROF_DIR=chan, **env_extra)
    proc = subprocess.run(
        [sys.executable, WORKLOAD, *cert_pair, "--threads", "8", "--rounds", str(rounds), "--snapshots"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fd_table_race(rep):
    """TSan models a file descriptor as memory: the snapshot thread's fcntl/fstat of a connection's
    fd (put_facts, put_owner: the kernel's view of it) "races" with the target closing that fd. The kernel makes
    that safe (EBADF, or another file whose inode tells it apart); nothing in memory is shared."""
    if "Location is file descriptor" not in rep:
        return False
    accesses = rep.split("Location is file descriptor")[0]  # the two stacks, not thread creation
    shim_frames = re.findall(r"#\d+ (\S+) \S*hooks/", accesses)
    return bool(shim_frames) and set(shim_frames) <= {
        "put_facts",
        "put_owner",
        "format_peer",
        "snapshot",
        "serve",
        "channel_serve",  # serve's name since the listener moved to hooks/listener.c (b4232a0)
        "listen_loop",
    }


def _racing_stacks(rep):
    """A ThreadSanitizer report's two access stacks, without the sections after them (where the
    block was allocated, where a mutex or a thread was created): a race between two OpenSSL
    accesses to a block the shim's CRYPTO_malloc hook allocated names hooks/ only in the
    allocation stack, and is OpenSSL's, not the shim's."""
    cut = re.search(r"\n\s*(Location is |Mutex M\d+ |Thread T\d+ )", rep)
    stacks = rep[: cut.start()] if cut else rep
    # an access whose first frame is the allocator itself (ThreadSanitizer shows a block's malloc as
    # its previous write) is that allocation too, whoever called malloc (CI, 2026-12-03: OpenSSL's
    # ASN1_STRING_cmp on one thread against ASN1_STRING_set's realloc on another)
    sections = re.split(r"\n[ \t]*\n", stacks)
    return "\n\n".join(s for s in sections if not _ALLOCATOR_ACCESS.search(s))


_ALLOCATOR_ACCESS = re.compile(r"#0 (malloc|calloc|realloc) \S*tsan_interceptors")


def shim_reports(log_dir):
    """Sanitizer reports (text) whose stack includes a frame in hooks/*.c (for ThreadSanitizer,
    a racing access's stack; fd-table races of the snapshot's fd facts aside, see _fd_table_race)."""
    out = []
    for name in os.listdir(log_dir):
        text = open(os.path.join(log_dir, name), errors="replace").read()
        for rep in re.split(r"={10,}\n", text):
            tsan = "WARNING: ThreadSanitizer" in rep
            if (
                (tsan or "ERROR: AddressSanitizer" in rep or "runtime error" in rep)
                and "hooks/" in (_racing_stacks(rep) if tsan else rep)
                and not _fd_table_race(rep)
            ):
                out.append(rep)
    return out


def assert_counts_consistent(result):
    assert result["ok"], result["errors"]
    assert result["handshakes"] == 8 * 30
    snap = parse_snapshot(result["final"])
    blocks = snap.stats["blocks"]
    assert blocks > 0
    assert sum(o.live_blocks for o in snap.owners) == blocks
    assert sum(s.blocks for s in snap.sites) == blocks
    assert snap.stats["untracked_blocks"] == 0
    # no counter went negative: every free matched a block we had counted
    assert all(c.blocks >= 0 and c.bytes >= 0 for o in snap.owners for c in o.by_cause.values())


@pytest.mark.parametrize("kind", ["thread", "address"])
def test_eight_threads_under_sanitizer_zero_shim_reports_and_consistent_counts(kind, cert_pair, tmp_path):
    if shim_build.runtime(kind) is None:
        pytest.skip(f"no {kind} sanitizer runtime for gcc (apt-get install libtsan2 libasan8)")
    so = shim_build.build(kind, str(tmp_path / f"shim_{kind}.so"))
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {"LD_PRELOAD": shim_build.preload(kind, so)}
    if kind == "thread":
        env["TSAN_OPTIONS"] = f"report_signal_unsafe=0 halt_on_error=0 exitcode=0 log_path={logs}/tsan"
    else:
        env["ASAN_OPTIONS"] = f"detect_leaks=0 halt_on_error=0 log_path={logs}/asan"
    result = _run_workload(env, cert_pair, tmp_path)
    reports = shim_reports(str(logs))
    assert not reports, f"{len(reports)} sanitizer report(s) in the shim; first:\n{reports[0][:4000]}"
    assert_counts_consistent(result)
    assert result["snapshots"] >= 1  # the listener read counters while the hooks wrote them


def test_eight_threads_plain_build_consistent_counts(cert_pair, tmp_path):
    from tlsprof.collect.shim import shim_path

    result = _run_workload({"LD_PRELOAD": shim_path()}, cert_pair, tmp_path)
    assert_counts_consistent(result)
