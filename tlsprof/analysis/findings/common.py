"""Helpers the findings share: where a line of the user's code created an object, counts."""

from tlsprof.analysis.creation import place, place_text


def _placed(detail: str, fix: str, where, fixes: dict):
    """Name the user's creating line in the detail and give the fix for the API on that line."""
    if where is None:
        return detail, fix
    detail += f" {where['objects']} of {where['of']} were created at {place_text(where)} ({where['api']})."
    specific = fixes.get(where["api"])
    if specific:
        fix = f"At {place_text(where)}: {specific}"
    return detail, fix


# --- shared helpers for the per-connection findings -------------------------------------------


def _live_connections(report: dict) -> list:
    return [c for c in report.get("connections", []) if c.get("alive", True)]


def _cause(entry: dict, cause: str) -> float:
    return (entry.get("by_cause") or {}).get(cause, 0) or 0


def _contexts_by_id(report: dict) -> dict:
    return {ctx.get("id"): ctx for ctx in report.get("contexts", [])}


def _place_connections(report: dict, conns: list):
    """Where the connections' contexts were created (the line whose settings decide what a
    connection keeps), else where the connections themselves were."""
    contexts = _contexts_by_id(report)
    owners = [contexts[c.get("context")] for c in conns if c.get("context") in contexts]
    return place(owners) or place(conns)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
