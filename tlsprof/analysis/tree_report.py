"""The report of a process tree (`run` of nginx, PostgreSQL, Apache...): one report per process
(tlsprof/analysis/report.py), merged into one whose headline is over all their connections, with a
`processes[]` entry per process that loads OpenSSL."""

from tlsprof import __version__
from tlsprof.analysis.findings import compute_findings
from tlsprof.analysis.memory import merge as merge_memory
from tlsprof.analysis.report import (
    SCHEMA,
    _attach_summary,
    _observed,
    _ordered,
    _sum_into,
    build_report,
)
from tlsprof.analysis.roles import role
from tlsprof.model.ids import qualified_id


def _has_openssl(snap) -> bool:
    """The shim is in every process of a `run` tree (`sh`, `runuser` …); only those with OpenSSL count."""
    return snap.openssl is not None or snap.live_bytes > 0


def _process_entry(snap, body: dict, *, root_pid, pids) -> dict:
    per = body["per_connection"]
    command = list(snap.command)
    ppid = snap.ppid
    return {
        "pid": snap.pid,
        "ppid": ppid,
        "command": command,
        "role": role(
            command,
            is_root=snap.pid == root_pid or ppid not in pids,
            has_children=any(s.ppid == snap.pid for s in pids.values()),
        ),
        "connections": per["connections"],
        "contexts": sum(1 for c in body["contexts"] if c.get("alive", True)),
        "live_bytes": body["totals"]["live_bytes"],
        "by_cause": dict(body["totals"]["by_cause"]),
        "rss_bytes": snap.rss_bytes,
        "memory_parts": {p["name"]: p["bytes"] for p in (body.get("memory") or {}).get("parts", [])},
        "per_connection": {k: per[k] for k in ("bytes", "own_bytes", "context_share_bytes", "by_cause")},
        "openssl": snap.openssl,
    }


def build_tree_report(
    snaps: dict, *, root_pid, command, mode, partial=False, snapshots=1, peak_live_bytes=None, notes=(), history=None
) -> dict:
    """The report of one observation of a process tree ({pid: Snapshot}). Every process that loads
    OpenSSL gets a `processes[]` entry; the headline (`per_connection`) is over every connection of
    every process, so a process without connections (nginx's master) weighs nothing in it and is
    never "the" target. One process: the single-process report, its ids unchanged."""
    snaps = {pid: _observed(s) for pid, s in snaps.items()}
    tracked = {pid: s for pid, s in snaps.items() if _has_openssl(s)} or dict(snaps)
    bodies = {
        pid: build_report(
            s,
            command=list(s.command) or command,
            mode=mode,
            partial=partial,
            snapshots=snapshots,
            peak_live_bytes=peak_live_bytes,
            notes=notes,
            history=history,
        )
        for pid, s in tracked.items()
    }
    entries = [_process_entry(tracked[pid], bodies[pid], root_pid=root_pid, pids=tracked) for pid in tracked]
    if len(bodies) == 1:
        ((pid, body),) = bodies.items()
        body["target"]["command"] = list(command)  # what tlsprof started or attached, as before trees
        body["processes"] = entries
        return body
    return _merge(
        bodies,
        entries,
        root_pid=root_pid,
        command=command,
        mode=mode,
        partial=partial,
        snapshots=snapshots,
        peak_live_bytes=peak_live_bytes,
        history=history,
    )


