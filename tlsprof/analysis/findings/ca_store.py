"""ca-store-per-connection: a parsed CA store per context, few connections per context."""

from tlsprof.analysis.creation import place, place_text  # noqa: F401
from tlsprof.analysis.findings.registry import KiB, MiB, finding, human  # noqa: F401
from tlsprof.analysis.findings.common import (
    _cause,
    _contexts_by_id,
    _count,
    _live_connections,  # noqa: F401
    _place_connections,
    _placed,
)


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


# The fix for the API the creating line uses (tlsprof/analysis/creation.py); CA_STORE_FIX when unknown.
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


@finding("ca-store-per-connection")
def ca_store_per_connection(report: dict):
    heavy = [
        ctx
        for ctx in report.get("contexts", [])
        if ctx.get("alive", True) and ctx.get("connections", 0) >= 1 and _ca_store_bytes(ctx) > CA_MIN_STORE_BYTES
    ]
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
    # one shared context means the others are never built: their whole bytes are saved, of which
    # the CA stores are most (node's per-connection SecureContext: 0.84 of 0.98 MB)
    whole = [max(ctx.get("live_bytes", 0) or 0, store) for ctx, store in zip(heavy, stores)]
    saving = sum(whole) - max(whole)
    ca_saving = total - max(stores)
    many = len(heavy) >= 10 or saving >= 8 * MiB
    where = place(heavy)
    detail, fix = _placed(
        f"{len(heavy)} live contexts each hold their own CA store "
        f"({human(mean_store)} each on average) and serve {per_context:.1f} connections each "
        f"({connections} in all): the CA store costs {human(per_connection)} per connection. "
        f"Sharing one context would save {human(saving)} ({human(ca_saving)} of it CA stores).",
        CA_STORE_FIX,
        where,
        CA_STORE_FIX_BY_API,
    )
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
            "ca_store_saving_bytes": ca_saving,
            "context_ids": [ctx.get("id") for ctx in heavy[:20]],
        },
    }
