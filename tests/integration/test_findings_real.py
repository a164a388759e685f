"""Findings on real targets: each finding is tripped by a real fixture under `tlsprof run`, and none
trips on the healthy seed server (asyncio or threaded, one shared context).

Non-Python findings use a small C server over the system OpenSSL (compiled here from
C_FIXTURE_SOURCE with gcc) whose flags make one known-bad pattern each: no RELEASE_BUFFERS (the C
default), SSL objects leaked when their socket closes, a context per connection never freed, a
TLS 1.2 session cache filling with every full handshake.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tlsenv import ECHO_SERVER, Proc, start_clients
from tlsprof.model.schema import validate_report

TLSPROF = [sys.executable, "-m", "tlsprof"]
KiB = 1024
SETTLE = 1.5  # seconds after the clients are up: several snapshots at --interval 0.3

C_FIXTURE_SOURCE = r"""/* A small C TLS echo server over OpenSSL, for tests of findings on a non-Python target.
 *   tls_fixture_server READY_FILE CERT KEY [--release-buffers] [--leak-closed] [--keep-closed] [--ctx-per-conn]
 *                      [--tls12] [--no-tickets]
 * Listens on 127.0.0.1:0, writes the port to READY_FILE, says "welcome!\n" and echoes.
 * --leak-closed: on peer close, close(fd) but never SSL_free (a leaked SSL*).
 * --keep-closed: on peer close, keep the SSL and its fd, just stop reading (silent, piling up).
 * --ctx-per-conn: a new SSL_CTX (with the system CA file) per connection, never freed.
 * --tls12 --no-tickets: TLS 1.2, stateful sessions kept in the server's session cache. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define MAXC 4096
static volatile sig_atomic_t stop;
static void on_term(int s) { (void)s; stop = 1; }
static int release_buffers, leak_closed, keep_closed, ctx_per_conn, tls12, no_tickets;
static const char *cert, *key;

static SSL_CTX *make_ctx(void)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr);
        exit(3);
    }
    if (ctx_per_conn) SSL_CTX_load_verify_locations(ctx, "/etc/ssl/certs/ca-certificates.crt", NULL);
    if (release_buffers) SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (tls12) SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    if (no_tickets) SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF); /* clients that just close stay resumable */
    static const unsigned char sid[] = "tlsprof-fixture";
    SSL_CTX_set_session_id_context(ctx, sid, sizeof sid - 1);
    return ctx;
}

