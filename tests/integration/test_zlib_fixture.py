"""The seed's zlib case, reproduced for real: an OpenSSL built with enable-zlib (tests/zlib_openssl.py)
under examples/compression_echo.py negotiates TLS compression, and each connection then costs
hundreds of KB more (zlib state), while the system libssl (no-zlib) negotiates none.
"""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from zlib_openssl import BUILD_TIMEOUT, zlib_env, zlib_openssl_libdir, zlib_openssl_skip_reason

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(REPO_ROOT, "examples", "compression_echo.py")
WAIT = 120.0  # seconds, upper bound for any one step (start, N connections)
CONNECTIONS = 200
KB = 1024

# The first test may build OpenSSL (minutes): give the build its own bound on top of the default.
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + 600)


@pytest.fixture(scope="session")
def zlib_libdir():
    libdir = zlib_openssl_libdir()
    if libdir is None:
        pytest.skip(zlib_openssl_skip_reason())
    return libdir


@pytest.fixture(scope="session")
def certdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("certs"))


def system_env():
    env = dict(os.environ)
    env.pop("LD_LIBRARY_PATH", None)
    return env


def wait_for(predicate, what, procs, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{what}: pid {proc.pid} exited with {proc.returncode}")
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s")


def read_lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def stop(proc):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def mapped_libssl(pid):
    with open(f"/proc/{pid}/maps") as f:
        paths = {line.split()[-1] for line in f if line.rstrip().endswith("libssl.so.3")}
    return sorted(os.path.realpath(p) for p in paths)


def run_pair(tmp_path, env, certdir, n, compression=True):
    """Server + client with n idle connections. Returns what each end saw and the RSS figures."""
    tag = f"{'zlib' if 'LD_LIBRARY_PATH' in env else 'system'}-{'on' if compression else 'off'}-{n}"
    ready, s_out, c_out = (tmp_path / f"{tag}.{x}" for x in ("ready", "server.out", "client.out"))
    extra = [] if compression else ["--no-compression"]
    procs = []
    try:
        with open(s_out, "w") as out:
            server = subprocess.Popen(
                [
                    sys.executable,
                    EXAMPLE,
                    "server",
                    "--port",
                    "0",
                    "--ready-file",
                    str(ready),
                    "--certdir",
                    certdir,
                    "--connections-expected",
                    str(n),
                ]
                + extra,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        procs.append(server)
        port = int(wait_for(lambda: ready.exists() and ready.read_text().strip(), "server ready", procs))
        server_before = psutil.Process(server.pid).memory_info().rss
        with open(c_out, "w") as out:
            client = subprocess.Popen(
                [sys.executable, EXAMPLE, "client", "-n", str(n), "--port", str(port)] + extra,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        procs.append(client)
        wait_for(lambda: f"connected {n}" in read_lines(c_out), "client connected", procs)
        wait_for(lambda: f"connected {n}" in read_lines(s_out), "server connected", procs)
        result = {
            "tag": tag,
            "server_libssl": mapped_libssl(server.pid),
            "client_libssl": mapped_libssl(client.pid),
            "server_compression": [l.split(" ", 1)[1] for l in read_lines(s_out) if l.startswith("compression ")],
            "client_compression": [l.split(" ", 1)[1] for l in read_lines(c_out) if l.startswith("compression ")],
            "server_before": server_before,
            "server_after": psutil.Process(server.pid).memory_info().rss,
            "client_after": psutil.Process(client.pid).memory_info().rss,
        }
        result["server_per_conn"] = (result["server_after"] - server_before) / n
        print(
            f"{tag}: server {server_before / KB:.0f} KB -> {result['server_after'] / KB:.0f} KB "
            f"= {result['server_per_conn'] / KB:.0f} KB/connection; client "
            f"{result['client_after'] / KB:.0f} KB; compression "
            f"server={sorted(set(result['server_compression']))} "
            f"client={result['client_compression']}"
        )
        return result
    finally:
        for proc in reversed(procs):
            stop(proc)


def test_zlib_openssl_negotiates_zlib_compression_on_both_ends(tmp_path, zlib_libdir, certdir):
    r = run_pair(tmp_path, zlib_env(), certdir, n=3)
    expected = os.path.realpath(os.path.join(zlib_libdir, "libssl.so.3"))
    assert r["server_libssl"] == [expected]
    assert r["client_libssl"] == [expected]
    assert r["client_compression"] == ["ZLIB"]
    assert r["server_compression"] == ["ZLIB"] * 3


def test_system_openssl_negotiates_no_compression(tmp_path, certdir):
    r = run_pair(tmp_path, system_env(), certdir, n=3)
    assert all(not p.startswith(REPO_ROOT) for p in r["server_libssl"] + r["client_libssl"])
    assert r["client_compression"] == ["None"]
    assert r["server_compression"] == ["None"] * 3


def test_compression_costs_hundreds_of_kb_per_server_connection(tmp_path, zlib_libdir, certdir):
    n = CONNECTIONS
    on = run_pair(tmp_path, zlib_env(), certdir, n)
    off = run_pair(tmp_path, zlib_env(), certdir, n, compression=False)  # same libs, option set
    system = run_pair(tmp_path, system_env(), certdir, n)  # Debian's no-zlib libssl
    assert set(on["server_compression"]) == {"ZLIB"} and on["client_compression"] == ["ZLIB"]
    assert set(off["server_compression"]) == {"None"}
    assert set(system["server_compression"]) == {"None"}

    server_extra = on["server_per_conn"] - off["server_per_conn"]
    client_extra = (on["client_after"] - off["client_after"]) / n
    print(
        f"{n} connections each. server KB/connection: zlib {on['server_per_conn'] / KB:.0f}, "
        f"no compression {off['server_per_conn'] / KB:.0f}, "
        f"system libssl {system['server_per_conn'] / KB:.0f}; "
        f"compression extra: server {server_extra / KB:.0f} KB/connection, "
        f"client {client_extra / KB:.0f} KB/connection"
    )
    # design.md measured ~548 KB of zlib state per connection on the server.
    assert server_extra > 200 * KB
