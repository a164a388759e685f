"""Collects snapshots from the shims of a process tree in a channel directory for as long as a
session lasts. Each poll asks every tracked process of the tree once: an `Observation`. Three
observations are kept for the report (tlsprof/moments.py says why): the steady state (the latest
one holding the most connections), the peak (most live OpenSSL bytes, as memray reports the
high-water mark) and the last one; and a short history for charts and growth findings."""
import datetime
import glob
import os
import threading
import time

import psutil

from tlsprof.collect import client, linkage, process_tree
from tlsprof.analysis import memory
from tlsprof.errors import ChannelError
from tlsprof.analysis.report import build_tree_report
from tlsprof.analysis.moments import assemble

HISTORY_MAX = 720


class Observation:
    """One poll of the tree: {pid: Snapshot} of every process that answered, and their sums."""

    def __init__(self, snaps: dict, taken_at: float, t: float):
        self.snaps = dict(sorted(snaps.items()))
        self.taken_at = taken_at
        self.t = t  # seconds since the session started
        self.live_bytes = sum(s.live_bytes for s in self.snaps.values())
        self.connection_count = sum(len(s.connections) for s in self.snaps.values())

    @property
    def connections(self):  # as a Snapshot's: every live connection, of every process
        return [c for s in self.snaps.values() for c in s.connections]

    @property
    def owners(self):
        return [o for s in self.snaps.values() for o in s.owners]

    @property
    def pid(self):  # the process with most connections (the live view's drill-down asks its shim)
        return max(self.snaps.values(), key=lambda s: (len(s.connections), s.live_bytes)).pid


