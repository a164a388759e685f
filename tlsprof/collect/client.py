"""Talks to the shim inside a target over its Unix socket and parses what it answers.

The wire format is the shim's text snapshot (hooks/channel.c): a header, one `O` line per owner
(process, context, connection) with counters by cause, one `F` line of facts per live connection
(io: its calls that moved data; with an fd: fd_open, fd_ino, fd_sock), one `S` line per live call
site, `END`. `WALK` answers the heap walk's text (hooks/heapwalk.c, docs/heap-walk.md): `status`,
`reason`, `stat` lines, one `X key=value...` line per context or connection found in the heap, `P`
lines for what belongs to the process, `END`.
"""
import gc
import socket
from dataclasses import dataclass, field
from operator import itemgetter

from tlsprof.model.causes import CAUSES
from tlsprof.errors import ChannelError

KIND_NAMES = {0: "process", 1: "context", 2: "connection"}
STATE_NAMES = {0: "handshake", 1: "established", 2: "shutdown"}
SCOPE_NAMES = ("none", "ctx_new", "ctx", "ca_store", "own_cert", "ssl_new", "handshake", "io",
               "shutdown", "ssl_ctrl", "ssl_free", "static", "library", "thread")
SSL_MODE_RELEASE_BUFFERS = 0x10


class Counters(tuple):
    """(bytes, requested, blocks) of one cause. A tuple, so that the parser builds tens of
    thousands of them with one C call each; read by name."""
    __slots__ = ()

    def __new__(cls, bytes=0, requested=0, blocks=0):
        return tuple.__new__(cls, (bytes, requested, blocks))

    bytes = property(itemgetter(0))
    requested = property(itemgetter(1))
    blocks = property(itemgetter(2))

    def __repr__(self):
        return f"Counters(bytes={self[0]}, requested={self[1]}, blocks={self[2]})"


_new_tuple = tuple.__new__


@dataclass(slots=True)
class Owner:
    index: int
    serial: int
    kind: str
    ptr: int
    ctx_serial: int
    state: str
    fd: int
    alive: bool
    pre_attach: bool
    age_s: float
    mode: int
    mode_known: bool
    peer: str
    by_cause: dict = field(default_factory=dict)  # cause -> Counters
    # sums over by_cause, computed once when parsed (a 10k-connection snapshot reads them often)
    live_bytes: int = 0
    requested_bytes: int = 0
    live_blocks: int = 0
    facts: dict = field(default_factory=dict)


@dataclass
class Site:
    file: str
    line: int
    cause: str
    scope: str
    bytes: int
    requested: int
    blocks: int
    library: str = None
    id: int = None


@dataclass
class Snapshot:
    pid: int
    mono_ns: int
    openssl: str
    stats: dict
    owners: list
    sites: list
    copies: list = field(default_factory=list)  # statically linked OpenSSL copies found
    taken_at: float = 0.0  # wall clock, set by the caller
    _live_bytes: int = None  # cached sum (snapshots are never changed once parsed)
    rss_bytes: int = 0
    idle_s: dict = field(default_factory=dict)  # connection serial -> s since it was seen moving data (session)

    @property
    def io_calls(self):
        """SSL_read/write/peek calls that moved data since the shim started, live and freed
        connections together (None from a shim that does not count them)."""
        dead = self.stats.get("io_calls_of_dead")
        if dead is None:
            return None
        return dead + sum(o.facts.get("io", 0) for o in self.owners if o.kind == "connection" and o.alive)

    @property
    def live_bytes(self):
        if self._live_bytes is None:
            self._live_bytes = sum(o.live_bytes for o in self.owners)
        return self._live_bytes

    @property
    def connections(self):
        return [o for o in self.owners if o.kind == "connection" and o.alive]


