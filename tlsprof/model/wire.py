"""The wire format between the shim and the front end (docs/snapshot-format.md): the records a
snapshot holds and the parsers of the shim's answers. Pure text in, records out; the socket is
tlsprof.collect.client's.

A SNAPSHOT answer is a magic line, then one line per record, each `TAG key=value key=value ...`
(values escaped so they hold no space), `END`: a header, the shim's vocabulary (the names its
numbers stand for), stats, one `O` line per owner (process, context, connection) with counters by
cause, one `F` line of facts per live connection, one `S` line per live call site, `C` lines for
static OpenSSL copies. `WALK` answers the heap walk's text (hooks/heapwalk.c, docs/heap-walk.md).
Readers skip keys and tags they do not know.
"""

import gc
import re
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from urllib.parse import unquote

from tlsprof.model.causes import CAUSES
from tlsprof.errors import ChannelError

# What the shim's numbers mean when a snapshot does not say (it does, in its `vocab` line: these are
# only the fallback; tests/integration/test_causes.py checks they equal what a real shim states)
KIND_NAMES = {0: "process", 1: "context", 2: "connection"}
STATE_NAMES = {0: "handshake", 1: "established", 2: "shutdown"}
SCOPE_NAMES = (
    "none",
    "ctx_new",
    "ctx",
    "ca_store",
    "own_cert",
    "ssl_new",
    "handshake",
    "io",
    "shutdown",
    "ssl_ctrl",
    "ssl_free",
    "static",
    "library",
    "thread",
)
MEASURE_NAMES = ("glibc_footprint", "usable_size", "requested")
FALLBACK_VOCAB = {
    "causes": tuple(CAUSES),
    "scopes": SCOPE_NAMES,
    "kinds": tuple(KIND_NAMES.values()),
    "states": tuple(STATE_NAMES.values()),
    "measures": MEASURE_NAMES,
}
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
    peer: str | None
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
    library: str | None = None
    id: int | None = None


@dataclass
class Snapshot:
    pid: int
    mono_ns: int
    openssl: str | None
    stats: dict
    owners: list
    sites: list
    copies: list = field(default_factory=list)  # statically linked OpenSSL copies found
    taken_at: float = 0.0  # wall clock, set by the caller
    _live_bytes: int | None = None  # cached sum (snapshots are never changed once parsed)
    rss_bytes: int = 0
    idle_s: dict = field(default_factory=dict)  # connection serial -> s since it was seen moving data (session)
    vocab: dict = field(default_factory=lambda: dict(FALLBACK_VOCAB))  # what -> names, as the shim stated them

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


def parse_snapshot(text: str) -> Snapshot:
    """The shim's SNAPSHOT answer (docs/snapshot-format.md) -> Snapshot. Raises ChannelError with
    the offending line when the text is not a whole snapshot of this format."""
    # tens of thousands of small objects, no cycles among them: the cyclic GC would only rescan
    # them again and again while they are made
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _parse_snapshot(text)
    finally:
        if was_enabled:
            gc.enable()


SNAPSHOT_MAGIC = "tlsprof-snapshot 2"
OWNER_MAGIC = "tlsprof-owner 2"

# The keys of an O line in the order this shim writes them: when every O line has exactly these,
# the lines are read column by column (_O_LINE); otherwise (a key added by a newer shim, an optional
# one missing) each O line is read by name. docs/snapshot-format.md
_O_KEYS = [
    "idx",
    "serial",
    "kind",
    "ptr",
    "ctx",
    "state",
    "fd",
    "alive",
    "pre_attach",
    "age_ns",
    "mode",
    "mode_known",
    "peer",
    "causes",
]
_O_REQUIRED = ("idx", "serial", "kind")
_O_DEFAULTS = {
    "ptr": "0",
    "ctx": "0",
    "state": "0",
    "fd": "-1",
    "alive": "1",
    "pre_attach": "0",
    "age_ns": "0",
    "mode": "0",
    "mode_known": "0",
    "peer": "-",
    "causes": "",
}
_O_BY_NAME = itemgetter(*_O_KEYS)


