"""OpenSSL linked statically into another object (issue: statically linked OpenSSL): pip's
cryptography wheel under pyOpenSSL/Twisted, node's `tls`; and Debian's Twisted on the system libssl."""

import json
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


def _profile(cmd, ready, report, n, tmp_path, client_args=()):
    """Run cmd under `tlsprof run --at last`, open n client connections, stop it the way a user
    does (SIGTERM to tlsprof: one last look, the Python agent asked afresh, then the signal goes to
    the target; SIGKILL to the target if it does not exit), load the report."""
    errors = open(tmp_path / "tlsprof.err", "w+")
    tool = subprocess.Popen(
        [*TLSPROF, "run", "-o", str(report), "--interval", "0.3", "--at", "last", "--", *cmd],
        stdout=subprocess.DEVNULL,
        stderr=errors,
        text=True,
    )
    clients, lost_before_stop = None, None
    try:
        port = int(_wait_file(ready, tool))
        clients = start_clients(port, n, *client_args, interval=2)
        time.sleep(2.0)
        import psutil

        target = psutil.Process(tool.pid).children()[0]
        lost_before_stop = "connection lost" in clients.stderr()
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
    report["_clients_lost_before_stop"] = lost_before_stop
    return report


def _walk_digest(report) -> str:
    """What the last look's walk did, short enough for pytest to print whole (a node run counted
    0 and 132 of 200 connections twice in CI, never alone); the full report goes to stdout."""
    print(json.dumps({k: v for k, v in report.items() if k not in ("sites",)}, indent=1, default=str)[:20000])
    w = report.get("walk") or {}
    keys = (
        "status",
        "reason",
        "contexts",
        "connections",
        "faults",
        "bad_regions",
        "chunks",
        "heap_bytes",
        "walk_ms_total",
    )
    return (
        f"report: {report['per_connection']['connections']} connections; walk: "
        + ", ".join(f"{k}={w.get(k)}" for k in keys if k in w)
        + f"; clients lost a connection before the stop: {report.get('_clients_lost_before_stop')}"
    )


def _copy(report, kind):
    return next(c for c in report["openssl_copies"] if c["kind"] == kind)


def test_twisted_from_pip_static_cryptography_openssl(tmp_path, cert_dir):
    """pip's cryptography wheel under pyOpenSSL and Twisted (OpenSSL inside `_rust.abi3.so`, its
    symbols in .symtab only): the copy's allocations are tracked through its own allocator, and the
    heap walk at the last look tells the connections apart. Every connection is measured (no
    estimate label) and joined to its `OpenSSL.SSL.Connection`. Cross-check, independent of the
    walk's ownership: the copy's tracked bytes, minus what belongs to the process, over the
    connections the Python side counts, are within 15 % of the walked bytes per connection."""
    pytest.importorskip("twisted")
    pytest.importorskip("OpenSSL")
    n = 100
    ready = tmp_path / "ready"
    report = _profile(
        [sys.executable, TWISTED_SERVER, "--certdir", cert_dir, "--ready-file", str(ready)],
        ready,
        tmp_path / "twisted.json",
        n,
        tmp_path,
    )
    copy = _copy(report, "static-symtab")
    assert copy["path"].endswith("_rust.abi3.so") and copy["tracking"] == "mem-functions"
    assert copy["per_connection"] is True and copy["ownership"] == "heap walk"
    assert "estimated_bytes_per_connection" not in copy
    per = report["per_connection"]
    assert per["connections"] >= 0.95 * n and per["measured"] == "walked"
    conns = [c for c in report["connections"] if c["measured"] == "walked"]
    assert len(conns) >= 0.95 * n
    assert all((c.get("python") or {}).get("type") == "OpenSSL.SSL.Connection" for c in conns)
    # and the line that made each one, as for ssl's objects (the agent wraps pyOpenSSL's __init__
    # once the target imports it): Twisted's TLS protocol builds them
    made = [c["python"].get("created_by") for c in conns]
    assert all(m and any("/twisted/" in f["file"] for f in m) for m in made), made[:2]
    assert all(c["python"].get("created_by_source") == "run" for c in conns)
    assert per["by_cause"].get("record_buffers", 0) > 16_000  # pyOpenSSL keeps its buffers
    process_wide = sum(copy["by_cause"].get(c, 0) for c in ("library", "thread_state"))
    tracked_per_connection = (copy["live_bytes"] - process_wide) / per["connections"]
    assert abs(per["bytes"] - tracked_per_connection) <= 0.15 * tracked_per_connection, (per, copy)
    sites = [s for s in report["sites"] if s["library"] == "_rust.abi3.so"]
    assert sites and sum(s["live_bytes"] for s in sites) == copy["live_bytes"]
    assert any("heap walk" in n for n in report["notes"])
    # said at start, too: which copies are tracked and how
    assert "_rust.abi3.so (static-symtab): tracked through its own allocator" in report["_stderr"]
    assert "libcrypto.so.3 (shared): tracked per connection" in report["_stderr"]


