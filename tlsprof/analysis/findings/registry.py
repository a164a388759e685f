"""The findings registry: every finding registers here with @finding; compute_findings runs them."""

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
    results.sort(key=lambda f: (SEVERITY_ORDER.get(f["severity"], 9), -(f.get("bytes_per_connection") or 0)))
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