def _merge(bodies: dict, entries: list, *, root_pid, command, mode, partial, snapshots, peak_live_bytes, history=None):
    contexts, conns, notes_by_text = [], [], {}
    totals = {"live_bytes": 0, "requested_bytes": 0, "live_blocks": 0, "by_cause": {}, "untracked_bytes": 0}
    process = {"live_bytes": 0, "by_cause": {}}
    per_sum = {"own_bytes": 0.0, "context_share_bytes": 0.0, "bytes": 0.0, "requested_bytes": 0.0}
    per_cause, n_all = {}, 0
    sites, copies, tracker = {}, {}, {}
    python = []
    for pid, body in bodies.items():
        for ctx in body["contexts"]:
            contexts.append(dict(ctx, id=qualified_id(pid, ctx["id"]), pid=pid))
        for conn in body["connections"]:
            conns.append(
                dict(conn, id=qualified_id(pid, conn["id"]), context=qualified_id(pid, conn["context"]), pid=pid)
            )
        t = body["totals"]
        for k in ("live_bytes", "requested_bytes", "live_blocks", "untracked_bytes"):
            totals[k] += t.get(k) or 0
        _sum_into(totals["by_cause"], t["by_cause"])
        process["live_bytes"] += body["process"]["live_bytes"]
        _sum_into(process["by_cause"], body["process"]["by_cause"])
        per = body["per_connection"]
        n = per["connections"]
        n_all += n
        for k in per_sum:
            per_sum[k] += (per.get(k) or 0) * n
        _sum_into(per_cause, per["by_cause"], n)
        for s in body["sites"]:
            key = (s["file"], s["line"], s["cause"], s.get("library"))
            m = sites.setdefault(key, dict(s, live_bytes=0, requested_bytes=0, live_blocks=0))
            for k in ("live_bytes", "requested_bytes", "live_blocks"):
                m[k] += s.get(k) or 0
        for c in body["openssl_copies"]:
            m = copies.setdefault(c["path"], dict(c, live_bytes=0, by_cause={}))
            m["live_bytes"] += c["live_bytes"]
            _sum_into(m["by_cause"], c["by_cause"])
        for k, v in body["tracker"].items():
            if isinstance(v, str):  # byte_measure: the same in every process, or "mixed"
                tracker[k] = v if tracker.get(k, v) == v else "mixed"
            else:
                tracker[k] = tracker.get(k, 0) + v
        for note in body["notes"]:
            notes_by_text.setdefault(note, []).append(pid)
        if isinstance(body.get("python"), dict):
            python.append(dict(body["python"], pid=pid))
    root = bodies.get(root_pid)
    report = {
        "schema": SCHEMA,
        "tool": {"name": "tlsprof", "version": __version__},
        "partial": bool(partial),
        "captured_at": max(b["captured_at"] for b in bodies.values()),
        "target": {
            "pid": root_pid if root_pid else min(bodies),
            "command": list(command),
            "mode": mode,
            "openssl": next((b["target"]["openssl"] for b in bodies.values() if b["target"]["openssl"]), None),
            # RSS of every process summed: pages the processes share (fork) count once per process
            "rss_bytes": sum(b["target"]["rss_bytes"] or 0 for b in bodies.values()),
        },
        "totals": dict(totals, by_cause=_ordered(totals["by_cause"])),
        "per_connection": {
            "connections": n_all,
            "own_bytes": int(round(per_sum["own_bytes"] / n_all)) if n_all else 0,
            "context_share_bytes": int(round(per_sum["context_share_bytes"] / n_all)) if n_all else 0,
            "bytes": int(round(per_sum["bytes"] / n_all)) if n_all else 0,
            "requested_bytes": int(round(per_sum["requested_bytes"] / n_all)) if n_all else 0,
            "by_cause": _ordered({k: v / n_all for k, v in per_cause.items()}) if n_all else {},
        },
        "contexts": sorted(contexts, key=lambda c: -c["live_bytes"]),
        "connections": sorted(conns, key=lambda c: -c["live_bytes"]),
        "sites": sorted(sites.values(), key=lambda m: (-m["live_bytes"], m["file"] or "", m["line"] or 0)),
        "process": {"live_bytes": process["live_bytes"], "by_cause": _ordered(process["by_cause"])},
        "peak": {
            "chosen": "peak",
            "snapshots": snapshots,
            "live_bytes_at_peak": peak_live_bytes if peak_live_bytes is not None else totals["live_bytes"],
        },
        "tracker": tracker,
        "history": list(history or []),  # the tree's (findings read its trends)
        "openssl_copies": [dict(c, by_cause=_ordered(c["by_cause"])) for c in copies.values()],
        "notes": [
            note
            if len(pids) == len(bodies)
            else f"pid{'s' if len(pids) > 1 else ''} {', '.join(map(str, pids))}: {note}"
            for note, pids in notes_by_text.items()
        ],
        "processes": entries,
    }
    # the per-connection mean is exact from the parts; rounding each part apart may leave a byte
    per = report["per_connection"]
    per["bytes"] = per["own_bytes"] + per["context_share_bytes"]
    if mode == "attach":
        report["attach"] = _attach_summary(report["connections"])
    memory = merge_memory(report, [b.get("memory") for b in bodies.values()])
    if memory is not None:
        report["memory"] = memory
    if python:
        python.sort(key=lambda p: -(p.get("joined_connections") or 0))
        report["python"] = python[0]
        if len(python) > 1:
            report["notes"].append(
                f"Python agents answered in {len(python)} processes; `python` describes "
                f"pid {python[0]['pid']}, each connection's `python` its own process"
            )
    if root is None and root_pid:
        report["notes"].append(
            f"pid {root_pid} (the process tlsprof {'started' if mode == 'run' else 'attached'}) "
            "holds no OpenSSL state: the report covers its descendants"
        )
    report["findings"] = compute_findings(report)
    return report
