"""leaked-connections: connections whose socket is gone or that stay silent while their count grows."""

from tlsprof.analysis.findings.registry import KiB, MiB, finding, human  # noqa: F401
from tlsprof.analysis.findings.common import (
    _cause,
    _contexts_by_id,
    _count,
    _live_connections,  # noqa: F401
    _place_connections,
    _placed,
)
from tlsprof.analysis.findings.count_trend import (
    LEAK_MIN_CONNECTIONS,
    TREND_FLAT_RATIO,  # noqa: F401
    TREND_MIN_POINTS,
    TREND_MIN_SPAN_S,
    TREND_SILENT_S,
    _count_trend,
)
from tlsprof.analysis.creation import place

# --- leaked-connections -----------------------------------------------------------------------
# An SSL object with no owner left: its socket fd is closed (fd_open false, from the shim's
# F line: fcntl(F_GETFD) fails), or its fd number now belongs to a newer connection (two live
# connections of one process claim one fd: all but the youngest are stale), or the Python agent found its Python
# object unreachable or gone (connections[].python.leak), or the count of live connections kept
# growing while traffic held steady and the connections that pile up move no data (below).
# Trips at LEAK_MIN_CONNECTIONS such connections; a healthy server frees an SSL right after
# closing its socket, so at most a connection or two sit in that window at a snapshot
# (LEAK_MIN_CONNECTIONS lives in count_trend.py, which shares it).


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
        elif c.get("fd_open") is True:  # fd numbers are per process: a tree's workers reuse them
            by_fd.setdefault((c.get("pid"), c["fd"]), []).append(c)
    for group in by_fd.values():
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
    words = {
        "fd_closed": "socket fd already closed",
        "fd_reused": "fd number reused by a newer connection",
        "python:unreachable": "Python object unreachable",
        "python:fd_closed": "Python socket closed",
        "silent_while_count_grows": f"no data moved for {TREND_SILENT_S:.0f} s or more while the "
        f"connection count kept growing and traffic stayed flat",
    }
    why = ", ".join(f"{n} {words.get(r, r)}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
    where = place(conns)
    detail, fix = _placed(
        f"{_count(len(conns), 'connection')} are alive in OpenSSL but nothing uses them any more "
        f"({why}); each holds {human(per_connection)} of its own ({human(own)} in all), and they "
        f"keep their contexts alive. Freeing them would save {human(own)}.",
        LEAKED_CONNECTIONS_FIX,
        where,
        {},
    )
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
