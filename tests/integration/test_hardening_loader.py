"""The shim never deadlocks with the dynamic loader. A snapshot walks the loaded objects
(dl_iterate_phdr) while the target's threads dlopen/dlclose: a callback that asked the loader
anything (dladdr) inverted the loader's two locks and froze the target (seen once in 29 starts of
the threaded echo server, at Python's import of _lzma)."""

import os
import subprocess
import sys

import pytest

TLSPROF = [sys.executable, "-m", "tlsprof"]

WORKLOAD = r"""
import _ctypes, os, sys, time
# no `import ssl`: until libcrypto is loaded, every snapshot looks for it among the loaded objects
for name in ("liblzma.so.5", "libbz2.so.1.0", "libexpat.so.1", "libz.so.1"):
    try:
        _ctypes.dlclose(_ctypes.dlopen(name, os.RTLD_NOW))
        lib = name
        break
    except OSError:
        continue
end, n = time.monotonic() + float(sys.argv[1]), 0
while time.monotonic() < end:
    handle = _ctypes.dlopen(lib, os.RTLD_NOW | os.RTLD_LOCAL)  # a new mapping each time: the write lock
    _ctypes.dlclose(handle)
    n += 1
print(lib, n, flush=True)
"""


@pytest.mark.timeout(120)
def test_snapshots_while_the_target_loads_and_unloads_libraries_never_deadlock(tmp_path):
    script = tmp_path / "dlopen_loop.py"
    script.write_text(WORKLOAD)
    out = subprocess.run(
        [*TLSPROF, "run", "--interval", "0.05", "-o", str(tmp_path / "r.json"), "--", sys.executable, str(script), "8"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr
    lib, n = out.stdout.split()
    assert int(n) > 100  # the loader was busy the whole time
    assert os.path.exists(tmp_path / "r.json")
