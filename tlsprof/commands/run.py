"""`tlsprof run [-o FILE] [--interval S] [--at steady|peak|last] [--walk] -- CMD [ARGS...]`

Starts CMD with the shim preloaded; stdin/stdout/stderr pass through, the exit status is CMD's.
Ctrl-C at a terminal reaches CMD directly (same process group); SIGTERM/SIGHUP/SIGQUIT sent to
tlsprof, and SIGINT when not at a terminal, are forwarded to CMD. These signals never kill tlsprof
(tlsprof/collect/stop_signals.py): the report is always written, also when the signal comes before the
first snapshot, after CMD exited, with it, or while the report is being written; with -o it is
written at the first such signal already, and again when CMD exits. Processes CMD starts inherit the
shim and are tracked with their own channel; the report describes the whole tree: every process
that loads OpenSSL has a `processes[]` entry and the headline is over all their connections. A CMD
that daemonizes (exits 0 leaving processes running: `nginx`, `stunnel`, `haproxy -D`) is followed:
tlsprof adopts what it left (a child subreaper), profiles it until it exits, and a stop signal goes to
it (Ctrl-C too, as it left the terminal's process group).
`--walk`: at the last look (a stop signal sent to tlsprof) the heap is walked too and each context
and connection carries its walked bytes beside its tracked ones (docs/heap-walk.md).
"""

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time

from tlsprof.analysis import walked
from tlsprof.analysis.moments import DEFAULT_MOMENT, MOMENTS
from tlsprof.analysis.report import build_report
from tlsprof.analysis.reports import ReportSource
from tlsprof.collect import client, launch, linkage, process_tree
from tlsprof.collect.client import Snapshot
from tlsprof.collect.collector import collect
from tlsprof.collect.session import Session
from tlsprof.collect.stop_signals import StopSignals, signal_name
from tlsprof.collect.target import Target
from tlsprof.errors import TlsprofError, UsageError
from tlsprof.model import report_io
from tlsprof.model.observation import ProcessObservation
from tlsprof.model.versions import unchecked_version_note
from tlsprof.render.text import render_text


def prepare_parser(p):
    p.add_argument("-o", "--output", metavar="FILE", help="write the JSON report here (default: text report on stderr)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between snapshots (default 1)")
    p.add_argument(
        "--at",
        choices=MOMENTS,
        default=DEFAULT_MOMENT,
        help="which moment the report describes: steady (default: the latest snapshot holding the "
        "most connections), peak (most live OpenSSL bytes) or last; all three are kept in -o FILE",
    )
    p.add_argument(
        "--format", choices=("text", "json"), default=None, help="format of the report without -o (default text)"
    )
    p.add_argument("--live", action="store_true", help="open the interactive live view (needs a terminal)")
    p.add_argument(
        "--metrics",
        metavar="ADDR:PORT",
        help="serve Prometheus/OpenMetrics gauges while profiling (e.g. 127.0.0.1:9464)",
    )
    p.add_argument(
        "--tracemalloc",
        action="store_true",
        help="Python targets: register OpenSSL blocks with tracemalloc (domain 0x7715) so "
        "tracemalloc snapshots in the target show them (docs/python-linkage.md)",
    )
    add_pprof_arguments(p)
    p.add_argument(
        "--user",
        metavar="USER",
        help="start CMD as USER (tlsprof runs as root; e.g. PostgreSQL refuses to run as root)",
    )
    p.add_argument(
        "--walk",
        action="store_true",
        help="also walk the heap at the last look (docs/heap-walk.md): each context and connection "
        "carries the walked bytes beside its tracked ones",
    )
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")


def _command(args):
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("no command given: use `tlsprof run -- CMD [ARGS...]`")
    if not (0.05 <= args.interval <= 3600):
        raise UsageError("--interval must be between 0.05 and 3600 seconds")
    if args.output:  # refused before the target starts, not after it ran for hours
        report_io.check_writable(args.output)
    return cmd


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def run(args) -> int:
    cmd = _command(args)
    # held until the report is written: a supervisor's SIGTERM right after (or with) the target's
    # must not kill tlsprof between the target's exit and the report (tlsprof/collect/stop_signals.py)
    with StopSignals(hold_to_exit=True) as stops:
        return _run(args, cmd, stops)