class Session:
    def __init__(self, channel_dir: str, main_pid: int, command, mode: str, follow_children=True,
                 tree_only=False):
        self.channel_dir = channel_dir
        # attach: processes of other uids (nginx's workers) serve in their own uid's directory
        self.channel_dirs = [channel_dir]
        self._dir_of = {}  # pid -> the directory its socket is in
        self.main_pid = main_pid
        self.command = list(command)
        self.mode = mode
        # follow_children: every process of the tree that serves a socket; False: main_pid alone.
        # tree_only (attach): the channel directory is shared with other sessions' processes; look
        # only at main_pid and its descendants
        self.follow_children = follow_children
        self.tree_only = tree_only
        self.started = time.time()
        self.steady = self.peak = self.last = None  # Observations
        self.count = 0
        self.history = []
        self.commands = {}  # pid -> argv (process title), read once per process
        self.parents = {}  # pid -> ppid
        self.on_snapshot = []  # callbacks(snapshot of each process), e.g. announcing OpenSSL copies
        # poll() runs on one thread while the live view and the metrics endpoint read reports on others
        self._lock = threading.RLock()
        self.agent_async = False
        self._agent_lock = threading.Lock()
        self._agent_threads = {}
        self._agent_docs = {}
        self._io_seen = {}  # pid -> {connection serial: (io calls, monotonic time they last changed)}
        self._latest = (None, None, None)

    def sockets(self):
        out = {}
        for directory in self.channel_dirs:
            for path in glob.glob(os.path.join(directory, "*.sock")):
                try:
                    pid = int(os.path.basename(path)[:-5])
                except ValueError:
                    continue  # the Python agent's <pid>.py.sock
                out[pid] = path
                self._dir_of[pid] = directory
        if not self.follow_children:
            return {pid: p for pid, p in out.items() if pid == self.main_pid}
        if self.tree_only:
            tree = set(process_tree.descendants(self.main_pid))
            return {pid: p for pid, p in out.items() if pid in tree}
        return out

    def dir_of(self, pid) -> str:
        return self._dir_of.get(pid, self.channel_dir)

    def socket_of(self, pid) -> str:
        return os.path.join(self.dir_of(pid), f"{pid}.sock")

    def poll(self, fresh_agent=False):
        """Take one snapshot of each tracked process. Returns the newest Observation, or None when
        no process answered. `fresh_agent`: the session's last look: Python agents are asked now."""
        with self._lock:
            return self._poll(fresh_agent)

    def _poll(self, fresh_agent=False):
        snaps = {}
        previous = self.last.snaps if self.last is not None else {}
        for pid, path in self.sockets().items():
            try:
                snap = client.snapshot(path)
            except ChannelError:
                # a busy process that missed this look keeps its previous snapshot; a gone one drops out
                if pid in previous and psutil.pid_exists(pid):
                    snaps[pid] = previous[pid]
                continue
            self._annotate(snap, fresh_agent)
            snaps[pid] = snap
        if not snaps:
            return None
        now = time.time()
        obs = Observation(snaps, now, round(now - self.started, 3))
        self.count += 1
        self.last = obs
        if self.peak is None or obs.live_bytes >= self.peak.live_bytes:
            self.peak = obs
        else:
            _carry_python_obs(self.peak, obs)
        if self.steady is None or obs.connection_count >= self.steady.connection_count:
            self.steady = obs  # ties go to the later observation
        else:
            _carry_python_obs(self.steady, obs)
        session_bytes = sum(o.by_cause["session"].bytes for s in snaps.values() for o in s.owners
                            if "session" in o.by_cause)
        point = {"t": obs.t, "live_bytes": obs.live_bytes, "connections": obs.connection_count,
                 "session_bytes": session_bytes,
                 "handshakes": sum(1 for s in snaps.values() for o in s.connections if o.state == "handshake")}
        io = [s.io_calls for s in snaps.values()]
        if io and all(v is not None for v in io):
            point["io_calls"] = sum(io)  # cumulative: points may be thinned out
        by_cause = {}
        for s in snaps.values():  # live bytes by cause, for the history chart stacked by cause
            for o in s.owners:
                for cause, counters in o.by_cause.items():
                    by_cause[cause] = by_cause.get(cause, 0) + counters.bytes
        point["by_cause"] = {c: v for c, v in by_cause.items() if v}
        if len(snaps) > 1:
            point["processes"] = len(snaps)
        self.history.append(point)
        if len(self.history) > HISTORY_MAX:
            self.history = self.history[::2]
        for callback in self.on_snapshot:
            for pid, snap in snaps.items():
                if pid not in previous or previous[pid] is not snap:
                    callback(snap)
        return obs

    def _annotate(self, snap, fresh_agent):
        pid = snap.pid
        if pid not in self.commands:
            self.commands[pid] = process_tree.command_of(pid)
            try:
                self.parents[pid] = psutil.Process(pid).ppid()
            except psutil.Error:
                self.parents[pid] = None
        else:  # titles change (a PostgreSQL backend names its client once forked and authenticated)
            self.commands[pid] = process_tree.command_of(pid) or self.commands[pid]
        snap.command = self.commands[pid]
        snap.ppid = self.parents.get(pid)
        snap.python = self._agent_answer(pid, fresh_agent)  # None unless a Python agent runs there
        snap.taken_at = time.time()
        snap.mono_taken = time.monotonic()  # against the agent answer's own time (analysis/python_join.py)
        try:
            snap.rss_bytes = psutil.Process(pid).memory_info().rss
        except psutil.Error:
            snap.rss_bytes = 0
        snap.process_memory = memory.read_process(pid)  # the kernel's view, for `memory`
        self._note_idleness(snap)

    def _note_idleness(self, snap):
        """idle_s per live connection: how long since this session saw its I/O counter move (a
        lower bound for connections first seen with traffic; since creation when they never had any)."""
        now = snap.mono_taken
        seen = self._io_seen.get(snap.pid, {})
        kept = {}
        for o in snap.owners:
            io = o.facts.get("io")
            if o.kind != "connection" or not o.alive or io is None:
                continue
            before = seen.get(o.serial)
            if before is not None and before[0] == io:
                changed = before[1]
            elif before is None and io == 0:
                changed = now - o.age_s
            else:
                changed = now
            kept[o.serial] = (io, changed)
            snap.idle_s[o.serial] = round(max(0.0, now - changed), 3)
        self._io_seen[snap.pid] = kept

    def _agent_answer(self, pid, fresh=False):
        """The Python agent's view of `pid`. A full agent snapshot of a large process takes seconds
        (it walks every gc object under the GIL): with `agent_async` (the live view) the newest
        answer in hand is used and the next is fetched in the background, so a refresh never waits
        for it; otherwise (reports) the join uses an answer fetched now."""
        if not self.agent_async or fresh:
            return linkage.fetch(self.dir_of(pid), pid, fresh=fresh)
        with self._agent_lock:
            thread = self._agent_threads.get(pid)
            if thread is None or not thread.is_alive():
                thread = threading.Thread(target=self._fetch_agent, args=(pid,),
                                          name="tlsprof-agent-fetch", daemon=True)
                self._agent_threads[pid] = thread
                thread.start()
            return self._agent_docs.get(pid)

    def _fetch_agent(self, pid):
        doc = linkage.fetch(self.dir_of(pid), pid)
        with self._agent_lock:
            self._agent_docs[pid] = doc

    def moments(self) -> dict:
        """{steady|peak|last: what that observation was} (no report built: cheap, for headers)."""
        with self._lock:
            return {name: _summary(obs) for name, obs in self._chosen().items()}

    def _chosen(self) -> dict:
        if self.last is None:
            return {}
        return {"steady": self.steady, "peak": self.peak, "last": self.last}

    def latest_report(self, pid=None):
        """The report of the newest observation (what the live view and the metrics endpoint show):
        the whole tree, or one process of it (`pid`)."""
        with self._lock:
            if self.last is None:
                return None
            key = (self.last, pid)
            if self._latest[:2] != key:
                obs = self.last
                if pid is not None and pid in obs.snaps:
                    obs = Observation({pid: obs.snaps[pid]}, obs.taken_at, obs.t)
                body = self._body(obs, False, ())
                report = assemble({"last": body}, "last", self.history,
                                  {n: _summary(o) for n, o in self._chosen().items()})
                self._latest = (self.last, pid, report)
            return self._latest[2]

    def report(self, at="steady", partial=False, notes=()):
        """The report at moment `at` (steady, peak or last), keeping the other two moments' bodies so
        that `tlsprof report FILE --at …` can re-choose (docs/report-format.md, "Moments")."""
        with self._lock:
            chosen = self._chosen()
            if not chosen:
                return None
            bodies, built = {}, {}
            for name, obs in chosen.items():
                if id(obs) not in built:  # one body per distinct observation
                    built[id(obs)] = self._body(obs, partial, notes)
                bodies[name] = built[id(obs)]
            return assemble(bodies, at, self.history, {n: _summary(o) for n, o in chosen.items()})

    def _body(self, obs, partial, notes):
        return build_tree_report(obs.snaps, root_pid=self.main_pid, command=self.command, mode=self.mode,
                                 partial=partial, snapshots=self.count, notes=notes, history=self.history,
                                 peak_live_bytes=self.peak.live_bytes if self.peak else None)


