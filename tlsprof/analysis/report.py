"""Turns a shim snapshot into a report (schema tlsprof.report/2, docs/report-format.md).

A connection's memory = its own live bytes + its share of its context's live bytes (the context's
bytes divided by the live connections that share it). Both parts are reported.
"""

import datetime
import os
from collections import defaultdict

from tlsprof import __version__
from tlsprof.model.causes import CAUSES
from tlsprof.model.observation import ProcessObservation
from tlsprof.model.openssl_api import SSL_MODE_RELEASE_BUFFERS
from tlsprof.analysis.findings import compute_findings
from tlsprof.analysis.python_join import join as join_python
from tlsprof.model.ids import conn_id, ctx_id
from tlsprof.analysis.memory import account as account_memory
from tlsprof.model.versions import unchecked_version_note

SCHEMA = "tlsprof.report/2"


def _bytes_by_cause(owner) -> dict:
    return {c: owner.by_cause[c].bytes for c in CAUSES if c in owner.by_cause and owner.by_cause[c].bytes}


def _sum_into(total: dict, by_cause: dict, scale=1.0):
    for c, v in by_cause.items():
        total[c] = total.get(c, 0) + v * scale


def _ordered(by_cause: dict, as_int=True) -> dict:
    out = {}
    for c in CAUSES:
        v = by_cause.get(c, 0)
        if v:
            out[c] = int(round(v)) if as_int else round(v, 1)
    return out


def openssl_copies(snap) -> list:
    """Every OpenSSL the target has, and how each is seen: shared libcrypto through its hooked entry
    points (per connection), static copies through their memory functions (process-wide) or not."""
    out = []
    via_memory_functions = {os.path.basename(c["path"]) for c in snap.copies}
    shared = sorted(
        {
            s.library
            for s in snap.sites
            if s.library and s.library.startswith("libcrypto") and s.library not in via_memory_functions
        }
    )
    for lib in shared:
        out.append({"path": lib, "kind": "shared", "tracking": "hooks", "per_connection": True})
    for c in snap.copies:
        # a shared libcrypto linked -Bsymbolic still has hooked entry points (libssl, the app): per connection
        out.append(
            {
                "path": c["path"],
                "kind": c["kind"],
                "tracking": c["tracking"],
                "per_connection": c["kind"] == "shared-symbolic" and c["tracking"] == "mem-functions",
            }
        )
    for copy in out:  # each copy's own bytes, from the call sites it allocated at
        lib = os.path.basename(copy["path"])
        mine = [s for s in snap.sites if s.library == lib]
        copy["live_bytes"] = sum(s.bytes for s in mine)
        by_cause = {}
        for s in mine:
            by_cause[s.cause] = by_cause.get(s.cause, 0) + s.bytes
        copy["by_cause"] = _ordered(by_cause)
    return out


ESTIMATE_MIN_SAMPLE = 5


def _attach_summary(conns) -> dict:
    """Connections that predate the attach are counted and listed, never measured: their earlier
    allocations are unknown. Where enough connections were measured from their first byte, their mean
    is offered for the older ones, labelled as an estimate with the sample it came from."""
    old = [c for c in conns if c["predates_attach"]]
    new = [c for c in conns if not c["predates_attach"]]
    summary = {"connections_before_attach": len(old), "connections_since_attach": len(new), "estimate_for_older": None}
    if old and len(new) >= ESTIMATE_MIN_SAMPLE:
        mean = sum(c["live_bytes"] for c in new) / len(new)
        summary["estimate_for_older"] = {
            "bytes_per_connection": int(round(mean)),
            "estimate": True,
            "sample": len(new),
            "basis": f"mean own bytes of the {len(new)} connections opened after attach, measured from "
            f"their first allocation; applied to the {len(old)} older ones, not measured",
        }
    return summary


# the byte measures this front end knows (docs/report-format.md); the shim names its `stat
# byte_measure` codes in its vocab line (hooks/shim.h enum byte_measure)
BYTE_MEASURES = ("glibc_footprint", "usable_size", "requested")


BYTE_MEASURE_NOTES = {
    "usable_size": "bytes are the size classes of the process's own allocator (not glibc's malloc): no "
    "per-block header is added (tracker.byte_measure)",
    "requested": "bytes are the sizes OpenSSL requested: the target gave OpenSSL its own allocator (or its "
    "malloc has no usable-size call), whose per-block overhead is not known (tracker.byte_measure)",
}


