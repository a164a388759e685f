# The script gdb runs inside the target (`gdb -p PID`), in gdb's own Python: it is not a module of
# tlsprof and is never imported here. tlsprof/collect/inject/gdb.py reads this file and hands it to
# gdb in the environment (TLSPROF_GDB_SCRIPT), so nothing is written to disk during an attach.
# Its parameters arrive as JSON in TLSPROF_GDB_PARAMS; it reports with `TLSPROF-GDB {json}` lines.
import gdb
import json
import os
import subprocess
import time

P = json.loads(os.environ["TLSPROF_GDB_PARAMS"])
# poll, select, pause, nanosleep, accept, rt_sigtimedwait, rt_sigsuspend, clock_nanosleep,
# epoll_wait, pselect6, ppoll, epoll_pwait, accept4, epoll_pwait2
WAIT_SYSCALLS = {7, 23, 34, 35, 43, 128, 130, 230, 232, 270, 271, 281, 288, 441}
# libc entry points that block in the kernel holding no libc-internal lock (malloc's, the
# loader's, stdio's, the atfork or setxid locks): the program called them directly.
ENTRY_OK = set(
    """read readv pread pread64 preadv preadv2 write writev pwrite pwrite64 recv recvfrom
    recvmsg recvmmsg send sendto sendmsg sendmmsg accept accept4 connect poll ppoll select pselect
    epoll_wait epoll_pwait epoll_pwait2 nanosleep clock_nanosleep sleep usleep pause sigsuspend
    sigwait sigwaitinfo sigtimedwait wait waitpid wait3 wait4 waitid pthread_cond_wait
    pthread_cond_timedwait pthread_cond_clockwait pthread_mutex_lock pthread_mutex_timedlock
    pthread_mutex_clocklock pthread_rwlock_rdlock pthread_rwlock_wrlock
    pthread_rwlock_timedrdlock pthread_rwlock_timedwrlock pthread_rwlock_clockrdlock
    pthread_rwlock_clockwrlock pthread_join pthread_timedjoin_np pthread_clockjoin_np
    pthread_clockjoin_ex pthread_barrier_wait sem_wait sem_timedwait sem_clockwait
    sem_wait_slow msgrcv msgsnd semop semtimedop mq_receive mq_timedreceive mq_send
    mq_timedsend flock lockf fcntl ioctl syscall io_getevents""".split()
)
FUTEX = 202
HOLDS_LOCK_OVER_CALLBACK = {
    "dl_iterate_phdr",
    "dlopen",
    "dlclose",
    "dlsym",
    "dladdr",
    "fork",
    "system",
    "popen",
    "malloc",
    "free",
    "realloc",
    "calloc",
}
BREAK_AT = ["malloc", "calloc", "realloc", "free", "CRYPTO_malloc", "CRYPTO_zalloc", "CRYPTO_free"]
state = {"exited": False, "stop": None}


def emit(**kw):
    gdb.write("TLSPROF-GDB " + json.dumps(kw) + "\n")
    gdb.flush()


def run(cmd):
    return gdb.execute(cmd, to_string=True)


def value(expr):
    return int(gdb.parse_and_eval(expr))


def cstr(s):
    return json.dumps(s)


def on_exit(ev):
    state["exited"] = True


def on_stop(ev):
    state["stop"] = ev


gdb.events.exited.connect(on_exit)
gdb.events.stop.connect(on_stop)


def frames_ok(frame):
    """No signal-handler frame and no frame inside the dynamic loader."""
    f, depth = frame, 0
    while f is not None and depth < 40:
        if f.type() == gdb.SIGTRAMP_FRAME:
            return False
        lib = gdb.solib_name(f.pc()) or ""
        if "/ld-linux" in lib or "/ld-musl" in lib:
            return False
        try:
            f = f.older()
        except gdb.error:
            break
        depth += 1
    return True


def in_libc(pc):
    lib = gdb.solib_name(pc) or ""
    return "/libc.so" in lib or "/libc-" in lib or "/libpthread" in lib


def in_openssl(pc):
    lib = os.path.basename(gdb.solib_name(pc) or "")
    return lib.startswith(("libssl.so", "libcrypto.so"))


