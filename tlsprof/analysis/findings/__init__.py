"""Findings: what a report means and what to change. Each finding is a small function registered
with @finding; it reads only the report dict (never live data) and returns a finding dict or None.

A finding dict has the keys the schema requires (id, severity, title, detail, bytes_per_connection,
fix) and may add `saving_bytes` and an `evidence` object. Severity is "info", "warning" or
"critical".
"""
from tlsprof.analysis.creation import place, place_text
from tlsprof.errors import TlsprofError

KiB = 1024
MiB = 1024 * KiB

SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}

# id -> function(report) -> finding dict or None; in registration order.
REGISTRY = {}


def finding(finding_id: str):
    """Register a finding function under its id (lowercase words joined by '-')."""
    def register(fn):
        if finding_id in REGISTRY:
            raise ValueError(f"finding {finding_id!r} registered twice")
        REGISTRY[finding_id] = fn
        fn.finding_id = finding_id
        return fn
    return register


def compute_findings(report: dict) -> list:
    """Run every registered finding on `report` (its own `findings` key is ignored).

    Sorted by severity, then by bytes per connection, largest first.
    """
    results = []
    for finding_id, fn in REGISTRY.items():
        result = fn(report)
        if result is None:
            continue
        if result.get("id") != finding_id:
            raise TlsprofError(f"finding function {fn.__name__} returned id {result.get('id')!r}")
        results.append(result)
    results.sort(key=lambda f: (SEVERITY_ORDER.get(f["severity"], 9),
                                -(f.get("bytes_per_connection") or 0)))
    return results


def human(n) -> str:
    """Bytes as text for finding sentences: B below 1 KiB, else KiB/MiB/GiB with one decimal."""
    n = float(n)
    if abs(n) < KiB:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def _ca_store_bytes(ctx: dict) -> int:
    if "ca_store_bytes" in ctx:
        return ctx["ca_store_bytes"]
    return ctx.get("by_cause", {}).get("ca_store", 0)


# --- ca-store-per-connection ----------------------------------------------------------------
# A context holding a parsed CA store (~800 KiB for Debian's 144 roots) should serve many
# connections. Trips when at least CA_MIN_CONTEXTS live contexts each hold more than
# CA_MIN_STORE_BYTES of CA store and serve, on average, at most CA_MAX_CONNECTIONS_PER_CONTEXT live
# connections each. One shared context (any number of connections) never trips it; neither does a
# server with a few contexts that each serve many connections.
CA_MIN_CONTEXTS = 2
CA_MIN_STORE_BYTES = 64 * KiB
CA_MAX_CONNECTIONS_PER_CONTEXT = 2

CA_STORE_FIX = (
    "Create one context and reuse it for every connection. "
    "Python ssl: call ssl.create_default_context() (or SSLContext() + load_default_certs()) once, "
    "at start-up, and pass that same object to every wrap_socket(), asyncio connection or HTTP "
    "client; never build a context per request. "
    "pyOpenSSL: create one OpenSSL.SSL.Context and pass it to every OpenSSL.SSL.Connection. "
    "C API: create one SSL_CTX, load the trust store into it once "
    "(SSL_CTX_set_default_verify_paths or SSL_CTX_load_verify_locations), and call SSL_new(ctx) "
    "for each connection."
)


# The fix for the API the creating line uses (tlsprof/creation.py); CA_STORE_FIX when unknown.
CA_STORE_FIX_BY_API = {
    "ssl": "Build the SSLContext once, at start-up, and reuse that same object for every "
           "wrap_socket(), start_tls() or asyncio server/connection; never call "
           "ssl.create_default_context() or SSLContext() per connection or request.",
    "urllib3/requests": "Reuse one requests.Session (or urllib3.PoolManager) for every request "
                        "instead of requests.get()/Session() per call, or give the adapter/pool one "
                        "shared context: urllib3.PoolManager(ssl_context=ctx) built once with "
                        "ssl.create_default_context().",
    "aiohttp": "Reuse one aiohttp.ClientSession for every request (each new session or TCPConnector "
               "builds its own context), or pass one shared context: "
               "aiohttp.TCPConnector(ssl=ctx) with ctx = ssl.create_default_context() made once.",
    "httpx": "Reuse one httpx.Client/AsyncClient (each client builds its own context), or pass "
             "verify=ctx with one ssl.create_default_context() made at start-up.",
    "pyOpenSSL": "Create one OpenSSL.SSL.Context at start-up and pass it to every "
                 "OpenSSL.SSL.Connection (Twisted: build one CertificateOptions/"
                 "optionsForClientTLS and reuse it for every connection).",
    "C": "Create one SSL_CTX, load the trust store into it once (SSL_CTX_set_default_verify_paths "
         "or SSL_CTX_load_verify_locations), and call SSL_new(ctx) for each connection.",
}


