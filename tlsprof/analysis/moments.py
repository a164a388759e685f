"""Which moment of a session a report describes, and the other two kept beside it.

A server's live OpenSSL bytes peak during a burst of handshakes (record buffers, BIOs and handshake
state that are released once the connections settle), so the snapshot with most bytes describes a
moment nobody would call representative. The report therefore describes, by default, the **steady
state**: the latest observation holding the most connections. The **peak** (most live OpenSSL
bytes) and the **last** observation are kept in the same file, each as a whole report body under
`moment_reports`, so `tlsprof report FILE --at peak|last` re-renders them (docs/report-format.md).

Pure functions over report dicts: nothing here talks to a target.
"""

import copy
import datetime

from tlsprof.errors import UsageError

MOMENTS = ("steady", "peak", "last")
DEFAULT_MOMENT = "steady"
# keys that belong to the whole session, not to one moment's body
SESSION_KEYS = ("history", "moments", "moment_reports")
WORDS = {"steady": "steady state", "peak": "peak", "last": "last snapshot"}


def assemble(bodies: dict, at: str, history, moments: dict) -> dict:
    """The report at moment `at` from {moment: body}: that body, the session's history and moment
    summaries, and every other moment's body (a body equal to an earlier one is stored as
    {"same_as": name}, so a session whose three moments coincide costs one body)."""
    if at not in bodies:
        at = next(iter(bodies))
    report = dict(bodies[at])
    report["peak"] = dict(report.get("peak") or {}, chosen=at)
    report["history"] = list(history or [])
    if moments:
        report["moments"] = copy.deepcopy(moments)
    stored = {}
    first_of = {id(bodies[at]): at}
    for name in MOMENTS:
        if name == at or name not in bodies:
            continue
        body = bodies[name]
        if id(body) in first_of:
            stored[name] = {"same_as": first_of[id(body)]}
        else:
            first_of[id(body)] = name
            stored[name] = _strip(body)
    if stored:
        report["moment_reports"] = stored
    if at == "steady" and "peak" in bodies and bodies["peak"] is not bodies["steady"]:
        report["findings"] = list(report.get("findings") or []) + only_at_peak(
            bodies["steady"], bodies["peak"], (moments or {}).get("peak")
        )
    return report


def _strip(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in SESSION_KEYS}


def only_at_peak(steady: dict, peak: dict, peak_summary=None) -> list:
    """Findings the peak shows and the steady state does not (handshake memory not yet released,
    for instance): listed, said to be peak-only, with no saving claimed for the steady state."""
    have = {f.get("id") for f in steady.get("findings") or []}
    when = ""
    if peak_summary:
        when = f" ({clock(peak_summary.get('captured_at'))}, {peak_summary.get('handshakes', 0)} handshakes under way)"
    out = []
    for f in peak.get("findings") or []:
        if f.get("id") in have:
            continue
        g = dict(f)
        g["only_at"] = "peak"
        g["detail"] = f"Seen only at the peak{when}, not in the steady state. " + str(f.get("detail") or "")
        g["evidence"] = dict(f.get("evidence") or {}, peak_saving_bytes=f.get("saving_bytes"))
        g["saving_bytes"] = 0
        out.append(g)
    return out


def select(report: dict, at: str) -> dict:
    """The saved report re-chosen at moment `at`. A report written before moments were kept holds
    one snapshot only: asking it for another is a usage error (exit 2)."""
    chosen = (report.get("peak") or {}).get("chosen", "peak")
    if at == chosen:
        return report
    stored = report.get("moment_reports") or {}
    if at not in stored:
        kept = ", ".join([chosen] + [m for m in MOMENTS if m in stored])
        raise UsageError(
            f"--at {at}: this report keeps the {kept} moment(s) only (written by a tlsprof that kept no other snapshot)"
        )
    bodies = {chosen: _strip(report)}
    if chosen == "steady":  # peak-only findings were added for the steady state: not part of its body
        bodies[chosen]["findings"] = [f for f in report.get("findings") or [] if f.get("only_at") != "peak"]
    pending = {}
    for name, body in stored.items():
        if isinstance(body, dict) and "same_as" in body:
            pending[name] = body["same_as"]
        else:
            bodies[name] = body
    for name, same in pending.items():
        if same in bodies:
            bodies[name] = bodies[same]
    if at not in bodies:
        raise UsageError(f"--at {at}: the report's moment_reports.{at} refers to a moment it does not keep")
    return assemble(bodies, at, report.get("history"), report.get("moments") or {})


def clock(iso) -> str:
    """'2026-11-30T12:01:07+00:00' -> '12:01:07' (UTC, as captured_at is written)."""
    try:
        return datetime.datetime.fromisoformat(iso).strftime("%H:%M:%S")
    except (TypeError, ValueError):
        return "?"


def _human(n) -> str:
    from tlsprof.model.words import human_bytes

    return human_bytes(n)


def describe(name: str, m: dict) -> str:
    """One moment in words: 'steady state: 200 connections at 12:01:07',
    'peak 14.2 MiB at 12:00:58 during 150 handshakes'."""
    n = m.get("connections", 0)
    conns = f"{n} connection{'' if n == 1 else 's'}"
    when = clock(m.get("captured_at"))
    if name == "peak":
        text = f"peak {_human(m.get('live_bytes'))} at {when}"
        hs = m.get("handshakes") or 0
        text += f" during {hs} handshake{'' if hs == 1 else 's'}" if hs else f" with {conns}"
        return text
    if name == "steady":
        return f"steady state: {conns} at {when}"
    return f"last snapshot: {conns}, {_human(m.get('live_bytes'))} at {when}"


def words(report: dict) -> str:
    """The header line saying which moment the report shows, and the others beside it:
    'steady state: 200 connections at 12:01:07; peak 14.2 MiB at 12:00:58 during 150 handshakes'."""
    moments = report.get("moments") or {}
    peak: dict = report.get("peak") if isinstance(report.get("peak"), dict) else {}
    chosen = peak.get("chosen")
    if not moments or chosen not in moments:
        return ""
    parts = [describe(chosen, moments[chosen])]
    if chosen != "steady":
        parts[0] = f"showing the {parts[0]}"
    for name in MOMENTS:
        if name != chosen and name in moments:
            m = moments[name]
            same = m.get("captured_at") == moments[chosen].get("captured_at") and m.get("live_bytes") == moments[
                chosen
            ].get("live_bytes")
            if name == "last" and same:
                continue
            parts.append(describe(name, m) + (" (the same snapshot)" if same else ""))
    return "; ".join(parts)
