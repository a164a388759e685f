"""leaked-contexts: contexts that serve no connection and pile up."""

from tlsprof.analysis.findings.registry import KiB, MiB, finding, human  # noqa: F401
from tlsprof.analysis.findings.common import (
    _cause,
    _contexts_by_id,
    _count,
    _live_connections,  # noqa: F401
    _place_connections,
    _placed,
)
from tlsprof.analysis.creation import place
from tlsprof.analysis.findings.ca_store import CA_STORE_FIX_BY_API, _ca_store_bytes

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
    idle = [ctx for ctx in live if ctx.get("connections", 0) == 0 and ctx.get("live_bytes", 0) > LEAK_MIN_CONTEXT_BYTES]
    py_leaked = [
        ctx for ctx in live if isinstance(ctx.get("python"), dict) and ctx["python"].get("leak") in ("unreachable",)
    ]
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
        f"stores). Freeing them would save {human(total)}.",
        LEAKED_CONTEXTS_FIX,
        where,
        CA_STORE_FIX_BY_API,
    )
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
