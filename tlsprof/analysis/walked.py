"""Joins the heap walk's bytes (tlsprof/model/wire.py `Walk`, docs/heap-walk.md) with a report built from
tracked bytes (tlsprof/analysis/report.py), so that one report carries both and says which is which.

Every context and connection entry gets `measured`: "tracked" (bytes seen allocated through the
hooks), "walked" (found by the heap walk only: it predates the attach and has not called into
OpenSSL since) or "walked+tracked" (predates the attach, found by the walk, and allocated more
since: both parts are summed and kept apart in `walked_bytes` / `tracked_bytes`).

Under `attach`, the walk's objects join the report (`merge_attach`): the headline, the per-cause
table, findings and savings are computed over both kinds of bytes. Under `run --walk` every byte is
tracked already; the walk is kept beside it per entry (`walked`) so that the two can be compared for
the same connection (`annotate_run`).

A statically linked OpenSSL (node's, pip's cryptography) under `run` is tracked through its memory
functions, process-wide: nothing sees its entry points, so no byte has an owner. There the walk at
the last look gives the ownership (`merge_static_run`): its contexts and connections join the report
as walked entries, the totals and call sites stay the tracked ones (the walked bytes are among them).
"""

from tlsprof.analysis.python_join import python_entry
from tlsprof.model.ids import ctx_id
from tlsprof.model.causes import CAUSES
from tlsprof.analysis.findings import compute_findings

BEFORE_ATTACH = "before attach"
WALK_SITE = "(heap walk: allocated before attach)"


def _ordered(by_cause: dict) -> dict:
    return {c: int(round(by_cause[c])) for c in CAUSES if by_cause.get(c)}


def _walked_causes(obj) -> dict:
    return {c: v.bytes for c, v in obj.by_cause.items() if v.bytes}


def walk_summary(walk) -> dict:
    """The report's `walk` section: how the walk went, and what it cost the target."""
    if walk is None:
        return {"status": "not run"}
    out = {"status": walk.status, "reason": walk.reason}
    s = walk.stats
    for key in (
        "pause_us",
        "walk_ms_total",
        "heap_bytes",
        "in_use_bytes",
        "chunks",
        "arenas",
        "thread_heaps",
        "mmapped_chunks",
        "arena_pieces",
        "tcache_chunks",
        "bad_regions",
        "contexts",
        "connections",
        "faults",
        "threads",
        "threads_of_a_connection",
        "causes_from_tracking",
    ):
        if key in s:
            out[key] = s[key]
    if "pause_us" not in s and "fork_us" in s:
        out["pause_us"] = s["fork_us"]
    if getattr(walk, "skipped", None):
        out["skipped_copies"] = list(walk.skipped)
    for what, (b, n) in walk.process.items():
        out[f"{what}_bytes"] = b
        out[f"{what}_blocks"] = n
    return out


def walk_sentence(walk, mode: str = "attach") -> str:
    """One line for the user: what the walk found, or why it could not run (`mode`: attach or run,
    which tracked from the start)."""
    if walk is None:
        return "no heap walk was run"
    if not walk.ok:
        since = "since the attach" if mode == "attach" else "from the start"
        return (
            f"heap walk not possible: {walk.reason or walk.status}; the report carries only what tracking {since} sees"
        )
    s = walk.stats
    pause = s.get("pause_us", s.get("fork_us", 0)) / 1000
    skipped = "".join(f"; not walked: {why}" for why in getattr(walk, "skipped", []))
    return (
        f"heap walk: {s.get('contexts', 0)} contexts and {s.get('connections', 0)} connections found in "
        f"{s.get('heap_bytes', 0) / 2**20:.0f} MiB of heap; target paused {pause:.1f} ms, walk took "
        f"{s.get('walk_ms_total', 0)} ms in a child process{skipped}"
    )


def _tracked_by_ptr(snap) -> dict:
    return {(o.kind, o.ptr): o for o in snap.owners if o.kind in ("context", "connection") and o.alive}