def _placed(detail: str, fix: str, where, fixes: dict):
    """Name the user's creating line in the detail and give the fix for the API on that line."""
    if where is None:
        return detail, fix
    detail += (f" {where['objects']} of {where['of']} were created at {place_text(where)} "
               f"({where['api']}).")
    specific = fixes.get(where["api"])
    if specific:
        fix = f"At {place_text(where)}: {specific}"
    return detail, fix


@finding("ca-store-per-connection")
def ca_store_per_connection(report: dict):
    heavy = [ctx for ctx in report.get("contexts", [])
             if ctx.get("alive", True)
             and ctx.get("connections", 0) >= 1
             and _ca_store_bytes(ctx) > CA_MIN_STORE_BYTES]
    if len(heavy) < CA_MIN_CONTEXTS:
        return None
    connections = sum(ctx["connections"] for ctx in heavy)
    per_context = connections / len(heavy)
    if per_context > CA_MAX_CONNECTIONS_PER_CONTEXT:
        return None
    stores = [_ca_store_bytes(ctx) for ctx in heavy]
    total = sum(stores)
    mean_store = total / len(heavy)
    per_connection = total / connections
    saving = total - max(stores)
    many = len(heavy) >= 10 or saving >= 8 * MiB
    where = place(heavy)
    detail, fix = _placed(
        f"{len(heavy)} live contexts each hold their own CA store "
        f"({human(mean_store)} each on average) and serve {per_context:.1f} connections each "
        f"({connections} in all): the CA store costs {human(per_connection)} per connection. "
        f"Sharing one context would save {human(saving)}.", CA_STORE_FIX, where, CA_STORE_FIX_BY_API)
    return {
        "id": "ca-store-per-connection",
        "severity": "critical" if many else "warning",
        "title": "Each connection builds its own CA store",
        "detail": detail,
        "bytes_per_connection": per_connection,
        "saving_bytes": saving,
        "fix": fix,
        "created_at": where,
        "evidence": {
            "contexts": len(heavy),
            "connections": connections,
            "ca_store_bytes_mean": mean_store,
            "ca_store_bytes_total": total,
            "context_ids": [ctx.get("id") for ctx in heavy[:20]],
        },
    }


# --- shared helpers for the per-connection findings -------------------------------------------

def _live_connections(report: dict) -> list:
    return [c for c in report.get("connections", []) if c.get("alive", True)]


def _cause(entry: dict, cause: str) -> float:
    return (entry.get("by_cause") or {}).get(cause, 0) or 0


def _contexts_by_id(report: dict) -> dict:
    return {ctx.get("id"): ctx for ctx in report.get("contexts", [])}


def _place_connections(report: dict, conns: list):
    """Where the connections' contexts were created (the line whose settings decide what a
    connection keeps), else where the connections themselves were."""
    contexts = _contexts_by_id(report)
    owners = [contexts[c.get("context")] for c in conns if c.get("context") in contexts]
    return place(owners) or place(conns)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# --- compression-enabled ----------------------------------------------------------------------
# TLS compression keeps a zlib deflate and inflate state per connection (~0.5 MiB measured here).
# Trips when at least COMP_MIN_CONNECTIONS live connections each hold more than COMP_MIN_BYTES of
# `compression` bytes. Debian's OpenSSL has no zlib and OpenSSL >= 1.1 sets SSL_OP_NO_COMPRESSION
# by default, so a healthy server never holds any.
COMP_MIN_CONNECTIONS = 1
COMP_MIN_BYTES = 4 * KiB

