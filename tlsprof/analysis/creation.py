"""Where the objects a finding is about were created, in the user's own code, and which API that
code uses: the line a person has to change, and the fix written for the library on that line.

Reads only report entries (`contexts[]` / `connections[]` with the Python agent's
`python.created_by` frames, innermost first). A frame is the user's when it is outside the
standard library's TLS plumbing and outside the HTTP/TLS libraries that build contexts for their
callers (urllib3, requests, aiohttp, httpx, pyOpenSSL, Twisted).
"""

import os
from collections import Counter

# path fragments of code that creates contexts on a caller's behalf: never "the user's line"
_LIBRARY_PARTS = (
    "/asyncio/",
    "/urllib3/",
    "/requests/",
    "/aiohttp/",
    "/httpx/",
    "/httpcore/",
    "/OpenSSL/",
    "/twisted/",
    "/http/client.py",
    "/urllib/request.py",
    "/tlsprof/",
)
_STDLIB_FILES = ("ssl.py", "socket.py", "socketserver.py", "selectors.py", "threading.py")

# API -> the path fragment that shows a frame belongs to it (checked in this order)
_API_MARKERS = (
    ("urllib3/requests", ("/urllib3/", "/requests/")),
    ("aiohttp", ("/aiohttp/",)),
    ("httpx", ("/httpx/", "/httpcore/")),
    ("pyOpenSSL", ("/OpenSSL/", "/twisted/")),
)


def is_user_frame(frame: dict) -> bool:
    path = str(frame.get("file") or "")
    if os.path.basename(path) in _STDLIB_FILES or path.startswith("<"):
        return False
    return not any(part in path for part in _LIBRARY_PARTS)


def user_frame(frames):
    """The first frame of the user's own code (innermost first), else the innermost frame."""
    if not frames:
        return None
    return next((f for f in frames if is_user_frame(f)), frames[0])


def _caller_of(frames, frame):
    """The user frame that called `frame` (the next user frame outward), or None."""
    later = frames[frames.index(frame) + 1 :] if frame in frames else []
    return next((f for f in later if is_user_frame(f)), None)


def api_of(frames) -> str:
    """Which API created the object: "ssl", "pyOpenSSL", "urllib3/requests", "aiohttp", "httpx",
    or "C" when no Python frame is known (a C program, or an object made before attach)."""
    if not frames:
        return "C"
    paths = [str(f.get("file") or "") for f in frames]
    for api, parts in _API_MARKERS:
        if any(part in path for path in paths for part in parts):
            return api
    return "ssl"


def frame_text(frame: dict) -> str:
    fn = frame.get("function")
    where = f"{frame.get('file')}:{frame.get('line')}"
    return f"{where} in {fn}" if fn else where


def place(entries) -> dict | None:
    """The creating line shared by most of `entries` (report contexts or connections), as
    {file, line, function, caller, api, objects, of}; None when the report knows no creator."""
    found = Counter()
    example = {}
    apis = Counter()
    for e in entries:
        py = e.get("python") if isinstance(e, dict) else None
        frames = py.get("created_by") if isinstance(py, dict) else None
        if not frames:
            continue
        frame = user_frame(frames)
        key = (frame.get("file"), frame.get("line"), frame.get("function"))
        found[key] += 1
        apis[api_of(frames)] += 1
        example.setdefault(key, (frames, frame))
    if not found:
        return None
    key, count = found.most_common(1)[0]
    frames, frame = example[key]
    caller = _caller_of(frames, frame)
    return {
        "file": key[0],
        "line": key[1],
        "function": key[2],
        "caller": (
            {"file": caller.get("file"), "line": caller.get("line"), "function": caller.get("function")}
            if caller
            else None
        ),
        "api": apis.most_common(1)[0][0],
        "objects": count,
        "of": len(entries),
    }


def place_text(where: dict) -> str:
    """`echo_server.py:31 in make_context, called from handle (echo_server.py:58)`"""
    text = frame_text(where)
    caller = where.get("caller")
    if caller:
        same_file = caller.get("file") == where.get("file")
        at = f"line {caller.get('line')}" if same_file else f"{caller.get('file')}:{caller.get('line')}"
        text += f", called from {caller.get('function') or '?'} ({at})"
    return text
