"""Findings: what a report means and what to change. Each finding is a small function registered
with @finding; it reads only the report dict (never live data) and returns a finding dict or None.

A finding dict has the keys the schema requires (id, severity, title, detail, bytes_per_connection,
fix) and may add `saving_bytes` and an `evidence` object. Severity is "info", "warning" or
"critical".

The one place findings are registered: each module below holds one finding and registers it with
@finding when imported; the order here is the order they run in (ties in severity keep it).
"""

from tlsprof.analysis.findings.registry import (
    KiB,
    MiB,
    REGISTRY,
    SEVERITY_ORDER,  # noqa: F401
    compute_findings,
    finding,
    human,
)
from tlsprof.analysis.findings import (
    ca_store,
    context_per_connection,
    compression,
    record_buffers,  # noqa: F401
    leaked_connections,
    leaked_contexts,
    session_cache,
    handshake,
    python_leak,
)

# every threshold and fix text, where the tests and docs/findings.md look for them
from tlsprof.analysis.findings.ca_store import (
    CA_MIN_CONTEXTS,
    CA_MIN_STORE_BYTES,
    CA_MAX_CONNECTIONS_PER_CONTEXT,
    CA_STORE_FIX,
    CA_STORE_FIX_BY_API,
)  # noqa: F401,E402
from tlsprof.analysis.findings.context_per_connection import (
    CTX_MIN_CONTEXTS,
    CTX_MAX_GAP_S,
    CTX_MIN_SAVING,
    CONTEXT_PER_CONNECTION_FIX,
    CONTEXT_PER_CONNECTION_FIX_BY_API,
)  # noqa: F401,E402
from tlsprof.analysis.findings.compression import (
    COMP_MIN_CONNECTIONS,
    COMP_MIN_BYTES,
    COMPRESSION_FIX,
    COMPRESSION_FIX_BY_API,
)  # noqa: F401,E402
from tlsprof.analysis.findings.count_trend import (
    LEAK_MIN_CONNECTIONS,
    TREND_MIN_SPAN_S,
    TREND_MIN_POINTS,
    TREND_FLAT_RATIO,
    TREND_SILENT_S,
)  # noqa: F401,E402
from tlsprof.analysis.findings.handshake import (
    HS_MIN_CONNECTIONS,
    HS_MIN_BYTES,
    HS_MIN_SHARE,
    HS_MIN_STUCK,
    HS_STUCK_S,
    HANDSHAKE_FIX,
)  # noqa: F401,E402
from tlsprof.analysis.findings.leaked_connections import LEAKED_CONNECTIONS_FIX  # noqa: F401,E402
from tlsprof.analysis.findings.leaked_contexts import (
    LEAK_MIN_CONTEXTS,
    LEAK_MIN_CONTEXT_BYTES,
    LEAK_MIN_PY_CONTEXTS,
    LEAKED_CONTEXTS_FIX,
)  # noqa: F401,E402
from tlsprof.analysis.findings.record_buffers import RB_MIN_CONNECTIONS, RB_MIN_BYTES, RB_MIN_SHARE, RECORD_BUFFERS_FIX  # noqa: F401,E402
from tlsprof.analysis.findings.session_cache import SC_MIN_BYTES, SC_MIN_RATIO, SC_MIN_GROWTH, SESSION_CACHE_FIX  # noqa: F401,E402
