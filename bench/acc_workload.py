"""Deterministic OpenSSL workload for bench_accuracy.py: contexts, in-memory TLS connections
(ssl.SSLObject over MemoryBIO, no sockets, no threads), data, then teardown. At each checkpoint it
prints one JSON line with the live OpenSSL bytes seen by whichever counter is loaded: the bench's
count_preload.so (bench_count_live) and/or the tlsprof shim (its channel, TLSPROF_DIR/<pid>.sock).

    python bench/acc_workload.py --certdir DIR [--contexts 4] [--conns 50]
"""

import argparse
import ctypes
import gc
import json
import os
import ssl
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))
from certs import ensure_cert  # noqa: E402


def counter_live():
    try:
        fn = ctypes.CDLL(None).bench_count_live
    except AttributeError:
        return None
    b, n, c = ctypes.c_int64(), ctypes.c_int64(), ctypes.c_int64()
    fn(ctypes.byref(b), ctypes.byref(n), ctypes.byref(c))
    return {"bytes": b.value, "blocks": n.value, "calls": c.value}


def tlsprof_live():
    d = os.environ.get("TLSPROF_DIR")
    if not d:
        return None
    sys.path.insert(0, os.path.dirname(HERE))
    from tlsprof.collect import client

    snap = client.snapshot(os.path.join(d, f"{os.getpid()}.sock"), timeout=30)
    return {
        "bytes": snap.live_bytes,
        "blocks": sum(o.live_blocks for o in snap.owners),
        "untracked_bytes": snap.stats.get("untracked_bytes", 0),
    }


def checkpoint(name):
    gc.collect()
    print(json.dumps({"checkpoint": name, "counter": counter_live(), "tlsprof": tlsprof_live()}), flush=True)


def pump(a, b):
    """Move bytes between two SSLObjects' BIOs until neither has anything to say."""
    moved = True
    while moved:
        moved = False
        for src, dst in ((a, b), (b, a)):
            data = src[2].read()
            if data:
                dst[1].write(data)
                moved = True


def handshake(cctx, sctx):
    c = (None, ssl.MemoryBIO(), ssl.MemoryBIO())
    s = (None, ssl.MemoryBIO(), ssl.MemoryBIO())
    cobj = cctx.wrap_bio(c[1], c[2], server_side=False, server_hostname="localhost")
    sobj = sctx.wrap_bio(s[1], s[2], server_side=True)
    c, s = (cobj, c[1], c[2]), (sobj, s[1], s[2])
    for _ in range(20):
        done = 0
        for obj in (cobj, sobj):
            try:
                obj.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        pump(c, s)
        if done == 2:
            break
    else:
        raise RuntimeError("handshake did not finish")
    return c, s


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--certdir", required=True)
    p.add_argument("--contexts", type=int, default=4)
    p.add_argument("--conns", type=int, default=50)
    a = p.parse_args()
    cert, key = ensure_cert(a.certdir)
    checkpoint("start")
    ctxs = [ssl.create_default_context() for _ in range(a.contexts)]  # system CA store each
    checkpoint("contexts")
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(cert, key)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    pairs = [handshake(cctx, sctx) for _ in range(a.conns)]
    checkpoint("connections")
    payload = b"x" * 10000
    for c, s in pairs:
        c[0].write(payload)
        pump(c, s)
        got = b""
        while len(got) < len(payload):
            got += s[0].read(65536)
        s[0].write(got)
        pump(c, s)
        while c[0].pending() or c[1].pending:
            c[0].read(65536)
    checkpoint("data")
    del pairs[: a.conns // 2]
    del ctxs[: a.contexts // 2]
    checkpoint("half_closed")
    del pairs[:], ctxs[:]
    checkpoint("all_closed")


if __name__ == "__main__":
    main()
