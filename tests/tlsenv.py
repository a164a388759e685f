"""Helpers to drive real TLS traffic in tests: the seed's echo server and clients as subprocesses.

Import from tests as `from tlsenv import start_echo_server, start_clients, ...` (conftest puts this
directory on sys.path). Every wait is bounded; every process started here is recorded and stopped
by pid (SIGTERM, then SIGKILL after a grace period), by its .stop() or at interpreter exit at the
latest, together with any children it left behind (e.g. a wrapper's target).
"""

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES_DIR = os.path.join(REPO_ROOT, "examples")
ECHO_SERVER = os.path.join(EXAMPLES_DIR, "echo_server.py")
ECHO_CLIENT = os.path.join(EXAMPLES_DIR, "echo_client.py")
CA_PER_REQUEST_CLIENT = os.path.join(EXAMPLES_DIR, "ca_per_request_client.py")
WELCOME = b"welcome!\n"

SERVER_READY_TIMEOUT = 30.0
STOP_GRACE = 10.0

from tlsprof._examples.certs import ensure_cert  # noqa: E402  (re-exported for tests)

_live = []  # every Proc started and not yet stopped
_workdir = None  # logs and ready files of this test process


def _root():
    global _workdir
    if _workdir is None:
        _workdir = tempfile.mkdtemp(prefix="tlsenv-")
    return _workdir


def _scratch():
    return tempfile.mkdtemp(dir=_root())


def default_certdir():
    """One cert dir per test process, made on first use."""
    path = os.path.join(_root(), "certs")
    ensure_cert(path)
    return path


def free_port(host="127.0.0.1"):
    """A TCP port that was free a moment ago (prefer --port 0 + ready file where possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rss_bytes(pid):
    return psutil.Process(pid).memory_info().rss


class ProcError(RuntimeError):
    """A helper process died or did not get ready in time; the message carries its output."""


class Proc:
    """A subprocess started by these helpers, with its output in files (no pipe to fill)."""

    def __init__(self, argv, env=None, cwd=None, script=None):
        self.dir = _scratch()
        self.argv = list(argv)
        self.script = script  # the example's path: how target_pid() recognises it
        self.ready_file = os.path.join(self.dir, "ready")
        self.stdout_path = os.path.join(self.dir, "stdout")
        self.stderr_path = os.path.join(self.dir, "stderr")
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [a.replace("{ready}", self.ready_file) for a in self.argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=full_env,
                cwd=cwd or REPO_ROOT,
                start_new_session=True,
            )
        self.pid = self.proc.pid
        self._known_descendants = set()
        _live.append(self)

    # --- output ------------------------------------------------------------------------------
    def stdout(self):
        with open(self.stdout_path, errors="replace") as f:
            return f.read()

    def stderr(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def describe(self):
        return (
            f"{' '.join(self.argv)}\n  pid {self.pid}, returncode {self.proc.poll()}\n"
            f"  stdout: {self.stdout()[-2000:]!r}\n  stderr: {self.stderr()[-4000:]!r}"
        )

    # --- waiting -----------------------------------------------------------------------------
    def wait_ready(self, timeout):
        """Wait (bounded) until the ready file exists; returns its stripped content."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._remember_descendants()
            if os.path.exists(self.ready_file):
                with open(self.ready_file) as f:
                    text = f.read().strip()
                if text:
                    return text
            if self.proc.poll() is not None:
                raise ProcError(f"exited before ready:\n{self.describe()}")
            time.sleep(0.05)
        raise ProcError(f"not ready after {timeout:.0f} s:\n{self.describe()}")

    def target_pid(self, timeout=10.0):
        """Pid of the python running the example: self.pid, or a descendant when wrapped."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                me = psutil.Process(self.pid)
                for p in [me] + me.children(recursive=True):
                    try:
                        cmd = p.cmdline()
                    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                        continue
                    # "python [-FLAG] SCRIPT ...": a wrapper's own cmdline may name SCRIPT further on
                    script = next((a for a in cmd[1:3] if not a.startswith("-")), None)
                    if script and os.path.abspath(script) == self.script:
                        return p.pid
            except psutil.NoSuchProcess:
                pass
            if time.monotonic() >= deadline:
                raise ProcError(f"no process runs {self.script}:\n{self.describe()}")
            time.sleep(0.05)

    def rss(self):
        return rss_bytes(self.target_pid())

    def alive(self):
        return self.proc.poll() is None

    # --- stopping ----------------------------------------------------------------------------
    def _remember_descendants(self):
        try:
            for p in psutil.Process(self.pid).children(recursive=True):
                self._known_descendants.add(p)
        except psutil.NoSuchProcess:
            pass

    def stop(self, grace=STOP_GRACE):
        """SIGTERM by pid, SIGKILL after `grace` s; then kill descendants left behind. -> rc."""
        self._remember_descendants()
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(grace)
        self._reap_descendants(grace)
        if self in _live:
            _live.remove(self)
        return self.proc.returncode

    def stop_target(self, grace=STOP_GRACE):
        """SIGTERM only the example process (e.g. under a wrapper) and wait for the top process to
        exit by itself; falls back to stop(). -> the top process's returncode."""
        if self.proc.poll() is None:
            try:
                os.kill(self.target_pid(timeout=1.0), signal.SIGTERM)
                self.proc.wait(grace)
            except (ProcError, ProcessLookupError, subprocess.TimeoutExpired):
                pass
        return self.stop(grace)

    def _reap_descendants(self, grace):
        left = [p for p in self._known_descendants if p.is_running()]
        for p in left:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, left = psutil.wait_procs(left, timeout=grace)
        for p in left:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=grace)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class ServerProc(Proc):
    port = None


