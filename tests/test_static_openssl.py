"""OpenSSL linked statically into another object (issue: statically linked OpenSSL): pip's
cryptography wheel under pyOpenSSL/Twisted, node's `tls`; and Debian's Twisted on the system libssl."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from reportcheck import load_checked
from tlsenv import EXAMPLES_DIR, start_clients

TLSPROF = [sys.executable, "-m", "tlsprof"]
TWISTED_SERVER = os.path.join(EXAMPLES_DIR, "twisted_echo_server.py")
NODE_SERVER = os.path.join(EXAMPLES_DIR, "node_echo_server.js")


def _wait_file(path, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and os.path.getsize(path):
            return open(path).read().strip()
        assert proc.poll() is None, "exited early"
        time.sleep(0.1)
    raise AssertionError(f"{path} not written")


def _profile(cmd, ready, report, n, tmp_path):
    """Run cmd under `tlsprof run --at last`, open n client connections, stop it the way a user
    does (SIGTERM to tlsprof: one last look, the Python agent asked afresh, then the signal goes to
    the target; SIGKILL to the target if it does not exit), load the report."""
    errors = open(tmp_path / "tlsprof.err", "w+")
    tool = subprocess.Popen([*TLSPROF, "run", "-o", str(report), "--interval", "0.3", "--at", "last", "--", *cmd],
                            stdout=subprocess.DEVNULL, stderr=errors, text=True)
    clients = None
    try:
        port = int(_wait_file(ready, tool))
        clients = start_clients(port, n, interval=2)
        time.sleep(2.0)
        import psutil
        target = psutil.Process(tool.pid).children()[0]
        tool.send_signal(signal.SIGTERM)
        try:
            tool.wait(30)
        except subprocess.TimeoutExpired:
            target.send_signal(signal.SIGKILL)
            tool.wait(60)
    finally:
        if clients:
            clients.stop()
        if tool.poll() is None:
            tool.kill()
            tool.wait()
    errors.seek(0)
    report = load_checked(report)
    report["_stderr"] = errors.read()
    return report


def _copy(report, kind):
    return next(c for c in report["openssl_copies"] if c["kind"] == kind)


def test_twisted_from_pip_static_cryptography_openssl(tmp_path, cert_dir):
    pytest.importorskip("twisted")
    pytest.importorskip("OpenSSL")
    ready = tmp_path / "ready"
    report = _profile([sys.executable, TWISTED_SERVER, "--certdir", cert_dir, "--ready-file", str(ready)],
                      ready, tmp_path / "twisted.json", 100, tmp_path)
    copy = _copy(report, "static-symtab")
    assert copy["path"].endswith("_rust.abi3.so") and copy["tracking"] == "mem-functions"
    assert copy["connections"] == 100  # counted from their Python objects
    est = copy["estimated_bytes_per_connection"]
    assert est["estimate"] is True and est["bytes"] > 10_000
    assert copy["by_cause"].get("record_buffers", 0) > 100 * 16_000  # pyOpenSSL keeps its buffers
    assert copy["by_cause"].get("cipher_state", 0) > 0
    sites = [s for s in report["sites"] if s["library"] == "_rust.abi3.so"]
    assert sites and sum(s["live_bytes"] for s in sites) == copy["live_bytes"]
    assert any("process-wide" in n for n in report["notes"])
    # said at start, too: which copies are tracked and how
    assert "_rust.abi3.so (static-symtab): tracked through its own allocator" in report["_stderr"]
    assert "libcrypto.so.3 (shared): tracked per connection" in report["_stderr"]


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3") or subprocess.run(
    ["/usr/bin/python3", "-c", "import twisted, OpenSSL"], capture_output=True).returncode != 0,
    reason="needs Debian's python3-twisted and python3-openssl (make test installs them)")
def test_twisted_from_debian_uses_the_system_libssl(tmp_path, cert_dir):
    ready = tmp_path / "ready"
    report = _profile(["/usr/bin/python3", TWISTED_SERVER, "--certdir", cert_dir, "--ready-file", str(ready)],
                      ready, tmp_path / "debian-twisted.json", 100, tmp_path)
    assert [c["kind"] for c in report["openssl_copies"]] == ["shared"]
    assert report["per_connection"]["connections"] == 100  # measured per connection, through the hooks
    assert report["per_connection"]["by_cause"].get("record_buffers", 0) > 16_000
    assert all(c["state"] == "established" for c in report["connections"])
    # the Python agent joins pyOpenSSL's objects to the SSL* the shim tracks (issue: Python linkage)
    assert report["python"]["join"] == "on"
    assert all((c.get("python") or {}).get("type") == "OpenSSL.SSL.Connection" for c in report["connections"])


def _node_is_static():
    node = shutil.which("node")
    if not node:
        return False
    out = subprocess.run(["nm", "-D", "--defined-only", node], capture_output=True, text=True)
    return " CRYPTO_set_mem_functions" in out.stdout


@pytest.mark.skipif(not _node_is_static(), reason="needs a node that links OpenSSL statically (nodesource)")
def test_node_tls_echo_server_static_openssl(tmp_path, cert_pair):
    cert, key = cert_pair
    ready = tmp_path / "ready"
    report = _profile(["node", NODE_SERVER, cert, key, "0", str(ready)], ready, tmp_path / "node.json", 100,
                      tmp_path)
    copy = _copy(report, "static-exported")
    assert copy["tracking"] == "mem-functions" and os.path.basename(copy["path"]).startswith("node")
    assert copy["live_bytes"] > 1_000_000
    sites = [s for s in report["sites"] if s["library"] == os.path.basename(copy["path"])]
    assert any("ssl/" in s["file"] for s in sites)
    assert copy["by_cause"].get("cipher_state", 0) > 0  # causes from call sites alone
    assert any("process-wide" in n for n in report["notes"])


@pytest.mark.skipif(not _node_is_static() or not shutil.which("gdb"), reason="needs static node and gdb")
def test_attach_to_node_says_what_cannot_be_seen(tmp_path, cert_pair):
    cert, key = cert_pair
    ready = tmp_path / "ready"
    node = subprocess.Popen(["node", NODE_SERVER, cert, key, "0", str(ready)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_file(ready, node)
        out = subprocess.run([*TLSPROF, "attach", str(node.pid), "--duration", "1"], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 5
        line, = out.stderr.strip().splitlines()
        assert "statically" in line and "node" in line
        assert node.poll() is None
    finally:
        node.kill()
        node.wait()
