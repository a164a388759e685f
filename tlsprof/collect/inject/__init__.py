"""Get the shim into a running process, and out again: preflight checks, gdb injection, eject.

How `inject` reaches a safe point
---------------------------------
gdb (batch mode, system gdb, our own gdb-Python script) attaches, which stops every thread. Calling
`dlopen` in a thread that was stopped at a random instruction is what makes naive injection crash:
the thread may be inside malloc holding an arena lock, or inside the dynamic loader. We call only
from one of two kinds of stop, in this order:

1. A thread parked in a system call (the PC just after a `syscall` instruction, `$orig_rax` names
   the call), in this order of preference:
   a. a classic wait: `epoll_wait/epoll_pwait(2)`, `poll/ppoll`, `select/pselect6`,
      `accept/accept4`, `nanosleep/clock_nanosleep`, `pause`, `rt_sigsuspend`, `rt_sigtimedwait`.
      glibc never makes these calls while holding malloc's or the loader's locks. asyncio, nginx
      and node wait in epoll_wait, `openssl s_server` in select, a threaded Python server in
      poll/accept.
   b. any other call (`read`, `recv*`, `futex`, `wait4`, `sigwait`, …) when the libc function the
      program called to get there (the outermost libc frame, found by unwinding to the first
      frame outside libc) is one that holds no libc-internal lock while it blocks: the plain
      syscall wrappers, `pthread_cond_wait`, `pthread_mutex_lock`, `sem_wait`, `pthread_join`,
      `sleep`, `waitpid`, `sigwait` … (ENTRY_OK in the script), and no libc frame further out runs
      callbacks under a lock (`dl_iterate_phdr`, `fork`, `system`, malloc). A raw `syscall`
      instruction outside libc qualifies too. So `openssl s_server -rev` or an HTTPS client
      waiting for its response in read(), or a Python thread waiting for the GIL, is a safe
      point; `fgets` (stdin's lock held around read()), `system()` (waits under a lock), malloc
      waiting for an arena lock, and anything whose stack cannot be unwound are not.
   A thread that is inside a signal handler or has a frame inside ld.so is never used. The kernel
   restarts the interrupted call: the script sets `$orig_rax = -1` for its own calls and puts the
   saved `$orig_rax` and `$rax` (-ERESTARTSYS and friends) back afterwards, so on resume the kernel
   rewinds the PC onto the `syscall` instruction as after any debugger stop (calls the kernel
   never restarts, e.g. epoll_wait, return EINTR, which their callers handle). heaptrack calls
   `__libc_dlopen_mode` wherever the process stopped; memray waits for an allocator or a Python
   pending call; blocked threads are what an idle server offers, so we use them first.
2. Otherwise (every thread busy, or waiting in one of the excluded calls) breakpoints on allocator
   entries (`malloc/calloc/realloc/free`, OpenSSL's `CRYPTO_malloc/zalloc/free`): at the first
   instruction of an allocator the thread has not taken the allocator's lock yet (memray's choice).
   For a Python target we also queue `Py_AddPendingCall(PyCallable_Check, NULL)` and break on
   `PyCallable_Check`, so a pure-Python busy loop (pymalloc rarely calls malloc) runs into a
   breakpoint with the GIL held, outside any libc lock. The wait is bounded: a timer in gdb sends the
   target one SIGURG (configured `nopass` in gdb, so the application never sees it) to end it, and
   we report "no safe point" with the call each thread is in ("thread 812 in read via fgets (may
   hold a libc lock)").

At the safe point the script deletes all breakpoints, calls `dlopen(shim, RTLD_NOW)`, resolves
`tlsprof_start` with `dlsym` on that handle (no symbol loading of the shim needed) and calls it,
then detaches. The calls are made by hand (registers, a return address on the stack pointing at a
breakpoint on the executable's entry point, `continue`, restore), not with gdb's `call`: gdb 13's
`call` fails on CPUs with AMX ("Couldn't write extended state status: Bad address", seen on this
machine) and then leaves a syscall returning -516 to the target. Restoring only the general
registers is sound at our safe points, where every vector register is caller-saved. A signal in
the called function is reported, not delivered.

Never left stopped: gdb gets a hard deadline (SIGTERM, then SIGKILL); afterwards, if the target is
left in a stopped state it did not have before, it gets SIGCONT, and we check it is alive and
untraced. A gdb killed while its breakpoints were inserted can leave int3 bytes behind; the
in-gdb timer ends the wait long before the hard deadline so this is only a last resort.

`eject` asks the shim over its socket ("DETACH") and falls back to gdb calling `tlsprof_stop()`
(found with `dlopen(RTLD_NOLOAD)` + `dlsym`) at a safe point chosen the same way.
"""

