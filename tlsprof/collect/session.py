"""Collects snapshots from the shims of a process tree in a channel directory for as long as a
session lasts. Each poll asks every tracked process of the tree once: an `Observation`
(tlsprof/model/observation.py), frozen once made. Three observations are kept for the report
(tlsprof/analysis/moments.py says why): the steady state (the latest one holding the most
connections), the peak (most live OpenSSL bytes, as memray reports the high-water mark) and the
last one; and a short history for charts and growth findings. Reports are built from them by
tlsprof/analysis/reports.py: this module never builds one."""

import dataclasses
import glob
import os
import threading
import time

import psutil

from tlsprof.collect import client, linkage, process_memory, process_tree
from tlsprof.collect.channel_paths import SHIM_SUFFIX, agent_socket_path, socket_path, socket_pid
from tlsprof.errors import ChannelError
from tlsprof.model.observation import Observation, ProcessObservation

HISTORY_MAX = 720
# Under `run`, sitecustomize starts the Python agent while the interpreter starts. A process that
# serves no agent socket this long after it was first seen never imported it (python -I/-E/-S, a
# PYTHONPATH the program set itself): its shim is asked once to start the agent (hooks/pyagent.c).
LATE_AGENT_AFTER_S = 2.0


class Session:
    def __init__(self, channel_dir: str, main_pid: int, command, mode: str, follow_children=True, tree_only=False):
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
        self.lock = threading.RLock()
        self.agent_async = False
        self._agent_lock = threading.Lock()
        self._agent_threads = {}
        self._agent_docs = {}
        self._io_seen = {}  # pid -> {connection serial: (io calls, monotonic time they last changed)}
        self._no_agent_since = {}  # pid -> monotonic time first seen without an agent; None: asked
        # how many stop requests came so far (the collector sets it): an agent ask a new one comes
        # during gives up, so that the last look and the target's signal do not wait for it
        self.stops_so_far = lambda: 0

    def sockets(self):
        out = {}
        for directory in self.channel_dirs:
            for path in glob.glob(os.path.join(directory, "*" + SHIM_SUFFIX)):
                owner = socket_pid(path)
                if owner is None or owner[1] != "shim":
                    continue  # the Python agent's <pid>.py.sock
                pid = owner[0]
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
        return socket_path(self.dir_of(pid), pid)

    def poll(self, fresh_agent=False):
        """Take one snapshot of each tracked process. Returns the newest Observation, or None when
        no process answered. `fresh_agent`: the session's last look: Python agents are asked now."""
        with self.lock:
            return self._poll(fresh_agent)

    def _poll(self, fresh_agent=False):
        snaps = {}
        previous = self.last.snaps if self.last is not None else {}
        for pid, path in self.sockets().items():
            try:
                snap = client.snapshot(path)
            except ChannelError:
                # a busy process that missed this look keeps its previous snapshot; a gone one drops out
                if not psutil.pid_exists(pid):
                    self._forget(pid)
                elif pid in previous:
                    snaps[pid] = previous[pid]
                continue
            if snap.stats.get("exiting") and pid in previous:
                # the process is tearing itself down (its interpreter frees every context): the
                # working state it had is the snapshot before
                snaps[pid] = previous[pid]
                continue
            snaps[pid] = self._observe(snap, fresh_agent)
        if not snaps:
            return None
        now = time.time()
        obs = Observation(snaps, now, round(now - self.started, 3))
        self.count += 1
        self.last = obs
        carried = {}  # id(older observation) -> it with the newer agent answers joined (once each)
        if self.peak is None or obs.live_bytes >= self.peak.live_bytes:
            self.peak = obs
        else:
            self.peak = _carry_python_obs(self.peak, obs, carried)
        if self.steady is None or obs.connection_count >= self.steady.connection_count:
            self.steady = obs  # ties go to the later observation
        else:
            self.steady = _carry_python_obs(self.steady, obs, carried)
        session_bytes = sum(
            o.by_cause["session"].bytes for s in snaps.values() for o in s.owners if "session" in o.by_cause
        )
        point = {
            "t": obs.t,
            "live_bytes": obs.live_bytes,
            "connections": obs.connection_count,
            "session_bytes": session_bytes,
            "handshakes": sum(1 for s in snaps.values() for o in s.connections if o.state == "handshake"),
        }
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

    def _forget(self, pid):
        """What was kept to follow a process that is gone: the observations that hold its snapshot
        (steady, peak, last) keep their own copy."""
        self._io_seen.pop(pid, None)
        self._no_agent_since.pop(pid, None)
        with self._agent_lock:
            thread = self._agent_threads.get(pid)
            if thread is None or not thread.is_alive():
                self._agent_threads.pop(pid, None)
                self._agent_docs.pop(pid, None)
        linkage.forget(self.dir_of(pid), pid)

    def _observe(self, snap, fresh_agent) -> ProcessObservation:
        """The snapshot with what this session learns beside it at the same moment, frozen."""
        pid = snap.pid
        if pid not in self.commands:
            self.commands[pid] = process_tree.command_of(pid)
            try:
                self.parents[pid] = psutil.Process(pid).ppid()
            except psutil.Error:
                self.parents[pid] = None
        else:  # titles change (a PostgreSQL backend names its client once forked and authenticated)
            self.commands[pid] = process_tree.command_of(pid) or self.commands[pid]
        if self.mode == "run":
            self._start_late_agent(pid)
        python = self._agent_answer(pid, fresh_agent)  # None unless a Python agent runs there
        taken_at = time.time()
        mono_taken = time.monotonic()  # against the agent answer's own time (analysis/python_join.py)
        try:
            rss_bytes = psutil.Process(pid).memory_info().rss
        except psutil.Error:
            rss_bytes = 0
        return ProcessObservation.of(
            snap,
            taken_at=taken_at,
            mono_taken=mono_taken,
            rss_bytes=rss_bytes,
            command=self.commands[pid],
            ppid=self.parents.get(pid),
            python=python,
            process_memory=process_memory.read_process(pid),  # the kernel's view, for `memory`
            idle_s=self._idleness(snap, mono_taken),
        )

    def _idleness(self, snap, now) -> dict:
        """idle_s per live connection: how long since this session saw its I/O counter move (a
        lower bound for connections first seen with traffic; since creation when they never had any)."""
        seen = self._io_seen.get(snap.pid, {})
        kept, idle = {}, {}
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
            idle[o.serial] = round(max(0.0, now - changed), 3)
        self._io_seen[snap.pid] = kept
        return idle

    def _start_late_agent(self, pid):
        """Ask `pid`'s shim, once, to start the Python agent that sitecustomize did not. Only a
        Python interpreter's own program: a program that embeds Python may keep the GIL in C for
        good (gil_keepers.py), and the agent's thread would wait for it forever."""
        since = self._no_agent_since.setdefault(pid, time.monotonic())
        if (
            since is None
            or os.path.exists(agent_socket_path(self.dir_of(pid), pid))
            or not process_tree.runs_python(pid)
        ):
            self._no_agent_since[pid] = None
            return
        if time.monotonic() - since < LATE_AGENT_AFTER_S:
            return
        self._no_agent_since[pid] = None
        try:
            client.start_agent(self.socket_of(pid))
        except ChannelError:
            pass

    def _agent_answer(self, pid, fresh=False):
        """The Python agent's view of `pid`. A full agent snapshot of a large process takes seconds
        (it walks every gc object under the GIL): with `agent_async` (the live view) the newest
        answer in hand is used and the next is fetched in the background, so a refresh never waits
        for it; otherwise (reports) the join uses an answer fetched now."""
        if not self.agent_async or fresh:
            before = self.stops_so_far()
            return linkage.fetch(self.dir_of(pid), pid, fresh=fresh, give_up=lambda: self.stops_so_far() > before)
        with self._agent_lock:
            thread = self._agent_threads.get(pid)
            if thread is None or not thread.is_alive():
                thread = threading.Thread(
                    target=self._fetch_agent, args=(pid,), name="tlsprof-agent-fetch", daemon=True
                )
                self._agent_threads[pid] = thread
                thread.start()
            return self._agent_docs.get(pid)

    def _fetch_agent(self, pid):
        doc = linkage.fetch(self.dir_of(pid), pid)
        with self._agent_lock:
            self._agent_docs[pid] = doc

    def chosen(self) -> dict:
        """{steady|peak|last: Observation}; {} before the first answer."""
        if self.last is None:
            return {}
        return {"steady": self.steady, "peak": self.peak, "last": self.last}

    def owner_sites(self, pid, serial, snap) -> list:
        """The drill-down: one owner's call sites, asked from its process's shim now."""
        return client.owner_sites(self.socket_of(pid), serial, snap)


