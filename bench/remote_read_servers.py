"""Remote reads (tlsprof/collect/remote.py) on the real servers of docs/compatibility.md: each runs
under `tlsprof run` holding N idle TLS connections; every process of its tree that loaded the shim
is read from its memory and, where its channel answers, asked SNAPSHOT on its socket too. Printed
per server: the connections each read sees against the kernel's count (psutil, no tlsprof), their
live bytes per connection, and whether the two reads agree.

    python bench/remote_read_servers.py [--only nginx,haproxy,...]
"""

import argparse
import glob
import sys
import time
import traceback

import _common  # noqa: F401  (sys.path: the repo and tests/)

from servers import SERVERS, clients, start  # noqa: E402
from servers.base import ServerUnavailable  # noqa: E402
import tlsenv  # noqa: E402
from tlsprof.collect import client, remote  # noqa: E402
from tlsprof.errors import ChannelError  # noqa: E402

KiB = 1024
DEFAULT = "nginx,apache,haproxy,haproxy-chroot,postgresql,openssl-s_server,stunnel,stunnel-chroot,mosquitto,lighttpd,python-asyncio,twisted,node"


def channel_socket(pid):
    for pattern in (
        f"/tmp/tlsprof-*/{pid}.sock",
        f"/tmp/tlsprof-*/*/{pid}.sock",
        f"/proc/{pid}/root/tlsprof-*/{pid}.sock",
    ):
        found = glob.glob(pattern)
        if found:
            return found[0]
    return None


def live(snap):
    conns = [o for o in snap.owners if o.kind == "connection" and o.alive]
    return len(conns), sum(o.live_bytes for o in conns)


def one(name, cert, key):
    n = SERVERS[name].connections
    rows = []
    with start(name, cert, key, profile=True) as running:
        kind = running.server.client
        with clients.hold(kind, running.port, n):
            time.sleep(1.5)
            holders = running.holders()
            for p in running.tree():
                try:
                    reader = remote.Reader(p.pid)
                except ChannelError as exc:
                    if "has not loaded" not in str(exc):
                        rows.append({"pid": p.pid, "error": str(exc)})
                    continue
                t = time.perf_counter()
                read = reader.snapshot()
                ms = 1000 * (time.perf_counter() - t)
                path = channel_socket(p.pid)
                channel = None
                if path:
                    try:
                        channel = client.snapshot(path)
                    except ChannelError as exc:
                        channel = str(exc)
                rows.append(
                    {
                        "pid": p.pid,
                        "kernel": holders.get(p.pid, 0),
                        "remote": live(read),
                        "remote_ms": ms,
                        "channel": live(channel) if channel is not None and not isinstance(channel, str) else channel,
                    }
                )
        running.stop()
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=DEFAULT)
    a = p.parse_args(argv)
    cert, key = tlsenv.ensure_cert(tlsenv.default_certdir())
    out = {}
    print("| server | pid | kernel's connections | remote read: connections, KiB each (ms) | channel SNAPSHOT |")
    print("|---|---|---|---|---|")
    for name in a.only.split(","):
        try:
            out[name] = rows = one(name, cert, key)
        except ServerUnavailable as exc:
            print(f"| {name} | - | unavailable: {exc} | | |")
            continue
        except Exception:  # noqa: BLE001 - one server's trouble is a row, not the end of the run
            print(f"| {name} | - | failed: {traceback.format_exc(limit=2).splitlines()[-1]} | | |")
            continue
        for r in rows:
            if "error" in r:
                print(f"| {name} | {r['pid']} | | {r['error']} | |")
                continue
            c, b = r["remote"]
            ch = r["channel"]
            ch_text = (
                "no socket"
                if ch is None
                else ch
                if isinstance(ch, str)
                else f"{ch[0]}, {ch[1] / max(1, ch[0]) / KiB:.1f} KiB"
            )
            print(
                f"| {name} | {r['pid']} | {r['kernel']} | {c}, {b / max(1, c) / KiB:.1f} KiB ({r['remote_ms']:.1f} ms) | {ch_text} |"
            )
    _common.save("remote_read_servers", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
