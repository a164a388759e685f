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
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

from tlsprof.collect import shim_copy
from tlsprof.collect.channel_paths import channel_dir_path, socket_path
from tlsprof.errors import (AccessDenied, AttachError, ChannelError, NoOpenSSL, NoSuchProcess,
                            ToolMissing)

CAP_SYS_PTRACE = 19
RTLD_NOW = 0x2
RTLD_NOLOAD = 0x4
GDB_INSTALL_HINT = "gdb is required to attach; install it with `apt-get install gdb`"


@dataclass
class TargetInfo:
    pid: int
    uid: int
    comm: str
    exe: str
    libssl: str | None = None
    libcrypto: str | None = None
    is_python: bool = False
    # ELF objects in the target holding their own OpenSSL: (path, "exports"|"symtab") pairs.
    static_openssl: list = field(default_factory=list)
    shim_mapped: str | None = None   # path of a tlsprof shim already mapped in the target
    channel_dir: str = ""            # where the target's socket lives (not created by preflight)
    warnings: list = field(default_factory=list)


# ----------------------------------------------------------------------------- /proc helpers

def _read(path: str) -> str:
    with open(path, "r", errors="replace") as f:
        return f.read()


def _status(pid: int) -> dict:
    out = {}
    for line in _read(f"/proc/{pid}/status").splitlines():
        key, _, val = line.partition(":")
        out[key] = val.strip()
    return out


def _state(pid: int) -> str | None:
    """One-letter state from /proc/PID/stat, or None if the process is gone (or a zombie)."""
    try:
        stat = _read(f"/proc/{pid}/stat")
    except (FileNotFoundError, ProcessLookupError):
        return None
    st = stat[stat.rfind(")") + 2:stat.rfind(")") + 3]
    return None if st in ("Z", "X") else st


def _alive(pid: int) -> bool:
    return _state(pid) is not None


def _ptrace_scope() -> int | None:
    try:
        return int(_read("/proc/sys/kernel/yama/ptrace_scope").strip())
    except (OSError, ValueError):
        return None


def _have_cap_sys_ptrace() -> bool:
    try:
        return bool(int(_status(os.getpid()).get("CapEff", "0"), 16) >> CAP_SYS_PTRACE & 1)
    except ValueError:
        return False


def _ptrace_hint(pid: int) -> str:
    """Why ptrace of `pid` is (probably) refused and how to allow it: one sentence."""
    scope = _ptrace_scope()
    cap = _have_cap_sys_ptrace()
    if scope == 3:
        return ("kernel.yama.ptrace_scope=3 forbids all ptrace attach until reboot; "
                "tlsprof attach cannot work on this boot (use `tlsprof run` instead)")
    if scope == 2 and not cap:
        return ("kernel.yama.ptrace_scope=2 allows ptrace only with CAP_SYS_PTRACE; "
                "run tlsprof as root (or with CAP_SYS_PTRACE)")
    if scope == 1 and not cap:
        return ("kernel.yama.ptrace_scope=1 allows ptrace only of your own child processes; "
                "allow it with `sysctl kernel.yama.ptrace_scope=0` or run tlsprof as root / with "
                "CAP_SYS_PTRACE")
    if os.geteuid() == 0 and not cap:
        return ("root here lacks CAP_SYS_PTRACE (a container?); grant it "
                "(e.g. `docker run --cap-add SYS_PTRACE`)")
    return ("you most likely lack permission to trace it: run tlsprof as the process's user, "
            "as root, or with CAP_SYS_PTRACE")


def _check_permission(pid: int, status: dict) -> None:
    cap = _have_cap_sys_ptrace()
    uids = {int(x) for x in status.get("Uid", "").split()}
    gids = {int(x) for x in status.get("Gid", "").split()}
    me = os.getuid()
    # gdb attaches with PTRACE_MODE_ATTACH_REALCREDS: our real uid/gid must match all the target's
    same = uids == {me} and gids == {os.getgid()}
    if not (same or cap):
        owner = min(uids) if uids else "?"
        raise AccessDenied(pid, f"cannot trace pid {pid} (owned by uid {owner}, you are uid {me}): "
                                f"run tlsprof as that user, as root, or with CAP_SYS_PTRACE")
    scope = _ptrace_scope()
    if scope == 3 or (scope in (1, 2) and not cap):
        raise AccessDenied(pid, f"cannot trace pid {pid}: {_ptrace_hint(pid)}")
    tracer = int(status.get("TracerPid", "0") or 0)
    if tracer:
        raise AttachError(f"pid {pid} is already being traced by pid {tracer} (a debugger?); "
                          f"detach it first")