def unescape(value: str) -> str:
    """A wire value -> its text: %XX stands for a byte a value cannot hold as is (space, comma, '=',
    '%', control bytes)."""
    return unquote(value) if "%" in value else value


def _fields(rest: str, line: str) -> dict:
    """`key=value key=value ...` -> dict of the raw values (later keys win)."""
    out = {}
    for item in rest.split(" "):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ChannelError(f"unreadable snapshot line (a field without '='): {line[:120]!r}")
        out[key] = value
    return out


def _vocabulary(kv: dict) -> dict:
    """The `vocab` line -> what -> tuple of names; a list the shim does not state keeps the fallback."""
    vocab = dict(FALLBACK_VOCAB)
    for what, names in kv.items():
        vocab[what] = tuple(unescape(n) for n in names.split(","))
    return vocab


def _tokens(stated, known, unknown: str) -> dict:
    """Stated names -> {number as written: name}; a name this front end does not know reads as `unknown`."""
    return {str(i): name if name in known else unknown for i, name in enumerate(stated)}


def _parse_snapshot(text: str) -> Snapshot:
    lines = text.split("\n")
    if not lines or lines[0] != SNAPSHOT_MAGIC:
        first = lines[0][:60]
        if first.startswith("tlsprof-snapshot "):
            raise ChannelError(f"the shim speaks {first!r}; this tlsprof reads {SNAPSHOT_MAGIC!r}")
        raise ChannelError(
            f"the shim answered {first!r}, not a snapshot" if first else "the shim answered nothing, not a snapshot"
        )
    if "END" not in lines:
        raise ChannelError("the shim's snapshot was cut short")
    pid = mono = 0
    openssl = None
    stats, owners, sites, copies = {}, [], [], []
    vocab = dict(FALLBACK_VOCAB)
    causes, scopes, kinds, states = _CAUSE_TOKENS, _SCOPE_TOKENS, _KIND_TOKENS, _STATE_TOKENS
    o_lines, f_lines = [], []
    line = ""
    try:
        for line in lines[1:]:
            tag, _, rest = line.partition(" ")
            if tag == "O":
                o_lines.append(line)  # read together below, once the vocabulary is known
            elif tag == "F":
                f_lines.append(line)
            elif tag == "S":
                kv = _fields(rest, line)
                library = unescape(kv.get("library", "-"))
                sites.append(
                    Site(
                        file=unescape(kv.get("file", "?")),
                        line=int(kv.get("line", 0)),
                        cause=causes.get(kv.get("cause", ""), "other"),
                        scope=scopes.get(kv.get("scope", ""), "none"),
                        bytes=int(kv["bytes"]),
                        requested=int(kv.get("requested", 0)),
                        blocks=int(kv["blocks"]),
                        library=None if library == "-" else library,
                        id=int(kv["id"]),
                    )
                )
            elif tag == "stat":
                for key, value in _fields(rest, line).items():
                    stats[key] = int(value)
            elif tag == "header":
                kv = _fields(rest, line)
                pid = int(kv.get("pid", 0))
                mono = int(kv.get("mono_ns", 0))
                openssl = unescape(kv.get("openssl", "-"))
                openssl = None if openssl == "-" else openssl
            elif tag == "vocab":
                vocab = _vocabulary(_fields(rest, line))
                causes = _tokens(vocab["causes"], CAUSES, "other")
                scopes = _tokens(vocab["scopes"], SCOPE_NAMES, "none")
                kinds = _tokens(vocab["kinds"], KIND_NAMES.values(), "process")
                states = _tokens(vocab["states"], STATE_NAMES.values(), "handshake")
            elif tag == "C":
                kv = _fields(rest, line)
                copies.append(
                    {"path": unescape(kv["path"]), "kind": kv.get("kind", "?"), "tracking": kv.get("tracking", "?")}
                )
            elif tag == "END":
                break
            # any other tag is a line type a newer shim added: skipped
        owners = _owners(text, o_lines, causes, kinds, states)
        by_index = {owner.index: owner for owner in owners}
        for line in f_lines:
            _facts(line, by_index)
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise ChannelError(f"unreadable snapshot line ({type(exc).__name__}: {exc}): {line[:120]!r}") from None
    return Snapshot(
        pid=pid, mono_ns=mono, openssl=openssl, stats=stats, owners=owners, sites=sites, copies=copies, vocab=vocab
    )


