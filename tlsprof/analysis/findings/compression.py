"""compression-enabled: a zlib state per connection."""

from tlsprof.analysis.findings.registry import KiB, MiB, finding, human  # noqa: F401
from tlsprof.analysis.findings.common import (
    _cause,
    _contexts_by_id,
    _count,
    _live_connections,  # noqa: F401
    _place_connections,
    _placed,
)
from tlsprof.analysis.findings.count_trend import _count_trend

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
    "pyOpenSSL": "ctx.set_options(OpenSSL.SSL.OP_NO_COMPRESSION) (SSL_OP_NO_COMPRESSION) on this context." + _CRIME,
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
        COMPRESSION_FIX,
        where,
        COMPRESSION_FIX_BY_API,
    )
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
