"""Collect side of the Python linkage: fetch what the in-target agent (tlsprof/agent/) knows
about the target's ssl objects, throttled so that its walks cost the target little.

The join of its answer with the report's connections and contexts is analysis
(tlsprof/analysis/python_join.py); the python-leak finding lives with the findings.
"""

import json
import os
import socket
import time

from tlsprof.collect import client, gil_keepers
from tlsprof.collect.channel_paths import agent_socket_path


class AgentError(Exception):
    """The agent did not answer (absent, not a Python target, or busy past the timeout).
    `timed_out`: it accepted (or let us wait) and said nothing, as one that never gets the GIL does;
    a refused or vanished socket is not that (a daemon closing every descriptor closes the agent's
    listener too, and the agent comes back on a new one). Nor is a wait that `give_up` ended."""

    def __init__(self, message: str, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


def ask(path: str, request: str = "SNAPSHOT", timeout: float = 10.0, give_up=None) -> dict:
    """`give_up()`, called while the answer is awaited, ends the wait when True (a stop signal
    came: the last look and the target's signal must not wait for this ask)."""
    try:
        answer = client.request(path, request, timeout, ends=b"\n", give_up=give_up)  # one JSON line
    except (OSError, socket.timeout) as exc:
        raise AgentError(
            f"the Python agent at {path} did not answer: {getattr(exc, 'strerror', None) or exc}",
            timed_out=isinstance(exc, socket.timeout) and not isinstance(exc, client.GaveUp),
        ) from None
    try:
        doc = json.loads(answer)
    except ValueError:
        raise AgentError("the Python agent answered something that is not JSON") from None
    if not isinstance(doc, dict):
        raise AgentError("the Python agent answered something that is not a JSON object")
    return doc


_recent = {}  # (channel_dir, pid, request) -> (monotonic time of the answer, seconds it took, answer)
# An agent snapshot holds the target's GIL while it walks every gc object: each kind may take only
# this share of the target's time (measured: 10 % made a threaded server's handshakes 0.93x bare
# instead of 0.995x without the agent). The full one (reachability, referrer chains: ~37 ms of the
# seed asyncio server's 19k gc objects, against 3 ms without) gets 0.5 %: leaks do not come and go
# by the second, and at 2 % it was most of what an idle profiled server spent (bench/README.md).
DUTY = {"SNAPSHOT": 0.005, "SNAPSHOT noleaks": 0.02}
LEAK_KEYS = ("reachable", "leak", "referrers")
# The first full snapshot waits until the agent has been asked for this long: the first poll comes
# while the target is still starting (or, in a benchmark, taking its first load), and a full walk of
# a large heap holds the GIL for up to a second. The session's last look asks one whatever the time.
FULL_FIRST_AFTER_S = 5.0
_first_asked = {}  # (channel_dir, pid) -> monotonic time this agent was first asked
# An agent that never answered may never get the GIL: uWSGI's workers and master, without
# --enable-threads, hold it in C for good, so its socket accepts and nobody reads. It is waited for
# this long (not the full timeout, paid again at every poll and at the last look, which holds back
# the stop signal). Any agent whose wait ran out (one that answered while its program started, then
# entered C that keeps the GIL, too) is left alone for SILENT_RETRY_S: its newest answer stands in,
# and the session's last look skips it.
FIRST_ANSWER_TIMEOUT_S = 5.0
SILENT_RETRY_S = 30.0
# The last look holds back the target's stop signal: its fresh full answer is waited for this long
# at most (a full walk of a large heap takes about a second), else the newest answer stands in.
LAST_LOOK_TIMEOUT_S = 5.0
_answered = set()  # (channel_dir, pid) of agents that answered once
_silent_until = {}  # (channel_dir, pid) -> monotonic time before which it is not asked again
_not_asked = {}  # (channel_dir, pid) -> why its agent is never asked (gil_keepers.py)


def _cost_to_target(doc: dict, waited: float) -> float:
    """Seconds of the target's time the answer took: the agent thread's CPU time when it gives it.
    Its waits are not (for the GIL, or for an import lock while the target is still importing: the
    target ran its own code meanwhile). Counted in, they made the first answer of a starting server
    cost 74 ms instead of ~8, and the answer was then reused for 3.7 s: a report's busiest snapshot
    carried an answer older than its contexts."""
    cpu_ms = (doc.get("stats") or {}).get("cpu_ms")
    if isinstance(cpu_ms, (int, float)) and 0 <= cpu_ms / 1000 <= waited:
        return cpu_ms / 1000
    return waited


def _ask_throttled(channel_dir, pid, path, request, timeout, give_up=None):
    key = (channel_dir, pid, request)
    last = _recent.get(key)
    now = time.monotonic()
    if last is not None and now - last[0] < last[1] / DUTY[request]:
        return last[2], False
    agent = (channel_dir, pid)
    try:
        waited = timeout if agent in _answered else min(timeout, FIRST_ANSWER_TIMEOUT_S)
        doc = ask(path, request, waited, give_up)
    except AgentError as exc:
        if exc.timed_out:
            _silent_until[agent] = time.monotonic() + SILENT_RETRY_S
        return (last[2] if last else None), False
    _answered.add(agent)
    _silent_until.pop(agent, None)
    done = time.monotonic()
    doc["_fetched_mono"] = now  # when the agent looked: joins judge staleness from it
    _recent[key] = (done, _cost_to_target(doc, done - now), doc)
    return doc, True


def silent_sentence(channel_dirs) -> str | None:
    """For the report: the processes whose agent never answered, stopped answering, or was not
    asked, or None."""
    silent = [agent for agent in _silent_until if agent[0] in channel_dirs]
    unjoined = [str(agent[1]) for agent in silent if agent not in _answered]
    kept = sorted({(why, pid) for (d, pid), why in _not_asked.items() if d in channel_dirs})
    said = []
    if unjoined:
        said.append(
            f"the Python agent of pid(s) {', '.join(sorted(unjoined))} never answered: its thread never got the GIL"
        )
    for why in sorted({why for why, _ in kept}):
        shown = ", ".join(str(pid) for w, pid in kept if w == why)
        said.append(f"the Python agent of pid(s) {shown} was not asked: {why}, and would never answer")
    sentence = "; ".join(said) + ": their connections are not joined to Python objects" if said else None
    stopped = sorted(str(agent[1]) for agent in silent if agent in _answered)
    if stopped:
        late = (
            f"the Python agent of pid(s) {', '.join(stopped)} stopped answering (its thread did not get the "
            f"GIL, or its walk of the heap outlasted the wait): the join uses its newest answer"
        )
        sentence = f"{sentence}; {late}" if sentence else late
    return sentence


def forget(channel_dir: str, pid: int) -> None:
    """`pid` is gone: drop its answers (a full one holds every ssl object the process had) so that a
    server recycling its workers for hours does not grow the collector. What the report says about
    its agent (never answered, stopped answering, not asked) is kept."""
    for key in [k for k in _recent if k[:2] == (channel_dir, pid)]:
        del _recent[key]
    _first_asked.pop((channel_dir, pid), None)


def _newest_answer(channel_dir, pid):
    answers = [v for (d, p, _), v in _recent.items() if (d, p) == (channel_dir, pid)]
    return max(answers, key=lambda v: v[0])[2] if answers else None


def fetch(channel_dir: str, pid: int, timeout: float = 10.0, fresh: bool = False, give_up=None):
    """The agent's snapshot for `pid`, or None when that process runs no agent.

    An agent snapshot holds the target's GIL while it runs, so requests are throttled: when the last
    one took T s the previous answer is reused for the next T/DUTY s (DUTY per kind). Objects and
    pointers come from the cheap request (`SNAPSHOT noleaks`); reachability and referrer chains (a
    walk over every gc object) from the full one, which is asked less often, first after
    FULL_FIRST_AFTER_S, and merged in by pointer. `fresh` (the session's last look before it ends) asks the full request
    now whatever the throttle says, waiting LAST_LOOK_TIMEOUT_S at most. `give_up`: see ask()."""
    path = agent_socket_path(channel_dir, pid)
    if not os.path.exists(path):
        return None
    kept = gil_keepers.keeps_gil(pid)
    if kept:
        _not_asked[(channel_dir, pid)] = kept
        return None
    silent = _silent_until.get((channel_dir, pid))
    if silent is not None and (fresh or time.monotonic() < silent):
        return _newest_answer(channel_dir, pid)
    first = _first_asked.setdefault((channel_dir, pid), time.monotonic())
    if fresh:
        timeout = min(timeout, LAST_LOOK_TIMEOUT_S)
        kept = _recent.pop((channel_dir, pid, "SNAPSHOT"), None)
        full, _ = _ask_throttled(channel_dir, pid, path, "SNAPSHOT", timeout, give_up)
        if full is not None:
            return full
        if kept is not None:
            _recent[(channel_dir, pid, "SNAPSHOT")] = kept
        return _newest_answer(channel_dir, pid)
    if time.monotonic() - first < FULL_FIRST_AFTER_S and (channel_dir, pid, "SNAPSHOT") not in _recent:
        return _ask_throttled(channel_dir, pid, path, "SNAPSHOT noleaks", timeout, give_up)[0]
    full, was_fresh = _ask_throttled(channel_dir, pid, path, "SNAPSHOT", timeout, give_up)
    if was_fresh or full is None:
        return full
    fast, _ = _ask_throttled(channel_dir, pid, path, "SNAPSHOT noleaks", timeout, give_up)
    if fast is None:
        return full
    leaks = {(o.get("kind"), o.get("ptr"), o.get("type")): o for o in full.get("objects") or []}
    for o in fast.get("objects") or []:
        old = leaks.get((o.get("kind"), o.get("ptr"), o.get("type")))
        for k in LEAK_KEYS:
            o[k] = old.get(k) if old else None
    return fast