# One O line exactly as this shim writes it (_O_KEYS in order): a snapshot whose O lines all match
# is read column by column, each column converted in one C loop (10,000 connections in a fraction of
# the time one int() call per field takes)
_O_LINE = re.compile("^O " + " ".join(f"{key}=(\\S*)" for key in _O_KEYS) + "$", re.M)


def _owners(text: str, o_lines: list, causes, kinds, states) -> list:
    rows = _O_LINE.findall(text)
    if len(rows) == len(o_lines):
        try:
            return _owners_by_column(rows, causes, kinds, states)
        except (ValueError, IndexError, KeyError, TypeError):
            pass  # read line by line below, which names the line at fault
    owners = []
    for line in o_lines:
        try:
            owners.append(_owner(_O_BY_NAME(_owner_fields(line[2:], line)), causes, kinds, states))
        except (ValueError, IndexError, KeyError, TypeError) as exc:
            raise ChannelError(f"unreadable snapshot line ({type(exc).__name__}: {exc}): {line[:120]!r}") from None
    return owners


def _owners_by_column(rows, causes, kinds, states) -> list:
    if not rows:
        return []
    c = list(zip(*rows))
    kind_of = defaultdict(lambda: "process", kinds).__getitem__
    state_of = defaultdict(lambda: "handshake", states).__getitem__
    cause_of = defaultdict(lambda: "other", causes).__getitem__
    one = "1".__eq__
    # connections in the same state hold the same blocks: a server's 2,000 idle connections measured
    # here wrote 19 distinct `causes=` values, so each distinct value is read once per snapshot
    seen = {}
    owners = []
    for index, serial, kind, ptr, ctx, state, fd, alive, pre, age, mode, mode_known, peer, text in zip(
        map(int, c[0]),
        map(int, c[1]),
        map(kind_of, c[2]),
        map(int, c[3], repeat(16)),
        map(int, c[4]),
        map(state_of, c[5]),
        map(int, c[6]),
        map(one, c[7]),
        map(one, c[8]),
        map(int, c[9]),
        map(int, c[10], repeat(16)),
        map(one, c[11]),
        c[12],
        c[13],
    ):
        known = seen.get(text)
        if known is None:
            known = seen[text] = _counters(text, cause_of)
        by_cause, live, requested, blocks = known
        by_cause = by_cause.copy()  # Counters are immutable; the dict is each owner's own
        owners.append(
            Owner(
                index,
                serial,
                kind,
                ptr,
                ctx,
                state,
                fd,
                alive,
                pre,
                age / 1e9,
                mode,
                mode_known,
                None if peer == "-" else unescape(peer),
                by_cause,
                live,
                requested,
                blocks,
            )
        )
    return owners


def _facts(line: str, by_index: dict) -> None:
    """`F idx=<owner index> key=value ...` -> that owner's facts (a number where the value is one)."""
    rest = line[2:]
    kv = rest.replace("=", " ").split(" ")
    if kv[0] != "idx" or len(kv) % 2:
        raise ChannelError(f"unreadable snapshot line (an F line needs idx= first): {line[:120]!r}")
    owner = by_index.get(int(kv[1]))
    if owner is None:
        return
    try:  # every fact this shim writes is a number
        owner.facts.update(zip(kv[2::2], map(int, kv[3::2])))
    except ValueError:
        for key, value in _fields(rest, line).items():
            if key != "idx":
                owner.facts[key] = int(value) if value.lstrip("-").isdigit() else unescape(value)


