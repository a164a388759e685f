"""Starts a command with the shim preloaded and a private channel directory."""
import os
import subprocess
import tempfile

from tlsprof.errors import LaunchError
from tlsprof.shim import shim_path


def private_dir(prefix="tlsprof-run-") -> str:
    return tempfile.mkdtemp(prefix=prefix)  # mode 0700, ours: the shim refuses anything else


def preload_env(channel_dir: str, base=None, tracemalloc=False) -> dict:
    env = dict(os.environ if base is None else base)
    lib = shim_path()
    current = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = lib + (":" + current if current else "")
    env["TLSPROF_DIR"] = channel_dir
    # Python targets: tlsprof's sitecustomize starts the in-target agent (tlsprof/agent/)
    from tlsprof.agent import site_dir
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = site_dir() + (os.pathsep + path if path else "")
    if tracemalloc:
        env["TLSPROF_TRACEMALLOC"] = "1"
    return env


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
    try:
        return subprocess.Popen(cmd, env=preload_env(channel_dir, tracemalloc=tracemalloc), **popen_kwargs)
    except FileNotFoundError:
        raise LaunchError(f"cannot run {cmd[0]!r}: no such file or command") from None
    except PermissionError:
        err = LaunchError(f"cannot run {cmd[0]!r}: permission denied")
        err.exit_code = 126
        raise err from None
    except OSError as exc:
        raise LaunchError(f"cannot run {cmd[0]!r}: {exc.strerror}") from None