class ClientProc(Proc):
    n = None


def _python_argv(script, wrapper, args, python_flags=()):
    return [*wrapper, sys.executable, *python_flags, script, *[str(a) for a in args]]


def start_echo_server(
    *extra_args, wrapper=(), env=None, certdir=None, timeout=SERVER_READY_TIMEOUT, cwd=None, python_flags=()
):
    """Start examples/echo_server.py on 127.0.0.1 with a free port; wait for it to listen.

    extra_args go to the server (e.g. "--ctx-per-conn", "--threaded"); wrapper prefixes the
    command (e.g. [tlsprof, "run", "-o", path, "--"]); env is merged over os.environ;
    python_flags go to the interpreter (e.g. "-I").
    """
    args = [
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--ready-file",
        "{ready}",
        "--certdir",
        certdir or default_certdir(),
        *extra_args,
    ]
    server = ServerProc(_python_argv(ECHO_SERVER, wrapper, args, python_flags), env=env, cwd=cwd, script=ECHO_SERVER)
    try:
        server.port = int(server.wait_ready(timeout))
    except BaseException:
        server.stop()
        raise
    return server


def start_clients(
    port,
    n,
    *extra_args,
    interval=5.0,
    duration=0,
    concurrency=20,
    ctx_per_conn=False,
    cafile=None,
    wrapper=(),
    env=None,
    timeout=None,
    cwd=None,
):
    """Start examples/echo_client.py with n connections; wait until all have read welcome!.

    The default timeout grows with n (30 s + 60 ms per connection).
    """
    args = [
        "--host",
        "127.0.0.1",
        "--port",
        port,
        "-n",
        n,
        "--interval",
        interval,
        "--duration",
        duration,
        "--concurrency",
        concurrency,
        "--ready-file",
        "{ready}",
    ]
    if ctx_per_conn:
        args.append("--ctx-per-conn")
    if cafile:
        args += ["--cafile", cafile]
    clients = ClientProc(_python_argv(ECHO_CLIENT, wrapper, [*args, *extra_args]), env=env, cwd=cwd, script=ECHO_CLIENT)
    clients.n = n
    try:
        clients.wait_ready(timeout if timeout is not None else 30.0 + 0.06 * n)
    except BaseException:
        clients.stop()
        raise
    return clients


def start_ca_per_request_client(port, n, hold=0, wrapper=(), env=None, timeout=None, cwd=None):
    """Start examples/ca_per_request_client.py; wait (bounded) until it prints "connected N"."""
    args = ["--host", "127.0.0.1", "--port", port, "-n", n, "--hold", hold]
    client = ClientProc(
        _python_argv(CA_PER_REQUEST_CLIENT, wrapper, args), env=env, cwd=cwd, script=CA_PER_REQUEST_CLIENT
    )
    client.n = n
    deadline = time.monotonic() + (timeout if timeout is not None else 30.0 + 0.1 * n)
    while f"connected {n}" not in client.stdout():
        if client.proc.poll() is not None or time.monotonic() > deadline:
            client.stop()
            raise ProcError(f"did not print 'connected {n}':\n{client.describe()}")
        time.sleep(0.05)
    return client


def stop_all():
    """Stop every process these helpers started and nobody stopped (newest first)."""
    for p in reversed(list(_live)):
        try:
            p.stop()
        except Exception:  # keep going: the others must still be stopped
            pass


@atexit.register
def _cleanup():
    stop_all()
    if _workdir is not None:
        shutil.rmtree(_workdir, ignore_errors=True)


def tls_connect(port, host="127.0.0.1", cafile=None, timeout=10.0):
    """A blocking client ssl.SSLSocket to the echo server, welcome! already read."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        ctx.load_verify_locations(cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    sock = socket.create_connection((host, port), timeout=timeout)
    tls = ctx.wrap_socket(sock, server_hostname=host)
    greeting = recv_exactly(tls, len(WELCOME))
    if greeting != WELCOME:
        tls.close()
        raise ProcError(f"unexpected greeting {greeting!r}")
    return tls


def recv_exactly(sock, size):
    buf = b""
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {size} bytes")
        buf += chunk
    return buf
