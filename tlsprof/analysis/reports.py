"""The report source: what every renderer, the live view and the metrics endpoint get. It builds
reports from a collecting session's frozen observations (tlsprof/collect/session.py) and answers
the live view's drill-down through the session; it never talks to the target itself.

The session is duck-typed (`lock`, `chosen()`, `last`, `history`, `count`, `peak`, `main_pid`,
`command`, `mode`, `started`, `owner_sites()`), so this layer imports nothing from `collect`."""

import datetime

from tlsprof.analysis.moments import assemble
from tlsprof.analysis.tree_report import build_tree_report
from tlsprof.model.ids import conn_id, qualified_id
from tlsprof.model.observation import Observation


class ReportSource:
    def __init__(self, session):
        self.session = session
        self._latest = (None, None, None)

    # what the views show beside the report
    @property
    def history(self):
        return self.session.history

    @property
    def command(self):
        return self.session.command

    @property
    def started(self):
        return self.session.started

    @property
    def main_pid(self):
        return self.session.main_pid

    @property
    def last(self):
        return self.session.last

    @property
    def mode(self):
        return self.session.mode

    @property
    def on_snapshot(self):
        """Callbacks run with each new process observation (the pprof writer wakes on them)."""
        return self.session.on_snapshot

    def moments(self) -> dict:
        """{steady|peak|last: what that observation was} (no report built: cheap, for headers)."""
        with self.session.lock:
            return {name: _summary(obs) for name, obs in self.session.chosen().items()}

    def latest_report(self, pid=None):
        """The report of the newest observation (what the live view and the metrics endpoint show):
        the whole tree, or one process of it (`pid`)."""
        session = self.session
        with session.lock:
            if session.last is None:
                return None
            key = (session.last, pid)
            if self._latest[:2] != key:
                obs = session.last
                if pid is not None and pid in obs.snaps:
                    obs = Observation({pid: obs.snaps[pid]}, obs.taken_at, obs.t)
                body = self._body(obs, False, ())
                report = assemble(
                    {"last": body}, "last", session.history, {n: _summary(o) for n, o in session.chosen().items()}
                )
                self._latest = (session.last, pid, report)
            return self._latest[2]

    def report(self, at="steady", partial=False, notes=()):
        """The report at moment `at` (steady, peak or last), keeping the other two moments' bodies so
        that `tlsprof report FILE --at …` can re-choose (docs/report-format.md, "Moments")."""
        with self.session.lock:
            chosen = self.session.chosen()
            if not chosen:
                return None
            bodies, built = {}, {}
            for name, obs in chosen.items():
                if id(obs) not in built:  # one body per distinct observation
                    built[id(obs)] = self._body(obs, partial, notes)
                bodies[name] = built[id(obs)]
            return assemble(bodies, at, self.session.history, {n: _summary(o) for n, o in chosen.items()})

    def connection_sites(self, pid, ident):
        """The drill-down: the call sites of connection `ident` (a report id) of process `pid`, asked
        from its shim now; None when the newest observation does not hold it."""
        obs = self.session.last
        if obs is None:
            return None
        snap = obs.snaps.get(pid) or obs.snaps[obs.pid]
        for owner in snap.owners:  # ids are made from serials, so the serial is found, not parsed
            if owner.kind == "connection" and ident in (
                conn_id(owner.serial),
                qualified_id(snap.pid, conn_id(owner.serial)),
            ):
                return self.session.owner_sites(snap.pid, owner.serial, snap.snapshot)
        return None

    def _body(self, obs, partial, notes):
        s = self.session
        return build_tree_report(
            obs.snaps,
            root_pid=s.main_pid,
            command=s.command,
            mode=s.mode,
            partial=partial,
            snapshots=s.count,
            notes=notes,
            history=s.history,
            peak_live_bytes=s.peak.live_bytes if s.peak else None,
        )


def _summary(obs) -> dict:
    handshakes = sum(1 for s in obs.snaps.values() for o in s.connections if o.state == "handshake")
    return {
        "captured_at": datetime.datetime.fromtimestamp(obs.taken_at, datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "t": obs.t,
        "connections": obs.connection_count,
        "live_bytes": obs.live_bytes,
        "handshakes": handshakes,
        "processes": len(obs.snaps),
    }
