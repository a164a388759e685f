"""Collects snapshots from the shim(s) in a channel directory for as long as a session lasts, keeps
the peak (most live OpenSSL bytes, as memray reports the high-water mark) and the last one, and a
short history for charts and growth findings."""
import glob
import os
import threading
import time

import psutil

from tlsprof import client, linkage, memory
from tlsprof.errors import ChannelError
from tlsprof.model import build_report

HISTORY_MAX = 720


class Session:
    def __init__(self, channel_dir: str, main_pid: int, command, mode: str, follow_children=True):
        self.channel_dir = channel_dir
        self.main_pid = main_pid
        self.command = list(command)
        self.mode = mode
        self.focus_pid = main_pid
        # attach: the channel directory is shared with other attached processes; look at ours only
        self.follow_children = follow_children
        self.started = time.time()
        self.peak = None
        self.last = None
        self.count = 0
        self.history = []
        self.others = {}  # pid -> live bytes of other tracked processes (children)
        self.on_snapshot = []  # callbacks(snapshot), e.g. the live view or the metrics endpoint
        # poll() runs on one thread while the live view and the metrics endpoint read reports on others
        self._lock = threading.RLock()
        self.agent_async = False
        self._agent_lock = threading.Lock()
        self._agent_thread = None
        self._agent_docs = {}
        self._io_seen = {}  # pid -> {connection serial: (io calls, monotonic time they last changed)}

    def sockets(self):
        out = {}
        for path in glob.glob(os.path.join(self.channel_dir, "*.sock")):
            try:
                out[int(os.path.basename(path)[:-5])] = path
            except ValueError:
                pass
        return out

    def poll(self, fresh_agent=False):
        """Take one snapshot of the process of interest. Returns it, or None when none answered.
        `fresh_agent`: the session's last look: the Python agent is asked now, not throttled."""
        with self._lock:
            return self._poll(fresh_agent)

    def _poll(self, fresh_agent=False):
        socks = self.sockets()
        if not self.follow_children:
            socks = {pid: path for pid, path in socks.items() if pid == self.main_pid}
        snaps = {}
        for pid, path in socks.items():
            if pid != self.focus_pid and self.focus_pid in socks and self.count % 10:
                continue  # look at the other processes now and then only
            try:
                snaps[pid] = client.snapshot(path)
            except ChannelError:
                continue
        if not snaps:
            return None
        # follow the process that really uses OpenSSL (e.g. `sh -c "python server.py"`)
        if self.focus_pid not in snaps or (snaps[self.focus_pid].live_bytes == 0 and
                                           any(s.live_bytes for s in snaps.values())):
            candidates = sorted(snaps.values(), key=lambda s: -s.live_bytes)
            if self.focus_pid not in snaps or candidates[0].live_bytes > 0:
                self.focus_pid = candidates[0].pid
        for pid, s in snaps.items():
            if pid != self.focus_pid:
                self.others[pid] = s.live_bytes
        snap = snaps[self.focus_pid]
        snap.python = self._agent_answer(snap.pid, fresh_agent)  # None unless a Python agent runs there
        snap.taken_at = time.time()
        snap.mono_taken = time.monotonic()  # against the agent answer's own time (linkage.join)
        try:
            snap.rss_bytes = psutil.Process(snap.pid).memory_info().rss
        except psutil.Error:
            snap.rss_bytes = 0
        snap.process_memory = memory.read_process(snap.pid)  # the kernel's view, for `memory`
        self._note_idleness(snap)
        self.count += 1
        self.last = snap
        if self.peak is None or snap.live_bytes >= self.peak.live_bytes:
            self.peak = snap
        else:
            _carry_python(self.peak, snap)
        session_bytes = sum(o.by_cause["session"].bytes for o in snap.owners if "session" in o.by_cause)
        point = {"t": round(snap.taken_at - self.started, 3), "live_bytes": snap.live_bytes,
                 "connections": len(snap.connections), "session_bytes": session_bytes}
        if snap.io_calls is not None:
            point["io_calls"] = snap.io_calls  # cumulative: points may be thinned out
        self.history.append(point)
        if len(self.history) > HISTORY_MAX:
            self.history = self.history[::2]
        for callback in self.on_snapshot:
            callback(snap)
        return snap

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
            return linkage.fetch(self.channel_dir, pid, fresh=fresh)
        with self._agent_lock:
            if self._agent_thread is None or not self._agent_thread.is_alive():
                self._agent_thread = threading.Thread(target=self._fetch_agent, args=(pid,),
                                                      name="tlsprof-agent-fetch", daemon=True)
                self._agent_thread.start()
            return self._agent_docs.get(pid)

    def _fetch_agent(self, pid):
        doc = linkage.fetch(self.channel_dir, pid)
        with self._agent_lock:
            self._agent_docs[pid] = doc

    def latest_report(self):
        """The report of the newest snapshot (what the live view and the metrics endpoint show)."""
        with self._lock:
            return self._latest_report()

    def _latest_report(self):
        if self.last is None:
            return None
        if getattr(self, "_latest", (None, None))[0] is not self.last:
            self._latest = (self.last, self._report("last", False, ()))
        return self._latest[1]

    def report(self, at="peak", partial=False, notes=()):
        with self._lock:
            return self._report(at, partial, notes)

    def _report(self, at, partial, notes):
        chosen = self.peak if at == "peak" else self.last
        if chosen is None:
            return None
        notes = list(notes)
        if at == "peak" and self.last is not None and chosen is not self.last:
            notes.append(f"the report shows the peak snapshot; the last one had "
                         f"{self.last.live_bytes} live OpenSSL bytes and {len(self.last.connections)} connections")
        processes = None
        others = {pid: b for pid, b in self.others.items() if b > 0}
        if others:
            processes = [{"pid": pid, "live_bytes": b} for pid, b in sorted(others.items())]
            notes.append(f"{len(others)} other tracked process(es) in this session: see `processes`")
        return build_report(chosen, command=self.command, mode=self.mode, partial=partial, chosen=at,
                            snapshots=self.count, peak_live_bytes=self.peak.live_bytes if self.peak else None,
                            history=self.history, notes=notes, processes=processes)


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

