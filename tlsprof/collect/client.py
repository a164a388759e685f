"""Talks to the shim inside a target over its Unix socket: one command line per connection, the
whole answer back (docs/snapshot-format.md lists the commands). The only code that opens a tlsprof
socket, the shim's or the Python agent's; what the answers mean is tlsprof.model.wire's.
"""

import os
import socket
import time

from tlsprof.errors import ChannelError
from tlsprof.model.wire import (  # noqa: F401  (the records and parsers, importable from here as before)
    FALLBACK_VOCAB,
    KIND_NAMES,
    MEASURE_NAMES,
    SCOPE_NAMES,
    SSL_MODE_RELEASE_BUFFERS,
    STATE_NAMES,
    Counters,
    Owner,
    Site,
    Snapshot,
    parse_owner_sites,
    parse_snapshot,
    unescape,
)
from tlsprof.model.wire_walk import Walk, WalkedObject, parse_walk  # noqa: F401


class GaveUp(OSError):
    """request() stopped waiting because its caller's `give_up()` said so (a stop signal came)."""


def request(
    path: str,
    command: str,
    timeout: float = 5.0,
    pass_fd: int | None = None,
    ends: bytes = b"",
    give_up=None,
) -> bytes:
    """Send one command line to a Unix socket (the shim's or the Python agent's), read the whole
    answer. `pass_fd`: a descriptor sent with the line (SCM_RIGHTS). `ends`: how the answer ends, so
    that it is complete without the end of file, which a copy of the connection a fork gave a child
    of the target holds back until that child exits. `give_up`: called while the answer is awaited;
    True ends the wait (GaveUp). Raises OSError (socket.timeout and GaveUp included)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        line = command.encode() + b"\n"
        if pass_fd is None:
            s.sendall(line)
        else:
            sent = socket.send_fds(s, [line], [pass_fd])
            if sent < len(line):  # never an empty send: the shim may have answered and closed by now
                s.sendall(line[sent:])
        chunks, tail = [], b""
        deadline = time.monotonic() + timeout
        while True:
            data = _recv(s, deadline, give_up)
            if not data:
                break
            chunks.append(data)
            tail = (tail + data)[-len(ends) :] if ends else b""
            if ends and tail == ends:
                break
    return b"".join(chunks)


GIVE_UP_STEP_S = 0.1  # how soon a give_up() that turned true ends the wait


def _recv(s, deadline, give_up) -> bytes:
    if give_up is None:
        return s.recv(1 << 20)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        s.settimeout(min(left, GIVE_UP_STEP_S))
        try:
            return s.recv(1 << 20)
        except socket.timeout:
            if give_up():
                raise GaveUp("gave up: tlsprof was told to stop") from None


def ask(path: str, command: str, timeout: float = 5.0, pass_fd: int | None = None, ends: bytes = b"") -> str:
    """Ask the shim: one command line, the whole answer as text."""
    try:
        return request(path, command, timeout, pass_fd, ends).decode("utf-8", "replace")
    except (OSError, socket.timeout) as exc:
        raise ChannelError(f"cannot reach the tlsprof shim at {path}: {exc.strerror or exc}") from None


def owner_sites(path: str, serial: int, snap: Snapshot, timeout: float = 5.0) -> list:
    """Call sites of one context's or connection's live blocks (drill-down). Block counts are exact;
    `approx_bytes` is each count times that site's mean block size in `snap` (the shim keeps no size
    per block), so it is an estimate and says so."""
    by_id = {site.id: site for site in snap.sites}
    out = []
    for site_id, blocks in parse_owner_sites(ask(path, f"OWNER {int(serial)}", timeout)):
        site = by_id.get(site_id)
        mean = site.bytes / site.blocks if site and site.blocks else 0
        out.append(
            {
                "file": site.file if site else None,
                "line": site.line if site else None,
                "cause": site.cause if site else "other",
                "library": site.library if site else None,
                "blocks": blocks,
                "approx_bytes": int(round(blocks * mean)),
                "estimate": True,
            }
        )
    return sorted(out, key=lambda s: -s["approx_bytes"])


SNAPSHOT_ENDS = b"\nEND\n"  # a snapshot's last line (hooks/channel.c)


def snapshot(path: str, timeout: float = 5.0) -> Snapshot:
    return parse_snapshot(ask(path, "SNAPSHOT", timeout, ends=SNAPSHOT_ENDS))


def ping(path: str, timeout: float = 2.0) -> int:
    answer = ask(path, "PING", timeout).split()
    if len(answer) != 2 or answer[0] != "PONG":
        raise ChannelError("the shim did not answer PING")
    return int(answer[1])


def answers_ping(path: str, pid: int, timeout: float = 2.0) -> bool:
    """True when the shim at `path` answers PING, and with `pid` (not a socket left by another)."""
    try:
        return ping(path, timeout) == int(pid)
    except (ChannelError, ValueError):
        return False


def start_agent(path: str, timeout: float = 2.0) -> bool:
    """AGENT: True when the shim started the Python agent, False when it is not a Python process."""
    return ask(path, "AGENT", timeout, ends=b"\n").strip() == "AGENT started"


def detach(path: str, timeout: float = 5.0) -> None:
    if ask(path, "DETACH", timeout).strip() != "OK":
        raise ChannelError("the shim did not confirm DETACH")


def walk(path: str, timeout: float = 120.0, maps_of: int | None = None) -> Walk:
    """Ask the shim for a heap walk (it runs in a child of the target; the target pauses only for
    the fork). The shim bounds the walk to `timeout` too. `maps_of`: the target's pid, whose
    /proc/PID/maps goes along as a descriptor; the shim reads it only when it cannot open its own
    (a process chrooted without /proc, tlsprof/collect/jail.py)."""
    command = f"WALK {int(timeout * 1000) - 2000}"
    try:
        maps_fd = os.open(f"/proc/{int(maps_of)}/maps", os.O_RDONLY | os.O_CLOEXEC) if maps_of else None
    except OSError:
        maps_fd = None
    try:
        return parse_walk(ask(path, command, timeout, pass_fd=maps_fd))
    finally:
        if maps_fd is not None:
            os.close(maps_fd)