int main(int argc, char **argv)
{
    if (argc < 4) return 2;
    cert = argv[2];
    key = argv[3];
    for (int i = 4; i < argc; i++) {
        if (!strcmp(argv[i], "--release-buffers")) release_buffers = 1;
        else if (!strcmp(argv[i], "--leak-closed")) leak_closed = 1;
        else if (!strcmp(argv[i], "--keep-closed")) keep_closed = 1;
        else if (!strcmp(argv[i], "--ctx-per-conn")) ctx_per_conn = 1;
        else if (!strcmp(argv[i], "--tls12")) tls12 = 1;
        else if (!strcmp(argv[i], "--no-tickets")) no_tickets = 1;
        else return 2;
    }
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    signal(SIGPIPE, SIG_IGN);
    SSL_CTX *shared = ctx_per_conn ? NULL : make_ctx();
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) || listen(lfd, 1024) ||
        getsockname(lfd, (struct sockaddr *)&a, &alen)) return 4;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", argv[1]);
    FILE *f = fopen(tmp, "w");
    fprintf(f, "%d\n", ntohs(a.sin_port));
    fclose(f);
    rename(tmp, argv[1]);
    static struct pollfd pfd[MAXC + 1];
    static SSL *ssl[MAXC + 1];
    int n = 1;
    pfd[0].fd = lfd;
    pfd[0].events = POLLIN;
    while (!stop) {
        if (poll(pfd, n, 500) < 0) continue;
        if ((pfd[0].revents & POLLIN) && n <= MAXC) {
            int fd = accept(lfd, NULL, NULL);
            if (fd >= 0) {
                struct timeval tv = {10, 0};
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
                SSL *s = SSL_new(ctx_per_conn ? make_ctx() : shared);
                SSL_set_fd(s, fd);
                if (SSL_accept(s) == 1 && SSL_write(s, "welcome!\n", 9) == 9) {
                    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); /* poll decides from here */
                    pfd[n].fd = fd;
                    pfd[n].events = POLLIN;
                    ssl[n++] = s;
                } else {
                    SSL_free(s);
                    close(fd);
                }
            }
        }
        for (int i = 1; i < n; i++) {
            if (!pfd[i].revents) continue;
            char buf[16384];
            int r = SSL_read(ssl[i], buf, sizeof buf);
            if (r > 0) {
                SSL_write(ssl[i], buf, r);
                continue;
            }
            int err = SSL_get_error(ssl[i], r);
            if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) continue;
            if (!leak_closed && !keep_closed) {
                SSL_shutdown(ssl[i]); /* a clean close keeps the session resumable (cached) */
                SSL_free(ssl[i]);
            }
            if (!keep_closed) close(pfd[i].fd);
            pfd[i] = pfd[n - 1];
            ssl[i] = ssl[n - 1];
            n--;
            i--;
        }
    }
    return 0;
}
"""


@pytest.fixture(scope="session")
def c_server(tmp_path_factory):
    if not shutil.which("gcc"):
        pytest.skip("gcc is needed to build the C fixture server")
    d = tmp_path_factory.mktemp("cserver")
    src, exe = d / "tls_fixture_server.c", d / "tls_fixture_server"
    src.write_text(C_FIXTURE_SOURCE)
    proc = subprocess.run(
        ["gcc", "-O1", "-o", str(exe), str(src), "-lssl", "-lcrypto"], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        pytest.fail(f"cannot build the C fixture (libssl-dev missing?):\n{proc.stderr[-2000:]}")
    return str(exe)


class Profiled:
    """A target under `tlsprof run -o REPORT --at AT --interval 0.3`, started through tlsenv."""

    def __init__(self, tmp_path, argv, at="last"):
        self.report_path = str(tmp_path / "report.json")
        self.proc = Proc(
            [*TLSPROF, "run", "-o", self.report_path, "--at", at, "--interval", "0.3", "--", *argv],
            script=argv[1] if len(argv) > 1 else None,
        )
        self.port = int(self.proc.wait_ready(60))

    def report(self):
        """Stop the target (SIGTERM to tlsprof, forwarded), read and validate the report."""
        self.proc.stop()
        with open(self.report_path) as f:
            report = json.load(f)
        validate_report(report)
        return report


def c_target(c_server, cert_pair, *flags):
    return [c_server, "{ready}", cert_pair[0], cert_pair[1], *flags]


def clients_round(port, n, stay):
    """n echo clients; stay=False: they connect, say hello, and close after ~1 s."""
    clients = start_clients(port, n, interval=1.0, duration=0 if stay else 1.0)
    if not stay:
        clients.proc.wait(60)
    return clients


def ids(report):
    return [f["id"] for f in report["findings"]]


def only(report, finding_id):
    found = [f for f in report["findings"] if f["id"] == finding_id]
    assert found, f"{finding_id} not in {ids(report)}"
    return found[0]


# --- the healthy seed server -------------------------------------------------------------------


TWISTED = [
    "/usr/bin/python3",  # Debian's Twisted and pyOpenSSL, the system libssl
    os.path.join(os.path.dirname(ECHO_SERVER), "twisted_echo_server.py"),
    "--port",
    "0",
    "--ready-file",
    "{ready}",
]


@pytest.mark.parametrize("server", ["asyncio", "threaded", "twisted"])
def test_healthy_seed_server_has_no_finding(tmp_path, cert_dir, server):
    """Connections come and go, then 60 stay and leave: the busiest snapshot (the report's moment)
    finds no leak in a server that frees what it closes."""
    if server == "twisted":
        if subprocess.run([TWISTED[0], "-c", "import twisted, OpenSSL"], capture_output=True).returncode:
            pytest.skip("needs Debian's python3-twisted and python3-openssl")
        argv = [*TWISTED, "--certdir", cert_dir]
    else:
        argv = [sys.executable, ECHO_SERVER, "--host", "127.0.0.1", "--port", "0", "--ready-file", "{ready}"]
        argv += ["--certdir", cert_dir, *(["--threaded"] if server == "threaded" else [])]
    target = Profiled(tmp_path, argv, at="peak")
    try:
        clients_round(target.port, 60, stay=False)  # some come and go
        clients = clients_round(target.port, 60, stay=True)
        time.sleep(SETTLE)
        clients.stop()
        time.sleep(SETTLE)
    finally:
        report = target.report()
    assert report["per_connection"]["connections"] >= 20  # the peak: mid-traffic, not idle
    # Twisted never sets SSL_MODE_RELEASE_BUFFERS: its held connections' buffers are a true finding
    expected = ["idle-record-buffers"] if server == "twisted" else []
    assert ids(report) == expected, [(f["id"], f["detail"]) for f in report["findings"]]


# --- idle-record-buffers -----------------------------------------------------------------------


def test_idle_record_buffers_on_c_server_without_release_buffers(tmp_path, c_server, cert_pair):
    clients = None
    target = Profiled(tmp_path, c_target(c_server, cert_pair))
    try:
        clients = clients_round(target.port, 30, stay=True)
        time.sleep(SETTLE)
    finally:
        report = target.report()
        if clients is not None:
            clients.stop()
    f = only(report, "idle-record-buffers")
    assert f["evidence"]["connections"] == 30
    assert f["evidence"]["release_buffers_off"] == 30  # no SSL_CTX_set_mode call seen
    assert 30 * KiB < f["bytes_per_connection"] < 40 * KiB  # ~16.7 KiB read + ~16.7 KiB write
    assert f["saving_bytes"] >= 30 * 30 * KiB
    assert "SSL_MODE_RELEASE_BUFFERS" in f["fix"] and "SSL_CTX_set_mode" in f["fix"]
    assert "leaked-connections" not in ids(report)


def test_release_buffers_clears_idle_record_buffers(tmp_path, c_server, cert_pair):
    clients = None
    target = Profiled(tmp_path, c_target(c_server, cert_pair, "--release-buffers"))
    try:
        clients = clients_round(target.port, 30, stay=True)
        time.sleep(SETTLE)
    finally:
        report = target.report()
        if clients is not None:
            clients.stop()
    assert [c["release_buffers"] for c in report["contexts"]] == [True]
    assert report["findings"] == [], ids(report)


# --- leaked-connections (native facts: fd closed or reused) ------------------------------------


def test_leaked_connections_when_ssl_outlives_its_socket(tmp_path, c_server, cert_pair):
    clients = None
    target = Profiled(tmp_path, c_target(c_server, cert_pair, "--release-buffers", "--leak-closed"))
    try:
        clients_round(target.port, 20, stay=False)  # 20 SSL* leaked, their fds closed
        time.sleep(SETTLE)
        clients = clients_round(target.port, 10, stay=True)  # reuse 10 of those fd numbers
        time.sleep(SETTLE)
    finally:
        report = target.report()
        if clients is not None:
            clients.stop()
    f = only(report, "leaked-connections")
    # normally exactly {"fd_closed": 10, "fd_reused": 10}; on a loaded machine the server may not
    # have seen the last peer close yet at the final snapshot
    assert 18 <= f["evidence"]["connections"] <= 20, f["evidence"]
    assert set(f["evidence"]["reasons"]) == {"fd_closed", "fd_reused"}, f["evidence"]
    youngest = sorted(report["connections"], key=lambda c: c["age_s"])[:10]
    assert not {c["id"] for c in youngest} & set(f["evidence"]["connection_ids"])
    stale = [c for c in report["connections"] if c["id"] in f["evidence"]["connection_ids"]]
    assert all(c["fd_open"] is False or c["fd_inode"] is not None for c in stale)
    assert f["bytes_per_connection"] > 4 * KiB
    assert "SSL_free" in f["fix"]


def test_no_leaked_connections_when_the_c_server_frees_them(tmp_path, c_server, cert_pair):
    clients = None
    target = Profiled(tmp_path, c_target(c_server, cert_pair, "--release-buffers"))
    try:
        clients_round(target.port, 20, stay=False)
        time.sleep(SETTLE)
        clients = clients_round(target.port, 10, stay=True)
        time.sleep(SETTLE)
    finally:
        report = target.report()
        if clients is not None:
            clients.stop()
    assert report["per_connection"]["connections"] == 10
    assert all(c["fd_open"] is True for c in report["connections"])
    assert report["findings"] == [], ids(report)


# --- leaked-connections (native facts: count growing while traffic is flat) ----------------------


def _churn(port, seconds, every=0.1):
    """One short connection every `every` s for `seconds` s (bounded): connect, read the welcome,
    echo a line, close. -> connections made."""
    import socket
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    made, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as tls:
                got = b""
                while len(got) < len(b"welcome!\n"):
                    chunk = tls.recv(64)
                    assert chunk, "server closed before the welcome"
                    got += chunk
                tls.sendall(b"hello\n")
                assert tls.recv(64)
        made += 1
        time.sleep(max(0.0, every - (time.monotonic() - began)))
    return made


def test_silent_connections_piling_up_under_flat_traffic_are_leaked(tmp_path, c_server, cert_pair):
    """Two C servers under the same steady churn: one keeps every connection after the peer's close
    (fd open, never read again), one frees them. Only the first trips, from the count trend."""
    import threading
    from tlsprof.analysis import findings as F

    for d in ("keep", "free"):
        (tmp_path / d).mkdir()
    keeper = Profiled(tmp_path / "keep", c_target(c_server, cert_pair, "--release-buffers", "--keep-closed"))
    healthy = Profiled(tmp_path / "free", c_target(c_server, cert_pair, "--release-buffers"))
    seconds = F.TREND_MIN_SPAN_S + 3
    made = {}
    threads = [
        threading.Thread(target=lambda t=t: made.__setitem__(t, _churn(t.port, seconds))) for t in (keeper, healthy)
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 60)
    finally:
        kept_report, healthy_report = keeper.report(), healthy.report()
    assert made.get(keeper, 0) >= 60 and made.get(healthy, 0) >= 60, made
    f = only(kept_report, "leaked-connections")
    assert set(f["evidence"]["reasons"]) == {"silent_while_count_grows"}, f["evidence"]
    trend = f["evidence"]["count_trend"]
    assert trend and trend["mean_connections"][2] - trend["mean_connections"][0] >= 20, trend
    silent = [c for c in kept_report["connections"] if (c["idle_s"] or 0) >= F.TREND_SILENT_S]
    assert f["evidence"]["connections"] == len(silent) >= 20
    assert all(c["fd_open"] is True for c in silent)  # the fd rules cannot see these
    assert kept_report["history"][-1]["io_calls"] >= 3 * made[keeper] * 0.9  # welcome, hello, echo
    assert "idle timeout" in f["fix"]
    assert healthy_report["per_connection"]["connections"] <= 3
    assert healthy_report["history"][-1]["io_calls"] >= 3 * made[healthy] * 0.9
    assert "leaked-connections" not in ids(healthy_report), ids(healthy_report)


# --- leaked-contexts ---------------------------------------------------------------------------


def test_leaked_contexts_when_each_connection_leaves_its_context(tmp_path, c_server, cert_pair):
    target = Profiled(tmp_path, c_target(c_server, cert_pair, "--release-buffers", "--ctx-per-conn"))
    try:
        clients_round(target.port, 15, stay=False)
        time.sleep(SETTLE)
    finally:
        report = target.report()
    f = only(report, "leaked-contexts")
    assert f["evidence"]["contexts"] >= 15
    assert f["saving_bytes"] >= 15 * 700 * KiB  # each loaded the system CA file
    assert f["bytes_per_connection"] is None
    assert "SSL_CTX_free" in f["fix"]
    assert "ca-store-per-connection" not in ids(report)  # they serve no connection any more


# --- session-cache-growth ----------------------------------------------------------------------


def test_session_cache_growth_on_tls12_server_cache(tmp_path, c_server, cert_pair):
    target = Profiled(tmp_path, c_target(c_server, cert_pair, "--release-buffers", "--tls12", "--no-tickets"))
    try:
        for _ in range(4):
            clients_round(target.port, 100, stay=False)
        time.sleep(SETTLE)
    finally:
        report = target.report()
    f = only(report, "session-cache-growth")
    assert f["evidence"]["retained_session_bytes"] >= 380 * 900  # ~944 B per cached session
    assert f["evidence"]["live_connection_session_bytes"] == 0
    assert "SSL_CTX_sess_set_cache_size" in f["fix"] and "ssl_session_cache" in f["fix"]


# --- handshake-state-retained ------------------------------------------------------------------

STALLING_CLIENT = r"""
import socket, ssl, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
held = []
for _ in range(n):  # send a ClientHello, then never answer the server's flight
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(out.read())
    held.append((s, obj))
print("stalled", n, flush=True)
time.sleep(120)
"""


def test_handshake_state_retained_by_stalled_handshakes_on_seed_server(tmp_path, cert_dir):
    from tlsenv import ECHO_SERVER
    from tlsprof.analysis.findings import HS_STUCK_S

    target = Profiled(
        tmp_path,
        [
            sys.executable,
            ECHO_SERVER,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--ready-file",
            "{ready}",
            "--certdir",
            cert_dir,
        ],
    )
    staller = clients = None
    try:
        clients = clients_round(target.port, 20, stay=True)  # normal traffic beside them
        staller = Proc([sys.executable, "-c", STALLING_CLIENT, str(target.port), "15"])
        deadline = time.monotonic() + 60
        while "stalled 15" not in staller.stdout():
            assert staller.alive() and time.monotonic() < deadline, staller.describe()
            time.sleep(0.05)
        time.sleep(HS_STUCK_S + 1.5)
    finally:
        report = target.report()
        if staller is not None:
            staller.stop()
        if clients is not None:
            clients.stop()
    f = only(report, "handshake-state-retained")
    assert f["evidence"]["stuck_in_handshake"] == 15
    assert f["evidence"]["established_holding"] == 0
    assert f["bytes_per_connection"] > 8 * KiB
    assert "ssl_handshake_timeout" in f["fix"]
    assert [x for x in ids(report) if x != "handshake-state-retained"] == []


# --- thresholds, on hand-built reports (the edges the real fixtures do not probe) ------------


def _conn(i, ctx=1, state="established", age=5.0, fd=None, **by_cause):
    by_cause = {k: v for k, v in by_cause.items() if v}
    return {
        "id": f"conn-{i}",
        "context": ctx,
        "fd": fd,
        "peer": None,
        "state": state,
        "age_s": age,
        "live_bytes": sum(by_cause.values()),
        "by_cause": by_cause,
        "alive": True,
    }


def _report(conns, contexts=None, mode="run", process=None):
    contexts = (
        contexts
        if contexts is not None
        else [
            {
                "id": 1,
                "connections": len(conns),
                "live_bytes": 1000,
                "by_cause": {"other": 1000},
                "release_buffers": None,
            }
        ]
    )
    return {
        "target": {"mode": mode},
        "contexts": contexts,
        "connections": conns,
        "per_connection": {"connections": len(conns)},
        "process": process or {"by_cause": {}},
        "history": [],
    }


def _ids(report):
    from tlsprof.analysis.findings import compute_findings

    return [f["id"] for f in compute_findings(report)]


def test_threshold_edges():
    from tlsprof.analysis import findings as F

    rb = F.RB_MIN_BYTES
    assert "idle-record-buffers" in _ids(_report([_conn(i, record_buffers=rb) for i in range(10)]))
    assert "idle-record-buffers" not in _ids(_report([_conn(i, record_buffers=rb) for i in range(9)]))
    assert "idle-record-buffers" not in _ids(_report([_conn(i, record_buffers=rb - 1) for i in range(50)]))
    # mode unknown after attach: not claimed
    assert "idle-record-buffers" not in _ids(_report([_conn(i, record_buffers=rb) for i in range(50)], mode="attach"))
    assert "compression-enabled" in _ids(_report([_conn(1, compression=F.COMP_MIN_BYTES + 1)]))
    assert "compression-enabled" not in _ids(_report([_conn(1, compression=F.COMP_MIN_BYTES)]))
    closed = [dict(_conn(i, fd=10 + i, other=5000), fd_open=False) for i in range(F.LEAK_MIN_CONNECTIONS)]
    assert "leaked-connections" in _ids(_report(closed))
    assert "leaked-connections" not in _ids(_report(closed[:-1]))
    # one fd number claimed by two live connections: the older one is stale
    reused = [dict(_conn(i, fd=7, age=100.0 - i, other=5000), fd_open=True, fd_inode=i) for i in range(6)]
    assert "leaked-connections" in _ids(_report(reused))
    # the count trend: silent connections pile up while traffic is flat; a busy ramp-up is not a leak
    silent = [dict(_conn(i, other=5000), idle_s=F.TREND_SILENT_S) for i in range(F.LEAK_MIN_CONNECTIONS)]

    def history(counts, io_rate):
        io, out = 0, []
        for k, n in enumerate(counts):
            out.append({"t": k * 3.0, "live_bytes": 0, "connections": n, "io_calls": io})
            io += int(io_rate(n) * 3.0)
        return out

    rising = list(range(10))  # 27 s of history, +9 connections
    assert "leaked-connections" in _ids(dict(_report(silent), history=history(rising, lambda n: 30)))
    assert "leaked-connections" not in _ids(dict(_report(silent[:-1]), history=history(rising, lambda n: 30)))
    assert "leaked-connections" not in _ids(dict(_report(silent), history=history(rising, lambda n: 30 * (n + 1))))
    assert "leaked-connections" not in _ids(dict(_report(silent), history=history([5] * 10, lambda n: 30)))
    assert "leaked-connections" not in _ids(dict(_report(silent), history=history(rising[:6], lambda n: 30)))
    fresh = [dict(c, idle_s=F.TREND_SILENT_S - 1) for c in silent]
    assert "leaked-connections" not in _ids(dict(_report(fresh), history=history(rising, lambda n: 30)))
    idle_ctx = [
        {
            "id": i,
            "connections": 0,
            "live_bytes": F.LEAK_MIN_CONTEXT_BYTES + 1,
            "by_cause": {"other": F.LEAK_MIN_CONTEXT_BYTES + 1},
        }
        for i in range(10)
    ]
    assert "leaked-contexts" in _ids(_report([], contexts=idle_ctx))
    assert "leaked-contexts" not in _ids(_report([], contexts=idle_ctx[:9]))
    kept = {"by_cause": {"session": F.SC_MIN_BYTES + 1}}
    assert "session-cache-growth" in _ids(_report([], process=kept))
    assert "session-cache-growth" not in _ids(_report([], process={"by_cause": {"session": F.SC_MIN_BYTES}}))
    live_sessions = [_conn(i, session=F.SC_MIN_BYTES) for i in range(1)]
    assert "session-cache-growth" not in _ids(_report(live_sessions, process=kept))
    stuck = [_conn(i, state="handshake", age=F.HS_STUCK_S, bio=30000) for i in range(F.HS_MIN_STUCK)]
    assert "handshake-state-retained" in _ids(_report(stuck))
    young = [_conn(i, state="handshake", age=F.HS_STUCK_S - 1, bio=30000) for i in range(50)]
    assert "handshake-state-retained" not in _ids(_report(young))
    held = [_conn(i, handshake=F.HS_MIN_BYTES) for i in range(10)]
    assert "handshake-state-retained" in _ids(_report(held))
    assert "handshake-state-retained" not in _ids(_report(held + [_conn(100 + i) for i in range(11)]))
