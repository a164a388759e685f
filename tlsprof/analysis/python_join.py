"""The Python linkage's join: what the in-target agent (tlsprof/agent/) knows about the
target's ssl objects, joined to the report's connections and contexts.

The join is by exact pointer equality: the agent reports the SSL* / SSL_CTX* it read from each
Python object, the shim reports the pointer of each owner it tracks. An agent pointer the shim does
not know is left unjoined (counted); when the agent saw objects but none of their pointers matches
while the shim tracks objects of that kind, the pointer layout is wrong for this Python and the join
is disabled with a note: never a wrong join.

Adds to the report (schema tlsprof.report/1 allows extra keys):
  connections[].python / contexts[].python: {type, created_by [frames], created_by_source,
      python_bytes, referrers (chain or null), leak (null | "unreachable" | "fd_closed" |
      "no_python_object"), reachable, fd, peer}
  per_connection.python_bytes, per_connection.total_bytes (native bytes + python bytes),
  totals.python_bytes, python {agent facts, join counts, message}.
"""

from tlsprof.model.ids import conn_id, ctx_id

# a connection younger than this (plus the agent answer's age) may be newer than the answer
NO_OBJECT_MIN_AGE_S = 5.0


def python_entry(obj: dict) -> dict:
    return {
        "type": obj.get("type"),
        "created_by": obj.get("created_by"),
        "created_by_source": obj.get("created_by_source"),
        "python_bytes": int(obj.get("python_bytes") or 0),
        # the largest object of that Python side and what holds it ({holder, type, bytes})
        "largest": obj.get("python_largest") if isinstance(obj.get("python_largest"), dict) else None,
        "referrers": obj.get("referrers"),
        "leak": obj.get("leak"),
        "reachable": obj.get("reachable"),
        "fd": obj.get("fd"),
        "peer": obj.get("peer"),
        "holder": obj.get("holder"),
    }


