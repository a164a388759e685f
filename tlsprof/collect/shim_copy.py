"""Copies of the shim and of the Python agent that a target running as another user can open.

The dynamic loader opens an `LD_PRELOAD` or `dlopen` path with the target's credentials. tlsprof
installed under a directory other users cannot enter (a clone in a 0700 home) gives an nginx worker
(www-data), a PostgreSQL backend (postgres) or a server started through `setpriv`/`runuser` a path
it cannot read: the loader refuses it ("Permission denied") and the server runs untracked.

So when the target cannot read the installed files, it gets a *bundle*: the shim plus the agent
files it imports (`agent/agent.py`, `agent/site/sitecustomize.py`, in the layout the shim and
sitecustomize expect next to the shim) copied to `/tmp/tlsprof-lib-<euid>/<content hash>/`:

- the directory `/tmp/tlsprof-lib-<euid>` is owned by tlsprof's user (root, usually), mode 0755:
  anyone can read, nobody else can write, so nobody can swap the code a target will load. One that
  exists with another owner or group/other write bits is refused, never used;
- a bundle is named by the hash of its content and never rewritten: a rebuilt shim gets a new
  bundle, and a process that mapped the old one keeps a file that does not change under it;
- a bundle is removed when no session holds it (a shared `flock` on its directory, taken while a
  `run` or `attach` needs it) and no process maps its shim (`/proc/*/maps`); a process whose maps
  cannot be read keeps every bundle made before it started (see mapped_paths).

Only code becomes readable: the channel stays private (0700 directory, 0600 socket, peer uid
checked; tlsprof/collect/channel_paths.py). A target that would not see the bundle at the same path (it
lives in another mount namespace, e.g. a container or a unit with PrivateTmp=) and a /tmp where
the bundle cannot be made (read-only, full, squatted) end the command with ShimNotLoadable
(exit 9) and one line saying which.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass

from tlsprof.errors import NoSuchProcess, ShimNotLoadable

BASE = "/tmp"
# the package root: the shim and agent/ sit there side by side, as in a bundle
_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (name inside the bundle, path inside the installed package); the shim is added at run time
AGENT_FILES = (
    ("agent/agent.py", os.path.join(_HERE, "agent", "agent.py")),
    # agent.py loads these beside itself
    ("agent/graph.py", os.path.join(_HERE, "agent", "graph.py")),
    ("agent/ssl_objects.py", os.path.join(_HERE, "agent", "ssl_objects.py")),
    ("agent/tracemalloc_ext.py", os.path.join(_HERE, "agent", "tracemalloc_ext.py")),
    ("agent/pyopenssl_capture.py", os.path.join(_HERE, "agent", "pyopenssl_capture.py")),
    ("agent/capture.py", os.path.join(_HERE, "agent", "capture.py")),
    ("agent/listener.py", os.path.join(_HERE, "agent", "listener.py")),
    ("agent/site/sitecustomize.py", os.path.join(_HERE, "agent", "site", "sitecustomize.py")),
)
NAME_LEN = 16
STALE_TMP_S = 3600


@dataclass
class Bundle:
    """Where a target finds the shim and the agent's site directory; `copied` when not the
    installed files. Holds a shared lock on the copy until release()."""

    shim: str
    site_dir: str
    copied: bool = False
    root: str | None = None
    _lock_fd: int | None = None
    # the shim's path as the target names it: inside a chroot, without the jail's prefix
    target_shim: str | None = None

    def release(self) -> None:
        """Drop our hold; remove the copy if nothing else holds or maps it."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
            if self.root:
                remove_unused(os.path.dirname(self.root), only=os.path.basename(self.root))


def lib_dir(euid: int | None = None, base: str | None = None) -> str:
    return os.path.join(base or BASE, f"tlsprof-lib-{os.geteuid() if euid is None else int(euid)}")


def installed() -> tuple[str, str]:
    """(shim, site dir) of the installed package."""
    from tlsprof.agent import site_dir
    from tlsprof.collect.shim import shim_path

    return shim_path(), site_dir()