def _summary(obs) -> dict:
    handshakes = sum(1 for s in obs.snaps.values() for o in s.connections if o.state == "handshake")
    return {"captured_at": datetime.datetime.fromtimestamp(obs.taken_at, datetime.timezone.utc)
            .isoformat(timespec="seconds"),
            "t": obs.t, "connections": obs.connection_count, "live_bytes": obs.live_bytes,
            "handshakes": handshakes, "processes": len(obs.snaps)}


def _carry_python_obs(older, newer):
    for pid, snap in older.snaps.items():
        if pid in newer.snaps:
            _carry_python(snap, newer.snaps[pid])


def _carry_python(older, newer):
    """The agent's answer is throttled, so the peak snapshot may carry one older than some of its
    objects. A newer answer describes those objects too when the shim shows the same owner (serial
    and pointer) alive in both snapshots: its Python objects join the peak's answer. The older answer
    keeps its own time, so nothing is called orphaned on the strength of the newer one."""
    old_doc, new_doc = getattr(older, "python", None), getattr(newer, "python", None)
    if not isinstance(old_doc, dict) or not isinstance(new_doc, dict) or old_doc is new_doc:
        return
    if old_doc.get("error") or new_doc.get("error"):
        return
    alive_now = {(o.serial, o.ptr) for o in newer.owners if o.alive}
    shared = {("connection" if o.kind == "connection" else "context", o.ptr)
              for o in older.owners if o.alive and (o.serial, o.ptr) in alive_now}
    known = {(o.get("kind"), o.get("ptr")) for o in old_doc.get("objects") or [] if isinstance(o, dict)}
    extra = [o for o in new_doc.get("objects") or [] if isinstance(o, dict)
             and (o.get("kind"), o.get("ptr")) in shared and (o.get("kind"), o.get("ptr")) not in known]
    if extra:
        merged = dict(old_doc)
        merged["objects"] = list(old_doc.get("objects") or []) + extra
        older.python = merged

