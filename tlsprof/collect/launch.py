"""Starts a command with the shim preloaded and a private channel directory."""

import os
import subprocess
import tempfile
import threading

from tlsprof.collect import channel_paths, jail, shim_copy
from tlsprof.collect.shim import shim_path
from tlsprof.collect.target import become_subreaper
from tlsprof.errors import LaunchError

UID_BRIDGE_PERIOD_S = 0.2
_bundles = []  # held for as long as tlsprof runs: a child may exec a preloaded program any time


def private_dir(prefix="tlsprof-run-") -> str:
    """A new directory of mode 0700, ours (the shim refuses anything else), in TMPDIR when the
    sockets' paths fit there, else in /tmp: a Unix socket's path is at most 107 bytes, and the shim
    gives up on a longer directory (hooks/channel.c) without a word, which would leave the session
    without a single snapshot."""
    base = tempfile.gettempdir()
    if len(os.path.join(base, prefix + "x" * 8)) > channel_paths.MAX_DIR_LEN:
        base = channel_paths.BASE
    return tempfile.mkdtemp(prefix=prefix, dir=base)


def _bundle():
    if not _bundles:
        _bundles.append(shim_copy.for_anyone(shim_path(preload=True)))
    return _bundles[0]


def preload_env(channel_dir: str, base=None, tracemalloc=False) -> dict:
    """The environment of a profiled command. The shim and the agent's site directory are the
    installed files when anyone can read them, else a copy anyone can (tlsprof/collect/shim_copy.py): the
    command may switch users before exec (setpriv, runuser), and the loader refuses a preload
    path its new user cannot open."""
    env = dict(os.environ if base is None else base)
    bundle = _bundle()
    current = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = bundle.shim + (":" + current if current else "")
    env["TLSPROF_DIR"] = channel_dir
    # a process that switched users cannot enter channel_dir: it serves in its own user's private
    # directory under this base instead (hooks/main.c, agent/site/sitecustomize.py)
    env["TLSPROF_UID_DIRS"] = channel_paths.BASE
    # Python targets: tlsprof's sitecustomize starts the in-target agent (tlsprof/agent/)
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = bundle.site_dir + (os.pathsep + path if path else "")
    if tracemalloc:
        env["TLSPROF_TRACEMALLOC"] = "1"
    return env


def _bridge_switched_users(channel_dir: str) -> None:
    """Root only: link the sockets of tree processes that switched users into channel_dir (see
    channel_paths.link_switched_uid_sockets) until the session ends. The tree is tlsprof's: the
    command's, and what a daemonizing command left behind (tlsprof adopts it, target.py)."""
    stop = threading.Event()

    def loop():
        while os.path.isdir(channel_dir) and not stop.wait(UID_BRIDGE_PERIOD_S):
            try:
                jailed = jail.jailed_channel_dirs(os.getpid())
                channel_paths.link_switched_uid_sockets(channel_dir, os.getpid(), jailed)
            except OSError:
                pass  # the run directory is gone: the session is over

    threading.Thread(target=loop, name="tlsprof-uid-bridge", daemon=True).start()


def as_user(name: str, channel_dir: str) -> dict:
    """Popen arguments that start the command as user `name` (tlsprof runs as root): services such as
    PostgreSQL refuse root. The shim serves only from a private directory owned by its own uid, so
    the channel directory is handed to that user; root still reaches the sockets."""
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        err = LaunchError(f"--user: no such user {name!r}")
        err.exit_code = 2
        raise err from None
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        err = LaunchError(f"--user {name}: only root can start a command as another user")
        err.exit_code = 4
        raise err
    os.chown(channel_dir, entry.pw_uid, entry.pw_gid)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": os.getgrouplist(name, entry.pw_gid)}


def spawn(cmd, channel_dir: str, tracemalloc=False, user=None, **popen_kwargs) -> subprocess.Popen:
    if not cmd:
        raise LaunchError("no command given: use `tlsprof run -- CMD [ARGS...]`")
    if user:
        popen_kwargs.update(as_user(user, channel_dir))
    env = preload_env(channel_dir, tracemalloc=tracemalloc)
    become_subreaper()  # a daemonizing command's processes stay in our tree
    try:
        proc = subprocess.Popen(cmd, env=env, **popen_kwargs)
    except FileNotFoundError:
        raise LaunchError(f"cannot run {cmd[0]!r}: no such file or command") from None
    except PermissionError:
        err = LaunchError(f"cannot run {cmd[0]!r}: permission denied")
        err.exit_code = 126
        raise err from None
    except OSError as exc:
        raise LaunchError(f"cannot run {cmd[0]!r}: {exc.strerror}") from None
    if os.geteuid() == 0:
        _bridge_switched_users(channel_dir)
    return proc
