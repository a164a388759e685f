"""The processes of a target's tree: who belongs to it, and what part each plays.

A server is often several processes (nginx's master and workers, PostgreSQL's postmaster and one
backend per connection, a forking server's children). tlsprof reports on the whole tree; this module
only answers "which pids" and "which command", from /proc (psutil), never from the shim; the role a
command plays is read from its title by tlsprof/analysis/roles.py.
"""

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
