"""`tlsprof attach PID [-o FILE] [--duration S] [--interval S] [--at steady|peak|last] [--no-children]
[--live] [--metrics A:P]`

Loads the shim into a running process and each of its descendants that loads OpenSSL (nginx's
master and its workers; `--no-children`: PID alone) (tlsprof/collect/inject/: gdb, at a safe point),
collects until the duration is over, a stop signal (SIGINT/SIGTERM/SIGHUP/SIGQUIT), the live view's
quit, or the target's exit, detaches each process (every patched slot is restored and the targets run
on) and writes the report (`target.mode` = "attach"). From the start to the written report those
signals never kill tlsprof: one arriving during the injection, the detach or the writing ends the
session the same way. Children forked while attached inherit the shim and are followed.
Right after injecting, the shim walks the heap once (docs/heap-walk.md): contexts and connections
that predate the attach carry the bytes the walk found (`measured`: walked), the rest is tracked.
`--no-walk` skips it; then their earlier allocations are unknown and never presented as measured.
"""

import os
import resource
import sys
import time

import psutil

from tlsprof.collect import client, inject, jail, linkage, process_tree
from tlsprof.analysis import walked
from tlsprof.collect import channel_paths
from tlsprof.collect.channel_paths import socket_path
from tlsprof.errors import AttachError, ChannelError, NoOpenSSL, NoSuchProcess, TlsprofError, UsageError
from tlsprof.analysis.reports import ReportSource
from tlsprof.collect.collector import collect
from tlsprof.collect.target import Target
from tlsprof.commands.run import announce_version, emit_report, empty_report, tell
from tlsprof.analysis.moments import DEFAULT_MOMENT, MOMENTS
from tlsprof.collect.session import Session
from tlsprof.collect.shim import shim_path
from tlsprof.collect.stop_signals import StopSignals, signal_name


def prepare_parser(p):
    p.add_argument("pid", type=int, help="process id of the target")
    p.add_argument("-o", "--output", metavar="FILE", help="write the JSON report here (default: text on stderr)")
    from tlsprof.commands.run import add_pprof_arguments  # the same --pprof options as `run`

    add_pprof_arguments(p)
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="collect for S seconds, then report and detach (default: until Ctrl-C)",
    )
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between snapshots (default 1)")
    p.add_argument(
        "--at",
        choices=MOMENTS,
        default=DEFAULT_MOMENT,
        help="which moment the report describes: steady (default: the latest snapshot holding the "
        "most connections), peak (most live OpenSSL bytes) or last; all three are kept in -o FILE",
    )
    p.add_argument("--format", choices=("text", "json"), default=None, help="format without -o (default text)")
    p.add_argument("--timeout", type=float, default=20.0, metavar="S", help="give up attaching after S seconds")
    p.add_argument(
        "--no-children",
        action="store_true",
        help="attach to PID alone, not to its child processes (default: the whole tree)",
    )
    p.add_argument("--live", action="store_true", help="open the interactive live view (needs a terminal)")
    p.add_argument("--metrics", metavar="ADDR:PORT", help="serve Prometheus/OpenMetrics gauges while attached")
    p.add_argument(
        "--no-walk",
        action="store_true",
        help="skip the heap walk at attach (the memory that predates the attach stays unmeasured)",
    )


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
    if args.output:  # a report file that cannot be written is refused before anything touches the target
        from tlsprof.model.report_io import check_writable

        check_writable(args.output)
    if args.pprof:  # a directory that cannot be written is refused before anything touches the target
        from tlsprof.render.pprof import check_directory

        check_directory(args.pprof, args.pprof_keep)
    if args.metrics:  # a bad address is refused before anything touches the target
        from tlsprof.render.metrics import parse_address

        parse_address(args.metrics)
    # held until the report is written: a stop signal ends the session, but never skips the detach
    # (the targets would keep their hooks) or the report (tlsprof/collect/stop_signals.py)
    with StopSignals(hold_to_exit=True) as stops:
        return _attach(args, stops)