COMPRESSION_FIX = (
    "Turn TLS compression off; it is also the CRIME attack (CVE-2012-4929), which recovers "
    "cookies and tokens from compressed TLS records. "
    "Python ssl: ctx.options |= ssl.OP_NO_COMPRESSION (the default; remove the code that clears it). "
    "pyOpenSSL: ctx.set_options(OpenSSL.SSL.OP_NO_COMPRESSION). "
    "nginx: compression is always disabled by nginx; check for a patched build or a module that "
    "clears SSL_OP_NO_COMPRESSION. "
    "C API: SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION) (and do not call SSL_CTX_clear_options "
    "with it), or build OpenSSL without zlib."
)


_CRIME = " Compression is also the CRIME attack (CVE-2012-4929) on cookies and tokens."
COMPRESSION_FIX_BY_API = {
    "ssl": "keep ssl.OP_NO_COMPRESSION (OpenSSL's SSL_OP_NO_COMPRESSION) set on this context: it is "
           "the default, so remove the `options &= ~ssl.OP_NO_COMPRESSION` that clears it." + _CRIME,
    "pyOpenSSL": "ctx.set_options(OpenSSL.SSL.OP_NO_COMPRESSION) (SSL_OP_NO_COMPRESSION) on this "
                 "context." + _CRIME,
    "C": "SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION), and no SSL_CTX_clear_options with it." + _CRIME,
}


@finding("compression-enabled")
def compression_enabled(report: dict):
    conns = [c for c in _live_connections(report) if _cause(c, "compression") > COMP_MIN_BYTES]
    if len(conns) < COMP_MIN_CONNECTIONS:
        return None
    total = sum(_cause(c, "compression") for c in conns)
    per_connection = total / len(conns)
    all_conns = len(_live_connections(report))
    critical = len(conns) >= 10 or total >= 8 * MiB
    where = _place_connections(report, conns)
    detail, fix = _placed(
        f"{len(conns)} of {all_conns} live connections negotiated TLS compression: each holds "
        f"{human(per_connection)} of zlib compression state ({human(total)} in all). "
        f"Disabling compression would free {human(total)} now and remove the CRIME exposure.",
        COMPRESSION_FIX, where, COMPRESSION_FIX_BY_API)
    return {
        "id": "compression-enabled",
        "severity": "critical" if critical else "warning",
        "title": "Connections negotiated TLS compression (zlib state per connection; CRIME)",
        "detail": detail,
        "bytes_per_connection": per_connection,
        "saving_bytes": int(total),
        "fix": fix,
        "created_at": where,
        "evidence": {
            "connections": len(conns),
            "live_connections": all_conns,
            "compression_bytes_mean": per_connection,
            "compression_bytes_total": int(total),
            "connection_ids": [c.get("id") for c in conns[:20]],
            "count_trend": _count_trend(report),
        },
    }


# --- idle-record-buffers ----------------------------------------------------------------------
# Without SSL_MODE_RELEASE_BUFFERS every connection keeps its ~16.7 KiB read and ~16.7 KiB write
# record buffers for its whole life, idle or not; with it, buffers exist only while data is in
# flight (or while a thread is blocked inside SSL_read, as in a thread-per-connection server: that
# read buffer is the price of blocking I/O, not something the mode can free). So only connections
# whose context is known to have the mode off count (under `run`, no mode call seen since
# SSL_CTX_new means OpenSSL's default, off; after `attach`, or in a report without
# `release_buffers`, the mode is unknown and those connections are only mentioned). Trips when at least RB_MIN_CONNECTIONS
# established connections without compression (compression keeps its own decompression buffer;
# see compression-enabled) on such contexts each hold at least RB_MIN_BYTES of record buffers, and
# they are at least RB_MIN_SHARE of the established connections. Python's ssl and nginx set the
# mode, so they never trip it.
RB_MIN_CONNECTIONS = 10
RB_MIN_BYTES = 8 * KiB
RB_MIN_SHARE = 0.5

