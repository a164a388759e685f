"""Handshake load generator: a new TCP + TLS connection per handshake, read b"welcome!\\n", close.

    python bench/hsload.py --port PORT [-n 1500] [-c 10] [--warmup 100]

Threads (the handshake releases the GIL), one shared client context without the CA store
(CERT_NONE), the default protocol (TLS 1.3 here). Prints handshakes per second.
"""

import argparse
import socket
import ssl
import threading
import time

WELCOME = b"welcome!\n"


def client_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def one_handshake(ctx, host, port, timeout=30.0):
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            got = b""
            while len(got) < len(WELCOME):
                data = tls.recv(len(WELCOME) - len(got))
                if not data:
                    raise ConnectionError("closed before welcome")
                got += data
            if got != WELCOME:
                raise ConnectionError(f"unexpected greeting {got!r}")


def run(port, n=1500, concurrency=10, host="127.0.0.1", ctx=None):
    """n handshakes, `concurrency` at a time. -> {"handshakes", "errors", "seconds", "per_s"}"""
    ctx = ctx or client_context()
    left = [n]
    errors = [0]
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            try:
                one_handshake(ctx, host, port)
            except (OSError, ssl.SSLError, ConnectionError):
                with lock:
                    errors[0] += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    done = n - errors[0]
    return {"handshakes": done, "errors": errors[0], "seconds": dt, "per_s": done / dt if dt > 0 else 0.0}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-n", type=int, default=1500)
    p.add_argument("-c", "--concurrency", type=int, default=10)
    p.add_argument("--warmup", type=int, default=100)
    a = p.parse_args()
    ctx = client_context()
    if a.warmup:
        run(a.port, a.warmup, a.concurrency, a.host, ctx)
    r = run(a.port, a.n, a.concurrency, a.host, ctx)
    print(f"{r['handshakes']} handshakes in {r['seconds']:.2f} s: {r['per_s']:.0f}/s ({r['errors']} errors)")


if __name__ == "__main__":
    main()