# ----------------------------------------------------------------------------- who can read what


@dataclass(frozen=True)
class Creds:
    uid: int
    gids: frozenset


def creds_of_pid(pid: int) -> Creds:
    """The credentials the kernel checks when `pid` opens a file (fsuid, fsgid + groups)."""
    fields = {}
    with open(f"/proc/{int(pid)}/status") as f:
        for line in f:
            key, _, val = line.partition(":")
            fields[key] = val.split()
    uid = int(fields["Uid"][3])
    gids = {int(fields["Gid"][3])} | {int(g) for g in fields.get("Groups", [])}
    return Creds(uid, frozenset(gids))


# Anyone: a uid and gid that own nothing (what `setpriv --reuid=nobody --clear-groups` gets)
ANYONE = Creds(-1, frozenset())


def _allowed(st: os.stat_result, creds: Creds, bit: int) -> bool:
    mode = st.st_mode
    if creds.uid == 0:
        return True  # root's DAC override (a target without CAP_DAC_OVERRIDE is not handled)
    if st.st_uid == creds.uid:
        return bool(mode & (bit << 6))
    if st.st_gid in creds.gids:
        return bool(mode & (bit << 3))
    return bool(mode & bit)


def readable_by(path: str, creds: Creds) -> bool:
    """True if `creds` can search every directory above `path` and read it (mode bits; an ACL
    that grants more is ignored, so the answer errs towards copying)."""
    real = os.path.realpath(path)
    try:
        parts = real.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i]) or "/"
            if not _allowed(os.stat(d), creds, 1):
                return False
        return _allowed(os.stat(real), creds, 4)
    except OSError:
        return False


def _files(shim: str) -> list:
    return [(os.path.basename(shim), shim), *AGENT_FILES]


def _content_hash(files: list) -> str:
    h = hashlib.sha256()
    for name, src in files:
        with open(src, "rb") as f:
            data = f.read()
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:NAME_LEN]


# ----------------------------------------------------------------------------- the bundle


def for_pid(pid: int, shim: str | None = None) -> Bundle:
    """What `attach` gives process `pid`: the installed files when it can read them, else a copy
    it can; a chrooted process a copy inside its jail (tlsprof/collect/jail.py). Raises
    ShimNotLoadable with one line when neither works."""
    from tlsprof.collect import jail

    own_shim, own_site = installed()
    shim = shim or own_shim
    try:
        creds = creds_of_pid(pid)
    except (OSError, KeyError, IndexError, ValueError):
        raise NoSuchProcess(pid) from None
    root = jail.root_of(pid)
    if root:
        bundle = make(shim, base=root)
        bundle.target_shim = jail.inside(root, bundle.shim)
        return bundle
    if all(readable_by(p, creds) for _n, p in _files(shim)):
        bundle = Bundle(shim, own_site)
    else:
        bundle = make(shim)
    try:
        check_same_view(pid, bundle.shim)
    except ShimNotLoadable:
        bundle.release()
        raise
    return bundle


def for_anyone(shim: str | None = None) -> Bundle:
    """What `run` preloads: readable by any user the command may switch to (setpriv, runuser,
    a service manager), so the installed files when they are world-readable, else a copy. Only
    root can start a command that switches users (a set-uid program ignores LD_PRELOAD paths)."""
    own_shim, own_site = installed()
    shim = shim or own_shim
    if os.geteuid() != 0 or all(readable_by(p, ANYONE) for _n, p in _files(shim)):
        return Bundle(shim, own_site)
    return make(shim)


