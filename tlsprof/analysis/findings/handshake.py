"""handshake-state-retained: handshake state kept by stuck or finished connections."""

from tlsprof.analysis.findings.registry import KiB, MiB, finding, human  # noqa: F401
from tlsprof.analysis.findings.common import (
    _cause,
    _contexts_by_id,
    _count,
    _live_connections,  # noqa: F401
    _place_connections,
    _placed,
)

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
    stuck = [
        c
        for c in live
        if c.get("state") == "handshake" and isinstance(c.get("age_s"), (int, float)) and c["age_s"] >= HS_STUCK_S
    ]
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
        parts.append(
            f"{len(holders)} of {len(established)} established connections still hold "
            f"{human(held / len(holders))} each of handshake-time state (a finished "
            f"handshake normally leaves under 1 KiB)"
        )
    if stuck:
        oldest = max(c["age_s"] for c in stuck)
        parts.append(
            f"{len(stuck)} connections have been in the handshake for {HS_STUCK_S:.0f} s "
            f"or more (oldest {oldest:.0f} s), holding {human(stuck_bytes / len(stuck))} each"
        )
    return {
        "id": "handshake-state-retained",
        "severity": "warning" if total >= 4 * MiB or len(stuck) >= 100 else "info",
        "title": "Handshake state still live (finished or stalled handshakes)",
        "detail": "; ".join(parts) + f". Releasing it would free {human(total)}.",
        "bytes_per_connection": per_connection,
        "saving_bytes": int(total),
        "fix": HANDSHAKE_FIX,
        "evidence": {
            "established_holding": len(holders),
            "established": len(established),
            "handshake_bytes_established": int(held),
            "stuck_in_handshake": len(stuck),
            "stuck_bytes": int(stuck_bytes),
            "stuck_after_s": HS_STUCK_S,
        },
    }
