"""idle-record-buffers: record buffers kept by idle connections."""

from tlsprof.analysis.findings.registry import KiB, MiB, finding, human  # noqa: F401
from tlsprof.analysis.findings.common import (
    _cause,
    _contexts_by_id,
    _count,
    _live_connections,  # noqa: F401
    _place_connections,
    _placed,
)
from tlsprof.analysis.findings.compression import COMP_MIN_BYTES

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
    """ "on", "off" or "unknown" for a context entry of the report."""
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
        state = _release_buffers_state(contexts.get(c.get("context")) or {}, report.get("target", {}).get("mode"))
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
        said += (
            f"; {states['unknown']} more hold buffers on contexts whose mode is unknown (set before tlsprof attached)"
        )
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
