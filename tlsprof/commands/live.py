"""`--live` for `run` and `attach`: wires the live view (tlsprof/render/live/) to a collecting
session. The view gets a report source and a collector; the signals and the wait for the target
after the view closes stay here, on the collecting side."""

import signal
import sys

from tlsprof.analysis.reports import ReportSource
from tlsprof.collect.collector import Collector, collect
from tlsprof.collect.target import Target
from tlsprof.render.live import LiveApp


def live_app(session, target, args, *, is_alive=None, mode=None) -> LiveApp:
    """The live view of `session`; `target`: a Popen (run), a pid or a Target (attach)."""
    tgt = target if isinstance(target, Target) else Target(target, is_alive)
    interval = float(getattr(args, "interval", None) or 1.0)
    return LiveApp(ReportSource(session), tgt, args, mode=mode, collector=Collector(session, tgt, interval))


def run_live(session, target, args, *, is_alive=None, mode=None):
    """Show the live view until the user quits; return the target's returncode.

    `target`: the `subprocess.Popen` of a target we started (run), or its pid (attach; `is_alive`
    may override how liveness is checked; `target=None` with `is_alive` uses session.main_pid).
    Returns Popen.returncode semantics in run mode; None for a pid target (its exit status is not
    ours to know). The caller writes the report (and detaches, when attached) after this returns.
    Without a terminal on stdout, it collects without a view (the caller prints the text report).
    """
    session.agent_async = True  # a refresh never waits for the Python agent's scan
    if target is None:
        target = session.main_pid
    tgt = Target(target, is_alive)
    interval = float(getattr(args, "interval", None) or 1.0)
    if not sys.stdout.isatty():
        print("tlsprof: stdout is not a terminal: no live view; the text report follows at the end", file=sys.stderr)
        return _wait_for_target(session, tgt, interval)

    app = live_app(session, tgt, args, mode=mode)
    previous = {}

    def forward(signum, frame):
        if tgt.owned:
            try:
                tgt.proc.send_signal(signum)
            except ProcessLookupError:
                pass
        if signum == signal.SIGHUP or not tgt.owned:  # attached: a stop signal ends the session
            app.exit("hangup" if signum == signal.SIGHUP else "signal")

    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        previous[s] = signal.signal(s, forward)
    try:
        app.run()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    for path in app.saved:
        print(f"tlsprof: report snapshot saved to {path}", file=sys.stderr)
    if tgt.owned and tgt.alive():
        print(
            f"tlsprof: live view closed; still profiling pid {tgt.pid} until it exits "
            f"(Ctrl-C stops it; the report follows)",
            file=sys.stderr,
        )
        return _wait_for_target(session, tgt, interval)
    return tgt.returncode()


def _wait_for_target(session, tgt: Target, interval: float):
    """Keep collecting until the target exits (what `run` does without a view): the same loop and
    signal forwarding as `run` for a target we started."""
    return collect(session, tgt, interval)