def _entry_ids(report) -> dict:
    return {e["id"]: e for e in report.get("contexts", []) + report.get("connections", [])}


def _mark_tracked(entry):
    entry.setdefault("measured", "tracked")
    entry.setdefault("tracked_bytes", entry.get("live_bytes", 0))
    entry.setdefault("walked_bytes", 0)


def static_objects(walk) -> list:
    """The walked objects of statically linked copies (not the shared libssl's)."""
    return [o for o in walk.objects if walk.copies.get(o.copy, "shared") != "shared"]


def merge_attach(report: dict, walk, snap) -> dict:
    """Add the walk's pre-attach contexts and connections to an attach report (in place)."""
    report["walk"] = walk_summary(walk)
    for entry in report.get("contexts", []) + report.get("connections", []):
        _mark_tracked(entry)
    notes = report.setdefault("notes", [])
    if walk is None or not walk.ok:
        notes.append(walk_sentence(walk))
        return report
    added, merged_ptrs = _add_walked_entries(report, walk.objects, snap, BEFORE_ATTACH, predates_attach=True)
    _recompute(report, walk, added, merged_ptrs)
    notes[:] = [n for n in notes if not n.startswith("objects marked predates_attach")]
    notes[:] = [n for n in notes if not n.startswith("statically linked OpenSSL in ")]
    notes.append(walk_sentence(walk))
    for path in sorted({walk.copies[o.copy] for o in static_objects(walk)}):
        notes.append(
            f"statically linked OpenSSL in {path}: its contexts and connections were found and "
            f"measured by the heap walk; what it allocated after the attach is not tracked "
            f"(its memory functions cannot be replaced once it has allocated)"
        )
        _mark_copy_walked(report, path, walk)
    notes.append(
        "connections and contexts that predate the attach carry the bytes the heap walk found "
        "(`measured`: walked; `walked+tracked` when they also allocated since); their age is "
        "unknown (`age`: before attach)"
    )
    _join_python(report, snap.python)
    report["findings"] = compute_findings(report)
    return report


WALKED_AT_LAST_LOOK = "found by the heap walk"


def merge_static_run(report: dict, walk, snap) -> dict:
    """`run` of a process whose OpenSSL is a static copy with unhooked entry points: the walk at the
    last look says which context or connection holds which bytes (in place)."""
    report["walk"] = walk_summary(walk)
    notes = report.setdefault("notes", [])
    if walk is None or not walk.ok:
        notes.append(walk_sentence(walk, mode="run") + "; the static copy's bytes stay process-wide")
        return report
    objects = static_objects(walk)
    added, merged_ptrs = _add_walked_entries(report, objects, snap, WALKED_AT_LAST_LOOK, predates_attach=False)
    _recompute(report, walk, added, merged_ptrs, in_totals=True)
    paths = sorted({walk.copies[o.copy] for o in objects})
    notes[:] = [n for n in notes if not any(n.startswith(f"statically linked OpenSSL in {p}:") for p in paths)]
    notes.append(walk_sentence(walk))
    for path in paths:
        notes.append(
            f"statically linked OpenSSL in {path}: its entry points are not hooked, so which context "
            f"or connection holds each byte came from the heap walk at the last look (`measured`: "
            f"walked; causes from the tracked call sites where the walk names none); totals and call "
            f"sites are its tracked bytes; the live view and periodic snapshots stay process-wide"
        )
        _mark_copy_walked(report, path, walk)
    _join_python(report, snap.python)
    report["findings"] = compute_findings(report)
    return report


def _mark_copy_walked(report, path, walk):
    for copy in report.get("openssl_copies") or []:
        if copy.get("path") == path:
            copy["ownership"] = "heap walk"
            copy["per_connection"] = True
            copy.pop("estimated_bytes_per_connection", None)  # measured per connection now
            copy["connections"] = sum(
                1 for o in walk.objects if o.kind == "connection" and walk.copies.get(o.copy) == path
            )