import os
import time

from tlsprof.collect import client, jail, shim_copy
from tlsprof.collect.channel_paths import socket_path
from tlsprof.errors import AttachError, ChannelError, NoOpenSSL, NoSuchProcess
from tlsprof.collect.inject import task_room
from tlsprof.collect.inject.gdb import _gdb_failure, _result, _run_gdb, _threads
from tlsprof.collect.inject.target_facts import (
    RTLD_NOLOAD,
    RTLD_NOW,
    TargetInfo,
    _alive,
    _check_permission,
    _find_shim,
    _maps,
    _static_openssl,
    _status,
    _stripped_openssl,
    gdb_path,
    syscall_names,
    threads_forbidden,
    threads_sentence,
)


# ----------------------------------------------------------------------------- channel


def ping(pid: int, channel_dir: str, timeout: float = 2.0) -> bool:
    """True if the shim in `pid` answers PING with its pid."""
    return client.answers_ping(socket_path(channel_dir, pid), pid, timeout)


# ----------------------------------------------------------------------------- preflight


def _default_shim() -> str:
    from tlsprof.collect.shim import shim_path

    return shim_path()


def preflight(pid: int, shim_path: str | None = None, channel_dir: str | None = None) -> TargetInfo:
    """Check that `pid` can be attached; return what we learned. Raises one typed error if not."""
    pid = int(pid)
    if pid <= 0 or not os.path.exists(f"/proc/{pid}") or not _alive(pid):
        raise NoSuchProcess(pid)
    try:
        status = _status(pid)
    except FileNotFoundError:
        raise NoSuchProcess(pid) from None
    if pid == os.getpid():
        raise AttachError("tlsprof cannot attach to itself")
    _check_permission(pid, status)
    forbidden = threads_forbidden(pid, status)
    if forbidden and not task_room.can_lend():
        raise AttachError(
            f"{forbidden}; tlsprof with CAP_SYS_RESOURCE (root, outside a container that drops it) "
            f"raises that limit for the attach, and where the program sets it itself after it starts "
            f"(HAProxy), `tlsprof run -- COMMAND` profiles it: the shim's thread comes first"
        )

    uid = int(status.get("Uid", "0").split()[0])
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = ""
    info = TargetInfo(
        pid=pid,
        uid=uid,
        comm=status.get("Name", "?"),
        exe=exe,
        channel_dir=channel_dir or jail.channel_dir(pid, uid, create=False),
        needs_room=forbidden,
    )
    maps = _maps(pid)
    for _perms, path in maps:
        base = os.path.basename(path)
        if base.startswith("libssl.so") and not info.libssl:
            info.libssl = path
        elif base.startswith("libcrypto.so") and not info.libcrypto:
            info.libcrypto = path
        elif base.startswith("libpython") or "python" in os.path.basename(exe):
            info.is_python = True
    info.static_openssl = _static_openssl(pid, maps)
    for path, how in info.static_openssl:
        info.warnings.append(_static_sentence(path, how))

    if not (info.libssl or info.libcrypto or info.static_openssl):
        stripped = _stripped_openssl(pid, maps)
        if stripped:
            raise NoOpenSSL(
                f"pid {pid} ({info.comm}): {stripped} links OpenSSL statically without symbols "
                f"(no SSL_new in .dynsym or .symtab): its contexts and connections cannot be "
                f"found, and after an attach none of its memory is seen"
            )
        raise NoOpenSSL(
            f"pid {pid} ({info.comm}) has no libssl/libcrypto loaded: it does not use a shared OpenSSL (yet)"
        )

    if shim_path is None:
        try:
            shim_path = _default_shim()
        except Exception:
            shim_path = None
    info.shim_mapped = _find_shim(maps, shim_path)
    if info.shim_mapped and ping(pid, info.channel_dir):
        raise AttachError(
            f"pid {pid} is already attached (tlsprof's socket "
            f"{socket_path(info.channel_dir, pid)} answers); "
            f"use `tlsprof detach {pid}` first"
        )
    gdb_path()
    return info


