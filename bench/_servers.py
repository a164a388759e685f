"""Starts the seed echo server bare or under a profiler; stops it by pid (tests/tlsenv.py)."""

import os
import shutil
import sys
import tempfile

import _common  # noqa: F401  (sys.path)
import tlsenv

MODES = ("bare", "preload", "tlsprof", "memray", "heaptrack")


def start(mode, *server_args, workdir=None, env=None, wrapper=()):
    """Echo server in `mode`; returns a tlsenv.ServerProc with .port and .out (profiler output)."""
    workdir = workdir or tempfile.mkdtemp(prefix="tlsprof-bench-")
    certdir = tlsenv.default_certdir()
    args = ["--host", "127.0.0.1", "--port", "0", "--ready-file", "{ready}", "--certdir", certdir, *server_args]
    out = None
    if mode == "bare":
        argv = [*wrapper, sys.executable, tlsenv.ECHO_SERVER, *args]
    elif mode == "preload":  # the shim alone, no Python agent and nobody polling: what `run` adds beside it
        from tlsprof.collect.shim import shim_path

        channel = tempfile.mkdtemp(prefix="tlsprof-bench-chan-")
        env = {**(env or os.environ), "LD_PRELOAD": shim_path(preload=True), "TLSPROF_DIR": channel}
        argv = [*wrapper, sys.executable, tlsenv.ECHO_SERVER, *args]
    elif mode == "tlsprof":
        out = os.path.join(workdir, "tlsprof.json")
        argv = [_common.tlsprof_bin(), "run", "-o", out, "--", sys.executable, tlsenv.ECHO_SERVER, *args]
    elif mode == "memray":
        out = os.path.join(workdir, "memray.bin")
        argv = [sys.executable, "-m", "memray", "run", "--native", "-q", "-f", "-o", out, tlsenv.ECHO_SERVER, *args]
    elif mode == "heaptrack":
        out = os.path.join(workdir, "heaptrack")
        argv = [shutil.which("heaptrack"), "-o", out, sys.executable, tlsenv.ECHO_SERVER, *args]
    else:
        raise ValueError(mode)
    server = tlsenv.ServerProc(argv, env=env, script=tlsenv.ECHO_SERVER)
    try:
        server.port = int(server.wait_ready(120))
    except BaseException:
        server.stop()
        raise
    server.out = out
    server.workdir = workdir
    return server


def stop(server, cleanup=True):
    """SIGTERM the example itself (a wrapper then writes its output), then the wrapper by pid."""
    rc = server.stop_target(grace=60)
    if cleanup:
        shutil.rmtree(server.workdir, ignore_errors=True)
    return rc
