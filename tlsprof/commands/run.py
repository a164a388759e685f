"""`tlsprof run [-o FILE] [--interval S] [--at peak|last] -- CMD [ARGS...]`

Starts CMD with the shim preloaded; stdin/stdout/stderr pass through, the exit status is CMD's.
Ctrl-C at a terminal reaches CMD directly (same process group); SIGTERM/SIGHUP/SIGQUIT sent to
tlsprof, and SIGINT when not at a terminal, are forwarded to CMD. Processes CMD starts inherit the
shim and are tracked with their own channel; the report follows the process of the tree that uses
OpenSSL (CMD itself when it does) and lists the others under `processes`.
"""
import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from tlsprof import launch, report_io
from tlsprof.errors import UsageError
from tlsprof.render import render_text
from tlsprof.session import Session
from tlsprof.versions import unchecked_version_note


def prepare_parser(p):
    p.add_argument("-o", "--output", metavar="FILE", help="write the JSON report here (default: text report on stderr)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between snapshots (default 1)")
    p.add_argument("--at", choices=("peak", "last"), default="peak",
                   help="which snapshot the report describes (default: peak, the most live OpenSSL bytes)")
    p.add_argument("--format", choices=("text", "json"), default=None,
                   help="format of the report without -o (default text)")
    p.add_argument("--live", action="store_true", help="open the interactive live view (needs a terminal)")
    p.add_argument("--metrics", metavar="ADDR:PORT",
                   help="serve Prometheus/OpenMetrics gauges while profiling (e.g. 127.0.0.1:9464)")
    p.add_argument("--tracemalloc", action="store_true",
                   help="Python targets: register OpenSSL blocks with tracemalloc (domain 0x7715) so "
                        "tracemalloc snapshots in the target show them (docs/python-linkage.md)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")


def _command(args):
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("no command given: use `tlsprof run -- CMD [ARGS...]`")
    if not (0.05 <= args.interval <= 3600):
        raise UsageError("--interval must be between 0.05 and 3600 seconds")
    return cmd


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def run(args) -> int:
    cmd = _command(args)
    channel_dir = launch.private_dir()
    live = args.live and sys.stdout.isatty()
    log = None
    try:
        session = Session(channel_dir, None, cmd, mode="run")
        metrics = None
        if args.metrics:  # bind before starting the target: a bad address must not orphan it
            from tlsprof.metrics import start_metrics_server
            metrics = start_metrics_server(session, args.metrics)
        popen_kwargs = {}
        if live:  # the target's output would write over the view: keep it in a file
            log = tempfile.NamedTemporaryFile(prefix="tlsprof-target-", suffix=".log", delete=False)
            popen_kwargs = {"stdout": log, "stderr": log}
        try:
            proc = launch.spawn(cmd, channel_dir, tracemalloc=getattr(args, "tracemalloc", False),
                                **popen_kwargs)
        except BaseException:
            if metrics is not None:
                metrics.stop()
            raise
        session.main_pid = session.focus_pid = proc.pid
        if not live:
            announce_copies(session)
            announce_version(session)
        try:
            if live:
                from tlsprof.live import run_live
                returncode = run_live(session, proc, args)
            else:
                returncode = _collect(proc, session, args.interval)
        finally:
            if metrics is not None:
                metrics.stop()
        partial = returncode == -signal.SIGKILL
        notes = []
        if partial:
            notes.append("the target was killed with SIGKILL: this is the last snapshot taken before")
        report = session.report(at=args.at, partial=partial, notes=notes)
        if report is None:
            print(f"tlsprof: no snapshot was taken: {cmd[0]} exited after "
                  f"{time.time() - session.started:.1f}s before its first snapshot (or never loaded the shim)",
                  file=sys.stderr)
        else:
            emit_report(report, args)
        return _exit_status(returncode)
    finally:
        shutil.rmtree(channel_dir, ignore_errors=True)
        if log is not None:
            log.close()
            print(f"tlsprof: the target's output is in {log.name}", file=sys.stderr)


def emit_report(report, args, stream=None):
    """Write the report to -o FILE, or show it: JSON with --format json, else the text report.
    `run` shows it on stderr (stdout belongs to the target); `attach` may pass stdout."""
    stream = stream or sys.stderr
    if args.output:
        report_io.save_report(report, args.output)
        print(f"tlsprof: report written to {args.output}", file=sys.stderr)
    elif args.format == "json":
        stream.write(report_io.dumps(report) + "\n")
    else:
        render_text(report, file=stream)


HOW_TRACKED = {
    "hooks": "tracked per connection (hooked entry points)",
    "mem-functions": "tracked through its own allocator: call sites and causes, process-wide",
    "too-late": "NOT tracked: it had allocated before tlsprof could give it an allocator",
    "not-tracked": "NOT tracked",
}


def announce_copies(session: Session, file=sys.stderr):
    """One line per OpenSSL copy, the first time a snapshot shows it: what is seen, and how."""
    seen = set()

    def on_snapshot(snap):
        from tlsprof.model import openssl_copies
        for copy in openssl_copies(snap):
            if copy["path"] not in seen:
                seen.add(copy["path"])
                how = HOW_TRACKED.get(copy["tracking"], copy["tracking"])
                if copy["kind"] == "shared-symbolic" and copy["per_connection"]:
                    how = "linked -Bsymbolic: tracked through its own allocator, per connection"
                print(f"tlsprof: OpenSSL in {copy['path']} ({copy['kind']}): {how}", file=file)
    session.on_snapshot.append(on_snapshot)


def announce_version(session: Session, file=sys.stderr):
    """One line, once, when the target's OpenSSL is not a version tlsprof was checked against."""
    told = []

    def on_snapshot(snap):
        note = None if told else unchecked_version_note(snap.openssl)
        if note:
            told.append(note)
            print(f"tlsprof: {note}", file=file)
    session.on_snapshot.append(on_snapshot)


def _collect(proc: subprocess.Popen, session: Session, interval: float) -> int:
    """Snapshot every `interval` s until the target exits. A stop signal sent to tlsprof is
    forwarded after one last snapshot, and no snapshot is taken after it: the target's own teardown
    (closing every connection) never becomes the report's `last` snapshot."""
    pending = []  # signals to forward, in order
    stopping = []

    def on_signal(signum, frame):
        pending.append(signum)

    def on_sigint(signum, frame):
        if sys.stdin and sys.stdin.isatty():
            stopping.append(signum)  # a terminal's Ctrl-C reached the target already: stop looking
        else:
            pending.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, on_sigint)
    try:
        next_at = time.monotonic()
        first = True
        while True:
            try:  # short waits: a signal to forward is acted on within 50 ms
                return proc.wait(timeout=min(0.05, max(0.0, next_at - time.monotonic())))
            except subprocess.TimeoutExpired:
                pass
            if pending:
                if not stopping:
                    session.poll(fresh_agent=True)  # the last view of the target before it is asked to stop
                    stopping.append(pending[0])
                while pending:
                    try:
                        proc.send_signal(pending.pop(0))
                    except ProcessLookupError:
                        pass
                continue
            if stopping or time.monotonic() < next_at:
                continue
            snap = session.poll()
            # until the shim answers the first time, look again soon
            if snap is None and first:
                next_at = time.monotonic() + min(0.1, interval)
            else:
                first = False
                next_at = time.monotonic() + interval
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