def request(path: str, command: str, timeout: float = 5.0) -> bytes:
    """Send one command line to a Unix socket (the shim's or the Python agent's), read the whole
    answer. Raises OSError (socket.timeout included)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            data = s.recv(1 << 20)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def ask(path: str, command: str, timeout: float = 5.0) -> str:
    """Ask the shim: one command line, the whole answer as text."""
    try:
        return request(path, command, timeout).decode("utf-8", "replace")
    except (OSError, socket.timeout) as exc:
        raise ChannelError(f"cannot reach the tlsprof shim at {path}: {exc.strerror or exc}") from None


def parse_snapshot(text: str) -> Snapshot:
    # tens of thousands of small objects, no cycles among them: the cyclic GC would only rescan
    # them again and again while they are made
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _parse_snapshot(text)
    finally:
        if was_enabled:
            gc.enable()


def _parse_snapshot(text: str) -> Snapshot:
    lines = text.split("\n")
    if not lines or lines[0] != "tlsprof-snapshot 1":
        raise ChannelError("the shim answered something that is not a snapshot")
    if "END" not in lines:
        raise ChannelError("the shim's snapshot was cut short")
    pid = mono = 0
    openssl = None
    stats, owners, sites, copies = {}, [], [], []
    by_index = {}
    causes, scopes = _CAUSE_TOKENS, _SCOPE_TOKENS  # a shim that states its vocabulary is read by it
    try:
        for line in lines[1:]:
            if line == "END":
                break
            tag, _, rest = line.partition(" ")
            if tag == "vocab":
                what, _, names = rest.partition(" ")
                if what == "causes":
                    causes = _tokens(names.split(), CAUSES, "other")
                elif what == "scopes":
                    scopes = _tokens(names.split(), SCOPE_NAMES, "none")
            elif tag == "pid":
                pid = int(rest)
            elif tag == "mono_ns":
                mono = int(rest)
            elif tag == "openssl":
                openssl = None if rest == "-" else rest
            elif tag == "stat":
                k, v = rest.split()
                stats[k] = int(v)
            elif tag == "O":
                owner = _parse_owner(rest.split(" "), causes)
                owners.append(owner)
                by_index[owner.index] = owner
            elif tag == "F":
                _parse_facts(by_index, rest.split(" "))
            elif tag == "S":
                f = rest.split(" ", 8)
                sites.append(Site(file=f[8], line=int(f[3]), cause=causes.get(f[1], "other"),
                                  scope=scopes.get(f[2], "none"),
                                  bytes=int(f[4]), requested=int(f[5]), blocks=int(f[6]),
                                  library=None if f[7] == "-" else f[7], id=int(f[0])))
            elif tag == "C":
                kind, status, path = rest.split(" ", 2)
                copies.append({"path": path, "kind": kind, "tracking": status})
    except (ValueError, IndexError) as exc:
        raise ChannelError(f"unreadable snapshot line: {exc}") from None
    return Snapshot(pid=pid, mono_ns=mono, openssl=openssl, stats=stats, owners=owners, sites=sites,
                    copies=copies)


def _parse_facts(by_index, f) -> None:
    """`F <owner idx> key=value ...` (after the O lines): attach integer facts to that owner."""
    owner = by_index.get(int(f[0]))
    if owner is None:
        return
    facts = owner.facts
    for item in f[1:]:
        key, sep, value = item.partition("=")
        if sep:
            facts[key] = int(value) if value.isdigit() else value


# the shim's numbers as it writes them -> names (a dict lookup per token instead of int() + index)
_CAUSE_TOKENS = {str(i): name for i, name in enumerate(CAUSES)}
_SCOPE_TOKENS = {str(i): name for i, name in enumerate(SCOPE_NAMES)}


def _tokens(stated: list, known: tuple, unknown: str) -> dict:
    """The shim's `vocab` line -> token map; a name this front end does not know reads as `unknown`."""
    return {str(i): name if name in known else unknown for i, name in enumerate(stated)}
_KIND_TOKENS = {str(k): v for k, v in KIND_NAMES.items()}
_STATE_TOKENS = {str(k): v for k, v in STATE_NAMES.items()}


def _parse_owner(f, causes=_CAUSE_TOKENS) -> Owner:
    by_cause = {}
    live = requested = blocks = 0
    for item in f[13:]:
        c, b, r, n = item.split(":")
        # a counter can dip a few bytes below zero when a block freed outside the hooks (a free racing
        # the patching at attach) is found stale at a reused address and subtracted by estimate: a
        # negative byte count would make the whole report invalid, so it reads as none
        b, r, n = max(int(b), 0), max(int(r), 0), max(int(n), 0)
        name = causes.get(c, "other")
        if name in by_cause:  # two tokens read as `other` (names this front end does not know)
            old = by_cause[name]
            b, r, n = b + old[0], r + old[1], n + old[2]
        by_cause[name] = _new_tuple(Counters, (b, r, n))
        live += b
        requested += r
        blocks += n
    return Owner(int(f[0]), int(f[1]), _KIND_TOKENS.get(f[2], "process"), int(f[3], 16), int(f[4]),
                 _STATE_TOKENS.get(f[5], "handshake"), int(f[6]), f[7] == "1", f[8] == "1",
                 int(f[9]) / 1e9, int(f[10], 16), f[11] == "1", None if f[12] == "-" else f[12],
                 by_cause, live, requested, blocks)


