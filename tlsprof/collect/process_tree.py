"""The processes of a target's tree: who belongs to it, and what part each plays.

A server is often several processes (nginx's master and workers, PostgreSQL's postmaster and one
backend per connection, a forking server's children). tlsprof reports on the whole tree; this module
only answers "which pids" and "what role", from /proc (psutil), never from the shim.
"""
import re

import psutil

# "nginx: worker process", "nginx: master process /usr/sbin/nginx -c …", "nginx: cache manager process"
_TITLE_PROCESS = re.compile(r"^[\w.-]+: ([a-z][a-z ]*?) process\b")
# PostgreSQL backends retitle themselves "postgres: [cluster: ]user db host(port) state"
_PG_BACKEND = re.compile(r"^postgres: .*\S+ \S+ [\w.:\[\]-]+\(\d+\)")
_PG_TITLE = re.compile(r"^postgres: (?:\d+/\w+: )?([a-z][a-z ]*[a-z])")


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


def role(command, *, is_root: bool, has_children: bool):
    """A short role from the process title, or from the process's place in the tree; None if alone."""
    title = " ".join(command or [])
    match = _TITLE_PROCESS.match(title)
    if match:
        return match.group(1)
    if _PG_BACKEND.match(title):
        return "backend"
    match = _PG_TITLE.match(title)
    if match:
        return match.group(1)
    if is_root and has_children:
        return "parent"
    if not is_root:
        return "child"
    return None
