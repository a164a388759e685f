"""What `tlsprof run` costs real servers that handshake: server CPU per connection, bare and
profiled, side by side.

    python bench/real_handshakes.py [--servers nginx,mosquitto,stunnel,haproxy,apache] [--rounds 4] [-n 1500]

Each round starts the server bare and under `tlsprof run` (tests/servers/, as the compatibility
matrix runs them), in an order rotated every round; opens and closes 100 connections to warm it
up, then n more, 10 at a time, each past its real exchange (tests/servers/clients.py: a keep-alive
`GET /` for the HTTP servers, one echoed line for stunnel, an MQTT CONNECT for Mosquitto). The
figure is the server tree's CPU per connection (wrapper excluded), bare / profiled, median of the
rounds; the connection rate is printed too, but the Python client on the same two cores bounds it.
Results: bench/results/real_handshakes.json.
"""

import argparse
import concurrent.futures
import statistics
import sys
import time

import _common  # sys.path: the repo and tests/

from servers import SERVERS, start  # noqa: E402
from servers.base import ServerUnavailable  # noqa: E402
from servers.clients import OPENERS, _open_retrying  # noqa: E402
import tlsenv  # noqa: E402

CONCURRENCY = 10
WARMUP = 100


def _connect_and_close(opener, port, n):
    """n connections opened (handshake and exchange) and closed, CONCURRENCY at a time -> errors."""

    def one(_):
        try:
            _open_retrying(opener, port).close()
            return 0
        except ConnectionError:
            return 1

    with concurrent.futures.ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        return sum(pool.map(one, range(n)))


def measure(name, cert, key, profile, n):
    """(server CPU ms per connection, connections per second) of one run."""
    opener = OPENERS[SERVERS[name].client]
    with start(name, cert, key, profile=profile) as running:
        _connect_and_close(opener, running.port, WARMUP)
        root = running.server_root().pid  # the server and its workers, not tlsprof's wrapper
        cpu0 = _common.tree_cpu_seconds(root)
        t0 = time.perf_counter()
        errors = _connect_and_close(opener, running.port, n)
        seconds = time.perf_counter() - t0
        done = max(1, n - errors)
        return 1000 * (_common.tree_cpu_seconds(root) - cpu0) / done, done / seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--servers", default="nginx,mosquitto,stunnel,haproxy,apache")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("-n", type=int, default=1500)
    a = p.parse_args(argv)
    cert, key = tlsenv.ensure_cert(tlsenv.default_certdir())
    results = {}
    for name in a.servers.split(","):
        cpu = {"bare": [], "run": []}
        rate = {"bare": [], "run": []}
        try:
            for r in range(a.rounds):
                for mode in _common.rotate(["bare", "run"], r):
                    c, s = measure(name, cert, key, mode == "run", a.n)
                    cpu[mode].append(c)
                    rate[mode].append(s)
                    print(f"  {name} round {r + 1} {mode:4s} {c:.3f} ms CPU/connection, {s:.0f}/s", flush=True)
        except ServerUnavailable as exc:
            print(f"{name}: skipped ({exc})", flush=True)
            continue
        bare_cpu, run_cpu = statistics.median(cpu["bare"]), statistics.median(cpu["run"])
        results[name] = {"cpu_ms": cpu, "per_s": rate, "cpu_ratio": bare_cpu / run_cpu}
        print(
            f"{name}: server CPU per connection bare {bare_cpu:.3f} ms, run {run_cpu:.3f} ms: "
            f"bare/run {bare_cpu / run_cpu:.3f}x; rate run/bare "
            f"{statistics.median(rate['run']) / statistics.median(rate['bare']):.3f}x",
            flush=True,
        )
    _common.save("real_handshakes", {"params": vars(a), "servers": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