def _run(args, cmd, stops: StopSignals) -> int:
    channel_dir = launch.private_dir()
    live = args.live and sys.stdout.isatty()
    log = None
    daemonized_note = None
    try:
        session = Session(channel_dir, None, cmd, mode="run")
        source = ReportSource(session)
        # the walk at the last look ({"walk", "observation", "static"}): asked for (--walk), or made
        # because the process's OpenSSL is a static copy whose entry points nothing hooks
        walk_found = {}
        stripped_notes = []  # OpenSSL linked statically and stripped: said once, kept for the report
        untracked = []  # processes of the tree with TLS connections and no shim, at the last look
        metrics = None
        if args.metrics:  # bind before starting the target: a bad address must not orphan it
            from tlsprof.render.metrics import start_metrics_server

            metrics = start_metrics_server(source, args.metrics)
        profiles = start_pprof(source, args, metrics)
        popen_kwargs = {}
        if live:  # the target's output would write over the view: keep it in a file
            log = tempfile.NamedTemporaryFile(prefix="tlsprof-target-", suffix=".log", delete=False)
            popen_kwargs = {"stdout": log, "stderr": log}
        try:
            proc = launch.spawn(
                cmd,
                channel_dir,
                tracemalloc=getattr(args, "tracemalloc", False),
                user=getattr(args, "user", None),
                **popen_kwargs,
            )
        except BaseException:
            if metrics is not None:
                metrics.stop()
            if profiles is not None:
                profiles.stop()
            raise
        session.main_pid = proc.pid
        if not live:
            announce_copies(session, stripped_notes)
            announce_version(session)
        try:
            if live:
                from tlsprof.commands.live import run_live

                returncode = run_live(session, proc, args)
            else:

                def last_look():
                    _walk_last_look(session, walk_found, asked=getattr(args, "walk", False))
                    # those that answered: a child that exec'd with a cleaned environment leaves the
                    # socket its shim bound after the fork
                    answered = set(session.last.snaps) if session.last is not None else set()
                    untracked[:] = process_tree.untracked_tls(os.getpid(), answered)

                target = Target(
                    proc,
                    on_daemonized=lambda pids: tell(
                        f"tlsprof: {cmd[0]} daemonized (it exited 0, pids {', '.join(map(str, pids))} run on): "
                        f"following them; stop them with Ctrl-C or SIGTERM to tlsprof"
                    ),
                )
                returncode = collect(
                    session,
                    target,
                    args.interval,
                    stops,
                    on_stop=lambda: _write_early(source, args, cmd, target.proc, stops, walk_found),
                    on_last_look=last_look,
                )
                if target.daemonized:
                    daemonized_note = (
                        f"{cmd[0]} exited at once (status 0) and left processes running (it daemonized): "
                        f"tlsprof followed them (pids {', '.join(map(str, target.proc.pids))}) until they exited"
                    )
        finally:
            if metrics is not None:
                metrics.stop()
            if profiles is not None:
                profiles.stop()
        partial = returncode == -signal.SIGKILL
        notes = []
        if partial:
            notes.append("the target was killed with SIGKILL: this is the last snapshot taken before")
        if stops.taken:
            names = ", ".join(dict.fromkeys(signal_name(s) for s in stops.taken))
            notes.append(
                f"tlsprof passed {names} on to the target, which then exited "
                f"({_describe_status(returncode)}); no snapshot was taken after the signal"
            )
        notes += stripped_notes
        if daemonized_note:
            notes.append(daemonized_note)
        silent_note = linkage.silent_sentence(session.channel_dirs)
        if silent_note:
            notes.append(silent_note)
        untracked_note = process_tree.untracked_sentence(untracked)
        if untracked_note:
            notes.append(untracked_note)
            tell(f"tlsprof: note: {untracked_note}")
        report = source.report(at=args.at, partial=partial, notes=notes)
        if report is not None and getattr(args, "walk", False):
            _annotate_walk(report, walk_found)
        if report is not None and walk_found.get("static"):
            _merge_static_walk(report, walk_found)
        elif (
            report is not None
            and session.last is not None
            and any(static_unhooked(snap) for snap in session.last.snaps.values())
        ):
            report.setdefault("notes", []).append(
                "no heap walk: the target stopped before tlsprof's last look (a terminal's Ctrl-C reaches it "
                "at once), so its static OpenSSL's bytes stay process-wide; stop with SIGTERM to tlsprof "
                "for per-connection figures"
            )
        if report is None:
            why = (
                f"{cmd[0]} exited after {time.time() - session.started:.1f}s before its first snapshot "
                f"(or never loaded the shim)"
            )
            tell(f"tlsprof: no snapshot was taken: {why}")
            report = empty_report(proc.pid, cmd, "run", notes + [f"no snapshot was taken: {why}"])
        emit_report(report, args)
        return _exit_status(returncode)
    finally:
        shutil.rmtree(channel_dir, ignore_errors=True)
        if log is not None:
            log.close()
            tell(f"tlsprof: the target's output is in {log.name}")


