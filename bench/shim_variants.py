"""Where `run`'s overhead goes: one workload bare, beside an idle thread, and under copies of the
shim with parts switched off, all measured side by side in one run (alternating, bare first).

    python bench/shim_variants.py [--workload ctx,asyncio] [--rounds 6] [--variants bare,thread,...]

Variants:
  bare    no shim
  thread  no shim, one idle thread started with the interpreter (a sitecustomize): once a process
          has a second thread, glibc's malloc takes an arena lock where it did not. `run` always
          adds one (the shim's channel listener, and the Python agent's server)
  hooks   the shim with its allocator hooks passing each call straight to OpenSSL's: relocations
          patched, scope hooks (SSL_*, X509_STORE_*) and the listener thread, no block tracked
  guard   as hooks, but the allocator hooks also look up the thread's state and set its
          re-entrancy guard, as the real ones do before tracking
  young   the shim tracking every block, but none is ever put in the block table nor counted
          (those that outlive their OpenSSL call, those counted at once): what young blocks cost
  full    the shim as `run` preloads it (hooks/ as it is, the _shim_preload build)
  threadless  full, its socket bound but its listener thread never started (-DEXP_NO_LISTENER): the
          upper bound of what a channel served without a thread of our own would save
  attach-build  the same code in the build `attach` injects (_shim: its thread-local state is reached
          through TLS descriptors, a call per access; setup.py)
  run     `tlsprof run` (asyncio only): the shim plus the Python agent and the collector's polling

The shim copies are compiled by setup.py from a copy of hooks/ in a temp dir (hooks/ itself is
never touched), with -DEXP_PASS or -DEXP_GUARD wrapped around the allocator hooks' bodies and
-DEXP_YOUNG_ONLY around the start of tracking.c's track_now, -DEXP_NO_LISTENER around listener.c's
start_thread.
Workloads:
  ctx      ms per ssl.create_default_context() (20 kept per process), bench/overhead_goals.py's row
  asyncio  the seed asyncio echo server's CPU per handshake (target process only; robust to other
           load on the machine, unlike rates) under bench/hsload.py's handshakes
Each line is the median of the rounds; the step column is what that variant adds to the one above.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import _common
import _servers
import hsload
from overhead_goals import CTX_LOOP  # the ctx row's own loop

VARIANTS = ("bare", "thread", "hooks", "guard", "young", "full", "threadless", "attach-build", "run")
SHIM_VARIANTS = {
    "hooks": "-DEXP_PASS",
    "guard": "-DEXP_GUARD",
    "young": "-DEXP_YOUNG_ONLY",
    "full": "",
    "threadless": "-DEXP_NO_LISTENER",
}
# what each step adds, for tables that quote the breakdown (overhead_goals.py)
STEP_NAMES = {
    "thread": "an idle thread",
    "hooks": "hooks passing through",
    "guard": "thread-state guard",
    "young": "young blocks",
    "full": "survivors in the table",
    "threadless": "the same shim without its listener thread",
    "attach-build": "TLS descriptors",
    "run": "agent (creation capture, scans) and polling",
}

IDLE_THREAD = "import threading, time\nthreading.Thread(target=time.sleep, args=(1e6,), daemon=True).start()\n"

TRACK_NOW = "static void track_now(void *p, size_t n, uint32_t owner, uint16_t site, int measure, size_t usable)\n{\n"
START_THREAD = "static int start_thread(int fd)\n{\n"
# the shim tracking as `run`'s does, its socket bound but never served: what a channel served
# without a thread of our own would cost (glibc's malloc then keeps its single-thread fast path)
NO_LISTENER = "#ifdef EXP_NO_LISTENER\n    return 0;\n#endif\n"
HOOK = re.compile(r"^(void \*|void )hook_(CRYPTO_\w+)\(([^)]*)\)\n\{\n", re.M)


def _arg_names(params):
    return ", ".join(re.split(r"[ *]", p.strip())[-1] for p in params.split(","))


def patch_alloc_hooks(text):
    """hooks_alloc.c with EXP_PASS (return the real call at once) and EXP_GUARD (the guard, no
    tracking) bodies put in front of each allocator hook's own."""
    found = HOOK.findall(text)
    if len(found) < 6:
        raise RuntimeError("hooks/hooks_alloc.c changed: update bench/shim_variants.py's patch")

    def body(m):
        returns = m.group(1).startswith("void *")
        call = f"real_{m.group(2)}({_arg_names(m.group(3))})"
        done = f"return {call};" if returns else f"{call};\n    return;"
        guarded = (
            f"struct tstate *t_ = this_thread();\n    if (t_->in_alloc || !tlsprof_active) {{ {done} }}\n"
            f"    t_->in_alloc = 1;\n    "
            + (
                f"void *r_ = {call};\n    t_->in_alloc = 0;\n    return r_;"
                if returns
                else f"{call};\n    t_->in_alloc = 0;\n    return;"
            )
        )
        return f"{m.group(0)}#if defined(EXP_PASS)\n    {done}\n#elif defined(EXP_GUARD)\n    {guarded}\n#endif\n"

    return HOOK.sub(body, text)


def _insert_after(src, name, anchor, addition):
    """hooks/<name> of the copy with `addition` right after `anchor`."""
    path = os.path.join(src, "hooks", name)
    with open(path) as f:
        text = f.read()
    if anchor not in text:
        raise RuntimeError(f"hooks/{name} changed: update bench/shim_variants.py's patch")
    with open(path, "w") as f:
        f.write(text.replace(anchor, anchor + addition))


