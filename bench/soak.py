"""Soak: connections churning against a TLS server while tlsprof attaches and detaches, for minutes.

    python bench/soak.py [--minutes 30] [--connections 1000] [--attach-every 60] [--json OUT]

The target is the seed's echo server (examples/echo_server.py, asyncio, one shared context), started
untracked. `--connections` client loops (asyncio, in this process) each connect, handshake, read the
greeting, echo a line, hold the connection a random 0-2 s, close, and start over: ~N connections
live at any time, all churning. Every --attach-every seconds `tlsprof attach PID --duration
<half the period>` attaches, collects and detaches (the shim stays mapped, its hooks are removed).
The target's RSS is sampled every few seconds.

Pass (exit 0) when: zero failed handshakes or echoes, every attach exited 0 with a report, the
target is alive at the end, and its RSS is flat after warm-up: the median of the last third of the
samples is within --rss-slack (default 10 %, at least 8 MiB) of the median just after warm-up
(a quarter of the run and at least two attach cycles, at most half of it). Prints a JSON summary either way.
The 30-minute run is for bench/ (not CI); tests/integration/test_hardening_soak.py runs a 2-minute version.

`--under-run`: the server starts under `tlsprof run -o REPORT` instead (the shim preloaded from the
start, the nursery on unless TLSPROF_NURSERY=0), with no attach cycles; the RSS is the server's, and
the report written when tlsprof is stopped stands in for the attaches' check.
"""

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ECHO_SERVER = os.path.join(REPO, "examples", "echo_server.py")
WELCOME = b"welcome!\n"
MiB = 1 << 20


def rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def start_server(workdir, under_run=False):
    ready = os.path.join(workdir, "ready")
    log = open(os.path.join(workdir, "server.log"), "wb")
    wrapper = [sys.executable, "-m", "tlsprof", "run", "-o", os.path.join(workdir, "run.json"), "--"]
    proc = subprocess.Popen(
        [
            *(wrapper if under_run else []),
            sys.executable,
            ECHO_SERVER,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--ready-file",
            ready,
            "--certdir",
            os.path.join(workdir, "certs"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while not os.path.exists(ready):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"echo server did not start (see {log.name})")
        time.sleep(0.05)
    return proc, int(open(ready).read().strip())


class Load:
    def __init__(self, port, n, end):
        self.port, self.n, self.end = port, n, end
        self.ok = self.failed = 0
        self.errors = {}
        self.live = 0
        self.peak_live = 0

    async def one_loop(self, ctx, i):
        await asyncio.sleep(random.random() * 2)  # ramp up
        line = f"hello {i}\n".encode()
        while time.monotonic() < self.end:
            writer = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port, ssl=ctx, server_hostname="localhost"), 30
                )
                self.live += 1
                self.peak_live = max(self.peak_live, self.live)
                try:
                    if await asyncio.wait_for(reader.readexactly(len(WELCOME)), 30) != WELCOME:
                        raise RuntimeError("bad greeting")
                    writer.write(line)
                    if await asyncio.wait_for(reader.readexactly(len(line)), 30) != line:
                        raise RuntimeError("bad echo")
                    self.ok += 1
                    await asyncio.sleep(random.random() * 2)
                finally:
                    self.live -= 1
            except Exception as exc:  # counted, reported
                self.failed += 1
                key = type(exc).__name__ + ": " + str(exc)[:80]
                self.errors[key] = self.errors.get(key, 0) + 1
                await asyncio.sleep(0.5)
            finally:
                if writer is not None:
                    writer.close()
                    try:
                        await asyncio.wait_for(writer.wait_closed(), 5)
                    except Exception:
                        pass

    async def run(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        await asyncio.gather(*(self.one_loop(ctx, i) for i in range(self.n)))


def _only_child(pid, timeout=30):
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = psutil.Process(pid).children()
        if children:
            return children[0].pid
        time.sleep(0.05)
    raise SystemExit("tlsprof run started no server")


def _run_report_ok(workdir):
    try:
        with open(os.path.join(workdir, "run.json")) as f:
            return json.load(f)["target"]["mode"] == "run"
    except (OSError, ValueError, KeyError):
        return False


def attach_cycles(pid, period, end, workdir, results, stop):
    k = 0
    while not stop.is_set() and time.monotonic() + period / 2 + 5 < end:
        k += 1
        out = os.path.join(workdir, f"attach-{k}.json")
        t0 = time.monotonic()
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "tlsprof",
                "attach",
                str(pid),
                "--duration",
                str(period / 2),
                "--interval",
                "1",
                "-o",
                out,
            ],
            capture_output=True,
            text=True,
            timeout=period * 2 + 60,
        )
        report_ok, tracker, memory = False, None, None
        if os.path.exists(out):
            try:
                rep = json.load(open(out))
                report_ok = rep["target"]["mode"] == "attach"
                tracker, memory = rep.get("tracker"), rep.get("memory")
            except (ValueError, KeyError):
                pass
        results.append(
            {
                "cycle": k,
                "rc": p.returncode,
                "report": report_ok,
                "tracker": tracker,  # the shim's own table and blocks at the report's moment
                "memory": memory,
                "seconds": round(time.monotonic() - t0, 1),
                "stderr": p.stderr.strip().splitlines()[-1:] if p.returncode else [],
            }
        )
        stop.wait(max(0.0, period - (time.monotonic() - t0)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--attach-every", type=float, default=60.0, metavar="S")
    ap.add_argument("--sample-every", type=float, default=3.0, metavar="S")
    ap.add_argument("--rss-slack", type=float, default=0.10)
    ap.add_argument("--json", metavar="OUT", help="also write the summary here")
    ap.add_argument("--under-run", action="store_true", help="the server under `tlsprof run`, no attaches")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workdir = tempfile.mkdtemp(prefix="tlsprof-soak-")
    server, port = start_server(workdir, args.under_run)
    # under run, the server is tlsprof's child: its RSS is the one that counts
    target_pid = _only_child(server.pid) if args.under_run else server.pid
    duration = args.minutes * 60
    start = time.monotonic()
    end = start + duration
    samples = []  # (t, rss)
    attaches = []
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            r = rss(target_pid)
            if r:
                samples.append((time.monotonic() - start, r))
            stop.wait(args.sample_every)

    threads = [threading.Thread(target=sampler, daemon=True)]
    if not args.under_run:
        threads.append(
            threading.Thread(
                target=attach_cycles, args=(server.pid, args.attach_every, end, workdir, attaches, stop), daemon=True
            )
        )
    for t in threads:
        t.start()
    load = Load(port, args.connections, end)
    try:
        asyncio.run(load.run())
    finally:
        stop.set()
        for t in threads:
            t.join(args.attach_every * 2 + 60)
        alive = server.poll() is None
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    # warm-up: a quarter of the run and at least two attach cycles, at most half the run
    warm_until = min(max(duration * 0.25, 2 * args.attach_every), duration * 0.5)
    warm = [r for t, r in samples if warm_until <= t < warm_until + max(args.sample_every * 4, duration * 0.1)]
    last = [r for t, r in samples if t >= duration * 2 / 3]
    warm_med = statistics.median(warm) if warm else None
    last_med = statistics.median(last) if last else None
    allowed = max(args.rss_slack * warm_med, 8 * MiB) if warm_med else None
    growth = (last_med - warm_med) if warm_med and last_med else None
    summary = {
        "minutes": args.minutes,
        "connections": args.connections,
        "peak_live_connections": load.peak_live,
        "handshakes_ok": load.ok,
        "failed": load.failed,
        "errors": load.errors,
        "attach_cycles": attaches,
        "target_alive_at_end": alive,
        "rss_warm_mib": round(warm_med / MiB, 1) if warm_med else None,
        "rss_last_mib": round(last_med / MiB, 1) if last_med else None,
        "rss_growth_mib": round(growth / MiB, 2) if growth is not None else None,
        "rss_allowed_growth_mib": round(allowed / MiB, 2) if allowed else None,
        "rss_samples": [(round(t), r // 1024) for t, r in samples],
    }
    checks = {
        "no_failed_handshakes": load.failed == 0 and load.ok > 0,
        "attaches_ok": _run_report_ok(workdir)
        if args.under_run
        else bool(attaches) and all(a["rc"] == 0 and a["report"] for a in attaches),
        "target_alive": alive,
        "rss_flat": growth is not None and growth <= allowed,
    }
    summary["checks"] = checks
    summary["pass"] = all(checks.values())
    text = json.dumps(summary, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
