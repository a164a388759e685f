"""What every real server of the compatibility matrix has in common: a private configuration in a
temp dir, a start on 127.0.0.1 with a free port (bare or under a wrapper such as `tlsprof run`), a
readiness wait that ends with a real TLS handshake, and a stop by pid that also reaps every process
of the tree (tests/tlsenv.py's Proc).

A server module subclasses `Server` and says how to configure and start that server; `Running`
does the rest and measures the ground truth without tlsprof: which processes hold the established
sockets of the server port (an independent count of connections, from the kernel) and the memory
of the server's process tree (RSS and USS, summed over its processes).
"""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

import psutil

import tlsenv

BACKEND = os.path.join(os.path.dirname(os.path.abspath(__file__)), "backend.py")
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class ServerUnavailable(RuntimeError):
    """The server's program is not installed here (the test skips, saying which package)."""


class Server:
    """One kind of third-party server. Subclasses set the class attributes and `command()`."""

    name = "?"
    package = None  # the Debian package that provides it (Makefile DEB_PACKAGES)
    connections = 200  # idle TLS connections the matrix opens on it
    client = "https"  # which holder of tests/servers/clients.py talks to it
    stop_signal = signal.SIGTERM  # the signal that stops it at once with clients still connected
    run_as = None  # a user to run it as (PostgreSQL refuses root)
    programs = ()  # executables that must exist
    backend = None  # "--http"/"--echo": a plain backend (backend.py) the server forwards to
    backend_port = None

    def __init__(self, workdir, certfile, keyfile):
        self.workdir = workdir
        self.certfile = certfile
        self.keyfile = keyfile

    def check_available(self):
        for program in self.programs:
            if not shutil.which(program) and not os.access(program, os.X_OK):
                raise ServerUnavailable(f"{program} not found: install the Debian package {self.package}")

    def prepare(self):
        """One-time set-up in workdir before the first start (e.g. initdb). Default: nothing."""

    def command(self, port):
        """argv that runs the server in the foreground on 127.0.0.1:port (configs written here)."""
        raise NotImplementedError

    def env(self):
        return {}

    def ready(self, port):
        """True once the server completes a TLS handshake on port (override for other protocols)."""
        return probe_tls(port)


def free_port():
    return tlsenv.free_port()


def probe_tls(port, timeout=2.0):
    """True when a TLS handshake with 127.0.0.1:port completes (what 'ready' means here)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                return True
    except (OSError, ssl.SSLError):
        return False


def drop_to(user):
    """argv prefix that runs the rest as `user` (exec, no extra process: signals reach it)."""
    if user is None:
        return []
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]


class Running:
    """A started server: `port`, `proc` (tlsenv.Proc of the top process), `stop()`."""

    def __init__(self, server, wrapper=(), port=None):
        self.server = server
        self.wrapper = list(wrapper)
        self.port = port or free_port()
        self.backend = None
        self.proc = None
        try:
            if server.backend:  # a proxy's plain backend first: it is not part of the server's tree
                self.backend = tlsenv.Proc([sys.executable, BACKEND, server.backend, "--ready-file", "{ready}"])
                server.backend_port = int(self.backend.wait_ready(READY_TIMEOUT))
            argv = [*drop_to(server.run_as), *self.wrapper, *server.command(self.port)]
            self.proc = tlsenv.Proc(argv, env=server.env(), cwd=server.workdir)
            self._wait_ready(server.ready)
        except BaseException:
            self._stop_all(grace=5)
            raise

    def _stop_all(self, grace):
        rc = self.proc.stop(grace=grace) if self.proc else None
        if self.backend is not None:
            self.backend.stop(grace=grace)
        return rc

    def _wait_ready(self, probe):
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.proc.poll() is not None:
                raise tlsenv.ProcError(f"{self.server.name} exited before it was ready:\n{self.proc.describe()}")
            if probe(self.port):
                return
            time.sleep(0.2)
        raise tlsenv.ProcError(f"{self.server.name} not ready after {READY_TIMEOUT:.0f} s:\n{self.proc.describe()}")

    # --- the server's processes -------------------------------------------------------------
    def server_root(self):
        """The server's top process: the started process, or the wrapper's child."""
        top = psutil.Process(self.proc.pid)
        if not self.wrapper:
            return top
        children = top.children()
        return children[0] if children else top

    def tree(self):
        """The server's processes (the wrapper, e.g. tlsprof itself, excluded)."""
        try:
            root = self.server_root()
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def holders(self):
        """{pid: established TCP sockets on the server port} for the server's processes: the
        kernel's count of the connections each process holds, independent of tlsprof."""
        out = {}
        for p in self.tree():
            try:
                n = sum(
                    1
                    for c in p.net_connections(kind="tcp")
                    if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == self.port
                )
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if n:
                out[p.pid] = n
        return out

    def memory(self):
        """(rss, uss) summed over the server's processes. USS (private pages) is the fair sum for
        forked trees, where RSS counts shared pages (code, shared memory) once per process."""
        rss = uss = 0
        for p in self.tree():
            try:
                full = p.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss += full.rss
            uss += full.uss
        return rss, uss

    def report(self):
        """The JSON report `tlsprof run -o` wrote (after stop()); validated by the caller."""
        path = os.path.join(self.server.workdir, "report.json")
        if not os.path.exists(path):
            raise tlsenv.ProcError(f"no report written:\n{self.proc.describe()}")
        with open(path) as f:
            return json.load(f)

    # --- stopping ---------------------------------------------------------------------------
    def stop(self, sig=None, timeout=STOP_TIMEOUT):
        """Send the stop signal to the top process (a wrapper forwards it), wait bounded, then stop
        by pid whatever is left of the tree (SIGTERM, SIGKILL). -> the top process's returncode."""
        if self.proc.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig or self.server.stop_signal)
            except ProcessLookupError:
                pass
            try:
                self.proc.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self._stop_all(grace=5)


def workdir(prefix, user=None):
    """A temp dir for one server's configs, logs and pid file (owned by `user` when given)."""
    path = tempfile.mkdtemp(prefix=f"tlsprof-{prefix}-")
    if user is not None:
        shutil.chown(path, user, user)
    return path


def copy_cert(server_dir, certfile, keyfile, user=None):
    """The cert pair copied where a server running as `user` may read it (key 0600)."""
    cert = os.path.join(server_dir, "server.crt")
    key = os.path.join(server_dir, "server.key")
    shutil.copyfile(certfile, cert)
    shutil.copyfile(keyfile, key)
    os.chmod(key, 0o600)
    if user is not None:
        for path in (cert, key):
            shutil.chown(path, user, user)
    return cert, key
