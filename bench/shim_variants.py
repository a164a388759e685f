"""Decomposes the shim's cost per handshake: builds copies of hooks/ with parts switched off and
measures the asyncio echo server's CPU per handshake under each (bare = no shim).

    python bench/shim_variants.py [--rounds 3] [-n 1000] [--threaded] [--variants full,batch,...]

Variants (compiled in a temp dir with setup.py's flags; hooks/ itself is never touched):
  full     hooks/ as is
  nosite   count() without the 3 per-site atomic adds
  nocount  count() does nothing (table insert/remove and malloc_usable_size still run)
  notable  allocations not tracked at all (scope hooks, depth guard, site_intern only)
  spin     as full, but table.c's per-shard pthread mutex replaced by a 1-byte spinlock
  batch    as full, but count() batched per thread (64-entry cache, flushed when leaving OpenSSL)
  lto      as full, built with -flto (owner_at/site_at inlined across files)
  spinlto  spin + lto
CPU per handshake (target process only) is robust to other load on the machine; rates are not.
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

import _common
import _servers
import hsload

PATCHES = [
    (
        "    struct owner *o = owner_at(owner);\n    struct site *s = site_at(site);\n",
        "#ifdef EXP_NOCOUNT\n    return;\n#endif\n    struct owner *o = owner_at(owner);\n    struct site *s = site_at(site);\n",
    ),
    (
        "    __atomic_add_fetch(&s->bytes, bytes, __ATOMIC_RELAXED);\n"
        "    __atomic_add_fetch(&s->requested, req, __ATOMIC_RELAXED);\n"
        "    __atomic_add_fetch(&s->blocks, blocks, __ATOMIC_RELAXED);\n",
        "#ifndef EXP_NOSITE\n    __atomic_add_fetch(&s->bytes, bytes, __ATOMIC_RELAXED);\n"
        "    __atomic_add_fetch(&s->requested, req, __ATOMIC_RELAXED);\n"
        "    __atomic_add_fetch(&s->blocks, blocks, __ATOMIC_RELAXED);\n#endif\n",
    ),
    (
        "    size_t usable = malloc_usable_size(p);\n    size_t slack",
        "#ifdef EXP_NOTABLE\n    return;\n#endif\n    size_t usable = malloc_usable_size(p);\n    size_t slack",
    ),
    (
        "    struct block b;\n    if (!blocks_remove((uintptr_t)p, &b)) return;",
        "    struct block b;\n#ifdef EXP_NOTABLE\n    return;\n#endif\n    if (!blocks_remove((uintptr_t)p, &b)) return;",
    ),
]
VARIANTS = {
    "full": [],
    "nosite": ["-DEXP_NOSITE"],
    "nocount": ["-DEXP_NOCOUNT"],
    "notable": ["-DEXP_NOTABLE"],
    "spin": ["-DEXP_SPIN"],
    "batch": ["-DEXP_BATCH"],
    "lto": ["-flto"],
    "spinlto": ["-DEXP_SPIN", "-flto"],
}
# EXP_BATCH: count() adds into a per-thread 64-entry cache keyed by (owner, site); the cache is
# flushed into the shared atomics when an entry is evicted and whenever the thread leaves OpenSSL
# (outermost scope popped, or an allocator call made outside any scope returns).
BATCH = """
#ifdef EXP_BATCH
#define PEND_N 64
struct pend { uint32_t owner; uint16_t site; int64_t bytes, req, blocks; };
static __thread struct pend pend[PEND_N];
static __thread uint64_t pend_dirty;
static void count_flush_all(void)
{
    uint64_t d = pend_dirty;
    pend_dirty = 0;
    while (d) {
        struct pend *p = &pend[__builtin_ctzll(d)];
        d &= d - 1;
        count_now(p->owner, p->site, p->bytes, p->req, p->blocks);
    }
}
static inline void count(uint32_t owner, uint16_t site, int64_t bytes, int64_t req, int64_t blocks)
{
    unsigned i = (site ^ owner * 31u) & (PEND_N - 1);
    struct pend *p = &pend[i];
    if (pend_dirty >> i & 1) {
        if (p->owner == owner && p->site == site) {
            p->bytes += bytes; p->req += req; p->blocks += blocks;
            return;
        }
        count_now(p->owner, p->site, p->bytes, p->req, p->blocks);
    }
    *p = (struct pend){owner, site, bytes, req, blocks};
    pend_dirty |= 1ull << i;
}
#define BATCH_FLUSH_OUTSIDE(t) do { if (!(t)->depth) count_flush_all(); } while (0)
#else
#define BATCH_FLUSH_OUTSIDE(t) do { } while (0)
#endif
"""
# EXP_SPIN: the table's per-shard pthread mutex replaced by a one-byte test-and-test-and-set lock
SPIN = """
#ifdef EXP_SPIN
typedef struct { volatile char held; } spin_t;
static inline void spin_lock(spin_t *l)
{
    while (__atomic_exchange_n(&l->held, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&l->held, __ATOMIC_RELAXED)) __builtin_ia32_pause();
}
static inline void spin_unlock(spin_t *l) { __atomic_store_n(&l->held, 0, __ATOMIC_RELEASE); }
#define pthread_mutex_t spin_t
#define pthread_mutex_lock(l) spin_lock(l)
#define pthread_mutex_unlock(l) spin_unlock(l)
#define pthread_mutex_init(l, a) ((l)->held = 0)
#endif
"""
FLAGS = ["-std=gnu11", "-O2", "-fvisibility=hidden", "-fno-omit-frame-pointer", "-shared", "-fPIC", "-Wl,-z,nodelete"]


def build(work):
    src = os.path.join(work, "src")
    shutil.copytree(os.path.join(_common.REPO_ROOT, "hooks"), src)
    path = os.path.join(src, "tracking.c")
    text = open(path).read()
    for old, new in PATCHES:
        if old not in text:
            raise RuntimeError("hooks/tracking.c changed: update bench/shim_variants.py's patches")
        text = text.replace(old, new)
    text = text.replace(
        "static inline void pop(void) { tls.depth--; }",
        "#ifdef EXP_BATCH\nstatic void count_flush_all(void);\n"
        "static inline void pop(void) { if (--tls.depth == 0) count_flush_all(); }\n"
        "#else\nstatic inline void pop(void) { tls.depth--; }\n#endif",
    )
    text = text.replace(
        "static inline void count(uint32_t owner, uint16_t site, int64_t bytes, int64_t req, int64_t blocks)\n{",
        "#ifdef EXP_BATCH\n#define COUNT_FN count_now\n#else\n#define COUNT_FN count\n#endif\n"
        "static inline void COUNT_FN(uint32_t owner, uint16_t site, int64_t bytes, int64_t req, "
        "int64_t blocks)\n{",
    )
    text = text.replace(
        "static void untrack(const struct block *b, size_t usable);\n",
        BATCH + "static void untrack(const struct block *b, size_t usable);\n",
        1,
    )
    text = text.replace("in_alloc = 0;", "in_alloc = 0; BATCH_FLUSH_OUTSIDE(t);")
    open(path, "w").write(text)
    table = os.path.join(src, "table.c")
    t = open(table).read()
    marker = '#include "shim.h"\n'
    if "pthread_mutex_lock(&s->lock)" in t:  # the spinlock variant; the committed table.c has one now
        open(table, "w").write(t.replace(marker, marker + SPIN, 1))
    out = {}
    for name, defs in VARIANTS.items():
        so = os.path.join(work, f"{name}.so")
        subprocess.run(
            ["gcc", *FLAGS, *defs, "-o", so, *sorted(glob.glob(os.path.join(src, "*.c"))), "-ldl", "-lpthread"],
            check=True,
        )
        out[name] = so
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--threaded", action="store_true", help="the thread-per-connection server")
    p.add_argument("--variants", default="full,nosite,nocount,notable,batch")
    a = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="tlsprof-variants-")
    try:
        libs = {k: v for k, v in build(work).items() if k in a.variants.split(",")}
        modes = ["bare", *libs]
        cpu = {m: [] for m in modes}
        for r in range(a.rounds):
            for mode in _common.rotate(modes, r):
                env = None
                if mode != "bare":
                    chan = tempfile.mkdtemp(dir=work)
                    env = {"LD_PRELOAD": libs[mode], "TLSPROF_DIR": chan}
                server = _servers.start("bare", *(["--threaded"] if a.threaded else []), env=env)
                try:
                    pid = server.target_pid()
                    hsload.run(server.port, 100, 10)
                    c0 = _common.cpu_seconds(pid)
                    res = hsload.run(server.port, a.n, 10)
                    cpu[mode].append(1000 * (_common.cpu_seconds(pid) - c0) / max(1, res["handshakes"]))
                finally:
                    _servers.stop(server)
                print(
                    f"  round {r + 1} {mode:8s} {res['per_s']:6.0f}/s  {cpu[mode][-1]:.3f} ms CPU/handshake", flush=True
                )
        bare = _common.median(cpu["bare"])
        print("\n[variants] target CPU per handshake, median (min-max); bare/variant = the rate ratio with a free CPU")
        res = {}
        for m in modes:
            s = _common.summary(cpu[m])
            res[m] = {"cpu_ms": s, "ratio": bare / s["median"]}
            print(
                f"  {m:8s} {s['median']:.3f} ms ({s['min']:.3f}-{s['max']:.3f})  +{s['median'] - bare:.3f} ms  "
                f"{bare / s['median']:.3f}x"
            )
        _common.save("shim_variants_threaded" if a.threaded else "shim_variants", {"params": vars(a), "results": res})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