# ----------------------------------------------------------------------------- ELF scanning

def _maps(pid: int) -> list:
    """[(perms, path)] of the file-backed mappings of `pid`."""
    try:
        text = _read(f"/proc/{pid}/maps")
    except PermissionError:
        raise AccessDenied(pid, f"cannot read /proc/{pid}/maps: {_ptrace_hint(pid)}") from None
    except FileNotFoundError:
        raise NoSuchProcess(pid) from None
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/"):
            out.append((parts[1], parts[5].removesuffix(" (deleted)")))
    return out


def _elf_defines(path: str, name: bytes) -> str | None:
    """'exports' if the ELF at `path` defines `name` in .dynsym, 'symtab' if only in .symtab."""
    try:
        with open(path, "rb") as f:
            hdr = f.read(64)
            if len(hdr) < 64 or hdr[:4] != b"\x7fELF" or hdr[4] != 2 or hdr[5] != 1:
                return None  # only 64-bit little-endian ELF
            shoff, = struct.unpack_from("<Q", hdr, 0x28)
            shentsize, shnum = struct.unpack_from("<HH", hdr, 0x3A)
            if not shoff or shentsize != 64 or not shnum:
                return None
            f.seek(shoff)
            shdrs = [struct.unpack("<IIQQQQIIQQ", f.read(64)) for _ in range(shnum)]
            found = {}
            for sh in shdrs:
                sh_type, offset, size, link, entsize = sh[1], sh[4], sh[5], sh[6], sh[9]
                if sh_type not in (2, 11) or entsize != 24 or link >= len(shdrs):
                    continue  # 2 = SHT_SYMTAB, 11 = SHT_DYNSYM
                stroff, strsize = shdrs[link][4], shdrs[link][5]
                f.seek(stroff)
                strtab = f.read(strsize)
                idx = strtab.find(b"\0" + name + b"\0")
                if idx < 0:
                    continue
                want = idx + 1
                f.seek(offset)
                syms = f.read(size)
                for st_name, _info, _other, shndx, _v, _s in struct.iter_unpack("<IBBHQQ", syms):
                    if st_name == want and shndx != 0:
                        found[sh_type] = True
                        break
            if found.get(11):
                return "exports"
            if found.get(2):
                return "symtab"
    except (OSError, struct.error):
        return None
    return None


def _static_openssl(pid: int, maps: list) -> list:
    seen, out = set(), []
    for perms, path in maps:
        if path in seen or "x" not in perms:
            continue
        seen.add(path)
        base = os.path.basename(path)
        if base.startswith(("libssl.so", "libcrypto.so")):
            continue
        real = f"/proc/{pid}/root{path}"
        how = _elf_defines(real if os.path.exists(real) else path, b"CRYPTO_malloc")
        if how:
            out.append((path, how))
    return out


def _find_shim(maps: list, shim_path: str | None) -> str | None:
    real = os.path.realpath(shim_path) if shim_path else None
    for _perms, path in maps:
        if real and path == real:
            return path
        if shim_copy.is_copy(path):
            return path
        if os.path.basename(path).startswith("_shim") and \
                os.path.basename(os.path.dirname(path)) == "tlsprof":
            return path
    return None


# ----------------------------------------------------------------------------- channel

