"""Snapshots read out of the target's memory (tlsprof/collect/remote.py) beside the channel's
SNAPSHOT: same counters, and how long each takes.

    python bench/remote_read.py [-n 10000] [--rounds 5]

Issue 18's two rows that still miss (context builds in time, asyncio handshakes) pay for the shim's
listener thread: once a second thread exists glibc's malloc takes its arena lock
(`shim_variants.py --variants bare,thread,full,threadless`). A channel without that thread needs
the collector to read the shim's counters itself. The echo server with the shim preloaded holds n
TLS connections; each round asks SNAPSHOT on the socket (answer and parse) and then reads the same
owners and sites with process_vm_readv, and counts the owners and sites whose counters differ
(the server is idle meanwhile, so none should).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

import _common
import _servers

from servers import clients
from tlsprof.collect import client, remote
from tlsprof.collect.shim import shim_path


def differing(channel, read):
    """Owners and sites whose counters differ between the two snapshots."""

    def owners(snap):
        return {o.serial: (o.kind, o.alive, {c: tuple(v) for c, v in o.by_cause.items()}) for o in snap.owners}

    def sites(snap):
        return {(s.file, s.line, s.scope): (s.bytes, s.requested, s.blocks, s.cause) for s in snap.sites}

    a, b = owners(channel), owners(read)
    n = sum(1 for k in set(a) | set(b) if a.get(k) != b.get(k))
    a, b = sites(channel), sites(read)
    return n + sum(1 for k in set(a) | set(b) if a.get(k) != b.get(k))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=10000, help="TLS connections the server holds")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    so = shim_path(preload=True)
    channel_dir = tempfile.mkdtemp(prefix="tlsprof-remote-")
    server = _servers.start("bare", env={**os.environ, "LD_PRELOAD": so, "TLSPROF_DIR": channel_dir})
    held = []
    try:
        pid = server.target_pid()
        held = clients.hold("echo", server.port, a.n)
        time.sleep(0.5)
        path = os.path.join(channel_dir, f"{pid}.sock")
        channel_s, remote_s, diffs = [], [], []
        t = time.perf_counter()
        reader = remote.Reader(pid, so)
        setup_ms = 1000 * (time.perf_counter() - t)
        for _ in range(a.rounds):
            t = time.perf_counter()
            snap = client.snapshot(path)
            channel_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            read = reader.snapshot()
            remote_s.append(time.perf_counter() - t)
            diffs.append(differing(snap, read))
        conns = sum(1 for o in read.owners if o.kind == "connection" and o.alive)
        result = {
            "connections": conns,
            "owners": len(read.owners),
            "sites": len(read.sites),
            "channel_ms": 1000 * _common.median(channel_s),
            "remote_ms": 1000 * _common.median(remote_s),
            "reader_setup_ms": setup_ms,
            "differing": diffs,
        }
        print(
            f"[remote read] {conns} connections, {len(read.owners)} owners, {len(read.sites)} sites: "
            f"channel SNAPSHOT + parse {result['channel_ms']:.1f} ms, remote read {result['remote_ms']:.1f} ms "
            f"(median of {a.rounds}; finding the layout {setup_ms:.1f} ms once); owners or sites that differ "
            f"per round: {diffs}"
        )
        _common.save("remote_read", {"params": vars(a), "results": result})
    finally:
        if held:
            held.close()
        _servers.stop(server)
        shutil.rmtree(channel_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
