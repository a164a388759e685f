"""session-cache-growth: TLS sessions retained past their connections."""

from tlsprof.analysis.findings.registry import KiB, MiB, finding, human  # noqa: F401
from tlsprof.analysis.findings.common import (
    _cause,
    _contexts_by_id,
    _count,
    _live_connections,  # noqa: F401
    _place_connections,
    _placed,
)

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
    points = [
        p["session_bytes"]
        for p in report.get("history", [])
        if isinstance(p, dict) and isinstance(p.get("session_bytes"), (int, float))
    ]
    growth = None
    if len(points) >= 2:
        first = max(min(points[: max(1, len(points) // 4)]), 1)
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