def request(sock_path: str, line: str, timeout: float = 5.0) -> str:
    """Send one line to the shim's socket and read its answer until EOF."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(line.encode() + b"\n")
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def ping(pid: int, channel_dir: str, timeout: float = 2.0) -> bool:
    """True if the shim in `pid` answers PING with its pid."""
    try:
        answer = request(socket_path(channel_dir, pid), "PING", timeout)
    except OSError:
        return False
    return answer.strip() == f"PONG {pid}"


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

    uid = int(status.get("Uid", "0").split()[0])
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = ""
    info = TargetInfo(pid=pid, uid=uid, comm=status.get("Name", "?"), exe=exe,
                      channel_dir=channel_dir or channel_dir_path(uid))
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

    if not (info.libssl or info.libcrypto):
        msg = f"pid {pid} ({info.comm}) has no libssl/libcrypto loaded"
        if info.static_openssl:
            path, how = info.static_openssl[0]
            msg += "; " + _static_sentence(path, how)
        else:
            msg += ": it does not use a shared OpenSSL (yet)"
        raise NoOpenSSL(msg)

    if shim_path is None:
        try:
            shim_path = _default_shim()
        except Exception:
            shim_path = None
    info.shim_mapped = _find_shim(maps, shim_path)
    if info.shim_mapped and ping(pid, info.channel_dir):
        raise AttachError(f"pid {pid} is already attached (tlsprof's socket "
                          f"{socket_path(info.channel_dir, pid)} answers); "
                          f"use `tlsprof detach {pid}` first")
    gdb_path()
    return info


def _static_sentence(path: str, how: str) -> str:
    where = "exports" if how == "exports" else "has as a local .symtab symbol"
    return (f"{path} {where} CRYPTO_malloc: a statically linked OpenSSL copy whose internal "
            f"calls tlsprof's hooks cannot see")


# The calls a blocked thread is most often in, when the kernel headers are not installed.
_SYSCALLS_FALLBACK = {0: "read", 1: "write", 7: "poll", 16: "ioctl", 17: "pread64", 19: "readv",
                      23: "select", 34: "pause", 35: "nanosleep", 42: "connect", 43: "accept",
                      44: "sendto", 45: "recvfrom", 46: "sendmsg", 47: "recvmsg", 61: "wait4",
                      72: "fcntl", 73: "flock", 128: "rt_sigtimedwait", 130: "rt_sigsuspend",
                      202: "futex", 219: "restart_syscall", 230: "clock_nanosleep",
                      232: "epoll_wait", 247: "waitid", 270: "pselect6", 271: "ppoll",
                      281: "epoll_pwait", 288: "accept4", 299: "recvmmsg", 441: "epoll_pwait2"}
_UNISTD = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"


def syscall_names() -> dict:
    """x86-64 system call numbers -> names (from the kernel headers when installed)."""
    names = dict(_SYSCALLS_FALLBACK)
    try:
        with open(_UNISTD) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[0] == "#define" and parts[1].startswith("__NR_") \
                        and parts[2].isdigit():
                    names[int(parts[2])] = parts[1][5:]
    except OSError:
        pass
    return names


def threads_sentence(threads: list) -> str:
    """Where each thread of a target without a safe point is: 'thread 12 in read (via fgets: it
    may hold a libc lock)', 'thread 13 running'."""
    parts = []
    for t in threads[:8]:
        if "syscall" not in t:
            parts.append(f"thread {t.get('tid')} {t.get('why', 'running')}")
            continue
        via = t.get("via")
        call = t["syscall"] + (f" via {via}" if via and via != t["syscall"] else "")
        parts.append(f"thread {t.get('tid')} in {call}" + (f" ({t['why']})" if t.get("why") else ""))
    if len(threads) > 8:
        parts.append(f"{len(threads) - 8} more")
    return "; ".join(parts)


def gdb_path() -> str:
    path = shutil.which("gdb")
    if not path:
        raise ToolMissing(GDB_INSTALL_HINT)
    return path


# ----------------------------------------------------------------------------- the gdb script