def check_same_view(pid: int, path: str) -> None:
    """The target must open `path` as the very file we mean: not so in another mount namespace
    (a container, PrivateTmp=) unless that file is the same inode there."""
    try:
        mine = os.readlink("/proc/self/ns/mnt")
        theirs = os.readlink(f"/proc/{int(pid)}/ns/mnt")
    except OSError:
        return  # no namespaces to compare (or the target is gone: the attach will say so)
    if mine == theirs:
        return
    try:
        if os.path.samefile(path, f"/proc/{int(pid)}/root{path}"):
            return
    except OSError:
        pass
    raise ShimNotLoadable(
        f"pid {pid} runs in another mount namespace (a container, or a service with "
        f"PrivateTmp=) where {path} is not the file tlsprof prepared; run tlsprof inside that "
        f"namespace (e.g. `nsenter -t {pid} -m -- tlsprof attach {pid}`)"
    )


def _check_lib_dir(path: str) -> None:
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ShimNotLoadable(f"{path} exists but is not a directory; remove it and retry")
    if st.st_uid != os.geteuid():
        raise ShimNotLoadable(
            f"{path} is owned by uid {st.st_uid}, not {os.geteuid()}: tlsprof "
            f"will not give a target code from it; remove it and retry"
        )
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise ShimNotLoadable(
            f"{path} has mode {stat.S_IMODE(st.st_mode):04o}, writable by others; run `chmod 755 {path}` or remove it"
        )


def _ensure_lib_dir(base: str | None = None) -> str:
    path = lib_dir(base=base)
    try:
        os.mkdir(path, 0o755)
        os.chmod(path, 0o755)  # the umask filtered mkdir's mode
    except FileExistsError:
        pass
    except OSError as exc:
        raise ShimNotLoadable(_cannot_make(path, exc)) from None
    _check_lib_dir(path)
    return path


def _cannot_make(path: str, exc: OSError) -> str:
    why = {
        errno.EROFS: f"{BASE} is read-only",
        errno.ENOSPC: f"{BASE} is full",
        errno.EDQUOT: "the disk quota is exhausted",
        errno.EACCES: f"{BASE} is not writable by uid {os.geteuid()}",
    }.get(exc.errno, exc.strerror or str(exc))
    return (
        f"cannot make a copy of the shim that the target can read in {path}: {why}; install "
        f"tlsprof where every user can read it (e.g. `pip install` system-wide)"
    )


def _verify(root: str, files: list, want: str) -> bool:
    """An existing bundle is ours, unwritable by others, and holds exactly this content."""
    try:
        for name, _src in files:
            st = os.lstat(os.path.join(root, name))
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return False
        st = os.lstat(root)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return False
        return _content_hash([(n, os.path.join(root, n)) for n, _s in files]) == want
    except OSError:
        return False


def _write(tmp: str, files: list) -> None:
    for name, src in files:
        dst = os.path.join(tmp, name)
        os.makedirs(os.path.dirname(dst), mode=0o755, exist_ok=True)
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o444)
    for dirpath, _dirs, _f in os.walk(tmp, topdown=False):
        os.chmod(dirpath, 0o555)


def _make_writable(root: str) -> None:
    for dirpath, _d, _f in os.walk(root):
        try:
            os.chmod(dirpath, 0o755)
        except OSError:
            pass


def _rmtree(root: str) -> None:
    _make_writable(root)
    shutil.rmtree(root, ignore_errors=True)


