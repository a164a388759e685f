"""What an attach needs to know about the target before gdb touches it: /proc facts, ptrace
permission, the ELF objects holding OpenSSL, a tlsprof shim already mapped, its threads' system calls."""

import mmap
import os
import re
import shutil
import struct
from dataclasses import dataclass, field

from tlsprof.collect import shim_copy
from tlsprof.errors import AccessDenied, AttachError, NoSuchProcess, ToolMissing

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
    shim_mapped: str | None = None  # path of a tlsprof shim already mapped in the target
    channel_dir: str = ""  # where the target's socket lives (not created by preflight)
    warnings: list = field(default_factory=list)
    # its RLIMIT_NPROC forbids new tasks, and tlsprof may lend it room for the attach (task_room.py)
    needs_room: str | None = None


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
    st = stat[stat.rfind(")") + 2 : stat.rfind(")") + 3]
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
        return (
            "kernel.yama.ptrace_scope=3 forbids all ptrace attach until reboot; "
            "tlsprof attach cannot work on this boot (use `tlsprof run` instead)"
        )
    if scope == 2 and not cap:
        return (
            "kernel.yama.ptrace_scope=2 allows ptrace only with CAP_SYS_PTRACE; "
            "run tlsprof as root (or with CAP_SYS_PTRACE)"
        )
    if scope == 1 and not cap:
        return (
            "kernel.yama.ptrace_scope=1 allows ptrace only of your own child processes; "
            "allow it with `sysctl kernel.yama.ptrace_scope=0` or run tlsprof as root / with "
            "CAP_SYS_PTRACE"
        )
    if os.geteuid() == 0 and not cap:
        return "root here lacks CAP_SYS_PTRACE (a container?); grant it (e.g. `docker run --cap-add SYS_PTRACE`)"
    return (
        "you most likely lack permission to trace it: run tlsprof as the process's user, "
        "as root, or with CAP_SYS_PTRACE"
    )


def _check_permission(pid: int, status: dict) -> None:
    cap = _have_cap_sys_ptrace()
    uids = {int(x) for x in status.get("Uid", "").split()}
    gids = {int(x) for x in status.get("Gid", "").split()}
    me = os.getuid()
    # gdb attaches with PTRACE_MODE_ATTACH_REALCREDS: our real uid/gid must match all the target's
    same = uids == {me} and gids == {os.getgid()}
    if not (same or cap):
        owner = min(uids) if uids else "?"
        raise AccessDenied(
            pid,
            f"cannot trace pid {pid} (owned by uid {owner}, you are uid {me}): "
            f"run tlsprof as that user, as root, or with CAP_SYS_PTRACE",
        )
    scope = _ptrace_scope()
    if scope == 3 or (scope in (1, 2) and not cap):
        raise AccessDenied(pid, f"cannot trace pid {pid}: {_ptrace_hint(pid)}")
    tracer = int(status.get("TracerPid", "0") or 0)
    if tracer:
        raise AttachError(f"pid {pid} is already being traced by pid {tracer} (a debugger?); detach it first")


CAP_SYS_ADMIN, CAP_SYS_RESOURCE = 21, 24


def uid_tasks(uid: int, stop_at: int | None = None) -> int:
    """The tasks (threads included) that processes of real uid `uid` run: what the kernel counts
    against RLIMIT_NPROC (ucounts). Counting ends once it reaches `stop_at`."""
    tasks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = _status(int(entry.name))
            if int(st.get("Uid", "-1").split()[0]) == uid:
                tasks += int(st.get("Threads", "1"))
        except (OSError, ValueError, IndexError):
            continue
        if stop_at is not None and tasks >= stop_at:
            break
    return tasks


