"""Reading the shim's counters straight out of the target's memory (process_vm_readv), with no
thread of ours answering in the target: the first layer of a channel without a listener thread
(issue 18: that thread makes glibc's malloc take its arena lock, ~6 % of a context build).

The shim exports `tlsprof_remote_layout` (hooks/remote_layout.h): where its owner and site tables
are and how their records are laid out. This module finds that record through the shim file's
dynamic symbols and the target's /proc/PID/maps, then reads the owners and sites a SNAPSHOT would
carry and builds the same model objects (model/wire.py). What the channel reads from the kernel
inside the target (peer addresses, fd facts, mallinfo2, static copies) is not here yet:
`peer` is None and `facts` holds only `io`. docs/snapshot-format.md, "Remote reads".

Needs ptrace access to the target (same user and a dumpable process under Yama's scope 1 for a
descendant, or CAP_SYS_PTRACE): anything else is a ChannelError with the reason.
"""

import ctypes
import gc
import os
import struct
import time

from tlsprof.errors import ChannelError
from tlsprof.model.wire import FALLBACK_VOCAB, Counters, Owner, Site, Snapshot

_new_counters = tuple.__new__  # Counters without its keyword __new__: tens of thousands a read

SYMBOL = b"tlsprof_remote_layout"
MAGIC = b"tlsprofL"
VERSION = 1
# struct remote_layout, version 1: magic, version, size, ten addresses, 33 shape numbers
_HEAD = struct.Struct("<8sII10Q33I")
_ADDRESSES = (
    "owner_chunks process_owner owner_slots site_table site_counts site_slots "
    "untracked_bytes untracked_blocks io_calls_of_dead exiting"
).split()
_SHAPES = (
    "owner_size owner_chunk owner_chunks_n owner_slot_count n_causes "
    "o_serial o_ptr o_ctx o_kind o_state o_alive o_pre_attach o_fd o_flags o_mode o_io_calls "
    "o_created_ns o_total_blocks o_slot_cause o_slot o_wide slot_size cause_counters_size "
    "site_size s_name s_line s_scope s_cause s_used s_library max_sites site_stripes site_counts_size"
).split()
OWNER_IN_USE, OWNER_MODE_KNOWN = 1, 2
SHT_DYNSYM = 11


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_readv.argtypes = [
    ctypes.c_int,
    ctypes.POINTER(_IOVec),
    ctypes.c_ulong,
    ctypes.POINTER(_IOVec),
    ctypes.c_ulong,
    ctypes.c_ulong,
]


