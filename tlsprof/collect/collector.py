"""The one collector loop: polls a session every `interval` seconds for `run`, `attach` and the live
view alike, until the target exits, the session is told to stop, or a deadline passes. A started
command that exits 0 leaving processes of its tree that serve a channel has daemonized (`nginx`,
`apachectl start`, `stunnel`): they are the target from then on (target.py `Daemons`).

Started targets (run) and attached ones differ only in what a stop signal means. A signal sent to
tlsprof for a target it started is forwarded to it after one last snapshot, and no snapshot is taken
after it: the target's own teardown (closing every connection) never becomes the report's `last`
snapshot; a terminal's Ctrl-C has reached the target already and only stops the snapshots. For an
attached target a stop signal ends the session: one last look (with a fresh Python agent answer)
while the target runs on, as does the end of `--duration`.
"""

import signal
import subprocess
import threading
import time

from tlsprof.collect.stop_signals import StopSignals
from tlsprof.errors import TlsprofError

# A stop signal can come before the shim's first answer (a supervisor's restart loop, a group kill
# right after start). The shim's channel is up from its preload constructor on, milliseconds after
# exec: a short bounded wait for it gives the report real data instead of none.
FIRST_SNAPSHOT_WAIT = 2.0
STEP_S = 0.05  # a signal to forward, or a stop request, is acted on within this


def poll_quietly(session, fresh_agent=False):
    """One observation, or None: a target going away mid-answer must not end the session unreported."""
    try:
        return session.poll(fresh_agent=fresh_agent)
    except (TlsprofError, OSError):
        return None


def collect(
    session,
    target,
    interval: float,
    stops: StopSignals = None,
    *,
    until=None,
    stop_event=None,
    on_observation=None,
    on_error=None,
    on_stop=None,
    on_last_look=None,
):
    """Poll until the target exits (returns its returncode: Popen semantics for a started target,
    None for an attached one) or the loop is told to stop (returns None).

    `stops`: the session's StopSignals (None: a started target's signals are held here; nothing is
    held for an attached one). `until`: a monotonic deadline. `stop_event`: set from another thread
    (the live view closing). `on_observation(obs)` runs after every poll that got one;
    `on_error(exc)` takes any error of a poll (without it, only a vanishing target's are ignored).
    `on_stop()` runs once, after the last snapshot and the forwarded signal; `on_last_look()` right
    after that last snapshot, while the started target still runs (`run --walk`)."""
    if stops is None and target.owned and stop_event is None:
        with StopSignals() as own:  # called on its own (the live view, once closed)
            return collect(
                session,
                target,
                interval,
                own,
                until=until,
                on_observation=on_observation,
                on_error=on_error,
                on_stop=on_stop,
                on_last_look=on_last_look,
            )
    session.stops_so_far = lambda: (
        (len(stops.received) if stops is not None else 0) + bool(stop_event is not None and stop_event.is_set())
    )
    stopping = False
    next_at = time.monotonic()
    first = True
    while True:
        wait = min(STEP_S, max(0.0, next_at - time.monotonic()))
        if target.owned:
            try:
                returncode = target.proc.wait(timeout=wait)
                if stopping or not target.follow_daemons(session, returncode):
                    return returncode
            except subprocess.TimeoutExpired:
                pass
        elif stop_event is not None:
            stop_event.wait(wait)
        else:
            time.sleep(wait)
        if stop_event is not None and stop_event.is_set():
            return None
        if stops is not None and target.owned and stops.pending:
            first_stop = not stopping
            if first_stop:
                _last_look(target, session)
                if on_last_look is not None and target.proc.poll() is None:
                    on_last_look()
                stopping = True
            for signum in stops.take():
                try:
                    target.proc.send_signal(signum)
                except ProcessLookupError:
                    pass
            if first_stop and on_stop is not None:
                on_stop()
            continue
        if stops is not None and target.owned and stops.from_terminal and not stopping:
            stopping = True
            if target.daemonized:  # out of the terminal's process group: Ctrl-C never reached them
                _last_look(target, session)
                target.proc.send_signal(signal.SIGTERM)
        if not target.owned and (
            (stops is not None and stops.stopping) or (until is not None and time.monotonic() >= until)
        ):
            if target.alive():  # the state when the session ended: the target runs on
                poll_quietly(session, fresh_agent=True)
            return None
        if stopping or time.monotonic() < next_at:
            continue
        if not target.owned and not target.alive():
            return None
        obs = _poll(session, on_error)
        if obs is not None and on_observation is not None:
            try:
                on_observation(obs)
            except Exception as exc:  # noqa: BLE001 - a view's trouble must not end the collection
                if on_error is None:
                    raise
                on_error(exc)
        # until the shim answers the first time, look again soon
        if obs is None and first:
            next_at = time.monotonic() + min(0.1, interval)
        else:
            first = False
            next_at = time.monotonic() + interval
        if until is not None:
            next_at = min(next_at, until)


def _poll(session, on_error):
    if on_error is None:
        return poll_quietly(session)
    try:
        return session.poll()
    except Exception as exc:  # noqa: BLE001 - shown by the view, which stays up
        on_error(exc)
        return None


def _last_look(target, session):
    """The newest view of the target before it is asked to stop (bounded)."""
    deadline = time.monotonic() + FIRST_SNAPSHOT_WAIT
    while session.last is None and target.proc.poll() is None and time.monotonic() < deadline:
        if poll_quietly(session) is None:
            time.sleep(0.02)
    if target.proc.poll() is None:  # the newest state, with the Python agent asked now
        poll_quietly(session, fresh_agent=True)


class Collector(threading.Thread):
    """`collect` on a thread, for the live view: `start(on_observation, on_exit, on_error)` polls
    until the target exits (then `on_exit(returncode)`) or `stop()`."""

    def __init__(self, session, target, interval: float):
        super().__init__(name="tlsprof-live-poller", daemon=True)
        self.session, self.target, self.interval = session, target, interval
        self.stop_event = threading.Event()
        self._callbacks = (None, None, None)

    def start(self, on_observation=None, on_exit=None, on_error=None):
        self._callbacks = (on_observation, on_exit, on_error)
        super().start()

    def run(self):
        on_observation, on_exit, on_error = self._callbacks
        rc = collect(
            self.session,
            self.target,
            self.interval,
            stop_event=self.stop_event,
            on_observation=on_observation,
            on_error=on_error,
        )
        self.target.alive()  # notes when it exited
        if not self.stop_event.is_set() and on_exit is not None:
            on_exit(rc if self.target.owned else self.target.returncode())

    def stop(self):
        self.stop_event.set()
