"""The report's ids of contexts and connections, made from the shim's serials. Code that needs an
owner for an id builds the same id from the owner's serial; nothing parses an id back."""


def ctx_id(serial):
    return f"ctx-{serial}" if serial else None


def conn_id(serial):
    return f"conn-{serial}"


def qualified_id(pid, ident):
    """An id inside a process tree's report: the process's pid before the process's own id."""
    return None if ident is None else f"{pid}:{ident}"