_GDB_SCRIPT = r'''
import gdb, json, os, subprocess, time

P = json.loads(os.environ["TLSPROF_GDB_PARAMS"])
# poll, select, pause, nanosleep, accept, rt_sigtimedwait, rt_sigsuspend, clock_nanosleep,
# epoll_wait, pselect6, ppoll, epoll_pwait, accept4, epoll_pwait2
WAIT_SYSCALLS = {7, 23, 34, 35, 43, 128, 130, 230, 232, 270, 271, 281, 288, 441}
# libc entry points that block in the kernel holding no libc-internal lock (malloc's, the
# loader's, stdio's, the atfork or setxid locks): the program called them directly.
ENTRY_OK = set("""read readv pread pread64 preadv preadv2 write writev pwrite pwrite64 recv recvfrom
    recvmsg recvmmsg send sendto sendmsg sendmmsg accept accept4 connect poll ppoll select pselect
    epoll_wait epoll_pwait epoll_pwait2 nanosleep clock_nanosleep sleep usleep pause sigsuspend
    sigwait sigwaitinfo sigtimedwait wait waitpid wait3 wait4 waitid pthread_cond_wait
    pthread_cond_timedwait pthread_cond_clockwait pthread_mutex_lock pthread_mutex_timedlock
    pthread_mutex_clocklock pthread_rwlock_rdlock pthread_rwlock_wrlock
    pthread_rwlock_timedrdlock pthread_rwlock_timedwrlock pthread_rwlock_clockrdlock
    pthread_rwlock_clockwrlock pthread_join pthread_timedjoin_np pthread_clockjoin_np
    pthread_clockjoin_ex pthread_barrier_wait sem_wait sem_timedwait sem_clockwait
    sem_wait_slow msgrcv msgsnd semop semtimedop mq_receive mq_timedreceive mq_send
    mq_timedsend flock lockf fcntl ioctl syscall io_getevents""".split())
FUTEX = 202
HOLDS_LOCK_OVER_CALLBACK = {"dl_iterate_phdr", "dlopen", "dlclose", "dlsym", "dladdr", "fork",
                            "system", "popen", "malloc", "free", "realloc", "calloc"}
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
                name, changed = name[len(prefix):], True
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
            emit(stage="safe-point", how="syscall", syscall=facts.get("syscall"),
                 via=facts.get("via"), tid=th.ptid[1])
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
    waker = subprocess.Popen(["/bin/sh", "-c", "sleep %.1f; kill -URG %d" % (P["wait"], inf.pid)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
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
                    emit(stage="safe-point", how="breakpoint",
                         function=str(ev.breakpoints[0].location), tid=th.ptid[1])
                    found = th
                    break
            elif isinstance(ev, gdb.SignalEvent) and ev.stop_signal == "SIGURG" \
                    and time.monotonic() >= deadline:
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


GREGS = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
         "r12", "r13", "r14", "r15", "rip", "eflags"]
ARG_REGS = ["rdi", "rsi", "rdx", "rcx", "r8", "r9"]


class CallFailed(Exception):
    pass


class Exited(Exception):
    pass


def entry_point(pid):
    with open("/proc/%d/auxv" % pid, "rb") as f:
        data = f.read()
    for i in range(0, len(data) - 15, 16):
        key = int.from_bytes(data[i:i + 8], "little")
        if key == 9:  # AT_ENTRY
            return int.from_bytes(data[i + 8:i + 16], "little")
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
        setreg("orig_rax", -1)   # no syscall restart may rewind our new rip
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
                    raise Exited()
                raise CallFailed(str(exc))
            if state["exited"] or not inf.pid:
                raise Exited()
            ev = state["stop"]
            cur = gdb.selected_thread()
            if isinstance(ev, gdb.BreakpointEvent) and bp in ev.breakpoints and cur.ptid == th.ptid:
                return value("$rax") & 0xFFFFFFFFFFFFFFFF
            if isinstance(ev, gdb.SignalEvent) and cur.ptid == th.ptid:
                run("handle %s nopass" % ev.stop_signal)  # do not deliver our crash on detach
                raise CallFailed("the target got %s while in the called function"
                                 % ev.stop_signal)
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
'''


def _run_gdb(pid: int, params: dict, timeout: float, on_stage=None) -> tuple[list, str]:
    """Run the gdb script against `pid`; return (TLSPROF-GDB records, gdb's whole output)."""
    gdb = gdb_path()
    # the script travels in the environment: nothing is written, so a read-only or full /tmp
    # cannot stop an attach or a detach half-way
    env = dict(os.environ, TLSPROF_GDB_PARAMS=json.dumps(params), TLSPROF_GDB_SCRIPT=_GDB_SCRIPT,
               DEBUGINFOD_URLS="", LC_ALL="C", LANG="C")
    cmd = [gdb, "-nx", "-nw", "-q", "-batch",
           "-iex", "set debuginfod enabled off", "-iex", "set pagination off",
           "-iex", "set confirm off", "-iex", "set breakpoint pending off",
           "-iex", "set auto-load off",
           "-p", str(pid), "-ex", "python exec(__import__('os').environ['TLSPROF_GDB_SCRIPT'])"]
    was_stopped = _state(pid) in ("T", "t")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            env=env, start_new_session=True)
    records, lines = [], []

    def reader():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("TLSPROF-GDB "):
                try:
                    rec = json.loads(line[len("TLSPROF-GDB "):])
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
        return AttachError(f"pid {pid} exited during {what}") if "attached" in output \
            else NoSuchProcess(pid)
    last = [ln.strip() for ln in output.splitlines()
            if ln.strip() and not ln.startswith("TLSPROF-GDB")]
    detail = last[-1] if last else "no output"
    return AttachError(f"gdb could not {what} pid {pid}: {detail}")