def _static_sentence(path: str, how: str) -> str:
    where = "exports" if how == "exports" else "has as a local .symtab symbol"
    return (
        f"{path} {where} CRYPTO_malloc: a statically linked OpenSSL copy; its contexts and "
        f"connections are measured by the heap walk (what it allocates after the attach is not tracked)"
    )


def inject(
    pid: int, shim_path: str, channel_dir: str, timeout: float = 20, on_stage=None, wait_ready: bool = True
) -> None:
    """Load `shim_path` into `pid` at a safe point and call tlsprof_start(channel_dir).

    Returns once the shim's socket answers PING (unless wait_ready is False). A target that cannot
    read `shim_path` gets a copy it can (tlsprof/collect/shim_copy.py). Raises NoSuchProcess, AccessDenied,
    ToolMissing, ShimNotLoadable, AttachError or ChannelError with a one-line message. `on_stage` is
    called with each progress stage of the gdb script ("attached", "waiting", "safe-point",
    "detached"), from a reader thread.
    """
    pid = int(pid)
    if not _alive(pid):
        raise NoSuchProcess(pid)
    shim_path = os.path.abspath(shim_path)
    if not os.path.isfile(shim_path):
        raise AttachError(f"shim library {shim_path} does not exist; reinstall tlsprof")
    gdb_path()
    start = time.monotonic()
    # a shim already loaded (preloaded by `run`, which loads the _shim_preload build) is the one to
    # start: dlopen of another file would load a second shim beside it
    mapped = _find_shim(_maps(pid), shim_path)
    if mapped and os.path.isfile(mapped):
        shim_path = mapped
    # the target opens the shim with its own credentials: give it a copy it can read if need be
    bundle = shim_copy.for_pid(pid, shim_path)
    try:
        shim_copy.check_same_view(pid, channel_dir)
        shim_path = bundle.shim
        params = {
            "mode": "start",
            # a chrooted target names both inside its jail (tlsprof/collect/jail.py)
            "shim": bundle.target_shim or shim_path,
            "channel_dir": jail.target_view(pid, channel_dir),
            "rtld_now": RTLD_NOW,
            "rtld_noload": RTLD_NOLOAD,
            "wait": max(1.0, timeout * 0.6 - 2),
            "syscalls": syscall_names(),
        }
        records, output = _run_gdb(pid, params, timeout, on_stage)
    finally:
        bundle.release()  # once mapped by the target, the copy stays until no process maps it
    res = _result(records)
    kind = res.get("result")
    if kind == "called":
        rc = res.get("rc")
        if rc == 1:
            raise AttachError(f"pid {pid} is already attached (tlsprof_start returned 1)")
        if rc != 0:
            raise AttachError(
                f"tlsprof_start returned {rc} in pid {pid}: the shim could not "
                f"install its hooks or open its socket in {channel_dir}"
            )
    elif kind == "exited" or (kind and not _alive(pid)):
        raise AttachError(f"pid {pid} exited during attach")
    elif kind == "dlopen-failed":
        raise AttachError(f"pid {pid} could not load the shim: {res.get('error')}")
    elif kind == "no-entry":
        raise AttachError(f"{shim_path} does not export {res.get('entry')}: not a tlsprof shim")
    elif kind == "no-safe-point":
        raise AttachError(
            f"no safe point in pid {pid} within {params['wait']:.0f}s: no thread was blocked in a "
            f"system call it can be interrupted in and none entered malloc ("
            f"{threads_sentence(_threads(records)) or 'no thread seen'}); retry, or raise --timeout"
        )
    elif kind == "call-failed":
        raise AttachError(f"calling into pid {pid} failed, target left as it was: {res.get('error')}")
    elif kind == "gdb-timeout":
        raise AttachError(
            f"gdb did not finish within {timeout:.0f}s; it was stopped and "
            f"pid {pid} {'resumed' if _alive(pid) else 'has exited'}"
        )
    elif kind == "script-error":
        raise AttachError(f"tlsprof's gdb script failed: {res.get('error')}")
    else:
        raise _gdb_failure(pid, output, "attach to")

    if not _alive(pid):
        raise AttachError(f"pid {pid} exited during attach")
    if not wait_ready:
        return
    sock = socket_path(channel_dir, pid)
    deadline = max(start + timeout, time.monotonic() + 5)
    while time.monotonic() < deadline:
        if ping(pid, channel_dir, timeout=2):
            return
        if not _alive(pid):
            raise AttachError(f"pid {pid} exited right after the shim started")
        time.sleep(0.05)
    raise ChannelError(f"the shim started in pid {pid} but its socket {sock} does not answer")