def build(work):
    """{variant: path of its shim}: setup.py's own flags, a patched copy of hooks/."""
    src = os.path.join(work, "src")
    os.makedirs(src)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(_common.REPO_ROOT, name), src)
    shutil.copytree(os.path.join(_common.REPO_ROOT, "hooks"), os.path.join(src, "hooks"))
    path = os.path.join(src, "hooks", "hooks_alloc.c")
    with open(path) as f:
        text = patch_alloc_hooks(f.read())
    with open(path, "w") as f:
        f.write(text)
    _insert_after(src, "tracking.c", TRACK_NOW, "#ifdef EXP_YOUNG_ONLY\n    return;\n#endif\n")
    _insert_after(src, "listener.c", START_THREAD, NO_LISTENER)
    out = {}
    for name, define in SHIM_VARIANTS.items():
        dest = os.path.join(work, name)
        env = {**os.environ, "CFLAGS": define}
        subprocess.run(
            [sys.executable, "setup.py", "-q", "build_ext", "-b", dest, "-t", os.path.join(work, f"tmp-{name}")],
            cwd=src,
            env=env,
            check=True,
            capture_output=True,
        )
        built = {f.split(".")[0]: os.path.join(dest, "tlsprof", f) for f in os.listdir(os.path.join(dest, "tlsprof"))}
        out[name] = built["_shim_preload"]
        if name == "full":
            out["attach-build"] = built["_shim"]
    return out


def variant_env(variant, libs, work):
    """The environment a variant's target starts with (None: inherit), and the directory to remove."""
    if variant == "bare":
        return None, None
    if variant == "thread":
        site = os.path.join(work, "idle-thread")
        os.makedirs(site, exist_ok=True)
        with open(os.path.join(site, "sitecustomize.py"), "w") as f:
            f.write(IDLE_THREAD)
        return {**os.environ, "PYTHONPATH": site}, None
    channel = tempfile.mkdtemp(dir=work, prefix="chan-")
    return {**os.environ, "LD_PRELOAD": libs[variant], "TLSPROF_DIR": channel}, channel


def ctx_once(variant, libs, work, n=20):
    env, channel = variant_env(variant, libs, work)
    try:
        p = subprocess.run(
            [sys.executable, "-c", CTX_LOOP, str(n)], env=env, capture_output=True, text=True, timeout=300
        )
        if p.returncode:
            raise RuntimeError(f"{variant}: {p.stderr.strip()[-300:]}")
        return 1000 * float(p.stdout.split()[-1]) / n
    finally:
        if channel:
            shutil.rmtree(channel, ignore_errors=True)


def asyncio_once(variant, libs, work, n=1500):
    if variant == "run":
        server = _servers.start("tlsprof")
        channel = None
    else:
        env, channel = variant_env(variant, libs, work)
        server = _servers.start("bare", env=env)
    try:
        pid = server.target_pid()
        ctx = hsload.client_context()
        hsload.run(server.port, 100, 10, ctx=ctx)
        c0 = _common.cpu_seconds(pid)
        res = hsload.run(server.port, n, 10, ctx=ctx)
        return 1000 * (_common.cpu_seconds(pid) - c0) / max(1, res["handshakes"])
    finally:
        _servers.stop(server)
        if channel:
            shutil.rmtree(channel, ignore_errors=True)


WORKLOADS = {
    "ctx": (ctx_once, "ms per context built"),
    "asyncio": (asyncio_once, "ms server CPU per handshake"),
}


def measure(workload, variants, libs, work, rounds):
    once, unit = WORKLOADS[workload]
    got = {v: [] for v in variants}
    for r in range(rounds):
        line = []
        for v in variants if r % 2 == 0 else [variants[0], *reversed(variants[1:])]:
            got[v].append(once(v, libs, work))
            line.append(f"{v}={got[v][-1]:.3f}")
        print(f"  round {r + 1} {workload}: {' '.join(line)}", flush=True)
    bare = _common.median(got[variants[0]])
    print(f"\n[variants] {workload}: {unit}, median of {rounds} rounds (bare/variant = speed ratio)")
    out, prev = {}, bare
    for v in variants:
        med = _common.median(got[v])
        out[v] = {"values": got[v], "median": med, "ratio": bare / med, "step": med - prev}
        print(
            f"  {v:7s} {med:7.3f}  {bare / med:.3f}x  step {med - prev:+.3f} "
            f"({100 * (med - prev) / bare:+.1f} % of bare)"
        )
        prev = med
    print()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="ctx,asyncio", help="ctx, asyncio or both (default)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--variants", default=",".join(VARIANTS))
    a = p.parse_args(argv)
    workloads = a.workload.split(",")
    wanted = a.variants.split(",")
    unknown = [w for w in workloads if w not in WORKLOADS] + [v for v in wanted if v not in VARIANTS]
    if unknown:
        print(f"shim_variants: unknown workload or variant: {', '.join(unknown)}", file=sys.stderr)
        return 2
    results = breakdown(workloads, a.rounds, wanted)
    _common.save("shim_variants", {"params": vars(a), "results": results})
    return 0


def breakdown(workloads, rounds, wanted=VARIANTS):
    """{workload: {variant: {values, median, ratio, step}}}, each workload's variants in VARIANTS
    order, measured side by side."""
    work = tempfile.mkdtemp(prefix="tlsprof-variants-")
    try:
        libs = build(work)
        results = {}
        for w in workloads:
            variants = [v for v in VARIANTS if v in wanted and (v != "run" or w == "asyncio")]
            results[w] = measure(w, variants, libs, work, rounds)
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def steps_sentence(result):
    """ "an idle thread +4.5 %, ..." : what each variant adds, in % of bare."""
    bare = result["bare"]["median"]
    return ", ".join(f"{STEP_NAMES[v]} {100 * r['step'] / bare:+.1f} %" for v, r in result.items() if v != "bare")


if __name__ == "__main__":
    sys.exit(main())
