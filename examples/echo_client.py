"""The seed's client: N TLS connections to the echo server, each writing b"hello\\n" every interval.

    python3 examples/echo_client.py --port PORT [--host 127.0.0.1] [-n 100] [--interval 5]
        [--duration 0] [--concurrency 20] [--ready-file PATH] [--ctx-per-conn] [--cafile CERT]
        [--read-buffer BYTES] [--server-name NAME] [--plain]

Shared mode (default): one client SSLContext without the system CA store (verifies the server
against --cafile if given, else CERT_NONE). --ctx-per-conn: a fresh ssl.create_default_context()
per connection (loads the system CA store each time). Prints "connected N" (and writes "N\\n" to
--ready-file) once all N connections have read b"welcome!\\n". Exits 0 after --duration seconds
(0 = run until SIGTERM/SIGINT); exits 1 if a connection cannot be established.
--server-name: the SNI name to send (none by default: an IP address is never sent as SNI; node's
SNICallback runs only when one is). --plain: plain TCP, no TLS (the twin of a --plain server).
"""

import argparse
import asyncio
import asyncio.sslproto
import os
import random
import resource
import signal
import ssl
import sys

WELCOME = b"welcome!\n"
HELLO = b"hello\n"
CONNECT_TIMEOUT = 30.0
ATTEMPTS = 3


def raise_nofile_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def client_context(args):
    if args.ctx_per_conn:
        ctx = ssl.create_default_context()  # loads the system CA store: the costly part
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no system CA store
    if args.cafile:
        ctx.load_verify_locations(args.cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def write_ready(path, n):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{n}\n")
    os.replace(tmp, path)


class Client:
    def __init__(self, args):
        self.args = args
        self.shared = None if args.ctx_per_conn or args.plain else client_context(args)
        self.handshakes = asyncio.Semaphore(args.concurrency)
        self.up = 0
        self.all_up = asyncio.Event()
        self.failed = asyncio.Event()
        self.lost = 0
        self.writers = set()

    async def connect(self):
        args = self.args
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with self.handshakes:
                    ctx = None if args.plain else self.shared or client_context(args)
                    extra = {"server_hostname": args.server_name} if ctx and args.server_name else {}
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(args.host, args.port, ssl=ctx, **extra), CONNECT_TIMEOUT
                    )
                    try:
                        welcome = await asyncio.wait_for(reader.readexactly(len(WELCOME)), CONNECT_TIMEOUT)
                    except BaseException:
                        writer.transport.abort()
                        raise
                if welcome != WELCOME:
                    raise ConnectionError(f"unexpected greeting {welcome!r}")
                return reader, writer
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                if attempt == ATTEMPTS:
                    print(f"connect failed after {ATTEMPTS} attempts: {e!r}", file=sys.stderr)
                    raise
                await asyncio.sleep(0.2 * attempt)

    async def connection(self):
        try:
            reader, writer = await self.connect()
        except Exception:
            self.failed.set()
            return
        self.writers.add(writer)
        self.up += 1
        if self.up == self.args.n:
            self.all_up.set()
        interval = self.args.interval
        try:
            await asyncio.sleep(random.uniform(0, interval))  # spread the writes out
            while True:
                writer.write(HELLO)
                echo = await reader.readexactly(len(HELLO))
                if echo != HELLO:
                    raise ConnectionError(f"bad echo {echo!r}")
                await asyncio.sleep(interval)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as e:
            self.lost += 1
            if self.lost == 1:
                print(f"connection lost: {e!r}", file=sys.stderr, flush=True)
        finally:
            self.writers.discard(writer)
            writer.transport.abort()

    async def run(self):
        args = self.args
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = [asyncio.create_task(self.connection()) for _ in range(args.n)]
        waits = [asyncio.create_task(e.wait()) for e in (self.all_up, self.failed, stop)]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if self.failed.is_set():
            print(f"only {self.up} of {args.n} connected", file=sys.stderr, flush=True)
            code = 1
        elif self.all_up.is_set():
            print(f"connected {args.n}", flush=True)
            if args.ready_file:
                write_ready(args.ready_file, args.n)
            if args.duration > 0:
                await asyncio.wait([waits[2]], timeout=args.duration)
            else:
                await stop.wait()
        for t in tasks + waits:
            t.cancel()
        await asyncio.gather(*tasks, *waits, return_exceptions=True)
        return code


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-n", type=int, default=100, help="number of connections")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between hellos")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run once up; 0 = forever")
    p.add_argument("--concurrency", type=int, default=20, help="handshakes in flight")
    p.add_argument("--ready-file", help='write "N\\n" here once all N are connected')
    p.add_argument("--ctx-per-conn", action="store_true", help="a fresh SSLContext per connection")
    p.add_argument("--cafile", help="verify the server against this cert (else CERT_NONE)")
    p.add_argument(
        "--read-buffer",
        type=int,
        default=0,
        help="shrink asyncio's 256 KiB per-connection TLS read buffer (client only)",
    )
    p.add_argument("--server-name", help="send this SNI name (node's SNICallback needs one)")
    p.add_argument("--plain", action="store_true", help="plain TCP, no TLS")
    args = p.parse_args()
    raise_nofile_limit()
    if args.read_buffer:
        asyncio.sslproto.SSLProtocol.max_size = args.read_buffer
    sys.exit(asyncio.run(Client(args).run()))


if __name__ == "__main__":
    main()
