"""The seed's zlib case: a TLS 1.2 echo server and client that ask for TLS compression.

    python3 examples/compression_echo.py server [--host 127.0.0.1] [--port 0] [--ready-file F]
                                                [--certdir D] [--connections-expected N]
                                                [--no-compression]
    python3 examples/compression_echo.py client -n N --port P [--host 127.0.0.1] [--no-compression]

Compression is only negotiated when ALL of these hold (see /work/shared/design.md, "Compression"):
OpenSSL built with enable-zlib (Debian's is no-zlib: run it under LD_LIBRARY_PATH with the build of
scripts/build-zlib-openssl.sh), TLS 1.2 at most (TLS 1.3 has no compression), SSL_OP_NO_COMPRESSION
cleared on both ends, and security level 1 (level 2 refuses compression). --no-compression keeps
the option set: the same program without compression, as a baseline.

Server (asyncio, one shared context): prints "listening HOST PORT" (and writes the port to
--ready-file), "compression VALUE" for each connection (VALUE is SSLObject.compression(): "ZLIB" or
"None"), and "connected N" each time N (--connections-expected) connections are up. Each
connection gets b"welcome!\\n" then an echo of what it sends.
Client: opens N connections (a few at a time), on each reads the welcome and one echo, prints
"compression VALUE" for the first one and "connected N" once all are up.
Both keep their connections open and idle until SIGTERM/SIGINT, then exit 0.
"""

import argparse
import asyncio
import os
import signal
import ssl
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from certs import ensure_cert  # noqa: E402
from echo_server import announce  # noqa: E402  (the ready line and file of every example)

WELCOME = b"welcome!\n"
PING = b"compress me, compress me, compress me\n"


def configure(ctx, compression):
    """What compression needs on either end: TLS 1.2 max, option cleared, security level 1."""
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("DEFAULT:@SECLEVEL=1")
    if compression:
        ctx.options &= ~ssl.OP_NO_COMPRESSION
    else:
        ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def compression_of(writer):
    ssl_object = writer.get_extra_info("ssl_object")
    return ssl_object.compression() if ssl_object is not None else None


async def wait_for_signal():
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# --- server ---------------------------------------------------------------------------------------


async def serve(args):
    certdir = args.certdir or os.path.join(tempfile.gettempdir(), "tlsprof-certs")
    certfile, keyfile = ensure_cert(certdir)
    ctx = configure(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), not args.no_compression)
    ctx.load_cert_chain(certfile, keyfile)
    writers = set()
    connected = 0

    async def handle(reader, writer):
        nonlocal connected
        writers.add(writer)
        connected += 1
        print(f"compression {compression_of(writer)}", flush=True)
        if args.connections_expected and connected % args.connections_expected == 0:
            print(f"connected {connected}", flush=True)
        try:
            writer.write(WELCOME)
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writers.discard(writer)
            writer.close()

    server = await asyncio.start_server(handle, args.host, args.port, ssl=ctx, backlog=1024)
    announce(args.host, server.sockets[0].getsockname()[1], args.ready_file)
    await wait_for_signal()
    server.close()
    for writer in list(writers):
        writer.transport.abort()


# --- client ---------------------------------------------------------------------------------------


async def connect_all(args):
    ctx = configure(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), not args.no_compression)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # a self-signed test certificate; only the transport matters
    writers = []

    async def one():
        reader, writer = await asyncio.wait_for(asyncio.open_connection(args.host, args.port, ssl=ctx), args.timeout)
        writers.append(writer)
        if await asyncio.wait_for(reader.readexactly(len(WELCOME)), args.timeout) != WELCOME:
            raise RuntimeError("unexpected welcome")
        writer.write(PING)  # one round trip each way, so both directions' zlib state is in use
        await writer.drain()
        if await asyncio.wait_for(reader.readexactly(len(PING)), args.timeout) != PING:
            raise RuntimeError("echo mismatch")
        return writer

    first = await one()
    print(f"compression {compression_of(first)}", flush=True)
    for start in range(1, args.n, args.batch):
        await asyncio.gather(*(one() for _ in range(start, min(start + args.batch, args.n))))
    print(f"connected {len(writers)}", flush=True)
    await wait_for_signal()
    for writer in writers:
        writer.transport.abort()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--ready-file")
    s.add_argument("--certdir")
    s.add_argument("--connections-expected", type=int, default=0)
    s.add_argument("--no-compression", action="store_true")
    c = sub.add_parser("client")
    c.add_argument("-n", type=int, default=1)
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--batch", type=int, default=10, help="connections opened at a time")
    c.add_argument("--timeout", type=float, default=30.0, help="seconds per step of a connection")
    c.add_argument("--no-compression", action="store_true")
    args = parser.parse_args(argv)
    asyncio.run(serve(args) if args.role == "server" else connect_all(args))


if __name__ == "__main__":
    main()
