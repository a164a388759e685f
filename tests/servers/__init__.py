"""Real third-party servers for the compatibility matrix (docs/compatibility.md): one module per
server, all from Debian packages, all on 127.0.0.1, configured in a temp dir and stopped by pid.

    from servers import SERVERS, clients, start
    with start("nginx", certfile, keyfile) as running:       # bare (ground truth)
        with clients.hold(running.server.client, running.port, 200) as held:
            running.holders(), running.memory()
    with start("nginx", certfile, keyfile, profile=True) as running:   # under `tlsprof run`
        with clients.hold(...):
            running.stop()                  # tlsprof takes its last look, forwards the signal
        report = running.report()           # read before leaving: the temp dir goes with the server
"""

import contextlib
import os
import shutil
import sys
import time

from servers import base, clients  # noqa: F401  (re-exported)
from servers.apache import Apache
from servers.examples import AsyncioEcho, NodeEcho, ThreadedEcho, TwistedEcho
from servers.haproxy import HAProxy, HAProxyChrooted
from servers.lighttpd import Lighttpd
from servers.mosquitto import Mosquitto
from servers.nginx import Nginx
from servers.postgresql import PostgreSQL
from servers.s_server import OpenSSLSServer
from servers.stunnel import Stunnel, StunnelChrooted

SERVERS = {
    cls.name: cls
    for cls in (
        Nginx,
        Apache,
        HAProxy,
        HAProxyChrooted,
        PostgreSQL,
        OpenSSLSServer,
        Stunnel,
        StunnelChrooted,
        Mosquitto,
        Lighttpd,
        AsyncioEcho,
        ThreadedEcho,
        TwistedEcho,
        NodeEcho,
    )
}


# the report describes the last snapshot before the stop signal: the connections still open
TLSPROF_RUN = [sys.executable, "-m", "tlsprof", "run", "--interval", "0.5", "--at", "last"]


@contextlib.contextmanager
def start(name, certfile, keyfile, profile=False):
    """The server `name` configured in a fresh temp dir and started, under `tlsprof run -o
    WORKDIR/report.json` when `profile` (tlsprof runs as the server's user, so that the shim in
    the server can reach tlsprof's private channel directory); stopped by pid and its temp dir
    removed on leaving, whatever happened."""
    cls = SERVERS[name]
    workdir = base.workdir(name, cls.run_as)
    try:
        server = cls(workdir, certfile, keyfile)
        server.check_available()
        server.prepare()
        wrapper = ()
        if profile:
            wrapper = [*TLSPROF_RUN, "-o", os.path.join(workdir, "report.json"), "--"]
        running = base.Running(server, wrapper=wrapper)
        try:
            yield running
        finally:
            running.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


WARMUP = 10  # connections opened and closed before the baseline: one-time costs (code pages
#                 first touched, lazily built tables) stay out of the per-connection figure
SETTLE = 1.5  # seconds with the connections idle before measuring (and before tlsprof's last look)


@contextlib.contextmanager
def hold_measured(running, n):
    """Hold n idle TLS connections on `running` and measure the ground truth without tlsprof:
    yields {"held", "holders" (pid: sockets, from the kernel), "held_by_kernel", "root_pid" (the
    server's top process), "pids" (its tree), "rss_per_conn", "uss_per_conn"} (memory growth of the server's processes, summed, per connection). The
    connections stay open until the `with` ends, so the caller can stop the server first."""
    kind = running.server.client
    warmup = min(WARMUP, n)
    clients.hold(kind, running.port, warmup).close()
    time.sleep(0.5)  # let the server notice the closes and free their memory
    rss0, uss0 = running.memory()
    with clients.hold(kind, running.port, n) as held:
        time.sleep(SETTLE)
        rss1, uss1 = running.memory()
        holders = running.holders()
        yield {
            "held": len(held),
            "holders": holders,
            "held_by_kernel": sum(holders.values()),
            "root_pid": running.server_root().pid,
            "pids": [p.pid for p in running.tree()],
            "rss_per_conn": (rss1 - rss0) / n,
            "uss_per_conn": (uss1 - uss0) / n,
        }