def owner_sites(path: str, serial: int, snap: Snapshot, timeout: float = 5.0) -> list:
    """Call sites of one context's or connection's live blocks (drill-down). Block counts are exact;
    `approx_bytes` is each count times that site's mean block size in `snap` (the shim keeps no size
    per block), so it is an estimate and says so."""
    text = ask(path, f"OWNER {int(serial)}", timeout)
    lines = text.split("\n")
    if not lines or lines[0] != "tlsprof-owner 1" or "END" not in lines:
        raise ChannelError(text.strip().splitlines()[0] if text.strip() else "no answer to OWNER")
    by_id = {site.id: site for site in snap.sites}
    out = []
    for line in lines[1:lines.index("END")]:
        _, site_id, blocks = line.split()
        site, blocks = by_id.get(int(site_id)), int(blocks)
        mean = site.bytes / site.blocks if site and site.blocks else 0
        out.append({"file": site.file if site else None, "line": site.line if site else None,
                    "cause": site.cause if site else "other", "library": site.library if site else None,
                    "blocks": blocks, "approx_bytes": int(round(blocks * mean)), "estimate": True})
    return sorted(out, key=lambda s: -s["approx_bytes"])


def snapshot(path: str, timeout: float = 5.0) -> Snapshot:
    return parse_snapshot(ask(path, "SNAPSHOT", timeout))


def ping(path: str, timeout: float = 2.0) -> int:
    answer = ask(path, "PING", timeout).split()
    if len(answer) != 2 or answer[0] != "PONG":
        raise ChannelError("the shim did not answer PING")
    return int(answer[1])


def detach(path: str, timeout: float = 5.0) -> None:
    if ask(path, "DETACH", timeout).strip() != "OK":
        raise ChannelError("the shim did not confirm DETACH")


@dataclass
class WalkedObject:
    """A context or connection the heap walk found, with the bytes it reaches first."""
    kind: str                 # "context" | "connection"
    ptr: int
    bytes: int
    blocks: int
    by_cause: dict            # cause -> Counters(bytes, 0, blocks)
    ctx_ptr: int = None       # a connection's SSL_CTX
    state: str = None
    fd: int = None
    peer: str = None


@dataclass
class Walk:
    status: str               # "ok" | "unavailable" | "failed"
    reason: str = None
    stats: dict = field(default_factory=dict)
    objects: list = field(default_factory=list)
    process: dict = field(default_factory=dict)  # what -> (bytes, blocks)

    @property
    def ok(self):
        return self.status == "ok"


_WALK_KINDS = {"ctx": "context", "ssl": "connection"}


def parse_walk(text: str) -> Walk:
    """The WALK answer. Unknown keys and line tags are ignored (the format grows by adding keys)."""
    lines = text.split("\n")
    if not lines or lines[0] != "tlsprof-walk 1":
        first = text.strip().splitlines()[0] if text.strip() else "nothing"
        raise ChannelError(f"the shim answered WALK with {first!r} (a shim without the heap walk?)")
    if "END" not in lines:
        raise ChannelError("the shim's heap walk answer was cut short")
    walk = Walk(status="failed")
    try:
        for line in lines[1:lines.index("END")]:
            tag, _, rest = line.partition(" ")
            if tag == "status":
                walk.status = rest.strip()
            elif tag == "reason":
                walk.reason = rest.strip()
            elif tag == "stat":
                k, v = rest.split()
                walk.stats[k] = int(v)
            elif tag in ("X", "P"):
                kv = dict(item.partition("=")[::2] for item in rest.split(" ") if "=" in item)
                if tag == "P":
                    walk.process[kv["what"]] = (int(kv["bytes"]), int(kv["blocks"]))
                    continue
                by_cause = {}
                for cause in CAUSES:
                    if cause in kv:
                        b, n = kv[cause].split(":")
                        by_cause[cause] = Counters(int(b), 0, int(n))
                walk.objects.append(WalkedObject(
                    kind=_WALK_KINDS.get(kv.get("kind"), "other"), ptr=int(kv["ptr"], 16),
                    bytes=int(kv["bytes"]), blocks=int(kv["blocks"]), by_cause=by_cause,
                    ctx_ptr=int(kv["ctx"], 16) if kv.get("ctx") else None, state=kv.get("state"),
                    fd=int(kv["fd"]) if kv.get("fd") else None, peer=kv.get("peer")))
    except (ValueError, KeyError, IndexError) as exc:
        raise ChannelError(f"unreadable heap walk line: {exc}") from None
    return walk


def walk(path: str, timeout: float = 120.0) -> Walk:
    """Ask the shim for a heap walk (it runs in a child of the target; the target pauses only for
    the fork). The shim bounds the walk to `timeout` too."""
    return parse_walk(ask(path, f"WALK {int(timeout * 1000) - 2000}", timeout))