RECORD_BUFFERS_FIX = (
    "Set SSL_MODE_RELEASE_BUFFERS so idle connections give their record buffers back. "
    "C API: SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS) once on the context (or SSL_set_mode "
    "per connection). pyOpenSSL: ctx.set_mode(OpenSSL.SSL.MODE_RELEASE_BUFFERS). "
    "Python ssl and nginx set it already: if you see this on them, something cleared it "
    "(SSL_CTX_clear_mode). The cost is a malloc/free pair per record burst."
)


def _release_buffers_state(ctx: dict, mode) -> str:
    """"on", "off" or "unknown" for a context entry of the report."""
    if "release_buffers" not in ctx:
        return "unknown"  # a report from a collector that does not record SSL_MODE_* calls
    rb = ctx["release_buffers"]
    if rb is True:
        return "on"
    if rb is False:
        return "off"
    # no mode call seen: under `run` the shim saw every call from SSL_CTX_new on, so the context
    # has OpenSSL's default (off); after `attach` the mode may have been set before we came
    return "off" if mode == "run" else "unknown"


@finding("idle-record-buffers")
def idle_record_buffers(report: dict):
    contexts = _contexts_by_id(report)
    established = [c for c in _live_connections(report) if c.get("state") == "established"]
    holders, states = [], {}
    for c in established:
        if _cause(c, "record_buffers") < RB_MIN_BYTES or _cause(c, "compression") > COMP_MIN_BYTES:
            continue
        state = _release_buffers_state(contexts.get(c.get("context")) or {},
                                       report.get("target", {}).get("mode"))
        states[state] = states.get(state, 0) + 1
        if state != "off":
            continue  # on: nothing the mode can free; unknown: never claim a fix we cannot see
        holders.append(c)
    if len(holders) < RB_MIN_CONNECTIONS or len(holders) < RB_MIN_SHARE * len(established):
        return None
    total = sum(_cause(c, "record_buffers") for c in holders)
    per_connection = total / len(holders)
    said = "SSL_MODE_RELEASE_BUFFERS is off on their contexts (no SSL_CTX_set_mode call seen)"
    if states.get("unknown"):
        said += (f"; {states['unknown']} more hold buffers on contexts whose mode is unknown "
                 f"(set before tlsprof attached)")
    return {
        "id": "idle-record-buffers",
        "severity": "warning" if total >= 4 * MiB else "info",
        "title": "Idle connections keep their TLS record buffers (no SSL_MODE_RELEASE_BUFFERS)",
        "detail": (
            f"{len(holders)} of {len(established)} established connections each hold "
            f"{human(per_connection)} of record read/write buffers ({human(total)} in all); {said}. "
            f"With SSL_MODE_RELEASE_BUFFERS on, idle connections would free about {human(total)} "
            f"({human(per_connection)} per connection)."
        ),
        "bytes_per_connection": per_connection,
        "saving_bytes": int(total),
        "fix": RECORD_BUFFERS_FIX,
        "evidence": {
            "connections": len(holders),
            "established": len(established),
            "record_buffers_bytes_total": int(total),
            "release_buffers_off": states.get("off", 0),
            "release_buffers_unknown": states.get("unknown", 0),
        },
    }


# --- leaked-connections -----------------------------------------------------------------------
# An SSL object with no owner left: its socket fd is closed (fd_open false, from the shim's
# F line: fcntl(F_GETFD) fails), or its fd number now belongs to a newer connection (two live
# connections claim one fd: all but the youngest are stale), or the Python agent found its Python
# object unreachable or gone (connections[].python.leak), or the count of live connections kept
# growing while traffic held steady and the connections that pile up move no data (below).
# Trips at LEAK_MIN_CONNECTIONS such connections; a healthy server frees an SSL right after
# closing its socket, so at most a connection or two sit in that window at a snapshot.
LEAK_MIN_CONNECTIONS = 5

# "Count growing while traffic is flat", from the session's history (native facts only: live
# connections and the shim's count of SSL_read/write calls that moved data). The history is cut in
# three equal spans of time: the mean live count must rise from each span to the next by
# LEAK_MIN_CONNECTIONS in all, while the traffic rate of the busiest span is at most
# TREND_FLAT_RATIO times the quietest's (a ramp-up of busy connections raises traffic with the
# count; a leak does not). The connections called leaked are those that moved no data for
# TREND_SILENT_S or more. A healthy server under steady load keeps a flat count.
TREND_MIN_SPAN_S = 20.0
TREND_MIN_POINTS = 8
TREND_FLAT_RATIO = 2.0
TREND_SILENT_S = 10.0


