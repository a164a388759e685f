"""Runs tlsprof/collect/inject/gdb_script.py in gdb against a pid, reads its records back, and never
leaves the target stopped."""

import json
import os
import signal
import subprocess
import threading
import time

from tlsprof.errors import AccessDenied, AttachError, NoSuchProcess
from importlib import resources

from tlsprof.collect.inject.target_facts import _alive, _ptrace_hint, _state, _status, gdb_path


def _gdb_script() -> str:
    """The script's text, from the package (an installed or editable tlsprof alike)."""
    return resources.files(__package__).joinpath("gdb_script.py").read_text()


def _run_gdb(pid: int, params: dict, timeout: float, on_stage=None) -> tuple[list, str]:
    """Run the gdb script against `pid`; return (TLSPROF-GDB records, gdb's whole output)."""
    gdb = gdb_path()
    # the script travels in the environment: nothing is written, so a read-only or full /tmp
    # cannot stop an attach or a detach half-way
    env = dict(
        os.environ,
        TLSPROF_GDB_PARAMS=json.dumps(params),
        TLSPROF_GDB_SCRIPT=_gdb_script(),
        DEBUGINFOD_URLS="",
        LC_ALL="C",
        LANG="C",
    )
    cmd = [
        gdb,
        "-nx",
        "-nw",
        "-q",
        "-batch",
        "-iex",
        "set debuginfod enabled off",
        "-iex",
        "set pagination off",
        "-iex",
        "set confirm off",
        "-iex",
        "set breakpoint pending off",
        "-iex",
        "set auto-load off",
        "-p",
        str(pid),
        "-ex",
        "python exec(__import__('os').environ['TLSPROF_GDB_SCRIPT'])",
    ]
    was_stopped = _state(pid) in ("T", "t")
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=env,
        start_new_session=True,
    )
    records, lines = [], []

    def reader():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("TLSPROF-GDB "):
                try:
                    rec = json.loads(line[len("TLSPROF-GDB ") :])
                except ValueError:
                    continue
                records.append(rec)
                if on_stage and "stage" in rec:
                    try:
                        on_stage(rec["stage"])
                    except Exception:
                        pass

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        # SIGINT first: gdb interrupts the target, our script removes its breakpoints and
        # detaches; SIGTERM/SIGKILL may leave int3 bytes behind.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            try:
                proc.send_signal(sig)
                proc.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
    t.join(timeout=5)
    _ensure_running(pid, was_stopped)
    if timed_out:
        records.append({"result": "gdb-timeout"})
    return records, "".join(lines)


def _ensure_running(pid: int, was_stopped: bool) -> None:
    """Never leave the target stopped: wait for the tracer to let go, SIGCONT if it is stuck."""
    for i in range(50):
        st = _state(pid)
        if st is None:
            return
        try:
            tracer = int(_status(pid).get("TracerPid", "0") or 0)
        except OSError:
            return
        if st not in ("T", "t") and not tracer:
            return
        if was_stopped and not tracer:
            return
        if i >= 10 and not tracer:
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                return
        time.sleep(0.1)


def _threads(records: list) -> list:
    for rec in records:
        if rec.get("stage") == "threads":
            return rec.get("threads") or []
    return []


def _result(records: list) -> dict:
    for rec in reversed(records):
        if "result" in rec:
            return rec
    return {}


def _gdb_failure(pid: int, output: str, what: str) -> Exception:
    """An error for a gdb run that produced no result of ours."""
    if "ptrace: Operation not permitted" in output:
        if not _alive(pid):
            return NoSuchProcess(pid)
        return AccessDenied(pid, f"not permitted to ptrace pid {pid}: {_ptrace_hint(pid)}")
    if "ptrace: No such process" in output or not _alive(pid):
        return AttachError(f"pid {pid} exited during {what}") if "attached" in output else NoSuchProcess(pid)
    last = [ln.strip() for ln in output.splitlines() if ln.strip() and not ln.startswith("TLSPROF-GDB")]
    detail = last[-1] if last else "no output"
    return AttachError(f"gdb could not {what} pid {pid}: {detail}")