def join(report: dict, agent: dict, snap) -> dict:
    """Add the agent's facts to `report` (in place) for the owners of `snap`; returns report."""
    info = {
        "agent_pid": agent.get("pid"),
        "python": agent.get("python"),
        "layout": agent.get("layout"),
        "tracemalloc": agent.get("tracemalloc"),
        "notes": list(agent.get("notes") or []),
        "stats": agent.get("stats"),
        "joined_connections": 0,
        "joined_contexts": 0,
        "unmatched_objects": 0,
        "join": "on",
        "message": None,
    }
    report["python"] = info
    if agent.get("error"):
        info["join"], info["message"] = "off", f"the Python agent failed: {agent['error']}"
        return report
    by_ptr = {}
    for o in agent.get("objects") or []:
        if isinstance(o, dict) and isinstance(o.get("ptr"), int):
            by_ptr[(o.get("kind"), o["ptr"])] = o
    # the report's ids are made from the owners' serials by the same functions: looked up, never parsed
    connections_by_id = {conn_id(o.serial): o for o in snap.owners if o.kind == "connection"}
    contexts_by_id = {ctx_id(o.serial): o for o in snap.owners if o.kind == "context"}
    shim_ptrs = {
        ("connection" if o.kind == "connection" else "context", o.ptr)
        for o in snap.owners
        if o.kind in ("connection", "context") and o.alive
    }
    for kind in ("connection", "context"):
        seen = [k for k in by_ptr if k[0] == kind]
        has_shim = any(k[0] == kind for k in shim_ptrs)
        if seen and has_shim and not any(k in shim_ptrs for k in seen):
            info["join"] = "off"
            info["message"] = (
                f"none of the {len(seen)} Python {kind} pointers matches an object the shim "
                f"tracks: the pointer layout does not fit this Python; join disabled"
            )
            return report
    info["unmatched_objects"] = sum(1 for k in by_ptr if k not in shim_ptrs)
    layout_ok = (agent.get("layout") or {}).get("ok", True)

    agent_age = (
        max(0.0, snap.mono_taken - agent.get("_fetched_mono", 0))
        if agent.get("_fetched_mono") and snap.mono_taken
        else 0.0
    )
    info["agent_answer_age_s"] = round(agent_age, 3)
    total_py = 0
    for entry in report.get("connections", []):
        owner = connections_by_id.get(entry.get("id"))
        obj = by_ptr.get(("connection", owner.ptr)) if owner is not None else None
        if obj is None:
            # alive in OpenSSL, no Python object holds it: dropped without SSL_free, or a C owner. Young
            # ones may simply be newer (or closed later) than the agent's answer: not called leaks.
            # the agent's answer may be older than the snapshot (throttled): only a connection that
            # already existed, settled, when the agent looked can be called orphaned
            settled = (entry.get("age_s") or 0) >= NO_OBJECT_MIN_AGE_S + agent_age
            entry["python"] = (
                None
                if not (layout_ok and settled)
                else {
                    "type": None,
                    "created_by": None,
                    "created_by_source": None,
                    "python_bytes": 0,
                    "referrers": None,
                    "leak": "no_python_object",
                    "reachable": None,
                    "fd": None,
                    "peer": None,
                    "holder": None,
                    "largest": None,
                }
            )
            continue
        py = python_entry(obj)
        entry["python"] = py
        info["joined_connections"] += 1
        total_py += py["python_bytes"]
        if entry.get("peer") is None and py["peer"]:
            entry["peer"] = py["peer"]
        if entry.get("fd") is None and py["fd"] is not None:
            entry["fd"] = py["fd"]
    ctx_py = 0
    for entry in report.get("contexts", []):
        owner = contexts_by_id.get(entry.get("id"))
        obj = by_ptr.get(("context", owner.ptr)) if owner is not None and owner.alive else None
        if obj is None:
            entry["python"] = None
            continue
        entry["python"] = python_entry(obj)
        info["joined_contexts"] += 1
        ctx_py += entry["python"]["python_bytes"]
    per = report.get("per_connection", {})
    n = per.get("connections") or 0
    per["python_bytes"] = int(round(total_py / n)) if n else 0
    per["total_bytes"] = per.get("bytes", 0) + per["python_bytes"]
    report.setdefault("totals", {})["python_bytes"] = total_py + ctx_py
    leaks = [
        c
        for c in report.get("connections", []) + report.get("contexts", [])
        if isinstance(c.get("python"), dict) and c["python"].get("leak")
    ]
    info["leaks"] = len(leaks)
    _count_static_copy_connections(report, by_ptr, shim_ptrs)
    if info["message"] is None and not layout_ok:
        info["message"] = (agent.get("layout") or {}).get("message")
    return report


def _count_static_copy_connections(report, by_ptr, shim_ptrs):
    """A statically linked OpenSSL (pip's cryptography under pyOpenSSL) is tracked process-wide only:
    its connections are counted from their Python objects, and its bytes per connection are given as
    an estimate (the copy's live bytes over that count), labelled as one."""
    static = [
        c
        for c in report.get("openssl_copies") or []
        if c.get("kind") != "shared" and c.get("tracking") == "mem-functions"
    ]
    conns = [o for k, o in by_ptr.items() if k[0] == "connection" and k not in shim_ptrs]
    if not static or not conns:
        return
    copy = max(static, key=lambda c: c.get("live_bytes", 0))
    copy["connections"] = len(conns)
    copy["peers"] = sorted({o.get("peer") for o in conns if o.get("peer")})[:1000]
    copy["estimated_bytes_per_connection"] = {
        "bytes": int(copy.get("live_bytes", 0) / len(conns)),
        "by_cause": {c: int(v / len(conns)) for c, v in (copy.get("by_cause") or {}).items()},
        "estimate": True,
        "basis": f"all {copy.get('live_bytes', 0)} live bytes of this copy divided by its {len(conns)} "
        "connections counted from their Python objects; not measured per connection",
    }
