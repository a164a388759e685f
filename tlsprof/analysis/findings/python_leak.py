"""python-leak: SSL objects whose Python side (the in-target agent's answer) says they should be gone."""

from tlsprof.analysis.creation import frame_text, user_frame
from tlsprof.analysis.findings.registry import finding, human

_LEAK_WORDS = {
    "unreachable": "kept alive only by a reference cycle (freed at the next full gc)",
    "fd_closed": "alive after its socket was closed",
    "no_python_object": "alive in OpenSSL with no Python object holding it",
    "no_wrapper": "a bare _ssl._SSLSocket that outlived its SSLSocket/SSLObject",
}


@finding("python-leak")
def python_leak(report):
    """SSL objects whose Python side says they should be gone."""
    items = [
        (kind, e)
        for kind, key in (("connection", "connections"), ("context", "contexts"))
        for e in report.get(key, [])
        if isinstance(e.get("python"), dict) and e["python"].get("leak")
    ]
    if not items:
        return None
    by_leak = {}
    for kind, e in items:
        by_leak.setdefault(e["python"]["leak"], []).append((kind, e))
    native = sum(e.get("live_bytes", 0) for _, e in items)
    parts = []
    for leak, group in by_leak.items():
        ids = ", ".join(str(e["id"]) for _, e in group[:5]) + (" …" if len(group) > 5 else "")
        parts.append(f"{len(group)} {_LEAK_WORDS.get(leak, leak)} ({ids})")
    example = next((e for _, e in items if e["python"].get("referrers")), None)
    chain = " <- ".join(example["python"]["referrers"]) if example else None
    created = user_frame(next((e["python"].get("created_by") for _, e in items if e["python"].get("created_by")), None))
    detail = "; ".join(parts) + f". They hold {human(native)} of OpenSSL heap."
    if chain:
        detail += f" Held by: {chain}."
    if created:
        detail += f" Created at {frame_text(created)}."
    return {
        "id": "python-leak",
        "severity": "warning",
        "title": "SSL objects kept alive after their Python side is done with them",
        "detail": detail,
        "bytes_per_connection": None,
        "saving_bytes": native,
        "fix": "break the cycle or clear the container named in the referrer chain (close() the socket "
        "and drop the reference); for cycles, avoid storing the connection on objects it refers back to",
        "evidence": {"objects": [str(e["id"]) for _, e in items][:50]},
    }