def _write_early(source: ReportSource, args, cmd, proc, stops: StopSignals, walk_found=None):
    """With -o: write the report as soon as tlsprof is told to stop, before waiting for the target.
    No snapshot is taken after the signal, so this is already the final content; the report is
    rewritten (atomically) when the target exits. A supervisor that escalates to SIGKILL (systemd
    after TimeoutStopSec, a target that ignores SIGTERM) then still finds a report."""
    if not args.output or proc.poll() is not None:
        return
    names = ", ".join(dict.fromkeys(signal_name(s) for s in stops.received))
    note = (
        f"written when tlsprof was signalled ({names}), before the target exited; tlsprof "
        f"did not live to rewrite it after the target's exit"
    )
    try:
        report = source.report(at=args.at, partial=True, notes=[note])
        if report is None:
            report = empty_report(proc.pid, cmd, "run", [note, "no snapshot was taken before the signal"])
        elif walk_found and walk_found.get("static"):
            _merge_static_walk(report, walk_found)
        report_io.save_report(report, args.output)
    except TlsprofError:
        pass  # the final write says what is wrong with the file


def _describe_status(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal_name(-returncode)}"
    return f"exit status {returncode}"


def empty_report(pid, command, mode, notes):
    """The report of a session that got no snapshot: valid, marked partial, saying why."""
    snap = Snapshot(pid=pid, mono_ns=0, openssl=None, stats={}, owners=[], sites=[], taken_at=time.time())
    return build_report(
        ProcessObservation.of(snap),
        command=command,
        mode=mode,
        partial=True,
        chosen="last",
        snapshots=0,
        notes=list(notes),
    )