def _count_trend(report: dict):
    """Evidence that live connections grew while traffic was flat, or None."""
    points = [p for p in report.get("history") or [] if isinstance(p, dict)
              and isinstance(p.get("t"), (int, float)) and isinstance(p.get("connections"), int)
              and isinstance(p.get("io_calls"), int)]
    if len(points) < TREND_MIN_POINTS:
        return None
    start, span = points[0]["t"], points[-1]["t"] - points[0]["t"]
    if span < TREND_MIN_SPAN_S:
        return None
    thirds = [[p for p in points if start + k * span / 3 <= p["t"] <= start + (k + 1) * span / 3]
              for k in range(3)]
    if any(len(third) < 2 for third in thirds):
        return None
    counts = [sum(p["connections"] for p in third) / len(third) for third in thirds]
    rates = []
    for third in thirds:
        dt = third[-1]["t"] - third[0]["t"]
        rates.append((third[-1]["io_calls"] - third[0]["io_calls"]) / dt if dt > 0 else 0.0)
    growing = counts[0] < counts[1] < counts[2] and counts[2] - counts[0] >= LEAK_MIN_CONNECTIONS
    flat = min(rates) > 0 and max(rates) <= TREND_FLAT_RATIO * min(rates)
    if not (growing and flat):
        return None
    return {"span_s": round(span, 1), "mean_connections": [round(c, 1) for c in counts],
            "io_calls_per_s": [round(r, 1) for r in rates]}

LEAKED_CONNECTIONS_FIX = (
    "Free each connection when its socket closes. "
    "C API: call SSL_free(ssl) on every path that close()s the fd (errors, timeouts, peer close), "
    "or let the SSL own the socket with BIO_NOCLOSE off and free it. "
    "Python ssl: close the SSLSocket/transport (`with` block or writer.close()) and drop every "
    "reference to it (lists, dicts, callbacks, exceptions kept in tracebacks). "
    "pyOpenSSL: call conn.shutdown() and drop the Connection object after sock.close(). "
    "Connections that pile up silent (no data moved): notice the peer's close (a read returning 0 / "
    "EOF) and free on it, and give every connection an idle timeout (nginx keepalive_timeout, "
    "client_body_timeout; asyncio: a timer that calls transport.close())."
)


def _leaked_connections(report: dict) -> dict:
    """conn id -> reason, for connections alive in OpenSSL that nothing owns any more."""
    conns = _live_connections(report)
    leaked = {}
    by_fd = {}
    for c in conns:
        py = c.get("python")
        if isinstance(py, dict) and py.get("leak") in ("unreachable", "fd_closed"):
            leaked[c.get("id")] = f"python:{py['leak']}"
            continue
        if c.get("fd") is None:
            continue
        if c.get("fd_open") is False:
            leaked[c.get("id")] = "fd_closed"
        elif c.get("fd_open") is True:
            by_fd.setdefault(c["fd"], []).append(c)
    for fd, group in by_fd.items():
        if len(group) < 2:
            continue
        # the youngest connection on this fd number owns it now; the older ones lost their socket
        group = sorted(group, key=lambda c: (c.get("age_s") is None, c.get("age_s") or 0))
        for c in group[1:]:
            leaked.setdefault(c.get("id"), "fd_reused")
    if _count_trend(report) is not None:
        for c in conns:
            if (c.get("idle_s") or 0) >= TREND_SILENT_S:
                leaked.setdefault(c.get("id"), "silent_while_count_grows")
    return leaked


