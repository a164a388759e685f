"""Shared fixtures: real echo servers and clients on 127.0.0.1 (helpers live in tlsenv.py)."""

import os

import pytest

# tests/ is on sys.path through pyproject.toml's [tool.pytest.ini_options] pythonpath
import tlsenv
from tlsenv import (  # noqa: F401  (re-exported for convenience)
    EXAMPLES_DIR,
    ClientProc,
    ServerProc,
    ensure_cert,
    free_port,
    start_ca_per_request_client,
    start_clients,
    start_echo_server,
    tls_connect,
)


@pytest.fixture(scope="session")
def cert_pair(tmp_path_factory):
    """(certfile, keyfile): self-signed, CN=localhost, SAN 127.0.0.1; one pair per session."""
    return ensure_cert(str(tmp_path_factory.mktemp("certs")))


@pytest.fixture(scope="session")
def cert_dir(cert_pair):
    return os.path.dirname(cert_pair[0])


@pytest.fixture
def spawn(cert_dir):
    """Start servers/clients freely in a test; all are stopped at teardown, even on failure.

    server = spawn.server("--ctx-per-conn")          # start_echo_server(...)
    clients = spawn.clients(server.port, 50)        # start_clients(...)
    """

    class Spawner:
        def __init__(self):
            self.started = []

        def server(self, *args, **kw):
            kw.setdefault("certdir", cert_dir)
            p = start_echo_server(*args, **kw)
            self.started.append(p)
            return p

        def clients(self, port, n, *args, **kw):
            p = start_clients(port, n, *args, **kw)
            self.started.append(p)
            return p

        def ca_per_request(self, port, n, **kw):
            p = start_ca_per_request_client(port, n, **kw)
            self.started.append(p)
            return p

    s = Spawner()
    yield s
    for p in reversed(s.started):  # clients before servers
        p.stop()


@pytest.fixture
def echo_server(request, spawn):
    """A running asyncio echo server, shared context. Extra server args by indirect
    parametrization: @pytest.mark.parametrize("echo_server", [["--ctx-per-conn"]], indirect=True)."""
    args = getattr(request, "param", None) or []
    return spawn.server(*args)


@pytest.fixture
def echo_clients(echo_server, spawn):
    """20 connected echo clients (shared client context, hello every 1 s) on echo_server."""
    return spawn.clients(echo_server.port, 20, interval=1.0)


@pytest.fixture(scope="session", autouse=True)
def _stop_leftover_processes():
    yield
    tlsenv.stop_all()
