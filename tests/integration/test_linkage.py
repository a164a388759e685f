"""Python linkage: the in-target agent maps SSL*/SSL_CTX* to live Python objects, and the report
carries connections[].python / contexts[].python (type, created_by, python_bytes, referrers).

Real processes under `tlsprof run`, real OpenSSL, servers on 127.0.0.1 stopped by pid."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest


from tlsenv import (
    CA_PER_REQUEST_CLIENT,
    ProcError,
    Proc,
    start_ca_per_request_client,
    start_clients,
    start_echo_server,
    tls_connect,
)

TLSPROF = os.path.join(os.path.dirname(sys.executable), "tlsprof")
KiB = 1024


def _wrapper(tmp_path, name="r.json", *extra):
    out = str(tmp_path / name)
    return out, [TLSPROF, "run", "--interval", "0.2", *extra, "-o", out, "--"]


def _load(path):
    with open(path) as f:
        return json.load(f)


def _wait_for_agent_view(proc, predicate, timeout=30.0):
    """Give the session time to take snapshots (with agent answers) of the state under test."""
    deadline = time.monotonic() + timeout
    from tlsprof.collect import linkage

    channel = None
    while time.monotonic() < deadline:
        pid = proc.target_pid()
        for d in os.listdir("/tmp"):
            path = os.path.join("/tmp", d, f"{pid}.py.sock")
            if d.startswith("tlsprof-run-") and os.path.exists(path):
                channel = path
        if channel:
            try:
                doc = linkage.ask(channel, "SNAPSHOT noleaks")
                if predicate(doc):
                    time.sleep(1.0)  # a few more session polls see the same state
                    return doc
            except linkage.AgentError:
                pass
        time.sleep(0.2)
    raise ProcError(f"the agent never showed the expected state:\n{proc.describe()}")


def _line_of(path, needle):
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if needle in line:
                return i
    raise AssertionError(f"{needle!r} not in {path}")


def test_asyncio_server_every_connection_has_python_object_peer_and_read_buffer(tmp_path):
    out, wrapper = _wrapper(tmp_path)
    server = start_echo_server(wrapper=wrapper)
    clients = start_clients(server.port, 8, interval=1.0)
    try:
        doc = _wait_for_agent_view(server, lambda d: sum(o["kind"] == "connection" for o in d["objects"]) >= 8)
    finally:
        server.stop()  # SIGTERM to tlsprof: its last look asks the agent afresh, then the target gets the signal
        clients.stop()
    # what the look cost the target (its throttle's measure): the agent thread's CPU, not its waits
    assert 0 < doc["stats"]["cpu_ms"] <= doc["stats"]["elapsed_ms"] + 0.5, doc["stats"]
    report = _load(out)
    conns = report["connections"]
    assert len(conns) >= 8
    assert report["python"]["join"] == "on", report["python"]
    for c in conns:
        py = c["python"]
        assert py is not None and py["type"] == "ssl.SSLObject", c
        assert py["peer"] and py["peer"].startswith("127.0.0.1:"), c
        assert c["peer"] == py["peer"]
        if sys.version_info[:2] == (3, 11):
            assert py["python_bytes"] >= 256 * KiB, c  # sslproto's 256 KiB read buffer
        funcs = {(os.path.basename(f["file"]), f["function"]) for f in py["created_by"]}
        assert ("selector_events.py", "_accept_connection2") in funcs, py["created_by"]
    per = report["per_connection"]
    assert per["python_bytes"] >= 256 * KiB
    assert per["total_bytes"] == per["bytes"] + per["python_bytes"]
    ctx = [x for x in report["contexts"] if x.get("python")]
    assert ctx and ctx[0]["python"]["type"] == "ssl.SSLContext"
    assert any(f["function"] == "make_context" for f in ctx[0]["python"]["created_by"])


@pytest.mark.parametrize("flag", ["-I", "-S"])
def test_an_interpreter_that_skips_sitecustomize_gets_the_agent_late(tmp_path, flag):
    """python -I ignores PYTHONPATH, -S imports no site at all: tlsprof's sitecustomize never runs.
    The session asks the shim to start the agent (hooks/pyagent.c): connections are joined to their
    Python objects, created after it started (the clients come later), and the report says so."""
    out, wrapper = _wrapper(tmp_path)
    server = start_echo_server(wrapper=wrapper, python_flags=(flag,))
    time.sleep(3)  # the session asks once the process served no agent for LATE_AGENT_AFTER_S
    clients = start_clients(server.port, 4, interval=1.0)
    try:
        _wait_for_agent_view(server, lambda d: sum(o["kind"] == "connection" for o in d["objects"]) >= 4)
    finally:
        server.stop()
        clients.stop()
    report = _load(out)
    assert report["python"]["join"] == "on", report["python"]
    assert any("started late" in n for n in report["python"]["notes"]), report["python"]
    conns = [c for c in report["connections"] if c.get("python")]
    assert len(conns) >= 4, report["connections"]
    for c in conns:
        funcs = {(os.path.basename(f["file"]), f["function"]) for f in c["python"]["created_by"] or []}
        assert ("selector_events.py", "_accept_connection2") in funcs, c["python"]
    ctx = [x for x in report["contexts"] if x.get("python")]
    assert ctx and ctx[0]["python"]["created_by_source"] == "unknown (created before the agent started)", ctx


GIL_HELD_FOR_GOOD = """
import ctypes, ssl, sys
ctx = ssl.create_default_context()
open(sys.argv[1], "w").write("ready")
ctypes.PyDLL(None).sleep(120)  # C that keeps the GIL, as uWSGI's workers do without --enable-threads
"""


def test_an_agent_that_never_gets_the_gil_does_not_hold_back_the_stop(tmp_path):
    """The agent's thread never runs once the target's C code keeps the GIL, but its socket
    accepts. Whether it answered while the program started (a race) or never did, the ask under
    way when the SIGTERM comes gives up, and the last look waits LAST_LOOK_TIMEOUT_S at most, none
    for an agent already silent: the SIGTERM reaches the target within seconds (before: 10 s per
    ask, the last look's included, and uWSGI's SIGTERM came ~20 s late)."""
    script = tmp_path / "gil.py"
    script.write_text(GIL_HELD_FOR_GOOD)
    out, wrapper = _wrapper(tmp_path)
    proc = Proc([*wrapper, sys.executable, str(script), "{ready}"])
    try:
        proc.wait_ready(30)
        time.sleep(2)  # the session's first agent ask is waiting now
        stopped = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        proc.proc.wait(timeout=60)
        took = time.monotonic() - stopped
    finally:
        proc.stop()
    assert took < 8, f"tlsprof ended {took:.1f} s after SIGTERM"
    report = _load(out)
    assert report["target"]["pid"] > 0, report["target"]
    said = [n for n in report["notes"] if "GIL" in n]
    assert said and ("never answered" in said[0] or "stopped answering" in said[0]), report["notes"]
    if "never answered" in said[0]:
        assert report.get("python") is None, report.get("python")


def test_threaded_server_fd_and_peer_match_the_client_side(tmp_path):
    out, wrapper = _wrapper(tmp_path)
    server = start_echo_server("--threaded", wrapper=wrapper)
    socks = [tls_connect(server.port) for _ in range(3)]
    try:
        client_ends = {"%s:%d" % s.getsockname()[:2] for s in socks}
        _wait_for_agent_view(server, lambda d: {o.get("peer") for o in d["objects"]} >= client_ends)
    finally:
        server.stop()  # SIGTERM to tlsprof: its last look asks the agent afresh, then the target gets the signal
        for s in socks:
            s.close()
    report = _load(out)
    by_peer = {c["python"]["peer"]: c for c in report["connections"] if c.get("python")}
    for end in client_ends:
        c = by_peer[end]
        assert c["python"]["type"] == "ssl.SSLSocket"
        assert c["peer"] == end  # what the shim saw on the fd
        assert c["fd"] is not None and c["python"]["fd"] == c["fd"]


def test_context_per_request_client_contexts_name_the_creating_line(tmp_path):
    server = start_echo_server()
    out, wrapper = _wrapper(tmp_path)
    client = start_ca_per_request_client(server.port, 4, hold=0, wrapper=wrapper)
    try:
        _wait_for_agent_view(client, lambda d: sum(o["kind"] == "context" for o in d["objects"]) >= 4)
    finally:
        client.stop()  # SIGTERM to tlsprof: its last look asks the agent afresh, then the target gets the signal
        server.stop()
    report = _load(out)
    line = _line_of(CA_PER_REQUEST_CLIENT, "ctx = ssl.create_default_context()")
    named = [
        c
        for c in report["contexts"]
        if c.get("python")
        and any(
            f["file"] == CA_PER_REQUEST_CLIENT and f["line"] == line and f["function"] == "fetch_once"
            for f in c["python"]["created_by"]
        )
    ]
    assert len(named) >= 4, [c.get("python") for c in report["contexts"]]
    assert all(c["ca_store_bytes"] > 500 * KiB for c in named)


LEAKY = textwrap.dedent('''
    """Leak fixture: SSL objects kept alive by a reference cycle (gc off) and by a list never cleared."""
    import gc, signal, socket, ssl, sys, time
    gc.disable()  # the cyclic collector would free the cycles eventually: keep them for the test
    CLOSED_BUT_KEPT = []

    class Request:
        def __init__(self, port):
            self.ctx = ssl.create_default_context()
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE
            self.conn = self.ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)))
            self.conn.owner_request = self   # the cycle: request -> conn -> request

    def leak_cycles(port, n):
        for _ in range(n):
            Request(port)  # dropped at once: only the cycle keeps it (and its CA store) alive

    def leak_closed(port, n):
        for _ in range(n):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            tls = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)))
            CLOSED_BUT_KEPT.append(tls._sslobj)  # the C object outlives the socket
            tls.close()

    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    port = int(sys.argv[1])
    leak_cycles(port, 2)
    leak_closed(port, 2)
    print("leaked", flush=True)
    while True:
        time.sleep(0.2)
''')


def test_leaked_ssl_objects_are_reported_with_the_holding_chain(tmp_path):
    script = tmp_path / "leaky.py"
    script.write_text(LEAKY)
    server = start_echo_server()
    out, wrapper = _wrapper(tmp_path, "r.json", "--at", "last")
    proc = Proc([*wrapper, sys.executable, str(script), str(server.port)], script=str(script))
    try:
        deadline = time.monotonic() + 60
        while "leaked" not in proc.stdout():
            assert proc.alive() and time.monotonic() < deadline, proc.describe()
            time.sleep(0.1)
    finally:
        proc.stop()  # SIGTERM to tlsprof: its last look asks the agent afresh, then the target gets the signal
        server.stop()
    report = _load(out)
    items = report["connections"] + report["contexts"]
    cyc = [c for c in items if (c.get("python") or {}).get("leak") == "unreachable"]
    assert sum(c in report["connections"] for c in cyc) >= 2, [c.get("python") for c in items]
    assert sum(c in report["contexts"] for c in cyc) >= 2
    for c in cyc:
        chain = " <- ".join(c["python"]["referrers"])
        assert "Request" in chain and "cycle" in chain, chain
    kept = [c for c in report["connections"] if (c.get("python") or {}).get("leak") in ("fd_closed", "no_wrapper")]
    assert len(kept) >= 2, [c.get("python") for c in report["connections"]]
    for c in kept:
        chain = " <- ".join(c["python"]["referrers"])
        assert "global 'CLOSED_BUT_KEPT'" in chain and "list" in chain, chain
    assert any(f["id"] == "python-leak" for f in report["findings"])


TM_FIXTURE = textwrap.dedent("""
    import json, os, signal, ssl, sys, time, tracemalloc
    DOMAIN = 0x7715

    def make():
        return ssl.create_default_context()  # THE LINE

    keep = [make() for _ in range(3)]
    line = [i for i, l in enumerate(open(__file__), 1) if "# THE LINE" in l and "return" in l][0]
    dom = tracemalloc.take_snapshot().filter_traces([tracemalloc.DomainFilter(True, DOMAIN)])
    at_line = sum(t.size for t in dom.traces
                  if any(f.filename == __file__ and f.lineno == line for f in t.traceback))
    with open(sys.argv[1] + ".tmp", "w") as f:
        json.dump({"tracing": tracemalloc.is_tracing(), "at_line": at_line}, f)
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    while True:
        time.sleep(0.2)
