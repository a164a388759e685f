"""Findings: what a report means and what to change. Each finding is a small function registered
with @finding; it reads only the report dict (never live data) and returns a finding dict or None.

A finding dict has the keys the schema requires (id, severity, title, detail, bytes_per_connection,
fix) and may add `saving_bytes` and an `evidence` object. Severity is "info", "warning" or
"critical".
"""
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
    return {
        "id": "ca-store-per-connection",
        "severity": "critical" if many else "warning",
        "title": "Each connection builds its own CA store",
        "detail": (
            f"{len(heavy)} live contexts each hold their own CA store "
            f"({human(mean_store)} each on average) and serve {per_context:.1f} connections each "
            f"({connections} in all): the CA store costs {human(per_connection)} per connection. "
            f"Sharing one context would save {human(saving)}."
        ),
        "bytes_per_connection": per_connection,
        "saving_bytes": saving,
        "fix": CA_STORE_FIX,
        "evidence": {
            "contexts": len(heavy),
            "connections": connections,
            "ca_store_bytes_mean": mean_store,
            "ca_store_bytes_total": total,
            "context_ids": [ctx.get("id") for ctx in heavy[:20]],
        },
    }