@pytest.mark.skipif(
    not os.path.exists("/usr/bin/python3")
    or subprocess.run(["/usr/bin/python3", "-c", "import twisted, OpenSSL"], capture_output=True).returncode != 0,
    reason="needs Debian's python3-twisted and python3-openssl (make test installs them)",
)
def test_twisted_from_debian_uses_the_system_libssl(tmp_path, cert_dir):
    ready = tmp_path / "ready"
    report = _profile(
        ["/usr/bin/python3", TWISTED_SERVER, "--certdir", cert_dir, "--ready-file", str(ready)],
        ready,
        tmp_path / "debian-twisted.json",
        100,
        tmp_path,
    )
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


# ------------------------------------------------------------------------------------------ node
# node (nodesource, official) links OpenSSL 3 into its executable and exports its symbols; nothing
# hooks its internal calls. Ownership comes from the heap walk (docs/openssl-copies.md).

NODE_CONNECTIONS = 200
TOLERANCE = 0.15
HEAP_IN_USE_SRC = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workloads", "heap_in_use.c"
)
node_static = pytest.mark.skipif(
    not _node_is_static(), reason="needs a node that links OpenSSL statically (nodesource)"
)


@pytest.fixture(scope="module")
def heap_in_use_lib(tmp_path_factory):
    """tests/workloads/heap_in_use.c built: a preloaded counter of glibc's own in-use heap bytes."""
    out = tmp_path_factory.mktemp("heap-in-use") / "heap_in_use.so"
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-O2", "-o", str(out), HEAP_IN_USE_SRC, "-lpthread"], check=True, timeout=120
    )
    return str(out)