""")


def test_tracemalloc_mode_attributes_openssl_bytes_to_the_create_default_context_line(tmp_path):
    script = tmp_path / "tm.py"
    script.write_text(TM_FIXTURE)
    result = tmp_path / "tm.json"
    # the target is stopped directly and frees its contexts on the way out: the peak is the moment
    # that holds them (the steady state, with no connection at all, is the latest snapshot)
    out, wrapper = _wrapper(tmp_path, "r.json", "--tracemalloc", "--at", "peak")
    proc = Proc([*wrapper, sys.executable, str(script), str(result)], script=str(script))
    try:
        deadline = time.monotonic() + 120
        while not result.exists():
            assert proc.alive() and time.monotonic() < deadline, proc.describe()
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        proc.stop_target()
    seen = json.loads(result.read_text())
    report = _load(out)
    assert seen["tracing"]
    ca = sum(c["ca_store_bytes"] for c in report["contexts"])
    # the first context's call also built OpenSSL's one-time state, which the report gives the process
    process_wide = sum(report["process"]["by_cause"].get(c, 0) for c in ("library", "thread_state"))
    whole = sum(c["live_bytes"] for c in report["contexts"]) + process_wide
    assert ca > 3 * 500 * KiB
    # everything the line allocated (CA stores, contexts, library state) and still lives, as
    # tracemalloc sees it
    assert abs(seen["at_line"] - whole) <= 0.10 * whole, (seen, whole, ca)
    assert seen["at_line"] >= ca * 0.9


CLOSED_WHILE_LOOKED = textwrap.dedent("""
    import importlib.util, json, socket, ssl, sys, threading
    spec = importlib.util.spec_from_file_location("agent_under_test", sys.argv[1])
    agent = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agent)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    client_ctx = ssl._create_unverified_context()
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []
    def accept(n):
        for _ in range(n):
            conn, _ = listener.accept()
            accepted.append(server_ctx.wrap_socket(conn, server_side=True))
    t = threading.Thread(target=accept, args=(2,))
    t.start()
    clients = [client_ctx.wrap_socket(socket.create_connection(listener.getsockname())) for _ in range(2)]
    t.join(30)
    everyone = clients + accepted
    closed = []
    real_checked_ptrs = agent._checked_ptrs
    def checked_ptrs_as_a_thread_closes(c_obj):
        # a thread switch in the middle of the look: a connection not visited yet closes
        if not closed:
            closed.append(next(s for s in everyone if s._sslobj is not c_obj))
            closed.append(real_checked_ptrs(closed[0]._sslobj)[0])
            closed[0].close()
        return real_checked_ptrs(c_obj)
    agent._checked_ptrs = checked_ptrs_as_a_thread_closes
    doc = agent.snapshot()
    print(json.dumps({"closed_ptr": closed[1], "closed": closed[0]._closed,
                      "objects": [{k: o.get(k) for k in ("ptr", "leak", "fd", "peer")}
                                  for o in doc["objects"] if o["kind"] == "connection"]}))
""")


def test_a_socket_closed_while_the_agent_looks_is_no_leak(tmp_path, cert_pair):
    """The agent holds every gc object while it looks: a handler thread that closes its socket
    meanwhile (a thread switch; getpeername, which releases the GIL, waits until the look is over)
    leaves an _SSLSocket only the agent keeps alive. That is not a connection alive after its socket
    closed (a healthy threaded server once showed 47 such at a snapshot taken as its clients left)."""
    from tlsprof.agent import agent as agent_package

    agent_file = os.path.join(os.path.dirname(agent_package.__file__), "agent.py")
    script = tmp_path / "closing.py"
    script.write_text(CLOSED_WHILE_LOOKED)
    out = subprocess.run(
        [sys.executable, str(script), agent_file, *cert_pair], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["closed"], "the close inside the agent's look never ran"
    conns = seen["objects"]
    assert all(o["leak"] is None for o in conns), conns
    assert seen["closed_ptr"] not in [o["ptr"] for o in conns], conns
    assert len(conns) >= 3, conns  # the two server sides and the client still open
    # peers are asked after the look (the closed one's server side may have had a reset by then)
    assert sum((o["peer"] or "").startswith("127.0.0.1:") for o in conns) >= 2, conns