def plain_name(name):
    """libc's entry point as the caller wrote it: __GI___libc_read, __read -> read;
    ___pthread_cond_timedwait64 -> pthread_cond_timedwait; __new_sem_wait -> sem_wait."""
    if not name:
        return ""
    name = name.split("@")[0]
    changed = True
    while changed:
        changed = False
        for prefix in ("__GI_", "_", "libc_", "new_", "GI_", "IO_"):
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    if name.endswith("64") and name[:-2] in ENTRY_OK:
        name = name[:-2]
    return name


def syscall_name(nr):
    return P["syscalls"].get(str(nr), "syscall %d" % nr)


def describe_thread(inf, th):
    """(kind, facts): kind "wait" = parked in one of the classic wait syscalls, "entry" = blocked
    in any syscall entered from a libc function that holds no libc lock while it blocks (or from
    outside libc), "unsafe" = anything else; facts say which call and why, for the user."""
    th.switch()
    frame = gdb.newest_frame()
    facts = {"tid": th.ptid[1]}
    nr = value("$orig_rax")
    if nr < 0 or bytes(inf.read_memory(frame.pc() - 2, 2)) != b"\x0f\x05":
        facts["why"] = "running"
        return "unsafe", facts
    facts["syscall"] = syscall_name(nr)
    if not frames_ok(frame):
        facts["why"] = "in a signal handler or the dynamic loader"
        return "unsafe", facts
    if nr in WAIT_SYSCALLS:
        return "wait", facts
    # walk out to the first frame outside libc: the libc function the program called
    entry, f, depth, outer = None, frame, 0, None
    while f is not None and depth < 64:
        if not in_libc(f.pc()):
            outer = f
            break
        entry = f
        try:
            f = f.older()
        except gdb.error:
            f = None
        depth += 1
    if outer is None:
        facts["why"] = "stack not unwound"
        return "unsafe", facts
    name = plain_name(entry.name()) if entry is not None else ""
    facts["via"] = name or "(outside libc)"
    if entry is not None and name not in ENTRY_OK:
        facts["why"] = "may hold a libc lock"
        return "unsafe", facts
    # further out, a libc function that holds a lock across a callback (dl_iterate_phdr, ...),
    # or OpenSSL waiting for one of its locks: it may hold another that our calls would take
    while f is not None and depth < 64:
        if in_libc(f.pc()) and plain_name(f.name()) in HOLDS_LOCK_OVER_CALLBACK:
            facts["why"] = "called back from %s, which holds a lock" % plain_name(f.name())
            return "unsafe", facts
        if nr == FUTEX and in_openssl(f.pc()):
            facts["why"] = "waits for a lock inside OpenSSL"
            return "unsafe", facts
        try:
            f = f.older()
        except gdb.error:
            break
        depth += 1
    return "entry", facts


def blocked_thread(inf):
    """A thread to call from, or None; every thread's state is reported either way."""
    threads = sorted(inf.threads(), key=lambda t: (t.ptid[1] != inf.pid, t.ptid[1]))
    best, seen = {}, []
    for th in threads:
        try:
            kind, facts = describe_thread(inf, th)
        except (gdb.error, gdb.MemoryError) as exc:
            kind, facts = "unsafe", {"tid": th.ptid[1], "why": str(exc).splitlines()[0][:60]}
        seen.append(facts)
        best.setdefault(kind, (th, facts))
    emit(stage="threads", threads=seen)
    for kind in ("wait", "entry"):
        if kind in best:
            th, facts = best[kind]
            emit(stage="safe-point", how="syscall", syscall=facts.get("syscall"), via=facts.get("via"), tid=th.ptid[1])
            return th
    return None


def queue_python_pending_call(inf, bps):
    """Python target: make the eval loop call PyCallable_Check soon, and break there.

    Py_AddPendingCall is called on a thread parked in any syscall (a call boundary, where our
    GPR-only call is sound; it takes no libc lock); without such a thread we rely on allocators.
    """
    try:
        add = value("(long)&Py_AddPendingCall")
        check = value("(long)&PyCallable_Check")
    except gdb.error:
        return
    for th in inf.threads():
        try:
            th.switch()
            if value("$orig_rax") < 0:
                continue
            if bytes(inf.read_memory(gdb.newest_frame().pc() - 2, 2)) != b"\x0f\x05":
                continue
            bps.append(gdb.Breakpoint("*0x%x" % check, internal=True))
            call(th, add, [check, 0], None)
            emit(stage="pending-call", tid=th.ptid[1])
            return
        except (gdb.error, gdb.MemoryError, CallFailed):
            continue


