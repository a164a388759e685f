"""The requested size a block keeps in 16 bits under the `requested` byte measure (hooks/measure.h
size_encode/size_decode): exact below 32 KiB, never under-counted and at most 0.1 % high up to
2 GiB. The two functions are compiled from the shim's own source and checked over the range."""

import re
import shutil
import subprocess

import pytest

from tlsenv import REPO_ROOT

CHECK = r"""
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
%s
int main(void)
{
    double worst = 0;
    for (size_t n = 1; n <= (size_t)0x7ff << 20; n = n < 100000 ? n + 1 : n + n / 977 + 1) {
        size_t d = size_decode(size_encode(n));
        if (d < n || (n < 0x8000 && d != n)) {
            printf("BAD %%zu %%zu\n", n, d);
            return 1;
        }
        if ((double)(d - n) / n > worst) worst = (double)(d - n) / n;
    }
    printf("%%.6f\n", worst);
    return 0;
}
"""


def _function(source: str, name: str) -> str:
    """The definition of `static inline ... name(...)` in source, to its matching brace (one line
    or many: whatever layout clang-format gives it)."""
    start = re.search(r"static inline \w+ %s\(" % name, source).start()
    depth, i = 0, source.index("{", start)
    while True:
        depth += {"{": 1, "}": -1}.get(source[i], 0)
        if depth == 0:
            return source[start : i + 1] + "\n"
        i += 1


@pytest.mark.skipif(not shutil.which("cc"), reason="needs a C compiler")
def test_requested_sizes_round_trip_through_16_bits(tmp_path):
    with open(f"{REPO_ROOT}/hooks/measure.h") as f:
        source = f.read()
    functions = [_function(source, name) for name in ("size_encode", "size_decode")]
    program = tmp_path / "check.c"
    program.write_text(CHECK % "\n".join(functions))
    subprocess.run(
        ["cc", "-O2", "-Wall", "-Werror", "-o", str(tmp_path / "check"), str(program)], check=True, timeout=120
    )
    out = subprocess.run([str(tmp_path / "check")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout
    assert float(out.stdout) <= 0.001