def _attach(args, stops: StopSignals) -> int:
    not_attached = []  # one sentence per process of the tree left out, for the report too
    lent = []  # task_room.LentRoom of each process whose RLIMIT_NPROC forbade tlsprof's tasks
    try:
        attached = _attach_tree(args, not_attached, lent)  # {pid: channel directory}
        channel_dir = attached[args.pid]
        # the memory that predates the attach, walked once right away (per process of a tree)
        walks = (
            {}
            if args.no_walk or stops.stopping
            else {pid: _walk(socket_path(directory, pid), pid) for pid, directory in attached.items()}
        )
        _wait_for_agents(lent, attached)
    finally:
        room_notes = _give_back(lent)
    session = Session(
        channel_dir,
        args.pid,
        _command_of(args.pid),
        mode="attach",
        follow_children=not args.no_children,
        tree_only=True,
    )
    session.channel_dirs = sorted(set(attached.values()), key=lambda d: d != channel_dir)
    source = ReportSource(session)
    if not (args.live and sys.stdout.isatty()):
        announce_version(session)
    target_died = False
    metrics = None
    profiles = None
    try:
        from tlsprof.commands.run import start_pprof

        profiles = start_pprof(source, args)
        if args.metrics:
            from tlsprof.render.metrics import start_metrics_server

            metrics = start_metrics_server(source, args.metrics)
        if args.live and sys.stdout.isatty() and not stops.stopping:
            from tlsprof.commands.live import run_live

            run_live(session, args.pid, args)
        else:
            _collect(session, args, stops)
        target_died = not _alive(args.pid)
    finally:
        if metrics is not None:
            metrics.stop()
        if profiles is not None:
            profiles.stop()
        if not _alive(args.pid):
            target_died = True
        for pid in sorted(set(attached) | set(session.sockets())):  # children forked meanwhile too
            if _alive(pid):
                _detach(pid, session.dir_of(pid) if pid in session.sockets() else attached.get(pid, channel_dir))
        jail.tidy(attached.values())
    notes = [f"{sentence} (its memory is not in this report)" for sentence in not_attached] + room_notes
    silent_note = linkage.silent_sentence(session.channel_dirs)
    if silent_note:
        notes.append(silent_note)
    if target_died:
        notes.append("the target exited while attached: this is the last snapshot taken before")
    if stops.received:
        names = ", ".join(dict.fromkeys(signal_name(s) for s in stops.received))
        notes.append(
            f"the session ended on {names} sent to tlsprof; the target was detached and runs on"
            if not target_died
            else f"tlsprof was signalled ({names})"
        )
    report = source.report(at=args.at, partial=target_died, notes=notes)
    if report is None:
        if not stops.stopping:
            raise ChannelError(f"pid {args.pid} gave no snapshot before the session ended")
        report = empty_report(
            args.pid,
            session.command,
            "attach",
            notes + ["no snapshot was taken: the session was stopped before the first one"],
        )
    elif walks:
        _merge_walks(report, walks, session.chosen().get(args.at) or session.last)
    _note_jailed_python(report, attached)
    emit_report(report, args, stream=sys.stdout if args.format == "json" else sys.stderr)
    return 0


def _note_jailed_python(report, attached) -> None:
    """A chrooted Python process cannot import what the Python agent needs (ctypes, json: outside
    its jail), so its connections are not joined to Python objects; say so rather than be silent."""
    if report.get("python"):
        return
    for pid, directory in attached.items():
        if os.path.dirname(directory) == channel_paths.BASE:
            continue
        try:
            exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        except OSError:
            continue
        if exe.startswith("python"):
            report.setdefault("notes", []).append(
                f"pid {pid} is a Python process in a chroot: the Python agent cannot import the modules it "
                f"needs there (ctypes, json), so its OpenSSL objects are not joined to Python objects"
            )


def _walk(sock_path, pid):
    """The heap walk, once, right after the inject: what predates the attach."""
    walk = None
    for attempt in range(3):
        try:
            walk = client.walk(sock_path, maps_of=pid)
            break
        except ChannelError as exc:
            # seen in rapid attach/detach cycles on Python targets: right after the inject, an answer
            # that was not the shim's (the previous Python agent's JSON); asking again got the walk
            walk = client.Walk(status="failed", reason=str(exc))
            time.sleep(0.2 * (attempt + 1))
    tell(f"tlsprof: {walked.walk_sentence(walk)}")
    return walk


def _merge_walks(report, walks, observation):
    """Walked bytes into the report of one process; a tree's report keeps per-process ids (PID:conn-N)
    the walk does not know yet, so it says so instead of merging."""
    snaps = observation.snaps if observation is not None else {}
    if len(report.get("processes") or []) > 1:
        report.setdefault("notes", []).append(
            f"the heap walk ran in {len(walks)} processes but is merged into single-process reports only: "
            "attach to one process (a worker, or --no-children) to see the bytes that predate the attach"
        )
        return
    pid, walk = (
        next(iter(walks.items())) if len(walks) == 1 else (report["target"]["pid"], walks.get(report["target"]["pid"]))
    )
    snap = snaps.get(pid) or next(iter(snaps.values()), None)
    if snap is not None:
        walked.merge_attach(report, walk, snap)


AGENT_START_WAIT_S = 3.0


def _wait_for_agents(lent, attached) -> None:
    """A Python process whose limit was raised keeps it so until its agent's thread runs (the shim
    starts it at the inject; that thread starts the agent's own): one refused would print a
    traceback on the target's stderr. Bounded: an agent that cannot start is the report's concern."""
    deadline = time.monotonic() + AGENT_START_WAIT_S
    for room in lent:
        if room.pid not in attached or not process_tree.runs_python(room.pid):
            continue
        path = channel_paths.agent_socket_path(attached[room.pid], room.pid)
        while not os.path.exists(path) and time.monotonic() < deadline and _alive(room.pid):
            time.sleep(0.05)