def wait_at_breakpoint(inf):
    bps = []
    for name in BREAK_AT:
        try:  # the function's entry only, not inlined copies that debug info may list
            bps.append(gdb.Breakpoint("*0x%x" % value("(long)&" + name), internal=True))
        except gdb.error:
            pass
    queue_python_pending_call(inf, bps)
    if not bps:
        emit(result="no-safe-point", why="no allocator symbols")
        return None
    deadline = time.monotonic() + P["wait"]
    # The wake-up comes from a separate process: gdb holds the GIL while `continue` runs, so a
    # Python thread here would never get to send it.
    waker = subprocess.Popen(
        ["/bin/sh", "-c", "sleep %.1f; kill -URG %d" % (P["wait"], inf.pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run("handle SIGURG stop print nopass")  # noprint would imply nostop
    found = None
    try:
        emit(stage="waiting", breakpoints=len(bps))
        while True:
            state["stop"] = None
            try:
                run("continue")
            except gdb.error as exc:
                if state["exited"] or not inf.pid:
                    break
                emit(stage="continue-error", msg=str(exc))
                break
            if state["exited"] or not inf.pid:
                break
            ev = state["stop"]
            if isinstance(ev, gdb.BreakpointEvent):
                th = gdb.selected_thread()
                if frames_ok(gdb.newest_frame()):
                    emit(stage="safe-point", how="breakpoint", function=str(ev.breakpoints[0].location), tid=th.ptid[1])
                    found = th
                    break
            elif isinstance(ev, gdb.SignalEvent) and ev.stop_signal == "SIGURG" and time.monotonic() >= deadline:
                break
            if time.monotonic() >= deadline:
                break
    finally:
        try:
            waker.kill()
            waker.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for bp in bps:
            try:
                bp.delete()
            except (gdb.error, RuntimeError):
                pass
        if not state["exited"] and inf.pid:
            run("handle SIGURG nostop noprint pass")
    if state["exited"] or not inf.pid:
        emit(result="exited")
        return None
    if found is None:
        emit(result="no-safe-point", wait=P["wait"])
    return found


GREGS = [
    "rax",
    "rbx",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "rbp",
    "rsp",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
    "rip",
    "eflags",
]
ARG_REGS = ["rdi", "rsi", "rdx", "rcx", "r8", "r9"]


class CallFailed(Exception):
    pass


class Exited(Exception):
    pass


def entry_point(pid):
    with open("/proc/%d/auxv" % pid, "rb") as f:
        data = f.read()
    for i in range(0, len(data) - 15, 16):
        key = int.from_bytes(data[i : i + 8], "little")
        if key == 9:  # AT_ENTRY
            return int.from_bytes(data[i + 8 : i + 16], "little")
    raise CallFailed("no AT_ENTRY in auxv")


def setreg(reg, v):
    # Writing a register re-selects a frame by id; always write frame 0's registers.
    gdb.newest_frame().select()
    run("set $%s = %d" % (reg, v))


def call(th, addr, args, deadline):
    """Call addr(*args) on thread th by hand, general-purpose registers only.

    gdb's own `call` saves and restores the whole xstate; gdb 13 fails to write it back on CPUs
    with AMX ("Couldn't write extended state status"), leaving the target corrupt. At our safe
    points (a syscall in a libc wrapper, or the first instruction of a function) every vector
    register is caller-saved under the SysV ABI, so saving and restoring the GPRs is enough.
    String arguments (bytes) are copied below the thread's red zone.
    """
    inf = gdb.selected_inferior()
    th.switch()
    gdb.newest_frame().select()
    saved = {r: value("$" + r) for r in GREGS}
    saved_orig = value("$orig_rax")
    top = (saved["rsp"] - 256) & ~0xF
    ints = []
    for a in args:
        if isinstance(a, bytes):
            top = (top - len(a) - 1) & ~0xF
            inf.write_memory(top, a + b"\0")
            ints.append(top)
        else:
            ints.append(int(a))
    ret_addr = P["_entry"]
    sp = ((top - 64) & ~0xF) - 8
    inf.write_memory(sp, ret_addr.to_bytes(8, "little"))
    bp = gdb.Breakpoint("*0x%x" % ret_addr, internal=True)
    try:
        setreg("orig_rax", -1)  # no syscall restart may rewind our new rip
        for reg, v in zip(ARG_REGS, ints):
            setreg(reg, v)
        setreg("rax", 0)
        setreg("rsp", sp)
        setreg("rip", addr)
        while True:
            state["stop"] = None
            try:
                run("continue")
            except gdb.error as exc:
                if state["exited"] or not inf.pid:
                    raise Exited() from None
                raise CallFailed(str(exc)) from None
            if state["exited"] or not inf.pid:
                raise Exited()
            ev = state["stop"]
            cur = gdb.selected_thread()
            if isinstance(ev, gdb.BreakpointEvent) and bp in ev.breakpoints and cur.ptid == th.ptid:
                return value("$rax") & 0xFFFFFFFFFFFFFFFF
            if isinstance(ev, gdb.SignalEvent) and cur.ptid == th.ptid:
                run("handle %s nopass" % ev.stop_signal)  # do not deliver our crash on detach
                raise CallFailed("the target got %s while in the called function" % ev.stop_signal)
    finally:
        try:
            bp.delete()
        except (gdb.error, RuntimeError):
            pass
        if not state["exited"] and inf.pid:
            th.switch()
            for r in GREGS:
                setreg(r, saved[r])
            setreg("orig_rax", saved_orig)


def act(th):
    path, mode = P["shim"].encode(), P["mode"]
    dlopen = value("(long)&dlopen")
    dlsym = value("(long)&dlsym")
    dlerror = value("(long)&dlerror")
    deadline = time.monotonic() + P["wait"]
    flags = P["rtld_now"] if mode == "start" else P["rtld_now"] | P["rtld_noload"]
    handle = call(th, dlopen, [path, flags], deadline)
    if not handle:
        msg = "unknown dlopen error"
        err = call(th, dlerror, [], deadline)
        if err:
            try:
                msg = gdb.selected_inferior().read_memory(err, 512).tobytes().split(b"\0")[0]
                msg = msg.decode(errors="replace")
            except gdb.MemoryError:
                pass
        emit(result="not-loaded" if mode == "stop" else "dlopen-failed", error=msg)
        return
    entry = "tlsprof_start" if mode == "start" else "tlsprof_stop"
    sym = call(th, dlsym, [handle, entry.encode()], deadline)
    if not sym:
        emit(result="no-entry", entry=entry)
        return
    if mode == "start":
        rc = call(th, sym, [P["channel_dir"].encode()], deadline)
    else:
        rc = call(th, sym, [], deadline)
    rc &= 0xFFFFFFFF  # the C int in eax, sign-extended by hand
    emit(result="called", entry=entry, rc=rc - (1 << 32) if rc & 0x80000000 else rc)


def main():
    inf = gdb.selected_inferior()
    if inf is None or not inf.pid:
        emit(result="not-attached")
        return
    emit(stage="attached", threads=len(inf.threads()))
    P["_entry"] = entry_point(inf.pid)
    th = blocked_thread(inf)
    if th is None:
        th = wait_at_breakpoint(inf)
        if th is None:
            return
    th.switch()
    try:
        act(th)
    except Exited:
        emit(result="exited")
    except (CallFailed, gdb.error, gdb.MemoryError) as exc:
        if state["exited"] or not inf.pid:
            emit(result="exited")
        else:
            emit(result="call-failed", error=str(exc).splitlines()[0] if str(exc) else "?")


try:
    main()
except Exception as exc:
    emit(result="script-error", error="%s: %s" % (type(exc).__name__, exc))
finally:
    inf = gdb.selected_inferior()
    if inf is not None and inf.pid and not state["exited"]:
        try:
            run("detach")
            emit(stage="detached")
        except gdb.error as exc:
            emit(stage="detach-failed", error=str(exc))
