"""Rows that would read the same, shown once: `180 × conn-12…` instead of 180 identical lines.

Pure functions over report entries (contexts[] / connections[]), shared by the text and HTML
renderers. Byte counts within ~2 % of each other count as alike; a group shows its members' mean.
"""

import math
import os

from tlsprof.analysis.creation import user_frame


def alike(nbytes) -> int:
    """Byte counts within ~2 % of each other fall in one bucket."""
    return int(math.log(max(nbytes or 0, 1)) / math.log(1.02))


def mean(members, field) -> float:
    return sum(m.get(field) or 0 for m in members) / len(members)


def groups(entries, key) -> list:
    """[(representative, [members])] in the order of each group's first member."""
    out = {}
    for e in entries:
        out.setdefault(key(e), []).append(e)
    return [(members[0], members) for members in out.values()]


def group_id(members) -> str:
    if len(members) == 1:
        return str(members[0]["id"])
    return f"{len(members)} × {members[0]['id']}…"


def created_at(entry):
    """`file.py:31` of the user's line that created the entry (Python agent), or None."""
    py = entry.get("python")
    if not isinstance(py, dict):
        return None
    frame = user_frame(py.get("created_by"))
    return f"{os.path.basename(str(frame.get('file')))}:{frame.get('line')}" if frame else None


def ca_store_bytes(ctx) -> int:
    return ctx.get("ca_store_bytes", (ctx.get("by_cause") or {}).get("ca_store", 0))


def context_key(ctx, top_cause):
    return (
        ctx.get("connections"),
        alike(ctx.get("live_bytes")),
        alike(ca_store_bytes(ctx)),
        top_cause(ctx.get("by_cause") or {}),
        ctx.get("alive") is False,
        created_at(ctx),
    )


def connection_key(conn, top_cause, with_context=False):
    return (
        conn.get("state"),
        alike(conn.get("live_bytes")),
        top_cause(conn.get("by_cause") or {}),
        conn.get("since_attach") is False,
        bool(conn.get("walked_bytes")),
        created_at(conn),
        conn.get("context") if with_context else None,
    )


def peers_text(members) -> str:
    if len(members) == 1:
        c = members[0]
        return c.get("peer") or (f"fd {c['fd']}" if c.get("fd") is not None else "-")
    return f"{len(members)} peers"


def contexts_text(members) -> str:
    ctxs = {m.get("context") for m in members}
    return str(next(iter(ctxs))) if len(ctxs) == 1 else f"{len(ctxs)} contexts"
