"""context-per-connection: a context built for each connection, without a CA store to blame."""

from tlsprof.analysis.creation import place
from tlsprof.analysis.findings.ca_store import CA_MAX_CONNECTIONS_PER_CONTEXT, CA_MIN_STORE_BYTES, _ca_store_bytes
from tlsprof.analysis.findings.common import _live_connections, _placed
from tlsprof.analysis.findings.registry import KiB, MiB, finding, human

# --- context-per-connection -------------------------------------------------------------------
# A context made for one connection right before it (its certificate and key parsed again, its
# settings and tables built again) costs that connection the whole context: ~20 KiB with a server
# certificate and no CA store (Debian's gunicorn 20, whose gthread worker calls the deprecated
# ssl.wrap_socket() per connection). Trips when at least CTX_MIN_CONTEXTS live contexts each serve
# 1 to CA_MAX_CONNECTIONS_PER_CONTEXT connections, the oldest of which came at most CTX_MAX_GAP_S
# after the context (an SNI or per-tenant context is built at start-up, long before its
# connections), and sharing them would save at least CTX_MIN_SAVING. Contexts with a CA store of
# their own are ca-store-per-connection's.
CTX_MIN_CONTEXTS = 10
CTX_MAX_GAP_S = 2.0
CTX_MIN_SAVING = 256 * KiB

CONTEXT_PER_CONNECTION_FIX = (
    "Build the context once and make every connection from it. "
    "Python ssl: create one SSLContext at start-up (load_cert_chain once) and call its "
    "wrap_socket()/wrap_bio() for each connection; the module function ssl.wrap_socket() builds a "
    "new context on every call. pyOpenSSL: one OpenSSL.SSL.Context for every Connection. "
    "C API: one SSL_CTX (certificate and key loaded once), SSL_new(ctx) per connection."
)

CONTEXT_PER_CONNECTION_FIX_BY_API = {
    "ssl": "Create one SSLContext at start-up (load_cert_chain once) and call its wrap_socket() or "
    "wrap_bio() per connection; ssl.wrap_socket(), the deprecated module function, builds a new "
    "context on every call, as does ssl.create_default_context() or SSLContext() per connection.",
    "pyOpenSSL": "Create one OpenSSL.SSL.Context at start-up and pass it to every OpenSSL.SSL.Connection.",
    "C": "Create one SSL_CTX, load the certificate and key into it once, and call SSL_new(ctx) per connection.",
}


def _built_for_their_connections(report: dict) -> list:
    """(context, its live connections) for each live context that looks made for them."""
    served = {}
    for c in _live_connections(report):
        served.setdefault(c.get("context"), []).append(c)  # a tree's ids carry their pid
    found = []
    for ctx in report.get("contexts", []):
        conns = served.get(ctx.get("id"), [])
        if not ctx.get("alive", True) or not 1 <= len(conns) <= CA_MAX_CONNECTIONS_PER_CONTEXT:
            continue
        if _ca_store_bytes(ctx) > CA_MIN_STORE_BYTES or ctx.get("age_s") is None:
            continue
        ages = [c["age_s"] for c in conns if c.get("age_s") is not None]
        if ages and ctx["age_s"] - max(ages) <= CTX_MAX_GAP_S:
            found.append((ctx, conns))
    return found


@finding("context-per-connection")
def context_per_connection(report: dict):
    found = _built_for_their_connections(report)
    if len(found) < CTX_MIN_CONTEXTS:
        return None
    contexts = [ctx for ctx, _ in found]
    connections = sum(len(conns) for _, conns in found)
    sizes = [ctx.get("live_bytes", 0) or 0 for ctx in contexts]
    largest_per_process = {}
    for ctx, size in zip(contexts, sizes):
        pid = ctx.get("pid")
        largest_per_process[pid] = max(largest_per_process.get(pid, 0), size)
    saving = sum(sizes) - sum(largest_per_process.values())  # one shared context per process stays
    if saving < CTX_MIN_SAVING:
        return None
    per_connection = sum(sizes) / connections
    where = place(contexts)
    detail, fix = _placed(
        f"{len(contexts)} live contexts serve {connections / len(contexts):.1f} connections each "
        f"({connections} in all), each context built at most {CTX_MAX_GAP_S:.0f} s before its "
        f"connections: {human(sum(sizes) / len(contexts))} per context, {human(per_connection)} per "
        f"connection. Sharing one context would save {human(saving)}.",
        CONTEXT_PER_CONNECTION_FIX,
        where,
        CONTEXT_PER_CONNECTION_FIX_BY_API,
    )
    return {
        "id": "context-per-connection",
        "severity": "critical" if saving >= 8 * MiB else "warning",
        "title": "A new context is built for each connection",
        "detail": detail,
        "bytes_per_connection": per_connection,
        "saving_bytes": saving,
        "fix": fix,
        "created_at": where,
        "evidence": {
            "contexts": len(contexts),
            "connections": connections,
            "context_bytes_mean": sum(sizes) / len(contexts),
            "context_ids": [ctx.get("id") for ctx in contexts[:20]],
        },
    }
