"""Targets that chrooted: Debian's HAProxy runs its worker in `chroot /var/lib/haproxy` as user
haproxy, stunnel can be configured so. Such a process opens paths inside its jail only: the shim
tlsprof offers it and the channel directory it serves in must lie inside the jail, and the heap walk
cannot open `/proc/self/maps` there (the collector passes it a descriptor, tlsprof/collect/client.py).

Inside a jail, tlsprof's two directories sit at its root, named as in /tmp: `/tlsprof-<uid>` (the
private channel directory, tlsprof/collect/channel_paths.py) and `/tlsprof-lib-<euid>/<hash>` (the
read-only copy of the shim, tlsprof/collect/shim_copy.py). The channel directory is removed when a
session ends and nothing is left in it; the copy stays as long as a process maps it (a shim is never
unloaded), and a later attach loads the same file again instead of a second shim.

Under `run` the shim is loaded before any chroot and keeps its socket across it; only a process
forked inside the jail after it dropped root (stunnel's daemon) must serve anew: it does so at the
jail's root too when it can write there (hooks/main.c), and `run` links that socket into its own
directory (jailed_channel_dirs).

Only the same mount namespace is handled here: a target in another one (a container) is
shim_copy.check_same_view's case.
"""

import os

from tlsprof.collect import channel_paths, process_tree
from tlsprof.errors import NoSuchProcess, ShimNotLoadable

# the connecting side's socket path `<dir>/<pid>.sock` must fit a sockaddr_un too
_MAX_OUTSIDE_DIR = channel_paths.MAX_DIR_LEN


def root_of(pid: int) -> str | None:
    """The directory `pid` chrooted into, as a path of ours; None when its root is ours or lies in
    another mount namespace."""
    pid = int(pid)
    try:
        theirs = os.stat(f"/proc/{pid}/root/")
        mine = os.stat("/")
    except FileNotFoundError:
        raise NoSuchProcess(pid) from None
    except OSError:
        return None  # its root cannot be read (no permission): the attach's own checks say so
    if (theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino):
        return None
    try:
        if os.readlink("/proc/self/ns/mnt") != os.readlink(f"/proc/{pid}/ns/mnt"):
            return None
        path = os.readlink(f"/proc/{pid}/root")
        here = os.stat(path)
    except OSError:
        here = None
    if here is None or (here.st_dev, here.st_ino) != (theirs.st_dev, theirs.st_ino):
        raise ShimNotLoadable(
            f"pid {pid} runs chrooted into a directory that no longer has a path (moved or removed): "
            f"tlsprof cannot give it a copy of the shim"
        )
    return path


def inside(jail: str | None, path: str) -> str:
    """`path` (ours, under `jail`) as the jailed process names it."""
    if not jail:
        return path
    rel = os.path.relpath(path, jail)
    if rel.startswith(".."):
        raise ValueError(f"{path} is not inside {jail}")
    return "/" + ("" if rel == "." else rel)


def channel_dir(pid: int, uid: int, create: bool) -> str:
    """The channel directory (our path) of a process of `uid`: /tmp/tlsprof-<uid>, or its twin at
    the root of the jail `pid` chrooted into. `create`: made (and checked) as channel_dir_for does."""
    jail = root_of(pid)
    if create:
        path = channel_paths.channel_dir_for(uid, base=jail)
    else:
        path = channel_paths.channel_dir_path(uid, base=jail)
    if jail and len(path) > _MAX_OUTSIDE_DIR:  # a deep jail: reach it through the process's root
        path = f"/proc/{int(pid)}/root" + inside(jail, path)
    return path


def target_view(pid: int, path: str) -> str:
    """Our `path` (under `pid`'s jail, or through /proc/PID/root) as process `pid` names it."""
    prefix = f"/proc/{int(pid)}/root/"
    if path.startswith(prefix):
        return "/" + path[len(prefix) :]
    return inside(root_of(pid), path)


def tidy(directories) -> None:
    """At the end of a session: the channel directories made inside jails, removed once empty (a
    shim still serving keeps its socket there); the ones in /tmp are left as always."""
    for path in set(directories):
        if os.path.dirname(path) == channel_paths.BASE:
            continue
        try:
            os.rmdir(path)
        except OSError:
            pass


def jailed_channel_dirs(root_pid: int) -> list:
    """(directory, uid) where the chrooted processes under `root_pid` serve (`tlsprof run`): a shim
    that can reach neither the run's directory nor /tmp from its jail serves at the jail's root
    (hooks/main.c, a daemon forked after chroot and setuid: stunnel's default). Symlinks to their
    sockets go into the run's directory (channel_paths.link_switched_uid_sockets)."""
    out = []
    for pid in process_tree.descendants(root_pid):
        try:
            root = root_of(pid)
            if not root:
                continue
            with open(f"/proc/{int(pid)}/status") as f:
                uid = next(int(line.split()[2]) for line in f if line.startswith("Uid:"))
        except (OSError, StopIteration, ValueError, ShimNotLoadable, NoSuchProcess):
            continue
        path = channel_paths.channel_dir_path(uid, base=root)
        if (path, uid) not in out:
            out.append((path, uid))
    return out