@finding("leaked-connections")
def leaked_connections(report: dict):
    leaked = _leaked_connections(report)
    if len(leaked) < LEAK_MIN_CONNECTIONS:
        return None
    conns = [c for c in _live_connections(report) if c.get("id") in leaked]
    own = sum(c.get("live_bytes", 0) for c in conns)
    per_connection = own / len(conns)
    reasons = {}
    for reason in leaked.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    words = {"fd_closed": "socket fd already closed", "fd_reused": "fd number reused by a newer connection",
             "python:unreachable": "Python object unreachable", "python:fd_closed": "Python socket closed",
             "silent_while_count_grows": f"no data moved for {TREND_SILENT_S:.0f} s or more while the "
                                         f"connection count kept growing and traffic stayed flat"}
    why = ", ".join(f"{n} {words.get(r, r)}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
    where = place(conns)
    detail, fix = _placed(
        f"{_count(len(conns), 'connection')} are alive in OpenSSL but nothing uses them any more "
        f"({why}); each holds {human(per_connection)} of its own ({human(own)} in all), and they "
        f"keep their contexts alive. Freeing them would save {human(own)}.",
        LEAKED_CONNECTIONS_FIX, where, {})
    return {
        "id": "leaked-connections",
        "severity": "critical" if len(conns) >= 100 or own >= 8 * MiB else "warning",
        "title": "SSL connections alive with no owner (leaked)",
        "detail": detail,
        "bytes_per_connection": per_connection,
        "saving_bytes": int(own),
        "fix": fix,
        "created_at": where,
        "evidence": {
            "connections": len(conns),
            "reasons": reasons,
            "live_connections": len(_live_connections(report)),
            "connection_ids": [c.get("id") for c in conns[:20]],
            "count_trend": _count_trend(report),
        },
    }


# --- leaked-contexts --------------------------------------------------------------------------
# Contexts alive that serve no connection: a context is meant to be shared, so a process needs a
# handful at most (one per configuration: server, client, per SNI name). Trips when at least
# LEAK_MIN_CONTEXTS live contexts serve no live connection and hold more than
# LEAK_MIN_CONTEXT_BYTES each, and they are the majority of all live contexts, or when the Python
# agent reports at least LEAK_MIN_PY_CONTEXTS context objects unreachable. The seed server holds one context.
LEAK_MIN_CONTEXTS = 10
LEAK_MIN_CONTEXT_BYTES = 16 * KiB
LEAK_MIN_PY_CONTEXTS = 3  # contexts the Python agent proved unreachable (a GC cycle may hold one)

LEAKED_CONTEXTS_FIX = (
    "Create contexts once and free the ones you stop using. "
    "C API: SSL_CTX_free(ctx) when it is no longer needed (SSL_new takes its own reference, so "
    "freeing it after the last SSL_new is safe), better: one SSL_CTX for the process. "
    "Python ssl: build one SSLContext at start-up and reuse it; do not keep per-request contexts "
    "in caches, lists or closures. pyOpenSSL: reuse one OpenSSL.SSL.Context."
)


@finding("leaked-contexts")
def leaked_contexts(report: dict):
    live = [ctx for ctx in report.get("contexts", []) if ctx.get("alive", True)]
    idle = [ctx for ctx in live if ctx.get("connections", 0) == 0
            and ctx.get("live_bytes", 0) > LEAK_MIN_CONTEXT_BYTES]
    py_leaked = [ctx for ctx in live if isinstance(ctx.get("python"), dict)
                 and ctx["python"].get("leak") in ("unreachable",)]
    if len(idle) < LEAK_MIN_CONTEXTS or len(idle) * 2 <= len(live):
        idle = []
    suspects = {id(c): c for c in idle + py_leaked}.values()
    suspects = list(suspects)
    if len(suspects) < (LEAK_MIN_PY_CONTEXTS if py_leaked else LEAK_MIN_CONTEXTS):
        return None
    sizes = [ctx.get("live_bytes", 0) for ctx in suspects]
    total = sum(sizes)
    n_conns = report.get("per_connection", {}).get("connections", 0)
    where = place(suspects)
    detail, fix = _placed(
        f"{len(suspects)} of {len(live)} live contexts serve no connection "
        f"({n_conns} connections are live in all) yet hold {human(total / len(suspects))} each "
        f"({human(total)} in all, {human(sum(_ca_store_bytes(c) for c in suspects))} of it CA "
        f"stores). Freeing them would save {human(total)}.", LEAKED_CONTEXTS_FIX, where,
        CA_STORE_FIX_BY_API)
    return {
        "id": "leaked-contexts",
        "severity": "critical" if total >= 64 * MiB else "warning",
        "title": "SSL contexts alive that serve no connection (leaked)",
        "detail": detail,
        "bytes_per_connection": None,
        "saving_bytes": int(total),
        "fix": fix,
        "created_at": where,
        "evidence": {
            "contexts": len(suspects),
            "live_contexts": len(live),
            "bytes_total": int(total),
            "python_unreachable": len(py_leaked),
            "context_ids": [ctx.get("id") for ctx in suspects[:20]],
        },
    }


# --- session-cache-growth ---------------------------------------------------------------------
# Sessions that outlive their connections (the server's session cache, or tickets/sessions a
# client keeps) are owned by no live connection: the report counts them under `process` (the
# freed connection that allocated them) and under contexts. Trips when those retained session
# bytes exceed SC_MIN_BYTES and are more than SC_MIN_RATIO times the session bytes of the live
# connections (the cache holds sessions of connections long gone), and, when the history carries
# `session_bytes` points, they grew by at least SC_MIN_GROWTH over it. OpenSSL's default server
# cache holds up to 20,480 sessions: bounded in count, but ~20 MB at ~1 KiB each and never shrunk
# before their timeout. TLS 1.3 (stateless tickets) servers, like the seed server, keep none.
SC_MIN_BYTES = 256 * KiB
SC_MIN_RATIO = 2.0
SC_MIN_GROWTH = 0.25

SESSION_CACHE_FIX = (
    "Bound the session cache or use stateless tickets. "
    "C API: SSL_CTX_sess_set_cache_size(ctx, N) (default 20480), SSL_CTX_set_timeout(ctx, secs), "
    "SSL_CTX_flush_sessions(ctx, time(NULL)) on a timer, or keep tickets on (do not set "
    "SSL_OP_NO_TICKET) so the server keeps no state; SSL_CTX_set_session_cache_mode(ctx, "
    "SSL_SESS_CACHE_OFF) if resumption is not needed. "
    "nginx: ssl_session_cache shared:SSL:10m; ssl_session_timeout 1h; (never `builtin` without a "
    "size). pyOpenSSL: ctx.set_session_cache_mode(OpenSSL.SSL.SESS_CACHE_OFF) or ctx.set_timeout(). "
    "Python ssl (client): keep at most one SSLSession per server, not one per connection."
)


def _retained_session_bytes(report: dict) -> float:
    retained = (report.get("process") or {}).get("by_cause", {}).get("session", 0) or 0
    retained += sum(_cause(ctx, "session") for ctx in report.get("contexts", []))
    return retained


@finding("session-cache-growth")
def session_cache_growth(report: dict):
    retained = _retained_session_bytes(report)
    live = sum(_cause(c, "session") for c in _live_connections(report))
    if retained <= SC_MIN_BYTES or retained <= SC_MIN_RATIO * live:
        return None
    points = [p["session_bytes"] for p in report.get("history", [])
              if isinstance(p, dict) and isinstance(p.get("session_bytes"), (int, float))]
    growth = None
    if len(points) >= 2:
        first = max(min(points[:max(1, len(points) // 4)]), 1)
        growth = (points[-1] - first) / first
        if growth < SC_MIN_GROWTH:
            return None
    n = len(_live_connections(report))
    grew = f"; it grew {growth * 100:.0f}% over the session" if growth is not None else ""
    return {
        "id": "session-cache-growth",
        "severity": "critical" if retained >= 64 * MiB else "warning",
        "title": "Sessions pile up after their connections are gone",
        "detail": (
            f"{human(retained)} of TLS sessions outlive their connections (session cache or kept "
            f"tickets), against {human(live)} held by the {n} live connections{grew}. The cache grows "
            f"with every full handshake until its size limit or timeout."
        ),
        "bytes_per_connection": None,
        "saving_bytes": int(retained),
        "fix": SESSION_CACHE_FIX,
        "evidence": {
            "retained_session_bytes": int(retained),
            "live_connection_session_bytes": int(live),
            "history_points": len(points),
            "growth": growth,
        },
    }


# --- handshake-state-retained ---------------------------------------------------------------
# Handshake-time state should be gone once a connection is established: OpenSSL keeps well under
# 1 KiB of `handshake` bytes per connection after it (measured here: ~0.3 KiB in Python, ~0.9 KiB
# in a C server). Two shapes trip it:
# - at least HS_MIN_CONNECTIONS established connections each still hold HS_MIN_BYTES of
#   `handshake` bytes, and they are at least HS_MIN_SHARE of the established ones (the first
#   connection of a process carries ~16 KiB of one-off lazy initialisation; the share rule
#   ignores it);
# - at least HS_MIN_STUCK connections have sat in the handshake for HS_STUCK_S seconds or more
#   (a handshake takes milliseconds; these are stalled or hostile peers): everything they hold
#   (record/BIO buffers, key shares, transcript) is handshake-time state. Measured here: ~55 KiB
#   each on the seed server, which waits 60 s (asyncio's default ssl_handshake_timeout).
HS_MIN_CONNECTIONS = 10
HS_MIN_BYTES = 8 * KiB
HS_MIN_SHARE = 0.5
HS_MIN_STUCK = 10
HS_STUCK_S = 10.0

HANDSHAKE_FIX = (
    "Bound the handshake and let its state go. Stalled handshakes: give them a deadline. "
    "Python asyncio: loop.create_server(..., ssl_handshake_timeout=10) / asyncio.start_server(..., "
    "ssl_handshake_timeout=10) (default 60 s); Python threads: sock.settimeout(10) before "
    "wrap_socket()/do_handshake(). pyOpenSSL: a socket timeout around do_handshake(). "
    "nginx: client_header_timeout (http) or ssl_handshake_timeout (stream) of a few seconds. "
    "C API: poll with a deadline around SSL_accept/SSL_do_handshake and SSL_free + close on "
    "expiry. State kept after the handshake: free SSL_SESSION/X509 references taken in callbacks "
    "(SSL_get1_session, SSL_get1_peer_certificate), and do not enable post-handshake "
    "authentication (SSL_VERIFY_POST_HANDSHAKE, ctx.post_handshake_auth) unless it is used."
)


@finding("handshake-state-retained")
def handshake_state_retained(report: dict):
    live = _live_connections(report)
    established = [c for c in live if c.get("state") == "established"]
    holders = [c for c in established if _cause(c, "handshake") >= HS_MIN_BYTES]
    if len(holders) < HS_MIN_CONNECTIONS or len(holders) < HS_MIN_SHARE * len(established):
        holders = []
    stuck = [c for c in live if c.get("state") == "handshake"
             and isinstance(c.get("age_s"), (int, float)) and c["age_s"] >= HS_STUCK_S]
    if len(stuck) < HS_MIN_STUCK:
        stuck = []
    if not holders and not stuck:
        return None
    held = sum(_cause(c, "handshake") for c in holders)
    stuck_bytes = sum(c.get("live_bytes", 0) for c in stuck)
    total = held + stuck_bytes
    per_connection = total / (len(holders) + len(stuck))
    parts = []
    if holders:
        parts.append(f"{len(holders)} of {len(established)} established connections still hold "
                     f"{human(held / len(holders))} each of handshake-time state (a finished "
                     f"handshake normally leaves under 1 KiB)")
    if stuck:
        oldest = max(c["age_s"] for c in stuck)
        parts.append(f"{len(stuck)} connections have been in the handshake for {HS_STUCK_S:.0f} s "
                     f"or more (oldest {oldest:.0f} s), holding {human(stuck_bytes / len(stuck))} each")
    return {
        "id": "handshake-state-retained",
        "severity": "warning" if total >= 4 * MiB or len(stuck) >= 100 else "info",
        "title": "Handshake state still live (finished or stalled handshakes)",
        "detail": "; ".join(parts) + f". Releasing it would free {human(total)}.",
        "bytes_per_connection": per_connection,
        "saving_bytes": int(total),
        "fix": HANDSHAKE_FIX,
        "evidence": {"established_holding": len(holders), "established": len(established),
                     "handshake_bytes_established": int(held), "stuck_in_handshake": len(stuck),
                     "stuck_bytes": int(stuck_bytes), "stuck_after_s": HS_STUCK_S},
    }