class Memory:
    """Reads of another process's memory."""

    def __init__(self, pid: int):
        self.pid = pid

    def read(self, addr: int, n: int) -> bytes:
        if n <= 0:
            return b""
        buf = ctypes.create_string_buffer(n)
        local, remote = _IOVec(ctypes.addressof(buf), n), _IOVec(addr, n)
        got = _libc.process_vm_readv(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if got != n:
            err = ctypes.get_errno()
            raise ChannelError(
                f"cannot read process {self.pid}'s memory at {addr:#x} ({os.strerror(err) if got < 0 else 'short read'})"
            )
        return buf.raw

    def string(self, addr: int, cap: int = 256) -> str | None:
        """A NUL-terminated string (at most cap bytes; a read stops at the end of its page first)."""
        if not addr:
            return None
        room = min(cap, 4096 - addr % 4096)
        raw = self.read(addr, room)
        if b"\0" not in raw and room < cap:
            raw += self.read(addr + room, cap - room)
        return raw.split(b"\0", 1)[0].decode(errors="replace")


def symbol_offset(path: str, name: bytes = SYMBOL) -> int:
    """st_value of a dynamic symbol of an ELF64 little-endian shared object."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ChannelError(f"{path} is not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    for sh in sections:
        if sh[1] != SHT_DYNSYM:
            continue
        strtab = sections[sh[6]]
        for off in range(sh[4], sh[4] + sh[5], sh[9] or 24):
            st_name, _info, _other, _shndx, st_value, _size = struct.unpack_from("<IBBHQQ", data, off)
            end = data.index(b"\0", strtab[4] + st_name)
            if data[strtab[4] + st_name : end] == name:
                return st_value
    raise ChannelError(f"{path} does not export {name.decode()}: a shim older than remote reads")


def _file_id(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return os.major(st.st_dev), os.minor(st.st_dev), st.st_ino


def _file_starts(pid: int):
    """(base, (major, minor, inode), path) of each file mapped from its offset 0 in pid."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise ChannelError(f"cannot read /proc/{pid}/maps: {exc.strerror}") from None
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6 or int(parts[2], 16) != 0:
            continue
        major, minor = (int(x, 16) for x in parts[3].split(":"))
        yield int(parts[0].split("-", 1)[0], 16), (major, minor, int(parts[4])), parts[5]


def mapped_base(pid: int, path: str) -> int:
    """Where `path` (the same file, by device and inode) starts in pid's address space."""
    want = _file_id(path)
    for base, file_id, _ in _file_starts(pid):
        if file_id == want:
            return base
    raise ChannelError(f"process {pid} has not loaded {os.path.basename(path)}")


def loaded_shim(pid: int) -> tuple[int, str]:
    """(base, file) of the shim pid has loaded, whichever copy (`tlsprof/_shim*.so`, or the copy
    given to a target of another user, `tlsprof-lib-*/_shim*.so`): the file as this process can
    open it (through /proc/PID/root for a chrooted target)."""
    for base, file_id, path in _file_starts(pid):
        name = os.path.basename(path)
        if not (name.startswith("_shim") and name.endswith(".so")):
            continue
        for candidate in (path, f"/proc/{pid}/root{path}"):
            try:
                if _file_id(candidate) == file_id:
                    return base, candidate
            except OSError:
                continue
    raise ChannelError(f"process {pid} has not loaded the tlsprof shim")


def read_layout(mem: Memory, addr: int) -> dict:
    raw = mem.read(addr, _HEAD.size)
    f = _HEAD.unpack(raw)
    if f[0] != MAGIC:
        raise ChannelError(f"process {mem.pid}: the shim's layout record is not filled (not started?)")
    if f[1] != VERSION or f[2] < _HEAD.size:
        raise ChannelError(f"process {mem.pid}: remote layout version {f[1]} (this tlsprof reads {VERSION})")
    return dict(zip(["magic", "version", "size", *_ADDRESSES, *_SHAPES], f))


class Reader:
    """Snapshots of one process, read from its memory; site names are read once per address."""

    def __init__(self, pid: int, shim_file: str | None = None):
        """`shim_file`: the shim pid loaded, if known; else found in its maps (loaded_shim)."""
        self.pid = pid
        self.mem = Memory(pid)
        if shim_file is None:
            base, shim_file = loaded_shim(pid)
        else:
            base = mapped_base(pid, shim_file)
        self.layout = read_layout(self.mem, base + symbol_offset(shim_file))
        self._names = {}
        self._owner_struct = self._record()

    def snapshot(self) -> Snapshot:
        """The owners and sites as SNAPSHOT would give them (peers and fd facts aside). Raises
        ChannelError when the process can no longer be read (gone, or no access)."""
        was_enabled = gc.isenabled()
        gc.disable()  # tens of thousands of small objects and no cycle among them, as in wire.py
        try:
            return self._snapshot()
        finally:
            if was_enabled:
                gc.enable()

    def _snapshot(self) -> Snapshot:
        L, mem = self.layout, self.mem
        mono_ns = time.monotonic_ns()
        owners = self._owners(mono_ns)
        sites = self._sites()
        stats = {
            "untracked_bytes": struct.unpack("<q", mem.read(L["untracked_bytes"], 8))[0],
            "untracked_blocks": struct.unpack("<q", mem.read(L["untracked_blocks"], 8))[0],
            "io_calls_of_dead": struct.unpack("<Q", mem.read(L["io_calls_of_dead"], 8))[0],
            "exiting": struct.unpack("<i", mem.read(L["exiting"], 4))[0],
            "read": "remote",
        }
        return Snapshot(self.pid, mono_ns, None, stats, owners, sites)

    def _owners(self, now_ns: int) -> list:
        L, mem = self.layout, self.mem
        n = struct.unpack("<I", mem.read(L["owner_slots"], 4))[0]
        size, chunk = L["owner_size"], L["owner_chunk"]
        n_chunks = min((n + chunk - 1) // chunk, L["owner_chunks_n"])
        chunks = struct.unpack(f"<{n_chunks}Q", mem.read(L["owner_chunks"], 8 * n_chunks)) if n_chunks else ()
        records = [(0, mem.read(L["process_owner"], size), 0)]
        for c, addr in enumerate(chunks):
            if addr:
                count = min(chunk, n - c * chunk)
                raw = mem.read(addr, size * count)
                records += [(c * chunk + i, raw, i * size) for i in range(1 if c == 0 else 0, count)]
        rows = [row for row in (self._owner_row(idx, raw, off) for idx, raw, off in records) if row]
        serial_of = {row[0]: row[1] for row in rows}
        kinds, states = FALLBACK_VOCAB["kinds"], FALLBACK_VOCAB["states"]
        out = []
        for idx, serial, kind, ptr, ctx, state, fd, alive, pre, created, mode, flags, io, by_cause in rows:
            live = requested = blocks = 0
            for b, r, n in by_cause.values():
                live, requested, blocks = live + b, requested + r, blocks + n
            o = Owner(
                idx,
                serial,
                kinds[kind] if kind < len(kinds) else "process",
                ptr,
                serial_of.get(ctx, 0) if ctx else 0,
                states[state] if state < len(states) else "handshake",
                fd,
                bool(alive),
                bool(pre),
                (now_ns - created) / 1e9 if created and now_ns > created else 0.0,
                mode,
                bool(flags & OWNER_MODE_KNOWN),
                None,
                by_cause,
                live,
                requested,
                blocks,
            )
            if alive and o.kind == "connection":
                o.facts = {"io": io}
            out.append(o)
        return out

    def _record(self) -> struct.Struct:
        """One unpack for an owner record's fields, in offset order, from the layout's offsets."""
        L = self.layout
        fields = [
            (L["o_serial"], "Q"),
            (L["o_ptr"], "Q"),
            (L["o_ctx"], "I"),
            (L["o_kind"], "B"),
            (L["o_state"], "B"),
            (L["o_alive"], "B"),
            (L["o_pre_attach"], "B"),
            (L["o_fd"], "i"),
            (L["o_flags"], "I"),
            (L["o_mode"], "Q"),
            (L["o_io_calls"], "Q"),
            (L["o_created_ns"], "Q"),
            (L["o_total_blocks"], "q"),
            (L["o_slot_cause"], f"{L['owner_slot_count']}s"),
            *((L["o_slot"] + k * L["slot_size"], "iii") for k in range(L["owner_slot_count"])),
            (L["o_wide"], "Q"),
        ]
        fmt, at = "<", 0
        for off, code in fields:  # in the order of the names below, which is also the record's
            if off < at:
                raise ChannelError(f"process {self.pid}: an owner record laid out in an order this tlsprof cannot read")
            fmt += f"{off - at}x" * (off > at) + code
            at = off + struct.calcsize("<" + code)
        return struct.Struct(fmt)

    def _owner_row(self, idx: int, raw: bytes, off: int):
        """The fields of one owner record, or None for one a snapshot leaves out."""
        f = self._owner_struct.unpack_from(raw, off)
        serial, ptr, ctx, kind, state, alive, pre, fd, flags, mode, io, created, total_blocks, slot_causes = f[:14]
        if not flags & OWNER_IN_USE or (idx and not alive and total_blocks <= 0):
            return None
        causes = FALLBACK_VOCAB["causes"]
        by_cause = {}
        for k, c in enumerate(slot_causes):
            if not c:
                break
            b, over, n = f[14 + 3 * k : 17 + 3 * k]
            if b or n:
                counts = (b, b - over, n)
                if b < 0 or n < 0 or b < over:  # read as none, as the wire parser does
                    counts = tuple(max(x, 0) for x in counts)
                by_cause[causes[c - 1] if c <= len(causes) else "other"] = _new_counters(Counters, counts)
        wide = f[-1]
        if wide:
            size = self.layout["cause_counters_size"]
            raw_wide = self.mem.read(wide, size * self.layout["n_causes"])
            for c in range(self.layout["n_causes"]):
                b, r, n = struct.unpack_from("<qqq", raw_wide, c * size)
                if b or n:
                    name = causes[c] if c < len(causes) else "other"
                    old = by_cause.get(name, (0, 0, 0))
                    by_cause[name] = Counters(old[0] + max(b, 0), old[1] + max(r, 0), old[2] + max(n, 0))
        return idx, serial, kind, ptr, ctx, state, fd, alive, pre, created, mode, flags, io, by_cause

    def _sites(self) -> list:
        L, mem = self.layout, self.mem
        n = min(struct.unpack("<I", mem.read(L["site_slots"], 4))[0], L["max_sites"])
        table = mem.read(L["site_table"], L["site_size"] * n)
        stripes, csize = L["site_stripes"], L["site_counts_size"]
        counts = mem.read(L["site_counts"], stripes * csize * n)
        causes, scopes = FALLBACK_VOCAB["causes"], FALLBACK_VOCAB["scopes"]
        out = []
        for i in range(n):
            at = i * L["site_size"]
            if not table[at + L["s_used"]]:
                continue
            b = r = blocks = 0
            for k in range(stripes):
                sb, sr, sn = struct.unpack_from("<qqq", counts, (i * stripes + k) * csize)
                b, r, blocks = b + sb, r + sr, blocks + sn
            if blocks <= 0:
                continue
            name_at, library_at = (struct.unpack_from("<Q", table, at + L[k])[0] for k in ("s_name", "s_library"))
            cause, scope = table[at + L["s_cause"]], table[at + L["s_scope"]]
            out.append(
                Site(
                    self._name(name_at, 200) or "?",
                    struct.unpack_from("<i", table, at + L["s_line"])[0],
                    causes[cause] if cause < len(causes) else "other",
                    scopes[scope] if scope < len(scopes) else scopes[0],
                    b,
                    r,
                    blocks,
                    self._name(library_at, 64),
                    i,
                )
            )
        return out

    def _name(self, addr: int, cap: int):
        """Site names never change once interned: read once per address."""
        if addr not in self._names:
            self._names[addr] = self.mem.string(addr, cap + 1)
        return self._names[addr]