def _add_walked_entries(report, objects, snap, age_label, predates_attach):
    """The walked contexts and connections as report entries (joined to a tracked entry of the
    same pointer when one predates the attach). -> (bytes added, pointers merged)."""
    tracked = _tracked_by_ptr(snap)
    serial_of = {o.ptr: o.serial for o in snap.owners if o.kind == "context" and o.alive}
    entries = _entry_ids(report)
    ctx_entry_of_ptr = {}
    merged_ptrs = set()
    added = 0

    def entry_for(owner, prefix):
        return entries.get(f"{prefix}{owner.serial}")

    # contexts first: connections name them
    for obj in (o for o in objects if o.kind == "context"):
        owner = tracked.get(("context", obj.ptr))
        if owner is not None and not owner.pre_attach:
            continue  # the pointer was freed and reused since the walk: the walked object is gone
        entry = entry_for(owner, "ctx-") if owner is not None else None
        if entry is None:
            entry = {
                "id": f"ctx-w{obj.ptr:x}",
                "connections": 0,
                "live_bytes": 0,
                "live_blocks": 0,
                "by_cause": {},
                "ca_store_bytes": 0,
                "alive": True,
                "since_attach": False,
                "predates_attach": predates_attach,
                "release_buffers": None,
                "age_s": None,
                "age": age_label,
                "tracked_bytes": 0,
            }
            report["contexts"].append(entry)
        else:
            entry["age_s"], entry["age"] = None, age_label
        _add_walked(entry, obj)
        entry["ca_store_bytes"] = entry["by_cause"].get("ca_store", 0)
        ctx_entry_of_ptr[obj.ptr] = entry
        merged_ptrs.add(obj.ptr)
        added += obj.bytes
    for obj in (o for o in objects if o.kind == "connection"):
        owner = tracked.get(("connection", obj.ptr))
        if owner is not None and not owner.pre_attach:
            continue
        entry = entry_for(owner, "conn-") if owner is not None else None
        if entry is None:
            # the context the application holds for the connection when it is not the SSL's own
            # (node copies an SNI SecureContext's certificate into the SSL and keeps the context)
            ctx_ptr = obj.app_ctx_ptr if obj.app_ctx_ptr in ctx_entry_of_ptr else obj.ctx_ptr
            ctx = ctx_entry_of_ptr.get(ctx_ptr)
            if ctx is None and ctx_ptr in serial_of:
                ctx = entries.get(ctx_id(serial_of[ctx_ptr]))
            entry = {
                "id": f"conn-w{obj.ptr:x}",
                "context": ctx["id"] if ctx else None,
                "fd": obj.fd,
                "peer": obj.peer,
                "state": obj.state if obj.state in ("handshake", "established") else "established",
                "age_s": None,
                "age": age_label,
                "idle_s": None,
                "live_bytes": 0,
                "live_blocks": 0,
                "context_share_bytes": 0,
                "by_cause": {},
                "since_attach": False,
                "predates_attach": predates_attach,
                "alive": True,
                "fd_open": None,
                "fd_inode": None,
                "tracked_bytes": 0,
            }
            if ctx_ptr != obj.ctx_ptr:
                entry["context_held_by"] = "application"
            report["connections"].append(entry)
        else:
            entry["age_s"], entry["age"] = None, age_label
        _add_walked(entry, obj)
        merged_ptrs.add(obj.ptr)
        added += obj.bytes
    return added, merged_ptrs