def make(shim: str, base: str | None = None) -> Bundle:
    """The content-named copy of the shim and agent files, made if absent; held until release().
    `base`: where its lib dir goes (/tmp, or a chrooted target's jail)."""
    files = _files(shim)
    base = _ensure_lib_dir(base)
    digest = _content_hash(files)
    root = os.path.join(base, digest)
    for _attempt in range(3):
        if not os.path.lexists(root):
            try:
                tmp = tempfile.mkdtemp(prefix=".new-", dir=base)
            except OSError as exc:
                raise ShimNotLoadable(_cannot_make(base, exc)) from None
            try:
                _write(tmp, files)
                os.rename(tmp, root)  # atomic: a target never sees a half-written bundle
            except OSError as exc:
                _rmtree(tmp)
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise ShimNotLoadable(_cannot_make(base, exc)) from None
        fd = _hold(root)
        if fd is not None and _still_at(fd, root) and _verify(root, files, digest):
            bundle = Bundle(
                os.path.join(root, files[0][0]),
                os.path.join(root, "agent", "site"),
                copied=True,
                root=root,
                _lock_fd=fd,
            )
            atexit.register(bundle.release)
            remove_unused(base, keep=digest)
            return bundle
        if fd is not None:
            os.close(fd)
        # not ours or not this content (a crash mid-way, tampering): move it aside and redo
        aside = os.path.join(base, f".bad-{digest}-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.rename(root, aside)
            _rmtree(aside)
        except OSError:
            pass
    raise ShimNotLoadable(f"cannot make a trustworthy copy of the shim in {root}; remove it and retry")


def _still_at(fd: int, root: str) -> bool:
    """The directory we locked is still the one at `root` (a remover may have renamed it away
    between our open and our lock)."""
    try:
        a, b = os.fstat(fd), os.lstat(root)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _hold(root: str) -> int | None:
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)  # a remover holds it only for an instant
    return fd


# ----------------------------------------------------------------------------- cleaning


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def _start_time(pid: str, boot: float) -> float:
    with open(f"/proc/{pid}/stat") as f:
        stat_line = f.read()
    ticks = int(stat_line[stat_line.rfind(")") + 2 :].split()[19])
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def mapped_paths() -> tuple[set, float | None]:
    """(every file path mapped by a process whose maps we can read, start time of the newest
    process whose maps we cannot read, or None). Such a process (pid 1 of a container, another
    user's when not root) can only map a bundle made before it started: we could not have
    attached to it (reading maps needs the same permission as ptrace)."""
    paths, newest_blind = set(), None
    boot = _boot_time()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/maps") as f:
                for line in f:
                    parts = line.split(None, 5)
                    if len(parts) == 6 and parts[5].startswith("/"):
                        paths.add(parts[5].rstrip("\n").removesuffix(" (deleted)"))
        except (FileNotFoundError, ProcessLookupError):
            continue
        except OSError:
            try:
                started = _start_time(entry, boot)
            except (OSError, ValueError, IndexError):
                started = time.time()
            newest_blind = started if newest_blind is None else max(newest_blind, started)
    return paths, newest_blind


def is_copy(path: str) -> bool:
    """True for a shim inside a bundle (any user's lib dir, in /tmp or at a jail's root)."""
    parent = os.path.dirname(os.path.dirname(path))
    return os.path.basename(parent).startswith("tlsprof-lib-") and os.path.basename(path).startswith("_shim")


def remove_unused(base: str, keep: str | None = None, only: str | None = None) -> list:
    """Remove the bundles in `base` that no session holds and no process maps. -> removed paths."""
    try:
        names = [only] if only else os.listdir(base)
    except OSError:
        return []
    candidates = []
    for name in names:
        full = os.path.join(base, name)
        if name == keep:
            continue
        if name.startswith((".new-", ".bad-")):
            try:
                if time.time() - os.lstat(full).st_mtime > STALE_TMP_S:
                    _rmtree(full)
            except OSError:
                pass
            continue
        if len(name) == NAME_LEN and all(c in "0123456789abcdef" for c in name):
            candidates.append(full)
    if not candidates:
        return []
    mapped, newest_blind = mapped_paths()
    removed = []
    for full in candidates:
        if any(p.startswith(full + "/") for p in mapped):
            continue
        try:
            made = os.lstat(full).st_mtime
        except OSError:
            continue
        if newest_blind is not None and newest_blind >= made - 2:
            continue  # a process we cannot see into may have loaded it
        try:
            fd = os.open(full, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a session holds it
            if os.fstat(fd).st_uid != os.geteuid():
                continue
            # rename first: a session opening it after this point finds nothing and makes a new one
            aside = os.path.join(base, f".bad-{os.path.basename(full)}-{os.getpid()}")
            try:
                os.rename(full, aside)
            except OSError:
                continue
            _rmtree(aside)
            removed.append(full)
        finally:
            os.close(fd)
    return removed
