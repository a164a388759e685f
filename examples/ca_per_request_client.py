"""The known-bad client pattern: a brand-new default SSLContext for every request.

    python3 examples/ca_per_request_client.py --port PORT [--host 127.0.0.1] [-n 50] [--hold 30]

Each call to fetch_once() builds ssl.create_default_context(), which loads the whole system CA
store (~0.8 MB of OpenSSL heap), and the connection keeps its context alive while it stays open.
Opens N such connections one after another, keeps them all, prints "connected N", holds them for
--hold seconds (0 = until SIGTERM/SIGINT), then exits 0. Blocking sockets, no asyncio.
"""

import argparse
import signal
import socket
import ssl
import sys
import time

WELCOME = b"welcome!\n"


def fetch_once(host, port):
    """One request, the wasteful way: a fresh context (and CA store) per call."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False  # the demo server's certificate is self-signed
    ctx.verify_mode = ssl.CERT_NONE
    sock = socket.create_connection((host, port), timeout=30)
    tls = ctx.wrap_socket(sock, server_hostname=host)
    greeting = b""
    while len(greeting) < len(WELCOME):
        chunk = tls.recv(len(WELCOME) - len(greeting))
        if not chunk:
            raise ConnectionError("server closed before welcome")
        greeting += chunk
    if greeting != WELCOME:
        raise ConnectionError(f"unexpected greeting {greeting!r}")
    tls.sendall(b"hello\n")
    return tls  # kept open by the caller, and with it the context and its CA store


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-n", type=int, default=50, help="number of requests (connections kept open)")
    p.add_argument("--hold", type=float, default=30.0, help="seconds to hold them; 0 = forever")
    args = p.parse_args()

    def bye(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, bye)
    signal.signal(signal.SIGINT, bye)

    open_connections = [fetch_once(args.host, args.port) for _ in range(args.n)]
    print(f"connected {len(open_connections)}", flush=True)
    deadline = time.monotonic() + args.hold if args.hold > 0 else None
    while deadline is None or time.monotonic() < deadline:
        time.sleep(0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic())))
    sys.exit(0)


if __name__ == "__main__":
    main()
