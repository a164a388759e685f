"""Helpers shared by tests/integration/test_hardening_*.py: a tracked echo server and its channel."""

import os
import shutil
import tempfile
import time

from tlsprof.collect import launch
from tlsprof.collect.client import ask, parse_snapshot
from tlsenv import start_echo_server


class Tracked:
    """An echo server started with the shim preloaded (what `tlsprof run` does), channel in a
    private dir. .server is the tlsenv ServerProc; .sock its channel socket."""

    def __init__(self, *server_args, env_extra=None, certdir=None):
        self.dir = tempfile.mkdtemp(prefix="tlsprof-hard-")
        env = launch.preload_env(self.dir)
        env.update(env_extra or {})
        self.server = start_echo_server(*server_args, env=env, certdir=certdir)
        self.sock = os.path.join(self.dir, f"{self.server.pid}.sock")
        wait_for(lambda: os.path.exists(self.sock), 10, "channel socket")

    def ask(self, cmd, timeout=10.0):
        return ask(self.sock, cmd, timeout=timeout)

    def snapshot(self):
        return parse_snapshot(self.ask("SNAPSHOT"))

    def stop(self):
        rc = self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        return rc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def echo_once(port, payload=b"ping\n"):
    from tlsenv import recv_exactly, tls_connect

    with tls_connect(port) as t:
        t.sendall(payload)
        return recv_exactly(t, len(payload)) == payload
