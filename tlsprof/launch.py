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


def spawn(cmd, channel_dir: str, tracemalloc=False, **popen_kwargs) -> subprocess.Popen:
    if not cmd:
        raise LaunchError("no command given: use `tlsprof run -- CMD [ARGS...]`")
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
