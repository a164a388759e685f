"""A/B of two shim builds on the allocator-heavy path: in-process memory-BIO handshakes (client and
server in one thread, every OpenSSL allocation of both sides tracked), CPU time per handshake pair.

    python bench/shim_ab.py --a OLD.so --b NEW.so [--rounds 14] [-n 300]
    python bench/shim_ab.py --a OLD.so --b NEW.so --server asyncio|threaded [--rounds 10] [-n 1500]
    python bench/shim_ab.py --a OLD.so --b NEW.so --ctx [--rounds 10] [-n 20]

With --ctx: ssl.create_default_context() n times a run (each context kept, as overhead_goals.py's
ctx row does), CPU per context.

With --server: the seed echo server started with each shim preloaded (no Python agent), loaded
with `hsload` handshakes; the figure is the server's CPU per handshake.

Bare, A and B run in turn in fresh processes, the order rotated each round; the figure to trust is
the median of the per-round paired ratios (this VM's speed swings by 2x between minutes, and a
pair of runs a second apart shares the swing). Keep a copy of the installed shim
(tlsprof/_shim*.so) before rebuilding to compare a change with what it replaces.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

import _common

LOOP = r"""
import ssl, sys, time
crt, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
sctx.load_cert_chain(crt, key)
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
cctx.check_hostname = False
cctx.verify_mode = ssl.CERT_NONE

def pump(src, dst):
    data = src.read()
    if data:
        dst.write(data)

def handshake():
    ci, co, si, so = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c, s = cctx.wrap_bio(ci, co), sctx.wrap_bio(si, so, server_side=True)
    pending = [(c, co, si), (s, so, ci)]  # (side, its outgoing BIO, the peer's incoming BIO)
    for _ in range(20):
        for side, out, peer_in in list(pending):
            try:
                side.do_handshake()
                pending.remove((side, out, peer_in))
            except ssl.SSLWantReadError:
                pass
            pump(out, peer_in)
        if not pending:
            break
    c.write(b"x" * 100)
    pump(co, si)
    assert s.read(100) == b"x" * 100

for _ in range(50):
    handshake()
t0 = time.process_time()
for _ in range(n):
    handshake()
print((time.process_time() - t0) / n * 1e6)
"""


CTX_LOOP = r"""
import ssl, sys, time
n = int(sys.argv[3])
ssl.create_default_context()  # one-time library and provider set-up, outside the timing
keep = []
t0 = time.process_time()
for _ in range(n):
    keep.append(ssl.create_default_context())
print((time.process_time() - t0) / n * 1e6)
"""


def _server_cpu(lib, chan, threaded, n):
    """CPU ms per handshake of the echo server with `lib` preloaded (None: bare)."""
    import _servers
    import hsload

    env = {"LD_PRELOAD": lib, "TLSPROF_DIR": chan} if lib else None
    server = _servers.start("bare", *(["--threaded"] if threaded else []), env=env)
    try:
        pid = server.target_pid()
        hsload.run(server.port, 100, 10)
        c0 = _common.cpu_seconds(pid)
        res = hsload.run(server.port, n, 10)
        return 1000 * (_common.cpu_seconds(pid) - c0) / max(1, res["handshakes"])
    finally:
        _servers.stop(server)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", required=True, help="shim A (.so)")
    p.add_argument("--b", required=True, help="shim B (.so)")
    p.add_argument("--rounds", type=int, default=14)
    p.add_argument("-n", type=int, default=None, help="handshake pairs per run (300; --server: 1500 handshakes)")
    p.add_argument("--server", choices=("asyncio", "threaded"), help="measure the echo server instead")
    p.add_argument("--ctx", action="store_true", help="measure create_default_context() instead")
    a = p.parse_args(argv)
    a.n = a.n or (1500 if a.server else 20 if a.ctx else 300)
    sys.path.insert(0, os.path.join(_common.REPO_ROOT, "examples"))
    import certs

    work = tempfile.mkdtemp(prefix="tlsprof-ab-")
    crt, key = certs.ensure_cert(work)
    chan = os.path.join(work, "chan")
    os.mkdir(chan, 0o700)
    libs = {"bare": None, "A": os.path.abspath(a.a), "B": os.path.abspath(a.b)}
    runs = []
    unit = "handshake" if a.server else "context" if a.ctx else "pair"
    for r in range(a.rounds):
        row = {}
        for mode in _common.rotate(list(libs), r):
            if a.server:
                row[mode] = 1000 * _server_cpu(libs[mode], chan, a.server == "threaded", a.n)
                continue
            env = dict(os.environ)
            if libs[mode]:
                env.update(LD_PRELOAD=libs[mode], TLSPROF_DIR=chan)
            out = subprocess.run(
                [sys.executable, "-c", CTX_LOOP if a.ctx else LOOP, crt, key, str(a.n)],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if out.returncode != 0:
                print(f"[shim_ab] {mode} failed: {out.stderr.strip()[-300:]}", file=sys.stderr)
                return 1
            row[mode] = float(out.stdout.split()[-1])
        runs.append(row)
        print(
            f"  round {r + 1:2d}  bare {row['bare']:7.0f}  A {row['A']:7.0f}  B {row['B']:7.0f}  us CPU/{unit}",
            flush=True,
        )
    med = {m: statistics.median(r[m] for r in runs) for m in libs}
    paired = {
        "A/bare": statistics.median(r["bare"] / r["A"] for r in runs),
        "B/bare": statistics.median(r["bare"] / r["B"] for r in runs),
        "B vs A": statistics.median(r["A"] / r["B"] for r in runs),
    }
    print(f"\n[shim_ab] CPU per {unit}, median: bare {med['bare']:.0f} us, A {med['A']:.0f} us, B {med['B']:.0f} us")
    print(
        f"[shim_ab] per-round paired medians: bare/A {paired['A/bare']:.3f}x, bare/B {paired['B/bare']:.3f}x, "
        f"A/B {paired['B vs A']:.3f}x (> 1: B is cheaper)"
    )
    _common.save(
        f"shim_ab_{a.server}" if a.server else "shim_ab_ctx" if a.ctx else "shim_ab",
        {"params": vars(a), "median_us": med, "paired": paired, "rounds": runs},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