def _start_node(cert, key, ready, *flags, env=None):
    node = subprocess.Popen(
        ["node", NODE_SERVER, cert, key, "0", str(ready), *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    return node, int(_wait_file(ready, node))


def _node_growth(cert, key, lib, tmp_path, server_flags=(), client_flags=(), n=NODE_CONNECTIONS):
    """Growth per connection of node's heap in use (glibc's mallinfo2: uordblks + hblkhd, written by
    the preloaded heap_in_use.so) and of its RSS while n idle connections open, without tlsprof.
    Five connections are opened and closed first: one-time costs stay out of the figure."""
    import psutil

    heap_file = tmp_path / f"heap-{os.getpid()}-{time.monotonic_ns()}"
    ready = tmp_path / f"ready-{time.monotonic_ns()}"
    env = dict(os.environ, LD_PRELOAD=lib, HEAP_IN_USE_FILE=str(heap_file))
    node, port = _start_node(cert, key, ready, *server_flags, env=env)
    clients = None

    def sample():
        time.sleep(1.0)  # the file is rewritten every 100 ms; let the server settle
        used, mapped = map(int, heap_file.read_text().split())
        return used + mapped, psutil.Process(node.pid).memory_info().rss

    try:
        warm = start_clients(port, 5, *client_flags, interval=1000)
        warm.stop()
        time.sleep(1.0)
        heap0, rss0 = sample()
        clients = start_clients(port, n, *client_flags, interval=1000)
        time.sleep(1.0)
        heap1, rss1 = sample()
    finally:
        if clients:
            clients.stop()
        node.kill()
        node.wait(30)
    return (heap1 - heap0) / n, (rss1 - rss0) / n


@pytest.fixture(scope="module")
def node_tls_heap_per_connection(cert_pair, heap_in_use_lib, tmp_path_factory):
    """The independent count, measured without tlsprof: node's heap growth per idle TLS connection
    minus the same server's per plain-TCP connection (examples/node_echo_server.js --plain: node's
    own per-socket cost). Heap, not RSS: node allocates its NodeBIO buffers (16 KiB each, reached
    from the connection's BIOs) without touching them, so they are heap but not yet RSS; RSS is
    returned too, for the record (measured here: heap 81.9 KB, RSS 30-33 KB per connection)."""
    tmp = tmp_path_factory.mktemp("node-growth")
    tls_heap, tls_rss = _node_growth(*cert_pair, heap_in_use_lib, tmp)
    plain_heap, plain_rss = _node_growth(*cert_pair, heap_in_use_lib, tmp, ("--plain",), ("--plain",))
    return {"heap": tls_heap - plain_heap, "rss": tls_rss - plain_rss}


def _within(value, truth, tolerance=TOLERANCE):
    return abs(value - truth) <= tolerance * truth


def _check_node_walked(report, truth, n=NODE_CONNECTIONS):
    per = report["per_connection"]
    # seen twice in CI (0 connections, here and in the ca-store test; not reproduced alone): say
    # what the last look's walk did
    assert per["connections"] >= 0.95 * n, _walk_digest(report)
    assert per["measured"] == "walked"
    assert report["walk"]["status"] == "ok" and report["walk"]["connections"] >= 0.95 * n
    # the server's context is made before the baseline: the connection's own bytes are its growth
    assert _within(per["own_bytes"], truth["heap"]), (
        f"walked {per['own_bytes']} B own per connection, node's heap grew {truth['heap']:.0f} B per TLS "
        f"connection more than per plain one (RSS: {truth['rss']:.0f} B)"
    )
    for cause in ("connection", "session", "bio"):
        assert per["by_cause"].get(cause, 0) > 0, per["by_cause"]
    conns = [c for c in report["connections"] if c.get("alive", True)]
    assert all(c["measured"] == "walked" and c["context"] for c in conns)
    copy = _copy(report, "static-exported")
    assert copy["ownership"] == "heap walk" and copy["connections"] == per["connections"]


@node_static
def test_node_tls_echo_server_run_walks_its_static_copy(tmp_path, cert_pair, node_tls_heap_per_connection):
    """`tlsprof run -- node …` with 200 idle connections: the copy is tracked through its memory
    functions (call sites, causes) and, because its entry points are not hooked, walked at the last
    look for ownership; each connection's bytes within ±15 % of the independent count (heap growth
    per TLS connection minus per plain-TCP connection, measured without tlsprof)."""
    cert, key = cert_pair
    ready = tmp_path / "ready"
    report = _profile(
        ["node", NODE_SERVER, cert, key, "0", str(ready)], ready, tmp_path / "node.json", NODE_CONNECTIONS, tmp_path
    )
    copy = _copy(report, "static-exported")
    assert copy["tracking"] == "mem-functions" and os.path.basename(copy["path"]).startswith("node")
    assert copy["live_bytes"] > 1_000_000
    sites = [s for s in report["sites"] if s["library"] == os.path.basename(copy["path"])]
    assert any("ssl/" in s["file"] for s in sites)
    _check_node_walked(report, node_tls_heap_per_connection)
    # causes the walk cannot name come from the tracked call sites: the cipher contexts
    assert report["per_connection"]["by_cause"].get("cipher_state", 0) > 0
    assert report["walk"]["causes_from_tracking"] > 0
    assert any("came from the heap walk" in n for n in report["notes"])
    assert "heap walk" in report["_stderr"]
    text = subprocess.run(
        [*TLSPROF, "report", str(tmp_path / "node.json"), "--format", "text"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "ownership from the heap walk" in text.stdout + text.stderr


@pytest.mark.skipif(not _node_is_static() or not shutil.which("gdb"), reason="needs static node and gdb")
def test_attach_to_node_walks_its_static_copy(tmp_path, cert_pair, node_tls_heap_per_connection):
    """`tlsprof attach` to node holding 200 idle connections: no refusal; the walk finds them in
    node's static copy (its own getters, from .dynsym) and measures each within ±15 % of the
    independent count (heap growth per TLS connection minus per plain-TCP connection, without
    tlsprof). node runs on afterwards and still serves."""
    cert, key = cert_pair
    node, port = _start_node(cert, key, tmp_path / "ready")
    clients = None
    try:
        clients = start_clients(port, NODE_CONNECTIONS, interval=2)
        time.sleep(1.0)
        out = subprocess.run(
            [*TLSPROF, "attach", str(node.pid), "--duration", "1", "-o", str(tmp_path / "attach.json")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        assert "measured by the heap walk" in out.stderr
        report = load_checked(tmp_path / "attach.json")
        _check_node_walked(report, node_tls_heap_per_connection)
        assert not any("bytes are the sizes OpenSSL requested" in n for n in report["notes"])
        assert any(
            "/node: its contexts and connections were found and measured by the heap walk" in n for n in report["notes"]
        )
        assert node.poll() is None
        more = start_clients(port, 5, interval=2)  # still serving
        more.stop()
    finally:
        if clients:
            clients.stop()
        node.kill()
        node.wait(30)


@node_static
def test_node_context_per_connection_gets_ca_store_finding(tmp_path, cert_pair, heap_in_use_lib):
    """node building a secure context (with node's root store) per connection, 200 idle
    connections, under `run`: node copies the SNI context's certificate into the SSL and keeps the
    context on its TLSWrap, so the walk links each connection to it through the SSL's app data;
    `ca-store-per-connection` fires with a saving within ±15 % of the measured one: RSS per
    connection with --ctx-per-conn minus without, measured without tlsprof (times the 199
    contexts sharing would spare)."""
    cert, key = cert_pair
    sni = ("--server-name", "localhost")  # node's SNICallback runs only when the client sends SNI
    per_conn_rss = _node_growth(cert, key, heap_in_use_lib, tmp_path, ("--ctx-per-conn",), sni)[1]
    shared_rss = _node_growth(cert, key, heap_in_use_lib, tmp_path, (), sni)[1]
    measured = (per_conn_rss - shared_rss) * (NODE_CONNECTIONS - 1)
    ready = tmp_path / "ready"
    report = _profile(
        ["node", NODE_SERVER, cert, key, "0", str(ready), "--ctx-per-conn"],
        ready,
        tmp_path / "ctx.json",
        NODE_CONNECTIONS,
        tmp_path,
        client_args=sni,
    )
    # seen once in CI (0 connections, not reproduced): say whether the last look's walk ran
    assert report["per_connection"]["connections"] >= 0.95 * NODE_CONNECTIONS, _walk_digest(report)
    [finding] = [f for f in report["findings"] if f["id"] == "ca-store-per-connection"]
    assert finding["evidence"]["contexts"] >= 0.95 * NODE_CONNECTIONS
    assert _within(finding["saving_bytes"], measured), (
        f"finding saves {finding['saving_bytes'] / NODE_CONNECTIONS:.0f} B per connection, sharing measured "
        f"{measured / NODE_CONNECTIONS:.0f} B per connection of RSS"
    )
    assert sum(1 for c in report["connections"] if c.get("context_held_by") == "application") >= 0.95 * NODE_CONNECTIONS


STRIPPED_PROGRAM = r"""
#include <openssl/ssl.h>
#include <stdio.h>
#include <unistd.h>
int main(void)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    printf("%s\n", OpenSSL_version(OPENSSL_VERSION));
    fflush(stdout);
    pause();
    return ctx == NULL;
}
"""


@pytest.fixture(scope="module")
def stripped_static_program(tmp_path_factory):
    """A program linked statically against Debian's libssl.a/libcrypto.a, then stripped: OpenSSL
    inside it without a symbol of it anywhere."""
    if not os.path.exists("/usr/lib/x86_64-linux-gnu/libssl.a") or not shutil.which("strip"):
        pytest.skip("needs libssl-dev's static archives and binutils")
    d = tmp_path_factory.mktemp("stripped")
    (d / "prog.c").write_text(STRIPPED_PROGRAM)
    prog = d / "static-ssl-stripped"
    subprocess.run(
        [
            "cc",
            "-O2",
            "-o",
            str(prog),
            str(d / "prog.c"),
            "-Wl,-Bstatic",
            "-lssl",
            "-lcrypto",
            "-Wl,-Bdynamic",
            "-ldl",
            "-lpthread",
        ],
        check=True,
        timeout=120,
    )
    subprocess.run(["strip", str(prog)], check=True, timeout=60)
    syms = subprocess.run(["nm", "-D", str(prog)], capture_output=True, text=True, timeout=60).stdout
    assert "SSL_new" not in syms
    return str(prog)


def _start_stripped(prog):
    proc = subprocess.Popen([prog], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("OpenSSL ")  # it has made its SSL_CTX
    return proc


@pytest.mark.skipif(not shutil.which("gdb"), reason="needs gdb")
def test_attach_to_stripped_static_copy_says_so(stripped_static_program):
    proc = _start_stripped(stripped_static_program)
    try:
        out = subprocess.run(
            [*TLSPROF, "attach", str(proc.pid), "--duration", "1"], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 5
        (line,) = out.stderr.strip().splitlines()
        assert "links OpenSSL statically without symbols" in line and stripped_static_program in line
        assert "none of its memory is seen" in line
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(30)


def test_run_of_stripped_static_copy_says_so(stripped_static_program, tmp_path):
    report = tmp_path / "stripped.json"
    tool = subprocess.Popen(
        [*TLSPROF, "run", "-o", str(report), "--interval", "0.3", "--", stripped_static_program],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert tool.stdout.readline().startswith("OpenSSL ")
        time.sleep(1.5)  # a snapshot or more
        tool.send_signal(signal.SIGTERM)
        _out, err = tool.communicate(timeout=60)
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.wait()
    lines = [line for line in err.splitlines() if "(static, no symbols)" in line]
    assert len(lines) == 1 and "none of its memory or connections is seen" in lines[0]
    assert any("(static, no symbols)" in n for n in load_checked(report)["notes"])


def test_shared_libcrypto_is_never_taken_for_a_stripped_copy(stripped_static_program):
    """A run's first snapshot may be answered before the target loads libcrypto and its maps read
    just after: the shared libcrypto carries OpenSSL's version text too, but its symbols say it is
    hooked, and no "(static, no symbols)" note may follow (one did, at --interval 0.1)."""
    import ssl  # noqa: F401 (this process maps the shared libcrypto)

    from tlsprof.collect.inject.target_facts import _maps, _stripped_openssl

    mine = _maps(os.getpid())
    assert any(os.path.basename(path).startswith("libcrypto.so") for _perms, path in mine)
    assert _stripped_openssl(os.getpid(), mine) is None
    proc = _start_stripped(stripped_static_program)
    try:
        assert _stripped_openssl(proc.pid, _maps(proc.pid)) == stripped_static_program
    finally:
        proc.kill()
        proc.wait(30)
