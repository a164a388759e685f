"""Under `tlsprof run`: THREADS client threads each do ROUNDS handshakes + an echo against an in-process
threaded server, then everything closes. Asks its own shim for snapshots before and after and prints
one JSON line: live bytes at the baseline and at the end, connections seen, owner/site sums."""

import gc
import json
import os
import socket
import ssl
import sys
import threading
import time

from tlsprof.collect import client

certfile, keyfile, threads, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sock_path = os.path.join(os.environ["TLSPROF_DIR"], f"{os.getpid()}.sock")

sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
sctx.load_cert_chain(certfile, keyfile)
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
cctx.check_hostname = False
cctx.verify_mode = ssl.CERT_NONE
listener = socket.create_server(("127.0.0.1", 0))
port = listener.getsockname()[1]
errors = []
servers = []  # server-side threads: all done before the final snapshot (counts summed mid-free skew)


def serve_one(conn):
    try:
        with sctx.wrap_socket(conn, server_side=True) as s:
            data = s.recv(64)
            s.sendall(data)
    except (OSError, ssl.SSLError) as exc:
        errors.append(repr(exc))


def accept_loop():
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        server = threading.Thread(target=serve_one, args=(conn,), daemon=True)
        servers.append(server)
        server.start()


def one_connection():
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with cctx.wrap_socket(raw) as s:
            s.sendall(b"hello")
            assert s.recv(64) == b"hello"


def worker():
    for _ in range(rounds):
        try:
            one_connection()
        except Exception as exc:  # noqa: BLE001 - reported to the test
            errors.append(repr(exc))


def live():
    gc.collect()
    snap = client.snapshot(sock_path)
    return snap


threading.Thread(target=accept_loop, daemon=True).start()
for _ in range(3):
    one_connection()  # warm-up: lazily built OpenSSL tables are not a leak
time.sleep(0.3)
base = live()
ts = [threading.Thread(target=worker) for _ in range(threads)]
peak_connections = 0
for t in ts:
    t.start()
while any(t.is_alive() for t in ts):
    peak_connections = max(peak_connections, len(live().connections))
    time.sleep(0.05)
for t in ts:
    t.join()
for t in list(servers):
    t.join(30)  # bounded: a stuck server thread shows up as a count mismatch, not a hang
time.sleep(0.2)
end = live()
print(
    json.dumps(
        {
            "errors": errors[:5],
            "base": base.live_bytes,
            "end": end.live_bytes,
            "end_connections": len(end.connections),
            "peak_connections": peak_connections,
            "owner_sum": end.live_bytes,
            "site_sum": sum(s.bytes for s in end.sites),
            "untracked": end.stats.get("untracked_bytes"),
        }
    ),
    flush=True,
)
