"""When the session stops asking a Python agent: only one that let it wait (its thread never gets
the GIL), not one whose socket was refused for a moment (a daemon that closes every descriptor
closes the agent's listener too; the agent serves again on a new one half a second later).
Real Unix sockets in a temporary channel directory, served by a thread of this test."""

import json
import os
import socket
import threading
import time

from tlsprof.collect import linkage
from tlsprof.collect.channel_paths import agent_socket_path

PID = 4242  # a name in the directory; nothing is sent to a process of that number


def _bound_not_listening(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)  # the file exists, connect() is refused: the agent's socket between two listeners
    return s


def _answer_once(listener, doc):
    conn, _ = listener.accept()
    with conn:
        conn.recv(256)
        conn.sendall(json.dumps(doc).encode() + b"\n")


def test_a_refused_agent_is_asked_again_at_the_next_poll(tmp_path):
    path = agent_socket_path(str(tmp_path), PID)
    gap = _bound_not_listening(path)
    assert linkage.fetch(str(tmp_path), PID, timeout=2) is None
    gap.close()
    os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(10)  # bounded: with nobody asking, the thread ends
    server = threading.Thread(target=_answer_once, args=(listener, {"objects": [], "stats": {}}), daemon=True)
    server.start()
    try:
        doc = linkage.fetch(str(tmp_path), PID, timeout=2)
    finally:
        server.join(10)
        listener.close()
    assert doc is not None and doc["objects"] == [], doc
    assert linkage.silent_sentence({str(tmp_path)}) is None


def test_an_agent_that_lets_the_session_wait_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(linkage, "FIRST_ANSWER_TIMEOUT_S", 0.3)
    path = agent_socket_path(str(tmp_path), PID)
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(path)
    mute.listen(4)  # accepts in the kernel, never reads: an agent whose thread never runs
    try:
        assert linkage.fetch(str(tmp_path), PID, timeout=5) is None
        assert linkage.fetch(str(tmp_path), PID, timeout=5, fresh=True) is None  # the last look skips it
    finally:
        mute.close()
    said = linkage.silent_sentence({str(tmp_path)})
    assert said and f"{PID} never answered" in said, said


def test_an_agent_that_answered_then_went_quiet_gives_its_newest_answer(tmp_path, monkeypatch):
    """Python code answered while the program started, then C that keeps the GIL: the wait runs
    out once, and from then on (the last look too) the newest answer stands in, without waiting."""
    monkeypatch.setattr(linkage, "FIRST_ANSWER_TIMEOUT_S", 0.3)
    directory = str(tmp_path)
    path = agent_socket_path(directory, PID + 1)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    listener.settimeout(10)
    server = threading.Thread(target=_answer_once, args=(listener, {"objects": [], "stats": {}}), daemon=True)
    server.start()
    try:
        first = linkage.fetch(directory, PID + 1, timeout=5)
        server.join(10)
        assert first is not None, first
        linkage._recent.clear()  # past the throttle: the next poll asks again, and nobody reads now
        linkage._recent[(directory, PID + 1, "SNAPSHOT noleaks")] = (time.monotonic() - 99, 0.0, first)
        started = time.monotonic()
        assert linkage.fetch(directory, PID + 1, timeout=0.5) is first
        assert linkage.fetch(directory, PID + 1, timeout=5, fresh=True) is first
        assert time.monotonic() - started < 2.5
    finally:
        listener.close()
    said = linkage.silent_sentence({directory})
    assert said and f"{PID + 1} stopped answering" in said, said


def test_a_stop_ends_the_wait_for_an_answer(tmp_path):
    """A stop signal while an agent ask waits: the ask gives up at once (the last look and the
    target's signal must not wait for it), and that is no reason to leave the agent alone."""
    path = agent_socket_path(str(tmp_path), PID + 2)
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(path)
    mute.listen(4)
    started = time.monotonic()
    try:
        doc = linkage.fetch(str(tmp_path), PID + 2, timeout=5, give_up=lambda: time.monotonic() - started > 0.3)
    finally:
        mute.close()
    assert doc is None and time.monotonic() - started < 2, time.monotonic() - started
    assert (str(tmp_path), PID + 2) not in linkage._silent_until


def test_a_gone_process_leaves_nothing_behind_in_the_collector(tmp_path):
    # a server that recycles its workers for hours: each gone worker's agent answers (every ssl
    # object it had) must not stay in the collector; what the report says of its agent does
    import subprocess
    import sys

    from tlsprof.collect.channel_paths import socket_path
    from tlsprof.collect.session import Session

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(30)
    gone = child.pid  # exited and reaped: no process of that number now
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(agent_socket_path(str(tmp_path), gone))
    listener.listen(1)
    listener.settimeout(10)
    server = threading.Thread(target=_answer_once, args=(listener, {"objects": [], "stats": {}}), daemon=True)
    server.start()
    try:
        assert linkage.fetch(str(tmp_path), gone, timeout=2) is not None
    finally:
        server.join(10)
        listener.close()
    assert any(key[:2] == (str(tmp_path), gone) for key in linkage._recent)
    linkage._silent_until[(str(tmp_path), gone)] = time.monotonic() + 30  # it stopped answering once
    shim = _bound_not_listening(socket_path(str(tmp_path), gone))  # its socket file outlived it
    try:
        session = Session(str(tmp_path), gone, ["server"], "run")
        session._io_seen[gone] = {1: (0, 0.0)}
        assert session.poll() is None
    finally:
        shim.close()
    assert not any(key[:2] == (str(tmp_path), gone) for key in linkage._recent)
    assert gone not in session._io_seen
    assert str(gone) in (linkage.silent_sentence({str(tmp_path)}) or "")