def _give_back(lent) -> list:
    """Each lent RLIMIT_NPROC set back to what it was; -> one sentence each, for the report."""
    notes = []
    for room in lent:
        before = room.before
        room.give_back()
        shown = "unlimited" if before[0] == resource.RLIM_INFINITY else str(before[0])
        notes.append(
            f"pid {room.pid} forbids itself new tasks (RLIMIT_NPROC {shown}): tlsprof raised that limit "
            f"for the {room.held_s:.1f} s of its attach (the shim's thread, the heap walk's process) and set it "
            f"back"
        )
        tell(f"tlsprof: note: {notes[-1]}")
    return notes


def _attach_tree(args, not_attached: list, lent: list) -> dict:
    """Inject into PID, then into each descendant that loads OpenSSL (unless --no-children).
    PID's own failure ends the command; a child's is one line on stderr (and a note in the report
    when it uses OpenSSL: `not_attached`) and the others go on."""
    attached = {}
    pids = [args.pid] if args.no_children else (process_tree.descendants(args.pid) or [args.pid])
    for pid in pids:
        try:
            attached[pid] = _attach_one(pid, args.timeout, lent)
        except (NoOpenSSL, NoSuchProcess) as exc:  # nothing of OpenSSL's is left out
            if pid == args.pid:
                raise
            tell(f"tlsprof: note: child {pid} not attached: {exc}")
        except TlsprofError as exc:
            if pid == args.pid:
                for done, directory in attached.items():
                    _detach(done, directory)
                jail.tidy(attached.values())
                raise
            not_attached.append(f"child {pid} not attached: {exc}")
            tell(f"tlsprof: note: {not_attached[-1]}")
    return attached


def _attach_one(pid, timeout, lent: list) -> str:
    """Inject the shim into one process; -> the channel directory it serves in. A process whose
    RLIMIT_NPROC forbids new tasks is lent room (task_room.py), appended to `lent`."""
    try:
        info = inject.preflight(pid)
    except AttachError as exc:
        if "already attached" in str(exc):  # its shim answers: say whose session it is, if one is
            tracker = _tracked_elsewhere(pid)
            if tracker is not None:
                raise AttachError(_already_tracked(pid, tracker)) from None
        raise
    tracker = _tracked_elsewhere(pid) if info.shim_mapped else None
    if tracker is not None:
        raise AttachError(_already_tracked(pid, tracker))
    for warning in info.warnings:
        tell(f"tlsprof: note: {warning}")
    if info.needs_room:
        room = inject.task_room.LentRoom(pid)
        try:
            room.lend()
        except OSError as exc:
            raise AttachError(f"{info.needs_room}; tlsprof could not raise it: {exc.strerror or exc}") from None
        lent.append(room)
    channel_dir = jail.channel_dir(pid, info.uid, create=True)
    started = time.monotonic()
    try:
        inject.inject(pid, shim_path(), channel_dir, timeout=timeout)
    except AttachError as exc:
        if "already attached" in str(exc):  # the shim is there, started by someone else
            raise AttachError(_already_tracked(pid, _tracked_elsewhere(pid) or "")) from None
        raise
    tell(f"tlsprof: attached to pid {pid} in {time.monotonic() - started:.1f}s")
    return channel_dir


def _tracked_elsewhere(pid):
    """The tlsprof session that already tracks `pid` ("pid N: tlsprof run …") when one of its
    ancestors is a tlsprof (`run` preloads the shim, inherited by the whole tree); "" when its
    environment names another session's channel that serves it but no such ancestor is found; None
    when neither (nginx's workers drop the environment, hence the ancestors first)."""
    try:
        for parent in psutil.Process(pid).parents():
            cmd = parent.cmdline()
            if any(os.path.basename(part) == "tlsprof" for part in cmd[:3]):
                return f"pid {parent.pid}: {' '.join(cmd)[:80]}"
    except psutil.Error:
        pass
    try:
        env = process_tree.environment_of(pid)
    except OSError:
        return None
    directory = env.get(b"TLSPROF_DIR", b"").decode(errors="replace")
    if directory and os.path.exists(socket_path(directory, pid)):
        return ""
    return None


def _already_tracked(pid, tracker) -> str:
    who = f" ({tracker})" if tracker else ""
    return (
        f"pid {pid} is already profiled by another tlsprof session{who}; its report covers this "
        f"process, so stop that session or read its report instead"
    )


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
    """Until a stop signal, --duration, or the target's exit; then one last look while it runs."""
    until = time.monotonic() + args.duration if args.duration else None
    collect(session, Target(args.pid, is_alive=lambda: _alive(args.pid)), args.interval, stops, until=until)
