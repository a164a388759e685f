"""Stop signals sent to tlsprof itself (SIGTERM, SIGINT, SIGHUP, SIGQUIT), held from the moment a
session starts until its report is written.

A supervisor signals tlsprof right after its target, or at the same instant (systemd's control-group
kill, `kill -TERM -PGID`, a shell's teardown). With the default actions tlsprof would die in
between, and the report of a session that ran for hours would be lost. So while a session lasts
these signals are only recorded: the command decides what each means (`run` forwards them to its
target, `attach` ends the session), and a signal that arrives while the report is being built or
written changes nothing, nor does one after it (tlsprof exits with the status it was returning).
Only SIGKILL can stop tlsprof there, and reports are written to a temp file
renamed into place (report_io.save_report), so even that never leaves half a file.
"""

import signal
import sys

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


class StopSignals:
    """Context manager. `received` lists every stop signal seen, in order; `pending` those the
    command has not taken yet (take() empties it). A SIGINT from a terminal's Ctrl-C, which reached
    the whole foreground process group already, is marked in `from_terminal` (not to be forwarded)."""

    def __init__(self, hold_to_exit=False):
        # hold_to_exit: keep recording after the block too. The CLI commands use it: between the
        # written report and the interpreter's exit a signal would otherwise turn the documented exit
        # status into a death by signal.
        self.hold_to_exit = hold_to_exit
        self.received = []
        self.pending = []
        self.taken = []  # what the command acted on (a signal after the target's exit is not)
        self.from_terminal = []
        self._previous = {}

    def _on_signal(self, signum, frame):
        self.received.append(signum)
        if signum == signal.SIGINT and _stdin_is_terminal():
            self.from_terminal.append(signum)
        else:
            self.pending.append(signum)

    def take(self):
        out, self.pending[:] = list(self.pending), []
        self.taken.extend(out)
        return out

    @property
    def stopping(self) -> bool:
        return bool(self.received)

    def __enter__(self):
        for s in STOP_SIGNALS:
            try:
                self._previous[s] = signal.signal(s, self._on_signal)
            except (ValueError, OSError):  # not the main thread, or not settable: leave it
                pass
        return self

    def __exit__(self, *exc):
        if self.hold_to_exit:
            # ignored, not handled: at exit the interpreter puts Python-level handlers back to the
            # default action (it leaves SIG_IGN alone), and a signal then would kill tlsprof after all
            for s in self._previous:
                signal.signal(s, signal.SIG_IGN)
            return False
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
        return False


def _stdin_is_terminal() -> bool:
    try:
        return bool(sys.stdin) and sys.stdin.isatty()
    except (ValueError, OSError):
        return False


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