def threads_forbidden(pid: int, status: dict) -> str | None:
    """Why `pid` cannot create a thread, or None. The kernel refuses clone() to a process whose
    real uid already runs RLIMIT_NPROC tasks, root and CAP_SYS_RESOURCE/CAP_SYS_ADMIN aside. HAProxy
    sets that limit to 0 in its workers (unless `insecure-fork-wanted`), an exploit mitigation; the
    shim needs one thread for its channel, and the heap walk one process."""
    try:
        real_uid = int(status.get("Uid", "0").split()[0])
        caps = int(status.get("CapEff", "0"), 16)
        with open(f"/proc/{int(pid)}/limits") as f:
            line = next((ln for ln in f if ln.startswith("Max processes")), "")
    except (OSError, ValueError, IndexError):
        return None
    if real_uid == 0 or caps & ((1 << CAP_SYS_ADMIN) | (1 << CAP_SYS_RESOURCE)):
        return None
    fields = line.split()
    soft = fields[2] if len(fields) > 2 else "unlimited"
    if soft == "unlimited":
        return None
    limit = int(soft)
    if limit > 0 and uid_tasks(real_uid, stop_at=limit) < limit:
        return None
    return (
        f"pid {pid} may not create threads or processes (its RLIMIT_NPROC is {limit}"
        + (", HAProxy's default in its workers unless `insecure-fork-wanted` is set" if limit == 0 else "")
        + "), and tlsprof needs one thread in it to serve its channel"
    )


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
            (shoff,) = struct.unpack_from("<Q", hdr, 0x28)
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
        if os.path.basename(path).startswith("_shim") and os.path.basename(os.path.dirname(path)) == "tlsprof":
            return path
    return None


# ----------------------------------------------------------------------------- preflight

# The calls a blocked thread is most often in, when the kernel headers are not installed.
_SYSCALLS_FALLBACK = {
    0: "read",
    1: "write",
    7: "poll",
    16: "ioctl",
    17: "pread64",
    19: "readv",
    23: "select",
    34: "pause",
    35: "nanosleep",
    42: "connect",
    43: "accept",
    44: "sendto",
    45: "recvfrom",
    46: "sendmsg",
    47: "recvmsg",
    61: "wait4",
    72: "fcntl",
    73: "flock",
    128: "rt_sigtimedwait",
    130: "rt_sigsuspend",
    202: "futex",
    219: "restart_syscall",
    230: "clock_nanosleep",
    232: "epoll_wait",
    247: "waitid",
    270: "pselect6",
    271: "ppoll",
    281: "epoll_pwait",
    288: "accept4",
    299: "recvmmsg",
    441: "epoll_pwait2",
}
_UNISTD = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"


def syscall_names() -> dict:
    """x86-64 system call numbers -> names (from the kernel headers when installed)."""
    names = dict(_SYSCALLS_FALLBACK)
    try:
        with open(_UNISTD) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[0] == "#define" and parts[1].startswith("__NR_") and parts[2].isdigit():
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


_OPENSSL_VERSION_TEXT = re.compile(rb"OpenSSL \d+\.\d+\.\d+[a-z]?(?:-[a-z]+)? +\d+ [A-Z][a-z]{2} \d{4}")


def _stripped_openssl(pid: int, maps: list) -> str | None:
    """The first mapped object that carries OpenSSL's version text but no symbol of it: a copy
    linked statically and stripped (tests/integration/test_static_openssl.py builds one)."""
    seen = set()
    for perms, path in maps:
        if path in seen or "x" not in perms or not path.startswith("/"):
            continue
        seen.add(path)
        if os.path.basename(path).startswith(("libc.so", "ld-linux", "libm.so", "libpthread", "_shim")):
            continue
        real = f"/proc/{pid}/root{path}"
        file = real if os.path.exists(real) else path
        try:
            with open(file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if not _OPENSSL_VERSION_TEXT.search(m):
                    continue
        except (OSError, ValueError):
            continue
        # a copy with its symbols (the shared libcrypto itself, mapped while a snapshot that saw
        # no OpenSSL yet was being answered) is hooked or walked: not this
        if not _elf_defines(file, b"CRYPTO_malloc"):
            return path
    return None