def tell(line: str, file=None):
    """A status line on stderr. A closed terminal (SIGHUP's usual cause) must not cost the report."""
    try:
        print(line, file=file or sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def add_pprof_arguments(p):
    p.add_argument(
        "--pprof",
        metavar="DIR",
        help="write a pprof heap profile (gzipped profile.proto) into DIR after every snapshot, "
        "for a collector to pick up (docs/exports.md)",
    )
    p.add_argument(
        "--pprof-keep",
        type=int,
        default=10,
        metavar="N",
        help="with --pprof: keep the N newest profiles this session wrote (default 10)",
    )


def start_pprof(source, args, started=None):
    """The --pprof writer, or None. A bad DIR is a usage error before the target is touched; what
    was `started` already (the metrics endpoint) is stopped first."""
    if not getattr(args, "pprof", None):
        return None
    from tlsprof.render.pprof import start_profile_writer

    try:
        return start_profile_writer(source, args.pprof, args.pprof_keep, err=sys.stderr)
    except BaseException:
        if started is not None:
            started.stop()
        raise


def emit_report(report, args, stream=None):
    """Write the report to -o FILE, or show it: JSON with --format json, else the text report.
    `run` shows it on stderr (stdout belongs to the target); `attach` may pass stdout."""
    stream = stream or sys.stderr
    if args.output:
        report_io.save_report_or_elsewhere(report, args.output)
        tell(f"tlsprof: report written to {args.output}")
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


def announce_copies(session: Session, stripped_notes: list | None = None, file=sys.stderr):
    """One line per OpenSSL copy, the first time a snapshot shows it: what is seen, and how. A
    process whose OpenSSL is linked statically and stripped gets one line saying so (kept in
    `stripped_notes` for the report)."""
    seen = set()

    def on_snapshot(snap):
        from tlsprof.analysis.report import openssl_copies

        copies = openssl_copies(snap)
        if not copies and snap.pid not in seen:
            seen.add(snap.pid)
            note = stripped_copy_note(snap.pid)
            if note:
                if stripped_notes is not None:
                    stripped_notes.append(note)
                tell(f"tlsprof: {note}", file=file)
        for copy in copies:
            if copy["path"] not in seen:
                seen.add(copy["path"])
                how = HOW_TRACKED.get(copy["tracking"], copy["tracking"])
                if copy["kind"] == "shared-symbolic" and copy["per_connection"]:
                    how = "linked -Bsymbolic: tracked through its own allocator, per connection"
                tell(f"tlsprof: OpenSSL in {copy['path']} ({copy['kind']}): {how}", file=file)

    session.on_snapshot.append(on_snapshot)


def stripped_copy_note(pid) -> str | None:
    """One sentence when the process carries OpenSSL linked statically without any symbol: nothing
    of it can be hooked, given an allocator, or walked (tests/integration/test_static_openssl.py)."""
    from tlsprof.collect.inject.target_facts import _maps, _stripped_openssl

    try:
        path = _stripped_openssl(pid, _maps(pid))
    except TlsprofError:
        return None
    if not path:
        return None
    return (
        f"OpenSSL in {path} (static, no symbols): linked statically and stripped (no SSL_new or "
        f"CRYPTO_set_mem_functions in .dynsym or .symtab): none of its memory or connections is seen"
    )


def announce_version(session: Session, file=sys.stderr):
    """One line, once, when the target's OpenSSL is not a version tlsprof was checked against."""
    told = []

    def on_snapshot(snap):
        note = None if told else unchecked_version_note(snap.openssl)
        if note:
            told.append(note)
            tell(f"tlsprof: {note}", file=file)

    session.on_snapshot.append(on_snapshot)


def static_unhooked(snap) -> list:
    """Statically linked OpenSSL copies whose allocations are tracked but whose entry points are
    not hooked: their bytes have no owner until the heap walk gives them one."""
    from tlsprof.analysis.report import openssl_copies

    return (
        [
            c
            for c in openssl_copies(snap)
            if c["kind"].startswith("static") and not c["per_connection"] and c["tracking"] == "mem-functions"
        ]
        if snap is not None
        else []
    )


def _walk_last_look(session: Session, found: dict, asked: bool = True) -> None:
    """The heap walk of the process holding most connections, with the observation it is compared
    with, into `found` ({"walk", "observation", "static"}): asked for (`--walk`), or because that
    process's OpenSSL is a static copy."""
    obs = session.last
    if obs is None:
        return
    pid = obs.pid
    path = session.sockets().get(pid)
    if path is None:
        return
    found["static"] = bool(static_unhooked(obs.snaps.get(pid)))
    if not (asked or found["static"]):
        return
    found["observation"] = obs.snaps.get(pid)
    try:
        found["walk"] = client.walk(path, maps_of=pid)
    except Exception as exc:  # noqa: BLE001 - a walk that fails must never lose the report
        found["walk"] = client.Walk(status="failed", reason=str(exc))
    tell(f"tlsprof: {walked.walk_sentence(found['walk'], mode='run')}")


def _merge_static_walk(report, found: dict):
    if len(report.get("processes") or []) > 1:
        report.setdefault("notes", []).append(
            "the heap walk of a static OpenSSL copy is merged into single-process reports only"
        )
        return
    if found.get("observation") is not None:
        walked.merge_static_run(report, found.get("walk"), found["observation"])


def _annotate_walk(report, found: dict):
    if len(report.get("processes") or []) > 1:
        report.setdefault("notes", []).append(
            "--walk: the walked bytes are set beside tracked ones in single-process reports only"
        )
        return
    if found.get("observation") is not None:
        walked.annotate_run(report, found.get("walk"), found["observation"])