def _observed(snap) -> ProcessObservation:
    return snap if isinstance(snap, ProcessObservation) else ProcessObservation.of(snap)


def _tracker(stats, measures=BYTE_MEASURES) -> dict:
    tracker = {k: stats[k] for k in ("tracker_bytes", "blocks", "slots_patched", "slots_foreign") if k in stats}
    code = stats.get("byte_measure")
    if code is not None:
        name = measures[code] if 0 <= code < len(measures) else "unknown"
        tracker["byte_measure"] = name if name in BYTE_MEASURES else "unknown"
    return tracker


def build_report(
    snap,
    *,
    command,
    mode,
    partial=False,
    chosen="peak",
    snapshots=1,
    peak_live_bytes=None,
    history=None,
    notes=None,
    processes=None,
) -> dict:
    """The report of one process's observation (tlsprof/model/observation.py); a bare snapshot is
    taken as observed with nothing beside it. Pure: reads the observation, changes nothing."""
    snap = _observed(snap)
    owners = snap.owners
    contexts = [o for o in owners if o.kind == "context"]
    conns = [o for o in owners if o.kind == "connection" and o.alive]
    by_serial = {o.serial: o for o in contexts}
    sharing = defaultdict(int)
    for c in conns:
        sharing[c.ctx_serial] += 1

    report_contexts = []
    for ctx in sorted(contexts, key=lambda o: -o.live_bytes):
        entry = {
            "id": ctx_id(ctx.serial),
            "connections": sharing.get(ctx.serial, 0),
            "live_bytes": ctx.live_bytes,
            "requested_bytes": ctx.requested_bytes,
            "live_blocks": ctx.live_blocks,
            "by_cause": _bytes_by_cause(ctx),
            "ca_store_bytes": ctx.by_cause["ca_store"].bytes if "ca_store" in ctx.by_cause else 0,
            "alive": ctx.alive,
            "since_attach": not ctx.pre_attach,
            "predates_attach": ctx.pre_attach,
            "release_buffers": bool(ctx.mode & SSL_MODE_RELEASE_BUFFERS) if ctx.mode_known else None,
            "age_s": round(ctx.age_s, 3),
        }
        report_contexts.append(entry)

    report_conns = []
    per_own, per_share, per_req = 0.0, 0.0, 0.0
    per_cause = {}
    for c in sorted(conns, key=lambda o: -o.live_bytes):
        ctx = by_serial.get(c.ctx_serial)
        share_by_cause = {}
        share = 0.0
        if ctx is not None and sharing.get(c.ctx_serial):
            n = sharing[c.ctx_serial]
            share = ctx.live_bytes / n
            share_by_cause = {k: v / n for k, v in _bytes_by_cause(ctx).items()}
        own = _bytes_by_cause(c)
        per_own += c.live_bytes
        per_share += share
        per_req += c.requested_bytes
        _sum_into(per_cause, own)
        _sum_into(per_cause, share_by_cause)
        report_conns.append(
            {
                "id": conn_id(c.serial),
                "context": ctx_id(c.ctx_serial),
                "fd": c.fd if c.fd >= 0 else None,
                "peer": c.peer,
                "state": c.state,
                "age_s": round(c.age_s, 3),
                # seconds since the session saw it move data (SSL_read/write); None without a session
                "idle_s": snap.idle_s.get(c.serial),
                "live_bytes": c.live_bytes,
                "requested_bytes": c.requested_bytes,
                "live_blocks": c.live_blocks,
                "context_share_bytes": int(round(share)),
                "by_cause": own,
                "since_attach": not c.pre_attach,
                "predates_attach": c.pre_attach,
                "alive": True,
                # from the shim's F line: is the fd still open, and which file (inode) it is now
                "fd_open": bool(c.facts["fd_open"]) if "fd_open" in c.facts else None,
                "fd_inode": c.facts.get("fd_ino"),
            }
        )
    n = len(conns)
    per_connection = {
        "connections": n,
        "own_bytes": int(round(per_own / n)) if n else 0,
        "context_share_bytes": int(round(per_share / n)) if n else 0,
        "bytes": int(round((per_own + per_share) / n)) if n else 0,
        "requested_bytes": int(round(per_req / n)) if n else 0,
        "by_cause": _ordered({k: v / n for k, v in per_cause.items()}) if n else {},
    }

    totals_cause, total_req, total_blocks = {}, 0, 0
    process_cause = {}
    for o in owners:
        _sum_into(totals_cause, _bytes_by_cause(o))
        total_req += o.requested_bytes
        total_blocks += o.live_blocks
        if o.kind == "process" or (o.kind == "connection" and not o.alive):
            _sum_into(process_cause, _bytes_by_cause(o))
    dead_conns = [o for o in owners if o.kind == "connection" and not o.alive]

    merged = {}
    for s in snap.sites:
        key = (s.file, s.line, s.cause, s.library)
        m = merged.setdefault(
            key,
            {
                "file": s.file,
                "line": s.line,
                "cause": s.cause,
                "library": s.library,
                "live_bytes": 0,
                "requested_bytes": 0,
                "live_blocks": 0,
            },
        )
        m["live_bytes"] += s.bytes
        m["requested_bytes"] += s.requested
        m["live_blocks"] += s.blocks
    sites = sorted(merged.values(), key=lambda m: (-m["live_bytes"], m["file"], m["line"]))

    all_notes = list(notes or [])
    version_note = unchecked_version_note(snap.openssl)
    if version_note:
        all_notes.append(version_note)
    copies = openssl_copies(snap)
    for c in copies:
        if c["kind"] in ("shared", "shared-symbolic") and c["per_connection"]:
            continue
        if c["tracking"] == "mem-functions":
            all_notes.append(
                f"statically linked OpenSSL in {c['path']}: its allocations are tracked (call sites "
                "and causes); its connections cannot be told apart, so its bytes are process-wide"
            )
        elif c["kind"] != "shared":
            all_notes.append(
                f"statically linked OpenSSL in {c['path']} is NOT tracked ({c['tracking']}): "
                "it must be given tlsprof's allocator before its first allocation, i.e. under "
                "`tlsprof run`; its memory is missing from this report"
            )
    if dead_conns:
        all_notes.append(
            f"{len(dead_conns)} freed connections still own "
            f"{sum(o.live_bytes for o in dead_conns)} bytes (counted under `process`)"
        )
    measures = snap.vocab.get("measures", BYTE_MEASURES)
    measure_note = BYTE_MEASURE_NOTES.get(_tracker(snap.stats, measures).get("byte_measure", ""))
    if measure_note:
        all_notes.append(measure_note)
    if any(o.pre_attach for o in owners if o.kind != "process"):
        all_notes.append(
            "objects marked predates_attach existed before tlsprof attached: their bytes are "
            "only those allocated since attach"
        )

    report = {
        "schema": SCHEMA,
        "tool": {"name": "tlsprof", "version": __version__},
        "partial": bool(partial),
        "captured_at": datetime.datetime.fromtimestamp(snap.taken_at or 0, datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "target": {
            "pid": snap.pid,
            "command": list(command),
            "mode": mode,
            "openssl": snap.openssl,
            "rss_bytes": snap.rss_bytes,
        },
        "totals": {
            "live_bytes": int(sum(totals_cause.values())),
            "requested_bytes": total_req,
            "live_blocks": total_blocks,
            "by_cause": _ordered(totals_cause),
            "untracked_bytes": snap.stats.get("untracked_bytes", 0),
        },
        "per_connection": per_connection,
        "contexts": report_contexts,
        "connections": report_conns,
        "sites": sites,
        "process": {"live_bytes": int(sum(process_cause.values())), "by_cause": _ordered(process_cause)},
        "peak": {
            "chosen": chosen,
            "snapshots": snapshots,
            "live_bytes_at_peak": peak_live_bytes if peak_live_bytes is not None else snap.live_bytes,
        },
        "tracker": _tracker(snap.stats, measures),
        "history": list(history or []),
        "openssl_copies": copies,
        "notes": all_notes,
    }
    if processes:
        report["processes"] = processes
    if mode == "attach":
        report["attach"] = _attach_summary(report_conns)
    if snap.python is not None:  # the in-target Python agent's answer (analysis/python_join.py)
        join_python(report, snap.python, snap)
    section = account_memory(report, snap.process_memory, snap.stats)
    if section is not None:
        report["memory"] = section
    report["findings"] = compute_findings(report)
    return report
