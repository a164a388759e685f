"""Build the shim's sources (hooks/*.c) with a sanitizer into a separate .so, outside the package.

    python tests/shim_harness/build.py thread|address OUT.so

`preload(kind, so)` gives the LD_PRELOAD value: the sanitizer runtime first (it must come before
libc's allocator for ASan and before any thread for TSan), then the sanitized shim.
"""

import glob
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNTIMES = {"thread": "libtsan.so", "address": "libasan.so"}
FLAGS = {"thread": ["-fsanitize=thread"], "address": ["-fsanitize=address"]}


def runtime(kind):
    """Absolute path of the sanitizer runtime gcc links against, or None."""
    gcc = shutil.which("gcc")
    if not gcc:
        return None
    out = subprocess.run([gcc, f"-print-file-name={RUNTIMES[kind]}"], capture_output=True, text=True).stdout.strip()
    return os.path.realpath(out) if out and os.path.isabs(out) and os.path.exists(out) else None


def build(kind, out):
    srcs = sorted(glob.glob(os.path.join(REPO, "hooks", "*.c")))
    cmd = [
        "gcc",
        "-shared",
        "-fPIC",
        "-std=gnu11",
        "-O1",
        "-g",
        "-fno-omit-frame-pointer",
        "-fvisibility=hidden",
        *FLAGS[kind],
        *srcs,
        "-o",
        out,
        "-ldl",
        "-lpthread",
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return out


def preload(kind, so):
    return f"{runtime(kind)}:{so}"


if __name__ == "__main__":
    print(build(sys.argv[1], sys.argv[2]))
