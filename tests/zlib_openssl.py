"""An OpenSSL 3.0.x built with enable-zlib, for tests of the seed's TLS-compression case.

Debian's libssl is `no-zlib`; scripts/build-zlib-openssl.sh builds one from Debian's source archive
into <repo>/.cache/openssl-zlib/lib (a few minutes, once; later runs exit at once).

    libdir = zlib_openssl_libdir()          # path, or None (then zlib_openssl_skip_reason() says why)
    subprocess.Popen([...], env=zlib_env())  # LD_LIBRARY_PATH points at it

The build is skipped only when TLSPROF_SKIP_ZLIB_BUILD=1 (an existing build is still used). In CI (CI=true) a failed build is an
error, never a skip. Elsewhere (a developer without root, say) a failed build returns None with the
reason, so tests can skip with it.
"""

import os
import subprocess
import threading

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, "scripts", "build-zlib-openssl.sh")
CACHE_DIR = os.environ.get("TLSPROF_ZLIB_CACHE") or os.path.join(REPO_ROOT, ".cache", "openssl-zlib")
LIBS = ("libssl.so.3", "libcrypto.so.3")
BUILD_TIMEOUT = 3600  # seconds; the build takes a few minutes on 2 cores

_lock = threading.Lock()
_result = None  # (libdir or None, reason): the script runs at most once per session


class ZlibBuildError(RuntimeError):
    """The zlib OpenSSL could not be built where it must be (CI)."""


def _in_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _libdir_ready():
    libdir = os.path.join(CACHE_DIR, "lib")
    return all(os.path.isfile(os.path.join(libdir, lib)) for lib in LIBS), libdir


def _build():
    if os.environ.get("TLSPROF_SKIP_ZLIB_BUILD") == "1":
        ready, libdir = _libdir_ready()  # an earlier build is still used
        if ready:
            return libdir, ""
        return None, "TLSPROF_SKIP_ZLIB_BUILD=1: not building OpenSSL with zlib"
    try:
        proc = subprocess.run(
            ["bash", SCRIPT, CACHE_DIR],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=BUILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return None, f"{SCRIPT} did not finish in {BUILD_TIMEOUT}s"
    ready, libdir = _libdir_ready()
    if proc.returncode == 0 and ready:
        return libdir, ""
    tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
    return None, f"{SCRIPT} failed (exit {proc.returncode}):\n{tail}"


def zlib_openssl_libdir(build=True):
    """Directory holding libssl.so.3/libcrypto.so.3 with zlib, or None (see zlib_openssl_skip_reason).

    build=False only looks at the cache. In CI a failed build raises ZlibBuildError."""
    global _result
    if not build:
        ready, libdir = _libdir_ready()
        return libdir if ready else None
    with _lock:
        if _result is None:
            _result = _build()
        libdir, reason = _result
    if libdir is None and _in_ci() and os.environ.get("TLSPROF_SKIP_ZLIB_BUILD") != "1":
        raise ZlibBuildError(reason)
    return libdir


def zlib_openssl_skip_reason():
    """Why zlib_openssl_libdir() returned None ("" if it did not or has not run)."""
    return _result[1] if _result else ""


def zlib_env(base=None):
    """A copy of `base` (default os.environ) whose LD_LIBRARY_PATH finds the zlib OpenSSL first."""
    libdir = zlib_openssl_libdir()
    if libdir is None:
        raise ZlibBuildError(zlib_openssl_skip_reason() or "no zlib OpenSSL")
    env = dict(os.environ if base is None else base)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    return env
