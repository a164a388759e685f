"""The RSS explained: how a process's resident memory splits into OpenSSL's live heap, the Python
side of its connections, the rest of the malloc heap, thread stacks, tlsprof's own tracker,
file-backed pages and the rest of the anonymous memory.

The kernel's view is collected by tlsprof/collect/process_memory.py (`read_process(pid)`, from
/proc/PID/smaps_rollup and /proc/PID/smaps) at snapshot time; `account(report, process, stats)` here is a
pure function from those facts, the shim's stats (glibc's `mallinfo2` and the tracker's size) and
the report's own figures to the report's `memory` section (docs/report-format.md).
"""

KIB = 1024


def account(report: dict, process: dict | None, stats: dict) -> dict | None:
    """The `memory` section: parts that add up to the RSS, each with how it was measured."""
    if not process:
        return None
    openssl = int((report.get("totals") or {}).get("live_bytes", 0))
    tracker = int(stats.get("tracker_bytes", 0))
    python_side = _python_side_total(report)
    in_use, free = stats.get("malloc_in_use"), stats.get("malloc_free")
    parts = [
        _part("openssl_heap", openssl, "OpenSSL's live heap blocks (the report's live bytes)", "tracked by the shim")
    ]
    if python_side:
        parts.append(
            _part(
                "python_connections",
                python_side,
                "the Python objects of the TLS connections and contexts (buffers, sockets, protocols)",
                "sys.getsizeof by the in-target agent",
            )
        )
    parts.append(_part("tlsprof_tracker", tracker, "tlsprof's own tables in the target", "the shim's accounting"))
    anonymous = process["anonymous"]
    explained = openssl + python_side + tracker
    if in_use is not None:
        other_heap = max(0, int(in_use) - explained)
        parts.append(
            _part(
                "other_heap",
                other_heap,
                "the rest of the malloc heap in use (the "
                "application's own objects, the Python interpreter, other libraries)",
                "glibc mallinfo2 in use, minus the parts above",
            )
        )
        explained += other_heap
        resident_free = max(0, min(int(free or 0), anonymous - explained - process["thread_stacks"]))
        parts.append(
            _part(
                "malloc_free",
                resident_free,
                "freed heap glibc keeps for reuse (not given back to the system)",
                "glibc mallinfo2 free bytes, at most what the anonymous memory leaves room for",
            )
        )
        explained += resident_free
    parts.append(
        _part(
            "thread_stacks",
            process["thread_stacks"],
            f"stacks of the process's {process['threads']} threads",
            "/proc/PID/smaps, resident pages",
        )
    )
    explained += process["thread_stacks"]
    parts.append(
        _part(
            "other_anonymous",
            max(0, anonymous - explained),
            "the rest of the anonymous memory (Python's small-object arenas, other mmaps)",
            "/proc/PID/smaps_rollup Anonymous, minus the parts above",
        )
    )
    parts.append(
        _part(
            "file_backed",
            process["file_backed"],
            "code and other file-backed or shared pages (libraries, the interpreter)",
            "/proc/PID/smaps_rollup Rss - Anonymous",
        )
    )
    total = sum(p["bytes"] for p in parts)
    section = {"rss_bytes": process["rss"], "parts": parts, "parts_sum_bytes": total}
    if anonymous < openssl + python_side + tracker:
        section["note"] = (
            "the tracked parts exceed the resident anonymous memory: some of their "
            "pages are not resident (swapped out or never touched)"
        )
    per = _per_connection(report)
    if per:
        section["per_connection"] = per
    return section


def merge(report: dict, sections: list) -> dict | None:
    """The tree's `memory`: each part summed over the processes (pages they share after fork count
    once per process, as in their RSS), per connection over every connection of the tree."""
    sections = [m for m in sections if m]
    if not sections:
        return None
    parts = {}
    for m in sections:
        for p in m["parts"]:
            parts.setdefault(p["name"], dict(p, bytes=0))["bytes"] += p["bytes"]
    out = {
        "rss_bytes": sum(m["rss_bytes"] for m in sections),
        "parts": list(parts.values()),
        "parts_sum_bytes": sum(p["bytes"] for p in parts.values()),
        "processes": len(sections),
        "note": "summed over the processes of the tree: memory they share (fork) counts once per process",
    }
    per = _per_connection(report)
    if per:
        out["per_connection"] = per
    return out


def _part(name, nbytes, what, how):
    return {"name": name, "bytes": int(nbytes), "what": what, "measured": how}


def _python_side_total(report: dict) -> int:
    return int((report.get("totals") or {}).get("python_bytes") or 0)


def _per_connection(report: dict) -> dict | None:
    """Native + Python bytes per connection, and the largest single part on either side."""
    per = report.get("per_connection") or {}
    n = per.get("connections") or 0
    if not n:
        return None
    native = per.get("bytes", 0)
    python = per.get("python_bytes", 0) or 0
    candidates = [(v, "native", cause) for cause, v in (per.get("by_cause") or {}).items()]
    holders = {}
    for c in report.get("connections", []):
        big = (c.get("python") or {}).get("largest") if isinstance(c.get("python"), dict) else None
        if isinstance(big, dict) and big.get("holder"):
            holders[big["holder"]] = holders.get(big["holder"], 0) + int(big.get("bytes") or 0)
    python_parts = sorted(
        ({"holder": h, "bytes_per_connection": int(round(b / n))} for h, b in holders.items()),
        key=lambda p: -p["bytes_per_connection"],
    )
    candidates += [(p["bytes_per_connection"], "python", p["holder"]) for p in python_parts]
    out = {
        "connections": n,
        "native_bytes": int(native),
        "python_bytes": int(python),
        "total_bytes": int(native + python),
        "python_parts": python_parts[:5],
    }
    if candidates:
        value, side, name = max(candidates)
        out["largest"] = {"side": side, "name": name, "label": label_of(side, name), "bytes": int(round(value))}
    return out


HOLDER_LABELS = {
    "asyncio.sslproto.SSLProtocol._ssl_buffer": "asyncio's TLS read buffer "
    "(asyncio.sslproto.SSLProtocol._ssl_buffer, 256 KiB per connection)"
}


def label_of(side: str, name: str) -> str:
    if side == "python":
        return HOLDER_LABELS.get(name, f"Python: {name}")
    from tlsprof.model.causes import label

    return f"OpenSSL: {label(name)}"
