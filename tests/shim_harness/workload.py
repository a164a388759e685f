"""TLS workload for sanitizer and stress runs of the shim: N threads doing handshakes and I/O at once.

    python workload.py CERTFILE KEYFILE [--threads 8] [--rounds 40] [--snapshots]

Each thread drives its own TLS pairs in-process: a server and a client `ssl.SSLObject` over
`MemoryBIO`s (no socket, nothing to time out), pumping records between them, and every few rounds
a real loopback socket pair (a `socketpair`, server side on a helper thread). Contexts are shared
by all threads (one server, one client context) and every 10th round a thread makes a private
context too, so hooks race on shared owners as well as private ones. With --snapshots the main
thread asks its own shim for SNAPSHOTs over the channel while the threads run (the listener reads
counters that hooks are updating). At the end everything is freed and one last snapshot is printed
as JSON on stdout: {"ok": bool, "errors": [...], "final": <raw snapshot text>, "handshakes": n}.
"""

import argparse
import gc
import json
import os
import socket
import ssl
import sys
import threading
import time

PAYLOAD = b"x" * 3000


def pump(a_out, b_in):
    data = a_out.read()
    if data:
        b_in.write(data)


def memory_pair(sctx, cctx):
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = sctx.wrap_bio(s_in, s_out, server_side=True)
    client = cctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    done_c = done_s = False
    for _ in range(50):
        if not done_c:
            try:
                client.do_handshake()
                done_c = True
            except ssl.SSLWantReadError:
                pass
        pump(c_out, s_in)
        if not done_s:
            try:
                server.do_handshake()
                done_s = True
            except ssl.SSLWantReadError:
                pass
        pump(s_out, c_in)
        if done_c and done_s:
            break
    if not (done_c and done_s):
        raise RuntimeError("memory-BIO handshake did not finish")
    for _ in range(3):
        client.write(PAYLOAD)
        pump(c_out, s_in)
        got = b""
        while len(got) < len(PAYLOAD):
            got += server.read(65536)
        server.write(got)
        pump(s_out, c_in)
        back = b""
        while len(back) < len(PAYLOAD):
            back += client.read(65536)
        if back != PAYLOAD:
            raise RuntimeError("memory-BIO echo mismatch")


def socket_pair(sctx, cctx):
    a, b = socket.socketpair()
    a.settimeout(20)
    b.settimeout(20)
    err = []

    def serve():
        try:
            with sctx.wrap_socket(a, server_side=True) as s:
                data = s.recv(65536)
                while len(data) < len(PAYLOAD):
                    data += s.recv(65536)
                s.sendall(data)
        except Exception as exc:  # reported by the caller
            err.append(repr(exc))

    t = threading.Thread(target=serve)
    t.start()
    try:
        with cctx.wrap_socket(b, server_hostname="localhost") as c:
            c.sendall(PAYLOAD)
            back = b""
            while len(back) < len(PAYLOAD):
                back += c.recv(65536)
            if back != PAYLOAD:
                raise RuntimeError("socket echo mismatch")
    finally:
        t.join(30)
    if err:
        raise RuntimeError("server side: " + err[0])


def contexts(cert, key):
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(cert)
    return sctx, cctx


def ask(path, command):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(path)
        s.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            d = s.recv(1 << 20)
            if not d:
                break
            chunks.append(d)
    return b"".join(chunks).decode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cert")
    ap.add_argument("key")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--snapshots", action="store_true")
    args = ap.parse_args()
    sctx, cctx = contexts(args.cert, args.key)
    errors, counter, lock = [], [0], threading.Lock()

    def worker(n):
        try:
            for r in range(args.rounds):
                if r % 10 == 9:
                    s2, c2 = contexts(args.cert, args.key)
                    memory_pair(s2, c2)
                    del s2, c2
                elif r % 4 == 3:
                    socket_pair(sctx, cctx)
                else:
                    memory_pair(sctx, cctx)
                with lock:
                    counter[0] += 1
        except Exception as exc:
            errors.append(f"thread {n}: {exc!r}")

    tasks_before = len(os.listdir("/proc/self/task"))
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.threads)]
    for t in threads:
        t.start()
    sock = os.path.join(os.environ.get("TLSPROF_DIR", ""), f"{os.getpid()}.sock")
    snaps = 0
    while any(t.is_alive() for t in threads):
        if args.snapshots and os.path.exists(sock):
            try:
                if ask(sock, "SNAPSHOT").endswith("END\n"):
                    snaps += 1
            except OSError as exc:
                errors.append(f"snapshot: {exc!r}")
        for t in threads:
            t.join(0.2)
    for t in threads:
        t.join()
    # join() returns when a thread's Python part ends; OpenSSL frees its per-thread state in the
    # OS thread's key destructors after that: a snapshot taken meanwhile sums a moving heap
    for _ in range(100):
        if len(os.listdir("/proc/self/task")) <= tasks_before:
            break
        time.sleep(0.05)
    sctx = cctx = None  # the workers are done: let the contexts go before the final snapshot
    gc.collect()
    final = ask(sock, "SNAPSHOT") if os.path.exists(sock) else ""
    json.dump(
        {"ok": not errors, "errors": errors, "handshakes": counter[0], "snapshots": snaps, "final": final}, sys.stdout
    )
    sys.stdout.write("\n")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
