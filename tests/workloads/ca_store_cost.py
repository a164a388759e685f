"""Independent measure of one CA store's heap cost, without tlsprof: mallinfo2 around
load_default_certs() of fresh server contexts (the same calls examples/echo_server.py --ctx-per-conn
makes). Prints the median bytes (in-use chunk sizes, i.e. usable size + glibc's 8-byte header)."""

import ctypes
import ssl
import statistics


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2


def in_use():
    m = libc.mallinfo2()
    return m.uordblks + m.hblkhd


warm = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
warm.load_default_certs()  # provider and method caches are built once per process
keep, deltas = [], []
for _ in range(15):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    before = in_use()
    ctx.load_default_certs()
    deltas.append(in_use() - before)
    keep.append(ctx)
print(int(statistics.median(deltas)))