def _carry_python_obs(older, newer, carried: dict):
    """`older` with the agent answers of `newer` joined in where they describe the same objects
    (a new Observation: observations are never changed). `carried` makes one per older observation,
    so that steady and peak stay the same object when they were."""
    if id(older) in carried:
        return carried[id(older)]
    result = older
    for pid, process in older.snaps.items():
        if pid in newer.snaps:
            python = _carry_python(process, newer.snaps[pid])
            if python is not None:
                result = result.with_process(pid, dataclasses.replace(process, python=python))
    carried[id(older)] = result
    return result


def _carry_python(older, newer):
    """The agent's answer is throttled, so the peak snapshot may carry one older than some of its
    objects. A newer answer describes those objects too when the shim shows the same owner (serial
    and pointer) alive in both snapshots: its Python objects join the peak's answer. The older answer
    keeps its own time, so nothing is called orphaned on the strength of the newer one. Returns the
    joined answer, or None when there is nothing to join."""
    old_doc, new_doc = older.python, newer.python
    if not isinstance(old_doc, dict) or not isinstance(new_doc, dict) or old_doc is new_doc:
        return None
    if old_doc.get("error") or new_doc.get("error"):
        return None
    alive_now = {(o.serial, o.ptr) for o in newer.owners if o.alive}
    shared = {
        ("connection" if o.kind == "connection" else "context", o.ptr)
        for o in older.owners
        if o.alive and (o.serial, o.ptr) in alive_now
    }
    known = {(o.get("kind"), o.get("ptr")) for o in old_doc.get("objects") or [] if isinstance(o, dict)}
    extra = [
        o
        for o in new_doc.get("objects") or []
        if isinstance(o, dict)
        and (o.get("kind"), o.get("ptr")) in shared
        and (o.get("kind"), o.get("ptr")) not in known
    ]
    if not extra:
        return None
    merged = dict(old_doc)
    merged["objects"] = list(old_doc.get("objects") or []) + extra
    return merged
