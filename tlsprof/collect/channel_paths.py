"""Where the shim in a target process serves its Unix socket: `/tmp/tlsprof-<uid>/<pid>.sock`, and
the in-target Python agent its own: `<pid>.py.sock` beside it. Every path to a socket is built here
(`socket_path`, `agent_socket_path`) and every socket name read back here (`socket_pid`). Two
twins cannot import this module and say so where they build the same name: the shim
(hooks/channel.c, `channel_start`) and the agent (tlsprof/agent/agent.py, loaded into the target
as a file); tests/unit/test_channel_paths.py checks the agent's against this one.

The directory is private to the target's uid (mode 0700, owned by that uid). It is created when
absent (by root on behalf of another user: then chowned to that user, so the target can bind its
socket in it) and refused when it exists with another owner, group/other permission bits, or is
not a real directory: anyone who could write there could impersonate the shim.
"""

import errno
import glob
import os
import pwd
import stat

from tlsprof.errors import ShimNotLoadable, UnsafeChannelDir

BASE = "/tmp"
# The longest channel directory the shim serves in: its socket `<dir>/<pid>.sock` (and the agent's
# `<pid>.py.sock`) must fit a sockaddr_un (108 bytes); channel_start (hooks/channel.c) refuses a
# directory when strlen(dir) + 24 > 108.
MAX_DIR_LEN = 108 - 24


def channel_dir_path(uid: int, base: str | None = None) -> str:
    """The path of the channel directory for `uid`, without creating or checking it (`base`: the
    root of a chrooted target's jail instead of /tmp, tlsprof/collect/jail.py)."""
    return os.path.join(base or BASE, f"tlsprof-{int(uid)}")


def _check(path: str, uid: int) -> None:
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeChannelDir(f"{path} exists but is not a directory; remove it and retry")
    if st.st_uid != uid:
        raise UnsafeChannelDir(f"{path} is owned by uid {st.st_uid}, not {uid}; remove it and retry")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise UnsafeChannelDir(
            f"{path} has mode {stat.S_IMODE(st.st_mode):04o}, open to other users; run `chmod 700 {path}` or remove it"
        )


def channel_dir_for(uid: int, base: str | None = None) -> str:
    """Return the private channel directory of `uid`, creating it (0700, owned by uid) if absent.

    Raises UnsafeChannelDir when the path exists but is not a directory owned by uid with
    no group/other permission bits.
    """
    uid = int(uid)
    path = channel_dir_path(uid, base)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        why = f"{base or BASE} is read-only" if exc.errno == errno.EROFS else exc.strerror
        raise ShimNotLoadable(f"cannot create the channel directory {path} for the target: {why}") from None
    else:
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask; make it exact
        if os.geteuid() != uid:
            try:
                gid = pwd.getpwuid(uid).pw_gid
            except KeyError:
                gid = -1
            try:
                os.chown(path, uid, gid)
            except PermissionError:
                os.rmdir(path)
                raise UnsafeChannelDir(f"cannot create {path} for uid {uid}: only that user or root can") from None
    _check(path, uid)
    remove_stale_sockets(path)
    return path


def remove_stale_sockets(directory: str) -> list:
    """Remove the sockets of processes that no longer exist (`<pid>.sock`, `<pid>.py.sock`): a
    target that ended with _exit() or a signal never unlinked its own. -> the paths removed."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        owner = socket_pid(name)
        if owner is None:
            continue
        try:
            os.kill(owner[0], 0)
            continue  # alive (ours or, with EPERM below, someone else's)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        full = os.path.join(directory, name)
        try:
            if stat.S_ISSOCK(os.lstat(full).st_mode):
                os.unlink(full)
                removed.append(full)
        except OSError:
            pass
    return removed


SHIM_SUFFIX = ".sock"
AGENT_SUFFIX = ".py.sock"


def socket_path(directory: str, pid: int) -> str:
    """The socket the shim in process `pid` serves inside `directory`."""
    return os.path.join(directory, f"{int(pid)}{SHIM_SUFFIX}")


def agent_socket_path(directory: str, pid: int) -> str:
    """The socket the Python agent in process `pid` serves inside `directory`."""
    return os.path.join(directory, f"{int(pid)}{AGENT_SUFFIX}")


def socket_pid(path: str):
    """(pid, "shim" | "agent") for a socket name built above, None for any other name."""
    name = os.path.basename(path)
    head, dot, tail = name.partition(".")
    if not dot or not head.isdigit():
        return None
    if "." + tail == SHIM_SUFFIX:
        return int(head), "shim"
    if "." + tail == AGENT_SUFFIX:
        return int(head), "agent"
    return None


def _ppid_and_euid(pid: int):
    with open(f"/proc/{int(pid)}/status") as f:
        fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    return int(fields["PPid"]), int(fields["Uid"].split()[1])


def _descends_from(pid: int, ancestor: int, max_depth: int = 64) -> bool:
    for _ in range(max_depth):
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        try:
            pid, _euid = _ppid_and_euid(pid)
        except (OSError, KeyError, ValueError):
            return False
    return False


def link_switched_uid_sockets(run_dir: str, root_pid: int, jailed=()) -> list:
    """`tlsprof run` as root: a process of the tree that switched to another user (setpriv,
    runuser, a server dropping privileges before exec) cannot enter the run's root-owned 0700
    directory, so its shim and agent serve in that user's own channel directory instead (the
    shim's and sitecustomize's fallback, TLSPROF_UID_DIRS). Link those sockets into `run_dir`,
    where the session looks, once the directory, the socket and the process all belong to that
    user: nothing else is trusted. A stale socket of the same pid (the process before its exec)
    is replaced. `jailed`: (directory, uid) of the tree's chrooted processes too
    (tlsprof/collect/jail.py), any uid. -> the links made."""
    found = []
    for other in glob.glob(os.path.join(BASE, "tlsprof-[0-9]*")):
        try:
            uid = int(os.path.basename(other)[len("tlsprof-") :])
        except ValueError:
            continue
        if uid != os.geteuid():  # our own processes serve in run_dir itself
            found.append((other, uid))
    made = []
    for directory, uid in [*found, *jailed]:
        try:
            _check(directory, uid)
            names = os.listdir(directory)
        except (OSError, UnsafeChannelDir):
            continue
        for name in names:
            _link_one(directory, name, uid, run_dir, root_pid, made)
    return made


def _link_one(directory: str, name: str, uid: int, run_dir: str, root_pid: int, made: list) -> None:
    owner = socket_pid(name)
    if owner is None:
        return
    pid = owner[0]
    src = os.path.join(directory, name)
    dst = os.path.join(run_dir, name)
    try:
        if os.path.islink(dst) and os.readlink(dst) == src:
            return
        st = os.lstat(src)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != uid:
            return
        if _ppid_and_euid(pid)[1] != uid or not _descends_from(pid, root_pid):
            return
        tmp = os.path.join(run_dir, f".link-{name}")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(src, tmp)
        os.replace(tmp, dst)  # over the socket the process bound before its exec
        made.append(dst)
    except (OSError, KeyError, ValueError):
        return