def eject(pid: int, channel_dir: str | None = None, shim_path: str | None = None, timeout: float = 20) -> str:
    """Remove tlsprof's hooks from `pid`. Returns "socket" or "gdb" (how it was done), or "inactive"
    (gdb found the shim loaded but already stopped: an earlier session detached it).

    Asks the shim with DETACH over its socket; if the socket does not answer, calls
    tlsprof_stop() in the target through gdb at a safe point.
    """
    pid = int(pid)
    if not _alive(pid):
        raise NoSuchProcess(pid)
    if channel_dir is None:
        channel_dir = jail.channel_dir(pid, int(_status(pid).get("Uid", "0").split()[0]), create=False)
    sock = socket_path(channel_dir, pid)
    try:
        answer = client.request(sock, "DETACH", timeout=min(10.0, timeout)).decode(errors="replace")
    except OSError:
        answer = None
    if answer is not None:
        if answer.strip() == "OK":
            return "socket"
        raise ChannelError(f"pid {pid} answered DETACH with {answer.strip()[:60]!r}, not OK")

    if shim_path is None:
        try:
            shim_path = _default_shim()
        except Exception:
            shim_path = None
    mapped = _find_shim(_maps(pid), shim_path)
    if not mapped:
        raise AttachError(f"tlsprof is not loaded in pid {pid}: nothing to detach")
    _check_permission(pid, _status(pid))
    params = {
        "mode": "stop",
        "shim": jail.target_view(pid, mapped),
        "channel_dir": jail.target_view(pid, channel_dir),
        "rtld_now": RTLD_NOW,
        "rtld_noload": RTLD_NOLOAD,
        "wait": max(1.0, timeout * 0.6 - 2),
        "syscalls": syscall_names(),
    }
    records, output = _run_gdb(pid, params, timeout)
    res = _result(records)
    kind = res.get("result")
    if kind == "called":
        return "inactive" if res.get("rc") == 1 else "gdb"
    if kind == "exited":
        raise AttachError(f"pid {pid} exited during detach")
    if kind == "not-loaded":
        raise AttachError(f"tlsprof is not loaded in pid {pid}: nothing to detach")
    if kind == "no-safe-point":
        raise AttachError(
            f"no safe point in pid {pid} within {params['wait']:.0f}s to call "
            f"tlsprof_stop ({threads_sentence(_threads(records)) or 'no thread seen'}); "
            f"retry"
        )
    if kind in ("call-failed", "script-error", "no-entry", "gdb-timeout"):
        raise AttachError(f"could not call tlsprof_stop in pid {pid}: {res.get('error') or res.get('entry') or kind}")
    raise _gdb_failure(pid, output, "detach from")
