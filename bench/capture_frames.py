"""The creation capture's frame walk (tlsprof/agent/capture.py frames()) in microseconds per call,
for a stack made from one place again and again (a server's connections), at two depths; with
--against REV, capture.py of that git revision beside it, alternating in one process.

    python bench/capture_frames.py [--against HEAD~1] [--rounds 7]
"""

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

import _common  # noqa: F401 (puts the repository on sys.path)

from tlsprof.agent import capture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module_at(rev):
    text = subprocess.run(
        ["git", "-C", ROOT, "show", f"{rev}:tlsprof/agent/capture.py"], capture_output=True, text=True, check=True
    ).stdout
    path = os.path.join(tempfile.mkdtemp(prefix="tlsprof-capture-"), "capture_at_rev.py")
    with open(path, "w") as f:
        f.write(text)
    spec = importlib.util.spec_from_file_location("capture_at_rev", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module._AGENT_DIR = capture._AGENT_DIR  # the agent's own frames are the same files
    return module


def _per_call(depth, fn, reps):
    if depth:
        return _per_call(depth - 1, fn, reps)
    frame = sys._getframe(1)
    t = time.perf_counter()
    for _ in range(reps):
        fn(frame)
    return (time.perf_counter() - t) / reps * 1e6


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--reps", type=int, default=10000)
    a = p.parse_args(argv)
    versions = {"now": capture.frames}
    if a.against:
        versions[a.against] = _module_at(a.against).frames
    results = {}
    for depth in (5, 25):
        times = {name: [] for name in versions}
        for _ in range(a.rounds):
            for name, fn in versions.items():
                times[name].append(_per_call(depth, fn, a.reps))
        results[depth] = {name: statistics.median(v) for name, v in times.items()}
        print(f"  stack {depth} deep: " + ", ".join(f"{n} {us:.2f} us" for n, us in results[depth].items()))
    _common.save("capture_frames", {"params": vars(a), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