def _owner_fields(rest: str, line: str) -> dict:
    """An O line not in this shim's exact key order: by name, defaults for the optional keys."""
    kv = _fields(rest, line)
    for key in _O_REQUIRED:
        if key not in kv:
            raise ChannelError(f"unreadable snapshot line (no {key}=): {line[:120]!r}")
    return {**_O_DEFAULTS, **kv}


# the shim's numbers as it writes them -> names (a dict lookup per token instead of int() + index)
_CAUSE_TOKENS = {str(i): name for i, name in enumerate(CAUSES)}
_SCOPE_TOKENS = {str(i): name for i, name in enumerate(SCOPE_NAMES)}
_KIND_TOKENS = {str(k): v for k, v in KIND_NAMES.items()}
_STATE_TOKENS = {str(k): v for k, v in STATE_NAMES.items()}


def _owner(f, causes=_CAUSE_TOKENS, kinds=_KIND_TOKENS, states=_STATE_TOKENS) -> Owner:
    """The 14 values of an O line in _O_KEYS order -> Owner (the line-by-line path)."""
    by_cause, live, requested, blocks = _counters(f[13], defaultdict(lambda: "other", causes).__getitem__)
    peer = f[12]
    return Owner(
        int(f[0]),
        int(f[1]),
        kinds.get(f[2], "process"),
        int(f[3], 16),
        int(f[4]),
        states.get(f[5], "handshake"),
        int(f[6]),
        f[7] == "1",
        f[8] == "1",
        int(f[9]) / 1e9,
        int(f[10], 16),
        f[11] == "1",
        None if peer == "-" else unescape(peer),
        by_cause,
        live,
        requested,
        blocks,
    )


def _counters(value: str, cause_of):
    """`cause:bytes:requested:blocks,...` -> ({cause name: Counters}, live, requested, blocks)."""
    if not value:
        return {}, 0, 0, 0
    f = value.replace(",", ":").split(":")
    if len(f) % 4:
        raise ValueError(f"causes={value[:60]} is not cause:bytes:requested:blocks,...")
    b, r, n = list(map(int, f[1::4])), list(map(int, f[2::4])), list(map(int, f[3::4]))
    if "-" in value:
        # a counter can dip a few bytes below zero when a block freed outside the hooks (a free
        # racing the patching at attach) is found stale at a reused address and subtracted by
        # estimate: a negative byte count would make the whole report invalid, so it reads as none
        b, r, n = ([max(x, 0) for x in col] for col in (b, r, n))
    names = list(map(cause_of, f[0::4]))
    by_cause = dict(zip(names, map(_new_tuple, repeat(Counters), zip(b, r, n))))
    if len(by_cause) != len(names):
        by_cause = _folded(names, b, r, n)  # two numbers read as `other` (names this front end does not know)
    return by_cause, sum(b), sum(r), sum(n)


def _folded(names, b, r, n) -> dict:
    by_cause = {}
    for name, counts in zip(names, zip(b, r, n)):
        old = by_cause.get(name, (0, 0, 0))
        by_cause[name] = _new_tuple(Counters, (old[0] + counts[0], old[1] + counts[1], old[2] + counts[2]))
    return by_cause


def parse_owner_sites(text: str) -> list:
    """The OWNER answer -> [(site id, live blocks)] from its `W site= blocks=` lines."""
    lines = text.split("\n")
    if not lines or lines[0] != OWNER_MAGIC or "END" not in lines:
        raise ChannelError(text.strip().splitlines()[0] if text.strip() else "no answer to OWNER")
    out = []
    line = ""
    try:
        for line in lines[1 : lines.index("END")]:
            tag, _, rest = line.partition(" ")
            if tag == "W":
                kv = _fields(rest, line)
                out.append((int(kv["site"]), int(kv["blocks"])))
    except (ValueError, KeyError) as exc:
        raise ChannelError(f"unreadable OWNER answer line ({type(exc).__name__}: {exc}): {line[:120]!r}") from None
    return out
