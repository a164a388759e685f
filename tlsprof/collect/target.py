"""The profiled process as the collector and the views see it: a `subprocess.Popen` tlsprof started
(run: it is our child, its exit status is ours to know) or the pid of a process it attached to."""

import os
import signal
import subprocess
import time

import psutil


class Target:
    """What the view watches: `subprocess.Popen` (run mode, we are its parent and know its exit
    status) or a pid (attach mode; an optional `is_alive()` callable overrides the check)."""

    def __init__(self, target, is_alive=None):
        self.proc = target if isinstance(target, subprocess.Popen) else None
        self.pid = self.proc.pid if self.proc is not None else int(target)
        self._is_alive = is_alive
        self._psutil = None
        self.exited_at = None

    @property
    def owned(self) -> bool:
        return self.proc is not None

    def returncode(self):
        """Popen.returncode semantics; None while running or when unknown (not our child)."""
        if self.proc is not None:
            return self.proc.poll()
        return None

    def alive(self) -> bool:
        if self.proc is not None:
            alive = self.proc.poll() is None
        elif self._is_alive is not None:
            alive = bool(self._is_alive())
        else:
            try:
                if self._psutil is None:
                    self._psutil = psutil.Process(self.pid)
                alive = self._psutil.is_running() and self._psutil.status() != psutil.STATUS_ZOMBIE
            except psutil.Error:
                alive = False
        if not alive and self.exited_at is None:
            self.exited_at = time.time()
        return alive

    def terminate(self):
        try:
            if self.proc is not None:
                self.proc.terminate()
            else:
                os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
