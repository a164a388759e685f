"""The profiled process as the collector and the views see it: a `subprocess.Popen` tlsprof started
(run: it is our child, its exit status is ours to know) or the pid of a process it attached to."""

import os
import signal
import subprocess
import time

import psutil

from tlsprof.collect import process_tree


class Target:
    """What the view watches: `subprocess.Popen` (run mode, we are its parent and know its exit
    status) or a pid (attach mode; an optional `is_alive()` callable overrides the check)."""

    def __init__(self, target, is_alive=None, on_daemonized=None):
        self.proc = target if isinstance(target, subprocess.Popen) else None
        self.launcher = self.proc  # run: the command started; self.proc becomes Daemons if it daemonized
        self._on_daemonized = on_daemonized  # called with the pids followed
        self.pid = self.proc.pid if self.proc is not None else int(target)
        self._is_alive = is_alive
        self._psutil = None
        self.exited_at = None

    @property
    def owned(self) -> bool:
        return self.proc is not None

    def follow_daemons(self, session, returncode) -> bool:
        """The launcher exited with `returncode`: if it exited 0 leaving processes of its tree that
        serve a channel (it daemonized), they become the target. True when they did."""
        if self.proc is not self.launcher or returncode != 0:
            return False
        left = daemons_left(session, self.launcher.pid)
        if not left:
            return False
        self.proc = Daemons(left, returncode)
        if self._on_daemonized is not None:
            self._on_daemonized(self.proc.pids)
        return True

    @property
    def daemonized(self):
        return isinstance(self.proc, Daemons)

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


# --- a command that daemonizes (`nginx`, `apachectl start`, `stunnel`, `haproxy -D`) ---------------


def become_subreaper() -> bool:
    """Make tlsprof the parent of the processes a daemonizing command leaves behind (Linux's
    PR_SET_CHILD_SUBREAPER, as tini and systemd do): they stay in tlsprof's tree, so the processes
    that switched users are still linked (launch.py) and their exit is seen. Best effort."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _reap(pid) -> None:
    """Collect the exit of a process tlsprof adopted (a subreaper's duty: it would stay a zombie).
    Only the pids followed: another child's exit belongs to the `subprocess.Popen` that waits for it."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: its own parent collects it


def _running(pid) -> bool:
    try:
        p = psutil.Process(pid)
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Daemons:
    """What a daemonizing command left running, in place of its exited launcher: Popen's `poll`,
    `wait`, `send_signal` over the group. It runs while any of them runs; a signal goes to the
    group's tops (each process whose parent is not in it: nginx's master, not its workers); its
    returncode, once all are gone, is the launcher's."""

    def __init__(self, pids, launcher_returncode):
        self.pids = sorted(pids)
        self.pid = self.pids[0]
        self.launcher_returncode = launcher_returncode
        self.returncode = None

    def _alive(self):
        for pid in self.pids:
            _reap(pid)
        return [pid for pid in self.pids if _running(pid)]

    def poll(self):
        if self.returncode is None and not self._alive():
            self.returncode = self.launcher_returncode
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.pids, timeout)
            time.sleep(0.02 if deadline is None else max(0.0, min(0.02, deadline - time.monotonic())))
        return self.returncode

    def tops(self):
        alive = set(self._alive())
        out = []
        for pid in alive:
            try:
                if psutil.Process(pid).ppid() not in alive:
                    out.append(pid)
            except psutil.Error:
                pass
        return sorted(out)

    def send_signal(self, signum):
        for pid in self.tops():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def terminate(self):
        self.send_signal(signal.SIGTERM)


DAEMON_SETTLE_S = 1.0


def _in_session(pid, channel_dir) -> bool:
    """The process was started for this session: its environment names the session's directory."""
    try:
        return process_tree.environment_of(pid).get(b"TLSPROF_DIR") == os.fsencode(channel_dir)
    except OSError:
        return False


def daemons_left(session, launcher_pid, settle=DAEMON_SETTLE_S) -> list:
    """The processes of a run's tree still running once its launcher exited: those serving a channel
    of the session, and those tlsprof adopted (become_subreaper) that were started for it. A daemon
    forked just before the launcher's exit may not serve yet: it gets up to `settle` seconds to."""
    deadline = time.monotonic() + settle
    while True:
        try:
            adopted = {p.pid for p in psutil.Process().children(recursive=True)} - {launcher_pid}
        except psutil.Error:
            adopted = set()
        adopted = {pid for pid in adopted if _in_session(pid, session.channel_dir)}
        serving = set(session.sockets()) - {launcher_pid}
        if not adopted - serving or time.monotonic() >= deadline:
            return sorted(pid for pid in adopted | serving if _running(pid))
        time.sleep(0.02)
