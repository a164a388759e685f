"""Room for tlsprof's own tasks in a target whose RLIMIT_NPROC forbids new ones.

HAProxy's workers set RLIMIT_NPROC to 0 (unless `insecure-fork-wanted`), Dovecot's login
processes to 1: an exploit mitigation, and one that leaves the shim no thread for its channel nor
the heap walk its child process. tlsprof with CAP_SYS_RESOURCE (root, outside a container that
drops it) lends such a target room for exactly that: for the time of the attach its limit is the
tasks its uid runs now plus ROOM, then exactly what it was again (prlimit(2) from outside, the
target not involved). Meanwhile the target could start ROOM tasks of its own at most. The limit is
set back when the attach and walk are done, failed, or cut short by a stop signal; only a SIGKILL
of tlsprof in between would leave it raised.
"""

import os
import resource
import time

from tlsprof.collect.inject.target_facts import CAP_SYS_RESOURCE, _status, uid_tasks

# the shim's listener thread, the heap walk's child, and in a Python target the thread that starts
# the agent and the agent's own
ROOM = 4


def can_lend() -> bool:
    """tlsprof may raise another user's process's hard limit: CAP_SYS_RESOURCE (root has it, but
    not in a container that drops it, as Docker does by default)."""
    try:
        return bool(int(_status(os.getpid()).get("CapEff", "0"), 16) & (1 << CAP_SYS_RESOURCE))
    except (OSError, ValueError):
        return False


class LentRoom:
    """RLIMIT_NPROC of `pid` raised to its uid's tasks + ROOM until give_back()."""

    def __init__(self, pid: int):
        self.pid = int(pid)
        self.before = None
        self.held_s = 0.0
        self._since = None

    def lend(self) -> None:
        """Raises OSError (PermissionError, ProcessLookupError) when it cannot."""
        uid = int(_status(self.pid).get("Uid", "0").split()[0])
        before = resource.prlimit(self.pid, resource.RLIMIT_NPROC)
        room = uid_tasks(uid) + ROOM
        hard = before[1] if before[1] == resource.RLIM_INFINITY or before[1] >= room else room
        resource.prlimit(self.pid, resource.RLIMIT_NPROC, (room, hard))
        self.before = before
        self._since = time.monotonic()

    def give_back(self) -> None:
        if self._since is None:
            return
        try:
            resource.prlimit(self.pid, resource.RLIMIT_NPROC, self.before)
        except ProcessLookupError:
            pass
        self.held_s, self._since = time.monotonic() - self._since, None
