"""Clients that open N TLS connections to a server and hold them idle, each past a real exchange
(so the server has finished the handshake and is waiting for the next request):

- `https`: one keep-alive `GET /` answered in full (nginx, Apache, HAProxy);
- `echo`: the seed's protocol, `welcome!\\n` read (the repo's example servers);
- `postgres`: SSLRequest, TLS, startup message, authentication, ReadyForQuery (PostgreSQL);
- `tls`: the handshake and one line echoed back (openssl s_server -rev, stunnel);
- `mqtt`: an MQTT CONNECT accepted by a CONNACK (Mosquitto).

All run in the calling process on a few threads; every socket has a timeout, every loop a bound.
`hold(kind, port, n)` returns a `Held` that closes them all.
"""

import concurrent.futures
import os
import socket
import ssl
import struct
import threading

TIMEOUT = 30.0
PARALLEL = 8  # handshakes in flight at once: a 2-core machine gains nothing from more
ATTEMPTS = 3


def _context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


_CTX = None
_CTX_LOCK = threading.Lock()


def context():
    """One shared client context: the client side costs no CA store per connection."""
    global _CTX
    with _CTX_LOCK:
        if _CTX is None:
            _CTX = _context()
        return _CTX


def _tls(port):
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        return context().wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def _recv_until(sock, marker, limit=1 << 20):
    buf = b""
    while marker not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} bytes, before {marker!r}")
        buf += chunk
        if len(buf) > limit:
            raise ConnectionError("answer too long")
    return buf


def _recv_exactly(sock, size):
    buf = b""
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {size} bytes")
        buf += chunk
    return buf


def open_https(port):
    """TLS + one keep-alive HTTP/1.1 request read to its end (Content-Length)."""
    s = _tls(port)
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n")
        buf = _recv_until(s, b"\r\n\r\n")
        head, _, body = buf.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 200" not in status:
            raise ConnectionError(f"HTTP answer {status!r}")
        length = None
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-length":
                length = int(value.strip())
            if key.strip().lower() == b"connection" and b"close" in value.lower():
                raise ConnectionError("the server closes the connection: no keep-alive")
        if length is None:
            raise ConnectionError(f"no Content-Length in {head[:200]!r}")
        if len(body) < length:
            _recv_exactly(s, length - len(body))
        return s
    except BaseException:
        s.close()
        raise


def open_echo(port):
    s = _tls(port)
    try:
        if _recv_exactly(s, 9) != b"welcome!\n":
            raise ConnectionError("no welcome!")
        return s
    except BaseException:
        s.close()
        raise


def open_tls_line(port):
    """TLS + one line written and a line read back (any transformation of it)."""
    s = _tls(port)
    try:
        s.sendall(b"hello\n")
        _recv_until(s, b"\n")
        return s
    except BaseException:
        s.close()
        raise


PG_SSL_REQUEST = 80877103
PG_PROTOCOL_3 = 196608


def _pg_message(sock):
    kind = _recv_exactly(sock, 1)
    (length,) = struct.unpack("!I", _recv_exactly(sock, 4))
    return kind, _recv_exactly(sock, length - 4)


def open_postgres(port, user="postgres", database="postgres", timeout=TIMEOUT):
    """A PostgreSQL session over TLS (sslmode=require), ready for a query, then left idle.
    The wire protocol is small enough to speak here, which keeps the test free of a driver."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        raw.sendall(struct.pack("!II", 8, PG_SSL_REQUEST))
        answer = _recv_exactly(raw, 1)
        if answer != b"S":
            raise ConnectionError(f"PostgreSQL refused TLS ({answer!r}): ssl=on missing?")
        s = context().wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise
    try:
        params = b"user\0" + user.encode() + b"\0database\0" + database.encode() + b"\0\0"
        s.sendall(struct.pack("!II", 8 + len(params), PG_PROTOCOL_3) + params)
        for _ in range(100):
            kind, body = _pg_message(s)
            if kind == b"R" and struct.unpack("!I", body[:4])[0] != 0:
                raise ConnectionError("PostgreSQL asks for a password: pg_hba.conf must say trust")
            if kind == b"E":
                raise ConnectionError(f"PostgreSQL error: {body!r}")
            if kind == b"Z":
                return s
        raise ConnectionError("no ReadyForQuery after 100 messages")
    except BaseException:
        s.close()
        raise


_MQTT_IDS = iter(range(1, 1 << 62))
_MQTT_IDS_LOCK = threading.Lock()


def open_mqtt(port):
    """TLS + an MQTT 3.1.1 CONNECT (clean session, keep-alive 0: never timed out) answered by a
    CONNACK that accepts it."""
    with _MQTT_IDS_LOCK:
        client_id = f"tlsprof-{os.getpid()}-{next(_MQTT_IDS)}".encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x00"  # protocol name, level 4, clean session, keep-alive 0
    payload = struct.pack("!H", len(client_id)) + client_id
    remaining = len(variable) + len(payload)  # < 128: one length byte
    s = _tls(port)
    try:
        s.sendall(bytes([0x10, remaining]) + variable + payload)
        connack = _recv_exactly(s, 4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise ConnectionError(f"MQTT CONNACK {connack!r}")
        return s
    except BaseException:
        s.close()
        raise


OPENERS = {"https": open_https, "echo": open_echo, "tls": open_tls_line, "postgres": open_postgres, "mqtt": open_mqtt}


def _open_retrying(opener, port):
    error = None
    for _ in range(ATTEMPTS):
        try:
            return opener(port)
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            error = exc
    raise ConnectionError(f"could not open a connection after {ATTEMPTS} attempts: {error}")


class Held:
    """N open, idle client connections; `close()` (or leaving a `with`) closes them."""

    def __init__(self, sockets):
        self.sockets = sockets

    def __len__(self):
        return len(self.sockets)

    def close(self):
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass
        self.sockets = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def hold(kind, port, n, parallel=PARALLEL):
    """Open n connections of `kind` to 127.0.0.1:port; all or an exception (none left open)."""
    opener = OPENERS[kind]
    opened = []
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(parallel, n))) as pool:
            futures = [pool.submit(_open_retrying, opener, port) for _ in range(n)]
            error = None
            for f in futures:
                try:
                    opened.append(f.result(timeout=TIMEOUT * (ATTEMPTS + 1)))
                except Exception as exc:  # keep collecting: the others must be closed too
                    error = error or exc
            if error is not None:
                raise error
        return Held(opened)
    except BaseException:
        Held(opened).close()
        raise
