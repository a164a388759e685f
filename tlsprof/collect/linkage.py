"""Front-end side of the Python linkage: fetch what the in-target agent (tlsprof/agent/) knows about
the target's ssl objects and join it to the report's connections and contexts.

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
import json
import os
import socket
import time

from tlsprof.collect import client
from tlsprof.analysis.creation import frame_text, user_frame
from tlsprof.analysis.findings import finding, human

AGENT_SUFFIX = ".py.sock"


class AgentError(Exception):
    """The agent did not answer (absent, not a Python target, or busy past the timeout)."""


def agent_socket(channel_dir: str, pid: int) -> str:
    return os.path.join(channel_dir, f"{int(pid)}{AGENT_SUFFIX}")


def ask(path: str, request: str = "SNAPSHOT", timeout: float = 10.0) -> dict:
    try:
        answer = client.request(path, request, timeout)
    except (OSError, socket.timeout) as exc:
        raise AgentError(f"the Python agent at {path} did not answer: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        doc = json.loads(answer)
    except ValueError:
        raise AgentError("the Python agent answered something that is not JSON") from None
    if not isinstance(doc, dict):
        raise AgentError("the Python agent answered something that is not a JSON object")
    return doc


_recent = {}  # (channel_dir, pid, request) -> (monotonic time of the answer, seconds it took, answer)
# An agent snapshot holds the target's GIL while it walks every gc object: at most ~2 % of the
# target's time goes to each kind (measured: 10 % made a threaded server's handshakes 0.93x bare
# instead of 0.995x without the agent)
DUTY = 0.02
NO_OBJECT_MIN_AGE_S = 5.0
LEAK_KEYS = ("reachable", "leak", "referrers")


def _ask_throttled(channel_dir, pid, path, request, timeout):
    key = (channel_dir, pid, request)
    last = _recent.get(key)
    now = time.monotonic()
    if last is not None and now - last[0] < last[1] / DUTY:
        return last[2], False
    try:
        doc = ask(path, request, timeout)
    except AgentError:
        return (last[2] if last else None), False
    done = time.monotonic()
    doc["_fetched_mono"] = now  # when the agent looked: joins judge staleness from it
    _recent[key] = (done, done - now, doc)
    return doc, True


def fetch(channel_dir: str, pid: int, timeout: float = 10.0, fresh: bool = False):
    """The agent's snapshot for `pid`, or None when that process runs no agent.

    An agent snapshot holds the target's GIL while it runs, so requests are throttled: when the last
    one took T s the previous answer is reused for the next T/DUTY s. Objects and pointers come from
    the cheap request (`SNAPSHOT noleaks`); reachability and referrer chains (a walk over every gc
    object) from the full one, which is asked less often and merged in by pointer. `fresh` (the
    session's last look before it ends) asks the full request now whatever the throttle says."""
    path = agent_socket(channel_dir, pid)
    if not os.path.exists(path):
        return None
    if fresh:
        _recent.pop((channel_dir, pid, "SNAPSHOT"), None)
    full, was_fresh = _ask_throttled(channel_dir, pid, path, "SNAPSHOT", timeout)
    if was_fresh or full is None:
        return full
    fast, _ = _ask_throttled(channel_dir, pid, path, "SNAPSHOT noleaks", timeout)
    if fast is None:
        return full
    leaks = {(o.get("kind"), o.get("ptr"), o.get("type")): o for o in full.get("objects") or []}
    for o in fast.get("objects") or []:
        old = leaks.get((o.get("kind"), o.get("ptr"), o.get("type")))
        for k in LEAK_KEYS:
            o[k] = old.get(k) if old else None
    return fast


def _python_entry(obj: dict) -> dict:
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
    info = {"agent_pid": agent.get("pid"), "python": agent.get("python"), "layout": agent.get("layout"),
            "tracemalloc": agent.get("tracemalloc"), "notes": list(agent.get("notes") or []),
            "stats": agent.get("stats"), "joined_connections": 0, "joined_contexts": 0,
            "unmatched_objects": 0, "join": "on", "message": None}
    report["python"] = info
    if agent.get("error"):
        info["join"], info["message"] = "off", f"the Python agent failed: {agent['error']}"
        return report
    by_ptr = {}
    for o in agent.get("objects") or []:
        if isinstance(o, dict) and isinstance(o.get("ptr"), int):
            by_ptr[(o.get("kind"), o["ptr"])] = o
    owners = {o.serial: o for o in snap.owners}
    shim_ptrs = {("connection" if o.kind == "connection" else "context", o.ptr)
                 for o in snap.owners if o.kind in ("connection", "context") and o.alive}
    for kind in ("connection", "context"):
        seen = [k for k in by_ptr if k[0] == kind]
        has_shim = any(k[0] == kind for k in shim_ptrs)
        if seen and has_shim and not any(k in shim_ptrs for k in seen):
            info["join"] = "off"
            info["message"] = (f"none of the {len(seen)} Python {kind} pointers matches an object the shim "
                               f"tracks: the pointer layout does not fit this Python; join disabled")
            return report
    info["unmatched_objects"] = sum(1 for k in by_ptr if k not in shim_ptrs)
    layout_ok = (agent.get("layout") or {}).get("ok", True)

    agent_age = max(0.0, getattr(snap, "mono_taken", 0) - agent.get("_fetched_mono", 0)) \
        if agent.get("_fetched_mono") and getattr(snap, "mono_taken", None) else 0.0
    info["agent_answer_age_s"] = round(agent_age, 3)
    total_py = 0
    for entry in report.get("connections", []):
        serial = _serial(entry.get("id"), "conn-")
        owner = owners.get(serial)
        obj = by_ptr.get(("connection", owner.ptr)) if owner is not None else None
        if obj is None:
            # alive in OpenSSL, no Python object holds it: dropped without SSL_free, or a C owner. Young
            # ones may simply be newer (or closed later) than the agent's answer: not called leaks.
            # the agent's answer may be older than the snapshot (throttled): only a connection that
            # already existed, settled, when the agent looked can be called orphaned
            settled = (entry.get("age_s") or 0) >= NO_OBJECT_MIN_AGE_S + agent_age
            entry["python"] = None if not (layout_ok and settled) else {
                "type": None, "created_by": None, "created_by_source": None, "python_bytes": 0,
                "referrers": None, "leak": "no_python_object", "reachable": None, "fd": None, "peer": None,
                "holder": None, "largest": None}
            continue
        py = _python_entry(obj)
        entry["python"] = py
        info["joined_connections"] += 1
        total_py += py["python_bytes"]
        if entry.get("peer") is None and py["peer"]:
            entry["peer"] = py["peer"]
        if entry.get("fd") is None and py["fd"] is not None:
            entry["fd"] = py["fd"]
    ctx_py = 0
    for entry in report.get("contexts", []):
        owner = owners.get(_serial(entry.get("id"), "ctx-"))
        obj = by_ptr.get(("context", owner.ptr)) if owner is not None and owner.alive else None
        if obj is None:
            entry["python"] = None
            continue
        entry["python"] = _python_entry(obj)
        info["joined_contexts"] += 1
        ctx_py += entry["python"]["python_bytes"]
    per = report.get("per_connection", {})
    n = per.get("connections") or 0
    per["python_bytes"] = int(round(total_py / n)) if n else 0
    per["total_bytes"] = per.get("bytes", 0) + per["python_bytes"]
    report.setdefault("totals", {})["python_bytes"] = total_py + ctx_py
    leaks = [c for c in report.get("connections", []) + report.get("contexts", [])
             if isinstance(c.get("python"), dict) and c["python"].get("leak")]
    info["leaks"] = len(leaks)
    _count_static_copy_connections(report, by_ptr, shim_ptrs)
    if info["message"] is None and not layout_ok:
        info["message"] = (agent.get("layout") or {}).get("message")
    return report


def _count_static_copy_connections(report, by_ptr, shim_ptrs):
    """A statically linked OpenSSL (pip's cryptography under pyOpenSSL) is tracked process-wide only:
    its connections are counted from their Python objects, and its bytes per connection are given as
    an estimate (the copy's live bytes over that count), labelled as one."""
    static = [c for c in report.get("openssl_copies") or []
              if c.get("kind") != "shared" and c.get("tracking") == "mem-functions"]
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


def _serial(ident, prefix):
    if isinstance(ident, str) and ident.startswith(prefix):
        try:
            return int(ident[len(prefix):])
        except ValueError:
            return None
    return None




_LEAK_WORDS = {"unreachable": "kept alive only by a reference cycle (freed at the next full gc)",
               "fd_closed": "alive after its socket was closed",
               "no_python_object": "alive in OpenSSL with no Python object holding it",
               "no_wrapper": "a bare _ssl._SSLSocket that outlived its SSLSocket/SSLObject"}


@finding("python-leak")
def python_leak(report):
    """SSL objects whose Python side says they should be gone."""
    items = [(kind, e) for kind, key in (("connection", "connections"), ("context", "contexts"))
             for e in report.get(key, []) if isinstance(e.get("python"), dict) and e["python"].get("leak")]
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