def _join_python(report: dict, agent) -> None:
    """The Python agent's objects for the walked entries, by pointer, as tlsprof/analysis/python_join.py joins
    tracked ones: before the walk these were its `unmatched_objects`."""
    info = report.get("python")
    if not isinstance(agent, dict) or not isinstance(info, dict) or info.get("join") != "on":
        return
    by_ptr = {
        (o.get("kind"), o["ptr"]): o
        for o in agent.get("objects") or []
        if isinstance(o, dict) and isinstance(o.get("ptr"), int)
    }
    for kind, entries in (("connection", report["connections"]), ("context", report["contexts"])):
        for entry in entries:
            if entry.get("python") or entry.get("measured") != "walked" or not entry.get("ptr"):
                continue
            obj = by_ptr.get((kind, int(entry["ptr"], 16)))
            if obj is None:
                continue
            entry["python"] = python_entry(obj)
            info["joined_connections" if kind == "connection" else "joined_contexts"] += 1
            info["unmatched_objects"] = max(0, info.get("unmatched_objects", 0) - 1)
    conns = [c for c in report["connections"] if c.get("alive", True)]
    total_py = sum(c["python"]["python_bytes"] for c in conns if isinstance(c.get("python"), dict))
    per = report["per_connection"]
    per["python_bytes"] = int(round(total_py / len(conns))) if conns else 0
    per["total_bytes"] = per["bytes"] + per["python_bytes"]


def _add_walked(entry: dict, obj) -> None:
    tracked_bytes = entry.get("tracked_bytes", entry.get("live_bytes", 0))
    entry["tracked_bytes"] = tracked_bytes
    entry["walked_bytes"] = obj.bytes
    entry["measured"] = "walked+tracked" if tracked_bytes else "walked"
    by_cause = dict(entry.get("by_cause") or {})
    for cause, v in _walked_causes(obj).items():
        by_cause[cause] = by_cause.get(cause, 0) + v
    entry["by_cause"] = _ordered(by_cause)
    entry["walked_by_cause"] = _ordered(_walked_causes(obj))
    entry["live_bytes"] = tracked_bytes + obj.bytes
    entry["live_blocks"] = entry.get("live_blocks", 0) + obj.blocks
    entry["ptr"] = f"0x{obj.ptr:x}"


