"""Creation capture (under `run`): the stack that made each SSL object, kept while the object lives.

`ssl.SSLContext.__new__`, `SSLSocket._create` and `SSLObject._create` are wrapped (and pyOpenSSL's
classes through agent/pyopenssl_capture.py); each records up to MAX_FRAMES frames, innermost first,
in a WeakKeyDictionary. `uninstall` puts every class back as it was.
"""

import os
import sys
import tracemalloc
import weakref

MAX_FRAMES = 16
_AGENT_DIR = os.path.dirname(os.path.abspath(__file__))

created = weakref.WeakKeyDictionary()  # python wrapper object -> creating frames (innermost first)


_is_agent_file = {}  # co_filename -> it lies in the agent's directory (asked once per file)


def frames(frame):
    """Up to MAX_FRAMES (file, line, function) of the stack, innermost first, the agent's own left
    out. Kept as tuples: this runs at every connection's creation (a dict per frame and a path
    normalisation per frame cost ~34 us a connection, ~5 % of an asyncio handshake)."""
    out = []
    while frame is not None and len(out) < MAX_FRAMES:
        code = frame.f_code
        name = code.co_filename
        mine = _is_agent_file.get(name)
        if mine is None:
            mine = _is_agent_file[name] = os.path.dirname(os.path.abspath(name)) == _AGENT_DIR
        if not mine:
            out.append((name, frame.f_lineno, code.co_name))
        frame = frame.f_back
    return out


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
        return [{"file": f, "line": n, "function": fn} for f, n, fn in found], "run"
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
