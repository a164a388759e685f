"""The heap walk's answer (`WALK`, hooks/heapwalk.c, docs/heap-walk.md): `status`, `reason`, `stat`
lines, `C` lines naming each OpenSSL copy walked, one `X key=value...` line per context or connection
found in the heap, `P` lines for what belongs to the process, `END`. Pure text in, records out, as
the snapshot's parser (tlsprof/model/wire.py)."""

from dataclasses import dataclass, field

from tlsprof.errors import ChannelError
from tlsprof.model.causes import CAUSES
from tlsprof.model.wire import Counters


@dataclass
class WalkedObject:
    """A context or connection the heap walk found, with the bytes it reaches first."""

    kind: str  # "context" | "connection"
    ptr: int
    bytes: int
    blocks: int
    by_cause: dict  # cause -> Counters(bytes, 0, blocks)
    ctx_ptr: int | None = None  # a connection's SSL_CTX
    state: str | None = None
    fd: int | None = None
    peer: str | None = None
    copy: int = 0  # index in Walk.copies: which OpenSSL of the process it belongs to
    app_ctx_ptr: int | None = None  # the context the application holds for it, when not ctx_ptr (node's SNI)


@dataclass
class Walk:
    status: str  # "ok" | "unavailable" | "failed"
    reason: str | None = None
    stats: dict = field(default_factory=dict)
    objects: list = field(default_factory=list)
    process: dict = field(default_factory=dict)  # what -> (bytes, blocks)
    copies: dict = field(default_factory=dict)  # index -> path of the object holding it ("shared": libssl)
    skipped: list = field(default_factory=list)  # "<path>: <why>" for each OpenSSL copy the walk could not read

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
        for line in lines[1 : lines.index("END")]:
            tag, _, rest = line.partition(" ")
            if tag == "status":
                walk.status = rest.strip()
            elif tag == "reason":
                walk.reason = rest.strip()
            elif tag == "stat":
                k, v = rest.split()
                walk.stats[k] = int(v)
            elif tag == "skipped":
                walk.skipped.append(rest.strip())
            elif tag == "C":
                kv = dict(item.partition("=")[::2] for item in rest.split(" ") if "=" in item)
                walk.copies[int(kv["index"])] = rest.split(" path=", 1)[1] if " path=" in rest else "shared"
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
                walk.objects.append(
                    WalkedObject(
                        kind=_WALK_KINDS.get(kv.get("kind", ""), "other"),
                        ptr=int(kv["ptr"], 16),
                        bytes=int(kv["bytes"]),
                        blocks=int(kv["blocks"]),
                        by_cause=by_cause,
                        ctx_ptr=int(kv["ctx"], 16) if kv.get("ctx") else None,
                        state=kv.get("state"),
                        fd=int(kv["fd"]) if kv.get("fd") else None,
                        peer=kv.get("peer"),
                        copy=int(kv.get("copy") or 0),
                        app_ctx_ptr=int(kv["app_ctx"], 16) if kv.get("app_ctx") else None,
                    )
                )
    except (ValueError, KeyError, IndexError) as exc:
        raise ChannelError(f"unreadable heap walk line: {exc}") from None
    return walk
