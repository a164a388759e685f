"""Where the shim's time goes: perf profile of the tracked echo server under handshake load.

    python bench/profile_shim.py [--threaded] [-n 3000] [--top 25]

Starts the server under `tlsprof run`, records it with `perf record -F 1999 -g` while hsload runs,
then prints the shares by shared object and the top symbols of the shim (_shim*.so). Needs perf.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import _servers
import hsload


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threaded", action="store_true")
    p.add_argument("-n", type=int, default=3000)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--mode", default="tlsprof")
    a = p.parse_args(argv)
    if not shutil.which("perf"):
        print("skipped: perf not installed")
        return 0
    work = tempfile.mkdtemp(prefix="tlsprof-perf-")
    data = os.path.join(work, "perf.data")
    server = _servers.start(a.mode, *(["--threaded"] if a.threaded else []))
    try:
        pid = server.target_pid()
        hsload.run(server.port, 100, 10)
        rec = subprocess.Popen(
            ["perf", "record", "-q", "-F", "1999", "-g", "-o", data, "-p", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        r = hsload.run(server.port, a.n, 10)
        rec.send_signal(signal.SIGINT)
        rec.wait(60)
        print(f"{r['per_s']:.0f} handshakes/s while recording")
    finally:
        _servers.stop(server)
    for sort in ("dso", "dso,sym"):
        out = subprocess.run(
            [
                "perf",
                "report",
                "-i",
                data,
                "--no-children",
                "--sort",
                sort,
                "--stdio",
                "-g",
                "none",
                "--percent-limit",
                "0.3",
            ],
            capture_output=True,
            text=True,
        ).stdout
        lines = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("#")]
        if sort == "dso":
            print("--- self time by object ---")
            print("\n".join(lines[:12]))
        else:
            print("--- top symbols (self) ---")
            print("\n".join(lines[: a.top]))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
