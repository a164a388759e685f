"""`tlsprof attach PID [-o FILE] [--duration S] [--interval S] [--at peak|last] [--live] [--metrics A:P]`

Loads the shim into a running process (tlsprof/inject.py: gdb, at a safe point), collects until the
duration is over, a stop signal (SIGINT/SIGTERM/SIGHUP/SIGQUIT), the live view's quit, or the
target's exit, detaches (every patched slot is restored and the target runs on) and writes the report
(`target.mode` = "attach"). From the start to the written report those signals never kill tlsprof:
one arriving during the injection, the detach or the writing ends the session the same way.
Connections that predate the attach are listed as the shim sees them afterwards (`since_attach`);
their earlier allocations are unknown and never presented as measured.
"""
import sys
import time

import psutil

from tlsprof import client, inject
from tlsprof.channel_paths import channel_dir_for, socket_path
from tlsprof.errors import ChannelError, TlsprofError, UsageError
from tlsprof.commands.run import emit_report, empty_report, poll_quietly, tell
from tlsprof.session import Session
from tlsprof.shim import shim_path
from tlsprof.stop_signals import StopSignals, signal_name


def prepare_parser(p):
    p.add_argument("pid", type=int, help="process id of the target")
    p.add_argument("-o", "--output", metavar="FILE", help="write the JSON report here (default: text on stderr)")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="collect for S seconds, then report and detach (default: until Ctrl-C)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between snapshots (default 1)")
    p.add_argument("--at", choices=("peak", "last"), default="peak",
                   help="which snapshot the report describes (default: peak, the most live OpenSSL bytes)")
    p.add_argument("--format", choices=("text", "json"), default=None, help="format without -o (default text)")
    p.add_argument("--timeout", type=float, default=20.0, metavar="S", help="give up attaching after S seconds")
    p.add_argument("--live", action="store_true", help="open the interactive live view (needs a terminal)")
    p.add_argument("--metrics", metavar="ADDR:PORT", help="serve Prometheus/OpenMetrics gauges while attached")


def _command_of(pid):
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def run(args) -> int:
    if args.pid <= 0:
        raise UsageError(f"invalid pid {args.pid}")
    if args.duration is not None and args.duration <= 0:
        raise UsageError("--duration must be positive")
    if not (0.05 <= args.interval <= 3600):
        raise UsageError("--interval must be between 0.05 and 3600 seconds")
    if args.metrics:  # a bad address is refused before anything touches the target
        from tlsprof.metrics import parse_address
        parse_address(args.metrics)
    # held until the report is written: a stop signal ends the session, but never skips the detach
    # (the target would keep its hooks) or the report (tlsprof/stop_signals.py)
    with StopSignals(hold_to_exit=True) as stops:
        return _attach(args, stops)


def _attach(args, stops: StopSignals) -> int:
    info = inject.preflight(args.pid)
    for warning in info.warnings:
        tell(f"tlsprof: note: {warning}")
    channel_dir = channel_dir_for(info.uid)
    started = time.monotonic()
    inject.inject(args.pid, shim_path(), channel_dir, timeout=args.timeout)
    tell(f"tlsprof: attached to pid {args.pid} in {time.monotonic() - started:.1f}s")
    session = Session(channel_dir, args.pid, _command_of(args.pid), mode="attach", follow_children=False)
    target_died = False
    metrics = None
    try:
        if args.metrics:
            from tlsprof.metrics import start_metrics_server
            metrics = start_metrics_server(session, args.metrics)
        if args.live and sys.stdout.isatty() and not stops.stopping:
            from tlsprof.live import run_live
            run_live(session, args.pid, args)
        else:
            _collect(session, args, stops)
        target_died = not _alive(args.pid)
    finally:
        if metrics is not None:
            metrics.stop()
        if not _alive(args.pid):
            target_died = True
        else:
            _detach(args.pid, channel_dir)
    notes = []
    if target_died:
        notes.append("the target exited while attached: this is the last snapshot taken before")
    if stops.received:
        names = ", ".join(dict.fromkeys(signal_name(s) for s in stops.received))
        notes.append(f"the session ended on {names} sent to tlsprof; the target was detached and runs on"
                     if not target_died else f"tlsprof was signalled ({names})")
    report = session.report(at=args.at, partial=target_died, notes=notes)
    if report is None:
        if not stops.stopping:
            raise ChannelError(f"pid {args.pid} gave no snapshot before the session ended")
        report = empty_report(args.pid, session.command, "attach",
                              notes + ["no snapshot was taken: the session was stopped before the first one"])
    emit_report(report, args, stream=sys.stdout if args.format == "json" else sys.stderr)
    return 0


def _alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _detach(pid, channel_dir):
    try:
        client.detach(socket_path(channel_dir, pid))
        tell(f"tlsprof: detached from pid {pid}")
    except ChannelError:
        try:
            inject.eject(pid, channel_dir)
            tell(f"tlsprof: detached from pid {pid} (via gdb)")
        except TlsprofError as exc:
            tell(f"tlsprof: could not detach from pid {pid}: {exc}; run `tlsprof detach {pid}`")


def _collect(session: Session, args, stops: StopSignals):
    end = time.monotonic() + args.duration if args.duration else None
    while not stops.stopping:
        poll_quietly(session)
        if not _alive(args.pid):
            return
        wait = args.interval if end is None else min(args.interval, end - time.monotonic())
        if end is not None and wait <= 0:
            return
        deadline = time.monotonic() + wait
        while not stops.stopping and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    # the state when the session ended (the target still runs: it is not torn down)
    if _alive(args.pid):
        poll_quietly(session, fresh_agent=True)
