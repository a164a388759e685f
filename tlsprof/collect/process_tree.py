"""The processes of a target's tree: who belongs to it, and what part each plays.

A server is often several processes (nginx's master and workers, PostgreSQL's postmaster and one
backend per connection, a forking server's children). tlsprof reports on the whole tree; this module
only answers "which pids" and "which command", from /proc (psutil), never from the shim; the role a
command plays is read from its title by tlsprof/analysis/roles.py.
"""

import os
import re

import psutil


def descendants(pid: int) -> list:
    """pid and every live descendant of it (children first seen by /proc); [] when pid is gone."""
    try:
        root = psutil.Process(pid)
        return [pid] + [p.pid for p in root.children(recursive=True)]
    except psutil.Error:
        return []


def command_of(pid: int) -> list:
    """argv as /proc shows it now (process titles set with setproctitle included); [] when unknown."""
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def environment_of(pid: int) -> dict:
    """The environment `pid` started with, {bytes: bytes}, as /proc/PID/environ shows it (a process
    that changed its own later is not seen). Raises OSError when it is gone or not ours to read."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)


def untracked_tls(root_pid: int, tracked) -> list:
    """[(pid, name, established TCP connections)] for the processes under `root_pid` (itself
    excluded) that load a shared libssl and hold TCP connections but are not in `tracked`: started
    with a cleaned environment (dovecot's login processes lose LD_PRELOAD), or barred from making
    the shim's thread (RLIMIT_NPROC). Their memory is in no report, and the report must say so."""
    out = []
    for pid in descendants(root_pid)[1:]:
        if pid in tracked:
            continue
        try:
            with open(f"/proc/{pid}/maps") as f:
                if "/libssl.so" not in f.read():
                    continue
            proc = psutil.Process(pid)
            held = sum(1 for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_ESTABLISHED)
            if held:
                out.append((pid, proc.name(), held))
        except (OSError, psutil.Error):
            continue
    return out


def untracked_sentence(found: list, limit: int = 5) -> str | None:
    """One note for the report about untracked_tls's processes, or None."""
    if not found:
        return None
    shown = ", ".join(f"{pid} ({name}, {held} TCP)" for pid, name, held in found[:limit])
    more = f" and {len(found) - limit} more" if len(found) > limit else ""
    return (
        f"{len(found)} process(es) of the tree use OpenSSL and held TCP connections at the last look, but no "
        f"tlsprof shim serves in them: pids {shown}{more}. Their memory is not in this report (a cleaned "
        f"environment drops LD_PRELOAD, as dovecot does for its login processes; RLIMIT_NPROC forbids the "
        f"shim's thread)"
    )


def runs_python(pid) -> bool:
    """The process's program is a CPython interpreter (python3, python3.11), not an embedder."""
    try:
        name = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return False
    return re.fullmatch(r"python[0-9.]*", name) is not None