def inject(pid: int, shim_path: str, channel_dir: str, timeout: float = 20,
           on_stage=None, wait_ready: bool = True) -> None:
    """Load `shim_path` into `pid` at a safe point and call tlsprof_start(channel_dir).

    Returns once the shim's socket answers PING (unless wait_ready is False). A target that cannot
    read `shim_path` gets a copy it can (tlsprof/shim_copy.py). Raises NoSuchProcess, AccessDenied,
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
    # the target opens the shim with its own credentials: give it a copy it can read if need be
    bundle = shim_copy.for_pid(pid, shim_path)
    try:
        shim_copy.check_same_view(pid, channel_dir)
        shim_path = bundle.shim
        params = {"mode": "start", "shim": shim_path, "channel_dir": channel_dir,
                  "rtld_now": RTLD_NOW, "rtld_noload": RTLD_NOLOAD,
                  "wait": max(1.0, timeout * 0.6 - 2), "syscalls": syscall_names()}
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
            raise AttachError(f"tlsprof_start returned {rc} in pid {pid}: the shim could not "
                              f"install its hooks or open its socket in {channel_dir}")
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
            f"{threads_sentence(_threads(records)) or 'no thread seen'}); retry, or raise --timeout")
    elif kind == "call-failed":
        raise AttachError(f"calling into pid {pid} failed, target left as it was: "
                          f"{res.get('error')}")
    elif kind == "gdb-timeout":
        raise AttachError(f"gdb did not finish within {timeout:.0f}s; it was stopped and "
                          f"pid {pid} {'resumed' if _alive(pid) else 'has exited'}")
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


def eject(pid: int, channel_dir: str | None = None, shim_path: str | None = None,
          timeout: float = 20) -> str:
    """Remove tlsprof's hooks from `pid`. Returns "socket" or "gdb" (how it was done).

    Asks the shim with DETACH over its socket; if the socket does not answer, calls
    tlsprof_stop() in the target through gdb at a safe point.
    """
    pid = int(pid)
    if not _alive(pid):
        raise NoSuchProcess(pid)
    if channel_dir is None:
        channel_dir = channel_dir_path(int(_status(pid).get("Uid", "0").split()[0]))
    sock = socket_path(channel_dir, pid)
    try:
        answer = request(sock, "DETACH", timeout=min(10.0, timeout))
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
    params = {"mode": "stop", "shim": mapped, "channel_dir": channel_dir,
              "rtld_now": RTLD_NOW, "rtld_noload": RTLD_NOLOAD,
              "wait": max(1.0, timeout * 0.6 - 2), "syscalls": syscall_names()}
    records, output = _run_gdb(pid, params, timeout)
    res = _result(records)
    kind = res.get("result")
    if kind == "called":
        return "gdb"
    if kind == "exited":
        raise AttachError(f"pid {pid} exited during detach")
    if kind == "not-loaded":
        raise AttachError(f"tlsprof is not loaded in pid {pid}: nothing to detach")
    if kind == "no-safe-point":
        raise AttachError(f"no safe point in pid {pid} within {params['wait']:.0f}s to call "
                          f"tlsprof_stop ({threads_sentence(_threads(records)) or 'no thread seen'}); "
                          f"retry")
    if kind in ("call-failed", "script-error", "no-entry", "gdb-timeout"):
        raise AttachError(f"could not call tlsprof_stop in pid {pid}: "
                          f"{res.get('error') or res.get('entry') or kind}")
    raise _gdb_failure(pid, output, "detach from")
