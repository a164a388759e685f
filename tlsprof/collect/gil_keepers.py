"""Processes whose embedded Python keeps the GIL in C for good: their Python agent is never asked.

uWSGI without threads (no --enable-threads, no --threads) runs its master and workers in C holding
the GIL and never releases it. Found under `run` with Debian's uWSGI 2.0.21 (python3 plugin,
--https-socket, two workers): once asked, the agent thread that tlsprof's sitecustomize started in
the master waits for the GIL forever and, as CPython does, asks the holder every 5 ms to drop it
(a pending "drop request"). uWSGI forks its workers with fork() and, without threads, never calls
PyOS_AfterFork_Child, so a worker forked after that inherits the pending request: the first Python
code it runs (its atexit handlers at shutdown) hands the GIL over to a thread it does not have and
waits for good, until the master kills it after its 60 s "mercy" (2 of ~40 runs of a SIGTERM
under `run`). Not asking the agent leaves its thread asleep in accept(), wanting nothing.
"""

import os
import re

from tlsprof.collect import process_tree

_THREADS_SET = re.compile(r"^\s*(enable-threads|threads)\s*=\s*(\S+)", re.M)
_cache = {}  # pid -> reason or None


def _read(path: str, binary=False):
    with open(path, "rb" if binary else "r", errors=None if binary else "replace") as f:
        return f.read()


def _truthy(value: str) -> bool:
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def _uwsgi_threads_on(pid: int) -> bool:
    """uWSGI's threads, from its command line, the .ini files it names, and UWSGI_* variables."""
    argv = [a.decode(errors="replace") for a in _read(f"/proc/{pid}/cmdline", binary=True).split(b"\0")]
    for i, arg in enumerate(argv):
        if arg in ("--enable-threads", "-T") or arg.startswith("--enable-threads="):
            return _truthy(arg.partition("=")[2] or "1")
        if arg == "--threads" and i + 1 < len(argv):
            return _truthy(argv[i + 1])
        if arg.startswith("--threads="):
            return _truthy(arg.partition("=")[2])
    cwd = os.readlink(f"/proc/{pid}/cwd")
    for i, arg in enumerate(argv):
        ini = argv[i + 1] if arg == "--ini" and i + 1 < len(argv) else arg if arg.endswith(".ini") else None
        if not ini:
            continue
        try:
            text = _read(os.path.join(cwd, ini))
        except OSError:
            continue
        found = _THREADS_SET.search(text)
        if found:
            return _truthy(found.group(2))
    env = process_tree.environment_of(pid)
    for key in (b"UWSGI_ENABLE_THREADS", b"UWSGI_THREADS"):
        if key in env:
            return _truthy(env[key].decode(errors="replace"))
    return False


def keeps_gil(pid: int) -> str | None:
    """Why `pid`'s Python agent must not be asked, or None."""
    if pid in _cache:
        return _cache[pid]
    reason = None
    try:
        if os.path.basename(os.readlink(f"/proc/{pid}/exe")).startswith("uwsgi") and not _uwsgi_threads_on(pid):
            reason = "uWSGI without --enable-threads keeps the GIL in C"
    except OSError:
        return None  # gone or not ours to read: asked as any other (nothing cached)
    _cache[pid] = reason
    return reason
