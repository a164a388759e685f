"""Creation capture (under `run`): the stack that made each SSL object, kept while the object lives.

`ssl.SSLContext.__new__`, `SSLSocket._create` and `SSLObject._create` are wrapped (and pyOpenSSL's
classes through agent/pyopenssl_capture.py); each records up to MAX_FRAMES frames, innermost first,
as (code, offset) in a WeakKeyDictionary, and the lines are found when a snapshot asks. `uninstall`
puts every class back as it was.
"""

import os
import sys
import tracemalloc
import weakref

MAX_FRAMES = 16
_AGENT_DIR = os.path.dirname(os.path.abspath(__file__))

created = weakref.WeakKeyDictionary()  # python wrapper object -> creating frames (innermost first)


_is_agent_file = {}  # co_filename -> it lies in the agent's directory (asked once per file)
_newest = [()]  # the stack captured last: the next object made from the same place shares it


def frames(frame):
    """Up to MAX_FRAMES (code, offset) of the stack, innermost first, the agent's own left out.
    This runs at every connection's creation, so lines are not looked up here (`lines` does that,
    only for the objects a snapshot reports): a frame's f_lineno scans its code's line table, and
    asyncio's big functions made that 14 us of an asyncio handshake's ~1 ms against ~8 us now
    (bench/README.md, session 19). Objects made from one place share one tuple: a server's
    connections cost one reference each, not 16 tuples. That case, the common one, is checked
    first by comparing the frames with the shared tuple, building nothing: ~7 -> ~3 us for a
    stack 25 deep (bench/capture_frames.py, session 20)."""
    newest = _newest[0]
    k, n, f = 0, len(newest), frame
    while f is not None and k < n:
        code = f.f_code
        if newest[k][0] is code:  # by identity: equal code may sit in another file
            if newest[k][1] != f.f_lasti:
                break
            k += 1
        elif not _is_agent_file.get(code.co_filename):  # a frame the shared stack lacks, or unknown
            break
        f = f.f_back
    else:
        if k == n and (k == MAX_FRAMES or f is None):
            return newest
    return _walk(frame)


def _walk(frame):
    """frames() when the stack differs from the one captured last: walked and kept as the newest."""
    out = []
    while frame is not None and len(out) < MAX_FRAMES:
        code = frame.f_code
        name = code.co_filename
        mine = _is_agent_file.get(name)
        if mine is None:
            mine = _is_agent_file[name] = os.path.dirname(os.path.abspath(name)) == _AGENT_DIR
        if not mine:
            out.append((code, frame.f_lasti))
        frame = frame.f_back
    stack = _newest[0] = tuple(out)
    return stack


def _line(code, offset):
    """The line of the instruction at `offset` (what f_lineno said when it ran there)."""
    for start, end, line in code.co_lines():
        if start <= offset < end:
            return line
    return code.co_firstlineno


_resolved = [((), [])]  # (stack, its frames as dicts): objects sharing a stack share the answer


def lines(stack):
    """[{"file", "line", "function"}] of a captured stack, innermost first."""
    if _resolved[0][0] is not stack:
        _resolved[0] = (
            stack,
            [{"file": code.co_filename, "line": _line(code, at), "function": code.co_name} for code, at in stack],
        )
    return _resolved[0][1]


def remember(obj):
    """From a wrapper (one frame below the caller that made obj)."""
    try:
        created[obj] = frames(sys._getframe(2))
    except Exception:
        pass


def install(state: dict, pyopenssl) -> None:
    import ssl

    if getattr(ssl, "_tlsprof_patched", False):
        return
    # what we replace, as it was in each class's __dict__, so that uninstall() can put it back
    state["patched"] = [(ssl.SSLContext, "__new__", ssl.SSLContext.__dict__.get("__new__"))] + [
        (k, "_create", k.__dict__.get("_create")) for k in (ssl.SSLSocket, ssl.SSLObject)
    ]
    orig_new = ssl.SSLContext.__new__

    def __new__(cls, *args, **kwargs):
        self = orig_new(cls, *args, **kwargs)
        remember(self)
        return self

    ssl.SSLContext.__new__ = staticmethod(__new__)

    for klass in (ssl.SSLSocket, ssl.SSLObject):
        orig = klass.__dict__["_create"].__func__

        def _create(cls, *args, _orig=orig, **kwargs):
            obj = _orig(cls, *args, **kwargs)
            remember(obj)
            return obj

        setattr(klass, "_create", classmethod(_create))  # noqa: B010
    setattr(ssl, "_tlsprof_patched", True)  # noqa: B010 (a module attribute of our own)
    try:
        pyopenssl.install(state, remember)
    except Exception:
        pass


def uninstall(state: dict, pyopenssl) -> None:
    import ssl

    for klass, name, original in state.pop("patched", None) or []:
        if original is None:
            delattr(klass, name)
        else:
            setattr(klass, name, original)
    setattr(ssl, "_tlsprof_patched", False)  # noqa: B010
    try:
        pyopenssl.uninstall(state)
    except Exception:
        pass


LATE_NOTE = (
    "the Python agent started late: this interpreter did not import tlsprof's sitecustomize "
    "(python -I, -E or -S, or a PYTHONPATH set by the program), so tlsprof started it from its shim "
    "once the program ran; objects made before then show no creating line"
)


def created_by(obj, tm_on: bool, capturing):
    """(frames innermost first, how they were learned) or (None, why not). `capturing`: False
    (attach), True, or "late" (agent.start's `capture`)."""
    found = created.get(obj) if _is_weakrefable(obj) else None
    if found:
        return lines(found), "run"
    if tm_on:
        try:
            tb = tracemalloc.get_object_traceback(obj)
        except Exception:
            tb = None
        if tb:
            return [{"file": f.filename, "line": f.lineno, "function": None} for f in reversed(tb)], "tracemalloc"
    if capturing == "late":
        return None, "unknown (created before the agent started)"
    return None, "unknown" if capturing else "unknown (created before attach)"


def _is_weakrefable(obj):
    try:
        weakref.ref(obj)
        return True
    except TypeError:
        return False