def _recompute(report: dict, walk, added: int, merged_ptrs: set, in_totals: bool = False) -> None:
    """Connection counts per context, context shares, the per-connection headline, totals, the
    process part and the attach summary, over tracked and walked entries alike. `in_totals`: the
    walked bytes are among the tracked totals already (a static copy under `run`)."""
    contexts = {c["id"]: c for c in report["contexts"]}
    conns = [c for c in report["connections"] if c.get("alive", True)]
    counts = {}
    for c in conns:
        counts[c.get("context")] = counts.get(c.get("context"), 0) + 1
    for ctx in contexts.values():
        ctx["connections"] = counts.get(ctx["id"], 0)
    own_total, share_total, per_cause = 0.0, 0.0, {}
    for c in conns:
        ctx = contexts.get(c.get("context"))
        share, share_by_cause = 0.0, {}
        if ctx is not None and ctx["connections"]:
            share = ctx["live_bytes"] / ctx["connections"]
            share_by_cause = {k: v / ctx["connections"] for k, v in ctx["by_cause"].items()}
        c["context_share_bytes"] = int(round(share))
        own_total += c["live_bytes"]
        share_total += share
        for k, v in list(c["by_cause"].items()) + list(share_by_cause.items()):
            per_cause[k] = per_cause.get(k, 0) + v
    n = len(conns)
    per = report["per_connection"]
    per.update(
        {
            "connections": n,
            "own_bytes": int(round(own_total / n)) if n else 0,
            "context_share_bytes": int(round(share_total / n)) if n else 0,
            "bytes": int(round((own_total + share_total) / n)) if n else 0,
            "by_cause": _ordered({k: v / n for k, v in per_cause.items()}) if n else {},
            # requested sizes exist for tracked bytes only (the heap keeps no request size)
            "requested_bytes": int(round(sum(c.get("requested_bytes") or 0 for c in conns) / n)) if n else 0,
        }
    )
    per["measured"] = _measured_of(conns)
    if per.get("python_bytes") is not None:  # the Python agent's part (tlsprof/analysis/python_join.py) stays its own
        per["total_bytes"] = per["bytes"] + per["python_bytes"]
    report["connections"].sort(key=lambda c: -c["live_bytes"])
    report["contexts"].sort(key=lambda c: -c["live_bytes"])
    if in_totals:
        return

    library = walk.process.get("openssl_library", (0, 0))
    totals = report["totals"]
    by_cause = dict(totals.get("by_cause") or {})
    for entry in list(contexts.values()) + report["connections"]:
        for k, v in (entry.get("walked_by_cause") or {}).items():
            by_cause[k] = by_cause.get(k, 0) + v
    by_cause["library"] = by_cause.get("library", 0) + library[0]
    totals["tracked_bytes"] = totals["live_bytes"]
    totals["walked_bytes"] = added + library[0]
    totals["live_bytes"] = totals["live_bytes"] + added + library[0]
    totals["live_blocks"] = (
        totals.get("live_blocks", 0) + library[1] + sum(o.blocks for o in walk.objects if o.ptr in merged_ptrs)
    )
    totals["by_cause"] = _ordered(by_cause)
    # the walked bytes have no call site: one pseudo-site per cause says where they were found, so
    # that sites and totals still add up
    site_bytes, site_blocks = {"library": library[0]}, {"library": library[1]}
    for obj in walk.objects:
        if obj.ptr in merged_ptrs:
            for cause, v in obj.by_cause.items():
                site_bytes[cause] = site_bytes.get(cause, 0) + v.bytes
                site_blocks[cause] = site_blocks.get(cause, 0) + v.blocks
    for cause in CAUSES:
        if site_bytes.get(cause):
            report.setdefault("sites", []).append(
                {
                    "file": WALK_SITE,
                    "line": None,
                    "cause": cause,
                    "live_bytes": site_bytes[cause],
                    "requested_bytes": 0,
                    "live_blocks": site_blocks[cause],
                    "library": None,
                    "measured": "walked",
                }
            )
    report["sites"].sort(key=lambda m: -m["live_bytes"])
    process = report.setdefault("process", {"live_bytes": 0, "by_cause": {}})
    process["tracked_bytes"] = process.get("live_bytes", 0)
    process["walked_bytes"] = library[0]
    process["live_bytes"] = process.get("live_bytes", 0) + library[0]
    pby = dict(process.get("by_cause") or {})
    pby["library"] = pby.get("library", 0) + library[0]
    process["by_cause"] = _ordered(pby)
    if "attach" in report:
        old = sum(1 for c in conns if c.get("predates_attach"))
        report["attach"].update(
            {
                "connections_before_attach": old,
                "connections_since_attach": n - old,
                "estimate_for_older": None,
                "walked": True,
            }
        )


def _measured_of(entries) -> str:
    kinds = {e.get("measured", "tracked") for e in entries}
    if not kinds:
        return "tracked"
    if kinds == {"tracked"}:
        return "tracked"
    if kinds <= {"walked"}:
        return "walked"
    return "walked+tracked"


def annotate_run(report: dict, walk, snap) -> dict:
    """`run --walk`: keep the walk beside the tracked bytes of the same objects (in place)."""
    report["walk"] = walk_summary(walk)
    for entry in report.get("contexts", []) + report.get("connections", []):
        _mark_tracked(entry)
    if walk is None or not walk.ok:
        report.setdefault("notes", []).append(walk_sentence(walk, mode="run"))
        return report
    by_ptr = {(o.kind, o.ptr): o for o in walk.objects}
    entries = _entry_ids(report)
    matched = 0
    for owner in snap.owners:
        if owner.kind not in ("context", "connection") or not owner.alive:
            continue
        entry = entries.get(f"{'ctx' if owner.kind == 'context' else 'conn'}-{owner.serial}")
        obj = by_ptr.get((owner.kind, owner.ptr))
        if entry is None or obj is None:
            continue
        entry["walked"] = {"bytes": obj.bytes, "blocks": obj.blocks, "by_cause": _ordered(_walked_causes(obj))}
        matched += 1
    report["walk"]["matched"] = matched
    report.setdefault("notes", []).append(
        walk_sentence(walk) + f"; {matched} objects matched to tracked ones (`walked` beside their tracked bytes)"
    )
    return report
