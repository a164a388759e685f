"""What one look at the target saw, frozen: the collect layer makes these, analysis builds reports
from them, nothing changes them afterwards.

`ProcessObservation` is one process's shim snapshot (tlsprof/collect/client.py parses it) together
with what the session learnt beside it at the same moment: the Python agent's answer, the wall and
monotonic times, RSS and the kernel's memory view, the process title and parent, and how long each
connection has been idle. `Observation` is one poll of a process tree: {pid: ProcessObservation}.
"""

from dataclasses import dataclass, field
from types import MappingProxyType


def _frozen_map(mapping) -> MappingProxyType:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, eq=False)  # identity: a poll is itself, however alike two look
class ProcessObservation:
    snapshot: object  # the shim's parsed snapshot (owners, sites, stats …), read only
    taken_at: float = 0.0  # wall clock
    mono_taken: float | None = None  # monotonic, against the agent answer's own time
    rss_bytes: int = 0
    command: tuple = ()  # argv (process title) as /proc showed it
    ppid: int | None = None
    python: dict | None = None  # the in-target Python agent's answer; None without an agent
    process_memory: dict | None = None  # the kernel's view (collect/process_memory.py)
    idle_s: MappingProxyType = field(default_factory=lambda: _frozen_map({}))  # serial -> s idle

    @classmethod
    def of(cls, snapshot, **facts):
        """An observation of a bare snapshot (tests, a session without a snapshot)."""
        facts.setdefault("taken_at", getattr(snapshot, "taken_at", 0.0) or 0.0)
        facts.setdefault("rss_bytes", getattr(snapshot, "rss_bytes", 0) or 0)
        facts["idle_s"] = _frozen_map(facts.get("idle_s"))
        facts["command"] = tuple(facts.get("command") or ())
        return cls(snapshot, **facts)

    # the snapshot's own facts, read through
    @property
    def pid(self):
        return self.snapshot.pid

    @property
    def owners(self):
        return self.snapshot.owners

    @property
    def sites(self):
        return self.snapshot.sites

    @property
    def stats(self):
        return self.snapshot.stats

    @property
    def openssl(self):
        return self.snapshot.openssl

    @property
    def copies(self):
        return self.snapshot.copies

    @property
    def vocab(self):
        return getattr(self.snapshot, "vocab", {})

    @property
    def live_bytes(self):
        return self.snapshot.live_bytes

    @property
    def connections(self):
        return self.snapshot.connections

    @property
    def io_calls(self):
        return self.snapshot.io_calls


@dataclass(frozen=True, eq=False)  # identity: a poll is itself, however alike two look
class Observation:
    """One poll of the tree: {pid: ProcessObservation} of every process that answered, and sums."""

    snaps: MappingProxyType
    taken_at: float
    t: float  # seconds since the session started

    def __init__(self, snaps: dict, taken_at: float, t: float):
        object.__setattr__(self, "snaps", MappingProxyType(dict(sorted(snaps.items()))))
        object.__setattr__(self, "taken_at", taken_at)
        object.__setattr__(self, "t", t)

    @property
    def live_bytes(self) -> int:
        return sum(s.live_bytes for s in self.snaps.values())

    @property
    def connection_count(self) -> int:
        return sum(len(s.connections) for s in self.snaps.values())

    @property
    def connections(self):  # as a snapshot's: every live connection, of every process
        return [c for s in self.snaps.values() for c in s.connections]

    @property
    def owners(self):
        return [o for s in self.snaps.values() for o in s.owners]

    @property
    def pid(self):  # the process with most connections (the live view's drill-down asks its shim)
        return max(self.snaps.values(), key=lambda s: (len(s.connections), s.live_bytes)).pid

    def with_process(self, pid, process: ProcessObservation) -> "Observation":
        """The same observation with one process's entry replaced (a newer agent answer joined in)."""
        snaps = dict(self.snaps)
        snaps[pid] = process
        return Observation(snaps, self.taken_at, self.t)
