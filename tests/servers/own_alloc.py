"""Starter for tests/servers/own_alloc_server.c: a C TLS echo server that gives OpenSSL its own
allocator (CRYPTO_set_mem_functions, a 16-byte header in front of each block) and counts the bytes
OpenSSL asked it for. That count is the independent ground truth for tlsprof's byte measure.

    from servers.own_alloc import start_own_alloc_server
    server = start_own_alloc_server(wrapper=[tlsprof, "run", "-o", path, "--"])
    spawn_clients(server.port, 200)           # e.g. tlsenv.start_clients: it waits for "welcome!"
    counts = server.counts()                   # SIGUSR1 -> {"own_live_bytes": ..., "established": ...}
    server.stop()                              # SIGTERM by pid (SIGKILL after a grace period)

`allocator="system"` leaves OpenSSL's allocator alone; counts() then carries the process allocator's
own figures (`mallinfo_uordblks` for glibc, `jemalloc_allocated` under a preloaded jemalloc,
`tcmalloc_allocated` under tcmalloc).
The binary is compiled once per source version with the system cc and OpenSSL (libssl-dev).
"""

import hashlib
import os
import signal
import subprocess
import tempfile
import time

import psutil

from tlsenv import ProcError, ServerProc, SERVER_READY_TIMEOUT, default_certdir, ensure_cert

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "own_alloc_server.c")


def build() -> str:
    """Path of the compiled server; compiles it when this source version was never built."""
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    out_dir = os.path.join(tempfile.gettempdir(), f"tlsprof-own-alloc-{os.getuid()}")
    os.makedirs(out_dir, exist_ok=True)
    binary = os.path.join(out_dir, f"own_alloc_server-{digest}")
    if not os.path.exists(binary):
        tmp = f"{binary}.{os.getpid()}.tmp"
        subprocess.run(
            ["cc", "-O2", "-Wall", "-o", tmp, SOURCE, "-lssl", "-lcrypto"], check=True, capture_output=True, timeout=120
        )
        os.replace(tmp, binary)
    return binary


class OwnAllocServer(ServerProc):
    binary = None
    stats_path = None

    def target_pid(self, timeout=10.0):
        """The server process itself, or its descendant when started under a wrapper."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                me = psutil.Process(self.pid)
                for p in [me] + me.children(recursive=True):
                    try:
                        if p.exe() == self.binary:
                            return p.pid
                    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                        continue
            except psutil.NoSuchProcess:
                pass
            if time.monotonic() >= deadline:
                raise ProcError(f"no process runs {self.binary}:\n{self.describe()}")
            time.sleep(0.05)

    def counts(self, timeout=10.0) -> dict:
        """Ask the server for its counters (SIGUSR1) and wait, bounded, for a fresh stats file."""
        try:
            os.unlink(self.stats_path)
        except FileNotFoundError:
            pass
        os.kill(self.target_pid(), signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.stats_path):
            if time.monotonic() >= deadline:
                raise ProcError(f"no stats after {timeout:.0f} s:\n{self.describe()}")
            time.sleep(0.02)
        return read_counts(self.stats_path)


def read_counts(path) -> dict:
    with open(path) as f:
        return {k: int(v) for k, v in (line.split() for line in f if line.strip())}


def start_own_alloc_server(
    wrapper=(), allocator="own", env=None, certdir=None, timeout=SERVER_READY_TIMEOUT
) -> OwnAllocServer:
    binary = build()
    cert, key = ensure_cert(certdir or default_certdir())
    stats_dir = tempfile.mkdtemp(prefix="own-alloc-stats-")
    stats_path = os.path.join(stats_dir, "stats")
    argv = [
        *wrapper,
        binary,
        "--cert",
        cert,
        "--key",
        key,
        "--stats",
        stats_path,
        "--ready-file",
        "{ready}",
        "--allocator",
        allocator,
    ]
    server = OwnAllocServer(argv, env=env)
    server.binary, server.stats_path = binary, stats_path
    try:
        server.port = int(server.wait_ready(timeout))
    except BaseException:
        server.stop()
        raise
    return server
