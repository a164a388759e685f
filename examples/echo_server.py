"""The seed's TLS echo server: says b"welcome!\\n" on each connection, then echoes what it reads.

    python3 examples/echo_server.py [--host 127.0.0.1] [--port 0] [--certdir DIR]
                                    [--ctx-per-conn] [--threaded] [--ready-file PATH] [--jail DIR]

Shared mode (default): ONE SSLContext for every connection. --ctx-per-conn: a fresh context per
connection, the leak-shaped pattern (each one loads the system CA store, ~0.8 MB).
Both are built with ssl.create_default_context(Purpose.CLIENT_AUTH) + load_default_certs() (the
system CA store), so the shared mode holds the CA store once and --ctx-per-conn once per connection.
--threaded: a thread per connection over ssl.SSLSocket instead of asyncio (SSLObject + MemoryBIO).
Prints "listening HOST PORT" once listening; SIGTERM/SIGINT close it and exit 0.
--jail DIR (root only, shared mode): once listening, chroot into DIR and run as nobody, as Debian's
HAProxy and Postfix run their TLS daemons (no /proc, no CA files in there).
"""

import argparse
import asyncio
import os
import resource
import signal
import socket
import ssl
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from certs import ensure_cert  # noqa: E402

WELCOME = b"welcome!\n"


def make_context(certfile, keyfile):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # create_default_context() skips the CA store when verify_mode is CERT_NONE, as it is for a
    # server (Purpose.CLIENT_AUTH); load it as the seed does: 144 certs, ~0.8 MB per context.
    ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


def announce(host, port, ready_file, jail=None):
    print(f"listening {host} {port}", flush=True)
    if ready_file:  # written whole, then renamed: a reader never sees a partial file
        tmp = f"{ready_file}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, ready_file)
    if jail:
        nobody = 65534
        os.chroot(jail)
        os.chdir("/")
        os.setgroups([])
        os.setgid(nobody)
        os.setuid(nobody)


# --- asyncio ------------------------------------------------------------------------------------


async def serve_asyncio(args, certfile, keyfile):
    shared = None if args.ctx_per_conn else make_context(certfile, keyfile)
    writers = set()

    async def handle(reader, writer):
        writers.add(writer)
        try:
            if args.ctx_per_conn:  # plain TCP accepted; TLS starts here with a brand-new context
                await writer.start_tls(make_context(certfile, keyfile))
            writer.write(WELCOME)
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writers.discard(writer)
            writer.close()

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(handle, args.host, args.port, ssl=shared, backlog=1024)
    announce(args.host, server.sockets[0].getsockname()[1], args.ready_file, args.jail)
    await stop.wait()
    server.close()
    for writer in list(writers):
        writer.transport.abort()


# --- threaded -----------------------------------------------------------------------------------


def serve_threaded(args, certfile, keyfile):
    shared = None if args.ctx_per_conn else make_context(certfile, keyfile)

    def handle(conn):
        try:
            ctx = shared or make_context(certfile, keyfile)
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(WELCOME)
                while data := tls.recv(65536):
                    tls.sendall(data)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    listener = socket.create_server((args.host, args.port), backlog=1024)
    announce(args.host, listener.getsockname()[1], args.ready_file, args.jail)
    with listener:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--certdir", help="where the self-signed cert lives (default: a temp dir)")
    p.add_argument("--ctx-per-conn", action="store_true", help="a fresh SSLContext per connection")
    p.add_argument("--threaded", action="store_true", help="thread per connection, ssl.SSLSocket")
    p.add_argument("--ready-file", help='write "PORT\\n" here once listening')
    p.add_argument("--jail", metavar="DIR", help="once listening, chroot into DIR and run as nobody (root only)")
    args = p.parse_args()
    if args.jail and args.ctx_per_conn:
        p.error("--jail needs the shared context: a context per connection reads the CA files outside the jail")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one fd per connection

    # in a jail the temporary directory is out of reach when it is removed
    with tempfile.TemporaryDirectory(prefix="tlsprof-certs-", ignore_cleanup_errors=True) as tmp:
        certfile, keyfile = ensure_cert(args.certdir or tmp)
        if args.threaded:

            def bye(*_):
                raise SystemExit(0)

            signal.signal(signal.SIGTERM, bye)
            signal.signal(signal.SIGINT, bye)
            serve_threaded(args, certfile, keyfile)
        else:
            asyncio.run(serve_asyncio(args, certfile, keyfile))


if __name__ == "__main__":
    main()
