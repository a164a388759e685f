"""Other OpenSSL series than the system's, for tests of the versions users run (issue 20).

scripts/build-openssl.sh SERIES builds one from Debian's source archive into
<repo>/.cache/openssl-SERIES (minutes, once; later runs exit at once):

    build = openssl_build("3.5")        # an OpenSSLBuild, or pytest.skip with the reason
    build.libdir, build.include, build.openssl_app, build.version
    subprocess.Popen([...], env=build.env())   # LD_LIBRARY_PATH finds it first

3.5 has 3.0's soname (libssl.so.3), so Python's _ssl loads it through LD_LIBRARY_PATH; 1.1.1
(libssl.so.1.1) is used by C programs compiled with -I/-L against it, and by its `openssl` app.

The build is skipped only when TLSPROF_SKIP_OPENSSL_BUILDS=1 (an existing build is still used). In CI
(CI=true) a failed build is an error, never a skip. Elsewhere a failed build skips with the reason.
"""

import dataclasses
import os
import subprocess
import threading

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, "scripts", "build-openssl.sh")
SONAMES = {"3.5": "3", "3.0": "3", "1.1.1": "1.1"}
BUILD_TIMEOUT = 3600  # seconds; a build takes 5-20 minutes on 2 busy cores

_lock = threading.Lock()
_results = {}  # series -> (OpenSSLBuild or None, reason): the script runs at most once per session


class OpenSSLBuildError(RuntimeError):
    """An OpenSSL series could not be built where it must be (CI)."""


@dataclasses.dataclass(frozen=True)
class OpenSSLBuild:
    series: str
    prefix: str
    version: str  # "3.5.7", "1.1.1w": from the build's stamp

    @property
    def libdir(self):
        return os.path.join(self.prefix, "lib")

    @property
    def include(self):
        return os.path.join(self.prefix, "include")

    @property
    def openssl_app(self):
        path = os.path.join(self.prefix, "bin", "openssl")
        return path if os.access(path, os.X_OK) else None

    def env(self, base=None):
        """A copy of `base` (default os.environ) whose LD_LIBRARY_PATH finds this build first."""
        env = dict(os.environ if base is None else base)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (self.libdir, env.get("LD_LIBRARY_PATH", "")) if p)
        return env


def cache_dir(series):
    return os.path.join(
        os.environ.get("TLSPROF_OPENSSL_CACHE") or os.path.join(REPO_ROOT, ".cache"), f"openssl-{series}"
    )


def _in_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _ready(series):
    prefix = cache_dir(series)
    libs = [os.path.join(prefix, "lib", f"{name}.so.{SONAMES[series]}") for name in ("libssl", "libcrypto")]
    stamp = os.path.join(prefix, "stamp")
    if not (all(map(os.path.isfile, libs)) and os.path.isfile(stamp)):
        return None
    with open(stamp) as f:
        lines = f.read().splitlines()
    version = lines[1].split()[-1] if len(lines) > 1 else "?"
    return OpenSSLBuild(series, prefix, version)


def _build(series):
    if os.environ.get("TLSPROF_SKIP_OPENSSL_BUILDS") == "1":
        found = _ready(series)  # an earlier build is still used
        return (found, "") if found else (None, f"TLSPROF_SKIP_OPENSSL_BUILDS=1: not building OpenSSL {series}")
    try:
        proc = subprocess.run(
            ["bash", SCRIPT, series, cache_dir(series)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=BUILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return None, f"{SCRIPT} {series} did not finish in {BUILD_TIMEOUT}s"
    found = _ready(series)
    if proc.returncode == 0 and found:
        return found, ""
    tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
    return None, f"{SCRIPT} {series} failed (exit {proc.returncode}):\n{tail}"


def openssl_build(series):
    """The cached build of `series` (built now if missing). Skips the calling test when it cannot be
    built, except in CI (and without TLSPROF_SKIP_OPENSSL_BUILDS=1), where it raises."""
    with _lock:
        if series not in _results:
            _results[series] = _build(series)
        found, reason = _results[series]
    if found is None:
        if _in_ci() and os.environ.get("TLSPROF_SKIP_OPENSSL_BUILDS") != "1":
            raise OpenSSLBuildError(reason)
        pytest.skip(reason)
    return found
