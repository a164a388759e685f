"""Shared helpers for the benchmarks: paths, the tools compared, alternating rounds, statistics.

Benchmarks print ratios measured in one run and never fail on timing: every figure is reported with
its goal and a verdict word ("meets"/"misses"), and the exit status is 0 unless a benchmark could
not run at all. Processes are started through tests/tlsenv.py (stopped by pid, bounded waits).
"""

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
VENV_BIN = os.path.dirname(sys.executable)
for p in (REPO_ROOT, os.path.join(REPO_ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

import psutil  # noqa: E402
import tlsenv  # noqa: E402  (tests/tlsenv.py: real servers and clients on loopback, stopped by pid)

ECHO_SERVER = tlsenv.ECHO_SERVER


def tlsprof_bin():
    exe = os.path.join(VENV_BIN, "tlsprof")
    return exe if os.path.exists(exe) else shutil.which("tlsprof")


def wait_channel_socket(channel_dir, pid, timeout=20):
    """The shim's channel socket of pid in channel_dir, once it exists (RuntimeError after timeout)."""
    sock = os.path.join(channel_dir, f"{pid}.sock")
    deadline = time.monotonic() + timeout
    while not os.path.exists(sock):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no channel socket {sock}")
        time.sleep(0.05)
    return sock


def memray_available(install=True):
    """memray importable in this interpreter; installs it on demand (bench-only dependency)."""
    probe = [sys.executable, "-c", "import memray"]
    if subprocess.run(probe, capture_output=True).returncode == 0:
        return True, None
    if install:
        r = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "memray"], capture_output=True, text=True
        )
        if r.returncode == 0 and subprocess.run(probe, capture_output=True).returncode == 0:
            return True, None
        return False, "memray could not be installed: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    return False, "memray not installed"


def heaptrack_available():
    return (True, None) if shutil.which("heaptrack") else (False, "heaptrack not installed")


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def summary(xs):
    """{median, min, max, n} of a list of numbers."""
    return {"median": median(xs), "min": min(xs) if xs else None, "max": max(xs) if xs else None, "n": len(xs)}


def rotate(modes, r):
    """Order of the modes in round r: rotated each round so no mode always goes first."""
    k = r % len(modes)
    return modes[k:] + modes[:k]


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    osrel = "?"
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    osrel = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    import hashlib
    import ssl

    shim = "?"
    try:
        from tlsprof.collect.shim import shim_path

        h = hashlib.sha256()
        for path in (shim_path(preload=True), shim_path()):  # what `run` preloads, what `attach` injects
            with open(path, "rb") as f:
                h.update(f.read())
        shim = h.hexdigest()[:12]
    except Exception:
        pass
    head = subprocess.run(
        ["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "loadavg_at_save": [round(x, 2) for x in os.getloadavg()],
        "git_head": head,
        "shim_sha256": shim,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": osrel,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
    }


def verdict(value, goal, higher_is_better=True):
    if value is None or goal is None:
        return "n/a"
    ok = value >= goal if higher_is_better else value <= goal
    return "meets" if ok else "misses"


def save(name, data):
    os.makedirs(RESULTS_DIR, exist_ok=True)
    data = dict(data)
    data.setdefault("machine", machine())
    data.setdefault("when", time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"[{name}] results written to {os.path.relpath(path, REPO_ROOT)}", flush=True)
    return path


def fmt_ratio(r):
    return "n/a" if r is None else f"{r:.3f}x"


def cpu_seconds(pid):
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def tree_cpu_seconds(pid):
    """CPU of a process and its descendants (e.g. heaptrack's interpreter beside the target)."""
    total = 0.0
    try:
        me = psutil.Process(pid)
        for p in [me] + me.children(recursive=True):
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total
