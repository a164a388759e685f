"""`tlsprof attach` to a process that chrooted (tlsprof/collect/jail.py): Debian's HAProxy runs its
worker in /var/lib/haproxy as user haproxy, Postfix its smtpd in /var/spool/postfix. Such a process
could not open the shim's path ("cannot open shared object file"), nor reach a channel directory in
/tmp, nor open /proc/self/maps for the heap walk: tlsprof saw none of its connections."""

import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from reportcheck import load_checked
from test_attach import TLSPROF, Attached, _http_keepalive, handshakes_ok, wait_for
from test_heap_walk import HAPROXY_CONF, _walked
from tlsenv import free_port
from tlsprof.collect.inject import task_room

pytestmark = [
    pytest.mark.skipif(not shutil.which("gdb"), reason="attach needs gdb (make test installs it)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot and dropping privileges need root"),
]

N = 100
IDLE = 100000  # seconds between the clients' hellos: the connections stay idle


def _jail(tmp_path):
    jail = tmp_path / "jail"
    jail.mkdir()
    os.chmod(jail, 0o755)
    return jail


def _shims_mapped(pid):
    with open(f"/proc/{pid}/maps") as f:
        return {line.split()[-1] for line in f if "/_shim" in line}


def test_attach_to_a_chrooted_server_walks_its_connections_and_tracks_new_ones(spawn, tmp_path):
    """The seed's echo server chrooted into an empty directory as nobody, 100 connections held:
    the walk finds all of them (the collector passes the maps the jail cannot open), new ones are
    tracked, and the bytes per connection are those of the same server outside a jail. The jail
    keeps the read-only copy of the shim (mapped for good) and loses the channel directory; a
    second attach loads the same copy, not a second shim. The Python agent cannot start there (the
    modules it imports are outside the jail): a note says so."""
    per = {}
    for name, args in (("jailed", ["--jail", str(_jail(tmp_path))]), ("plain", [])):
        server = spawn.server(*args)
        spawn.clients(server.port, N, interval=IDLE)
        session = Attached(server.pid, tmp_path / f"{name}.json", 600)
        spawn.clients(server.port, 10, interval=IDLE)  # opened while attached
        time.sleep(1.0)  # a few polls after their handshakes: the report's moment is not inside them
        session.proc.send_signal(signal.SIGINT)  # as an SRE's Ctrl-C; a --duration could end mid-burst
        report = session.finish(timeout=120)
        walk = report["walk"]
        assert walk["status"] == "ok", walk
        assert walk["connections"] >= N, walk
        assert len(_walked(report["connections"])) >= N
        assert report["per_connection"]["connections"] >= N + 10
        per[name] = report["per_connection"]["bytes"]
        # the agent cannot import ctypes and json in the jail, and the report says so
        jailed_note = [n for n in report.get("notes") or [] if "Python process in a chroot" in n]
        assert bool(jailed_note) == (name == "jailed") and bool(report.get("python")) == (name == "plain")
        assert handshakes_ok(server.port, 5) == 0
        if name == "jailed":
            root = os.readlink(f"/proc/{server.pid}/root")
            assert sorted(os.listdir(root)) == ["tlsprof-lib-0"], os.listdir(root)
            first = _shims_mapped(server.pid)
            assert len(first) == 1 and next(iter(first)).startswith(root + "/tlsprof-lib-0/"), first
            again = Attached(server.pid, tmp_path / "again.json", 0.5).finish()
            assert again["walk"]["connections"] >= N + 10, again["walk"]
            assert _shims_mapped(server.pid) == first
        server.stop()
    print(f"echo server, bytes per connection: {per}")
    assert abs(per["jailed"] - per["plain"]) <= 0.05 * per["plain"], per


# test_heap_walk's HAProxy, as Debian's haproxy.cfg runs it: chrooted, user haproxy, two threads
HAPROXY_JAILED = HAPROXY_CONF.replace(
    "global\n", "global\n    nbthread 2\n    chroot {jail}\n    user haproxy\n    group haproxy\n{extra}", 1
)


def _haproxy_worker(master, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = [p for p in psutil.Process(master).children() if p.uids().real != 0]
        if kids:
            return kids[0].pid
        time.sleep(0.1)
    raise AssertionError("haproxy's worker did not start")


@pytest.mark.skipif(not shutil.which("haproxy"), reason="needs Debian's haproxy (make test installs it)")
@pytest.mark.parametrize("forks", [False, True], ids=["debian-default", "insecure-fork-wanted"])
def test_attach_to_haproxy_as_debian_runs_it(cert_pair, tmp_path, forks):
    """`haproxy -Ws` with Debian's chroot and user: the worker forbids itself new threads and
    processes (RLIMIT_NPROC 0) unless `insecure-fork-wanted`. tlsprof with CAP_SYS_RESOURCE lends it
    room for the attach (the shim's thread, the walk's process), then sets the limit back to 0,
    which the report says; without that capability (this CI's container) attach refuses in one
    line. Attached, the walk finds every connection, in the jail and in a thread arena that the
    worker's fork left in two mappings (it found half)."""
    try:
        pwd.getpwnam("haproxy")
    except KeyError:
        pytest.skip("no haproxy user: install the Debian package haproxy")
    cert, key = cert_pair
    pem = tmp_path / "haproxy.pem"
    pem.write_text(open(cert).read() + open(key).read())
    port = free_port()
    conf = tmp_path / "haproxy.cfg"
    extra = "    insecure-fork-wanted\n" if forks else ""
    conf.write_text(HAPROXY_JAILED.format(jail=_jail(tmp_path), extra=extra, port=port, pem=pem))
    haproxy = subprocess.Popen(["haproxy", "-Ws", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    socks = []
    try:
        worker = _haproxy_worker(haproxy.pid)
        wait_for(
            lambda: any(c.laddr.port == port for c in psutil.net_connections("tcp") if c.status == "LISTEN"),
            20,
            "haproxy to listen",
        )
        socks = _http_keepalive(port, N)
        before = _nproc(worker)
        assert (before == "0") == (not forks), before
        if not forks and not task_room.can_lend():  # a container without CAP_SYS_RESOURCE: refused
            _attach_is_refused_with_one_line(haproxy.pid, worker, tmp_path)
            return
        report = Attached(worker, tmp_path / "haproxy.json", 1).finish(timeout=120)
        walk = report["walk"]
        assert walk["status"] == "ok" and walk["connections"] >= N, walk
        print(f"haproxy in a jail: {walk['connections']} walked, {report['per_connection']['bytes']} B each")
        assert _nproc(worker) == before  # set back: HAProxy's mitigation stands after the attach
        lent = [n for n in report["notes"] if "RLIMIT_NPROC" in n]
        if forks:
            assert not lent, report["notes"]
        else:
            assert len(lent) == 1 and "RLIMIT_NPROC 0" in lent[0] and "set it back" in lent[0], report["notes"]
        assert haproxy.poll() is None
        socks += _http_keepalive(port, 3)
    finally:
        for s in socks:
            s.close()
        haproxy.send_signal(signal.SIGTERM)
        try:
            haproxy.wait(15)
        except subprocess.TimeoutExpired:
            haproxy.kill()
            haproxy.wait()


def _attach_is_refused_with_one_line(master_pid, worker, tmp_path):
    """Attach says why in one line (exit 7) and leaves the worker as it was; through the master,
    the report itself says the worker is missing, not only stderr."""
    out = tmp_path / "refused.json"
    p = subprocess.run(
        [*TLSPROF, "attach", str(worker), "--duration", "1", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 7, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "RLIMIT_NPROC is 0" in lines[0] and "CAP_SYS_RESOURCE" in lines[0], lines
    assert not _shims_mapped(worker)
    master = Attached(master_pid, tmp_path / "master.json", 0.5).finish(timeout=120)
    missing = [n for n in master["notes"] if f"child {worker} not attached" in n]
    assert missing and "RLIMIT_NPROC is 0" in missing[0], master["notes"]
    assert _nproc(worker) == "0"


def _nproc(pid):
    """The soft RLIMIT_NPROC of `pid`, as /proc/PID/limits shows it."""
    with open(f"/proc/{pid}/limits") as f:
        return next(ln.split()[2] for ln in f if ln.startswith("Max processes"))


@pytest.mark.parametrize("limit,forbidden", [(0, True), (1, True), (50000, False)])
def test_a_process_that_may_not_make_threads_is_told_before_any_attach(limit, forbidden):
    """RLIMIT_NPROC counts the tasks of the real uid (nobody runs one here: the sleep)."""
    from tlsprof.collect.inject.target_facts import _status, threads_forbidden

    p = subprocess.Popen(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "prlimit", f"--nproc={limit}", "sleep", "30"]
    )
    try:
        wait_for(lambda: p.poll() is not None or psutil.Process(p.pid).name() == "sleep", 10, "the sleep to start")
        assert p.poll() is None, "prlimit could not set the limit"
        why = threads_forbidden(p.pid, _status(p.pid))
        assert bool(why) == forbidden, why
        if forbidden:
            assert f"RLIMIT_NPROC is {limit}" in why
    finally:
        p.kill()
        p.wait()


STUNNEL_DAEMON = """\
foreground = no
pid =
chroot = {jail}
setuid = stunnel4
setgid = stunnel4
debug = warning
[echo]
accept = 127.0.0.1:{port}
connect = 127.0.0.1:{backend_port}
cert = {cert}
key = {key}
"""


@pytest.mark.skipif(not shutil.which("stunnel4"), reason="needs Debian's stunnel4 (make test installs it)")
def test_run_sees_a_daemon_forked_inside_its_jail(cert_pair, tmp_path):
    """stunnel as its Debian package prepares it (`chroot` to a directory stunnel4 owns, `setuid =
    stunnel4`) with its default `foreground = no`: it chroots, drops root, then forks its daemon.
    That child reaches neither the run's directory nor /tmp; it was followed and stopped, but seen
    not at all. Its shim now serves at the jail's root, and tlsprof links that socket in."""
    from servers import clients
    from test_process_trees import _kill_tree, listening, stop_tlsprof
    from tlsenv import Proc

    try:
        entry = pwd.getpwnam("stunnel4")
    except KeyError:
        pytest.skip("no stunnel4 user: install the Debian package stunnel4")
    jail = _jail(tmp_path)
    os.chown(jail, entry.pw_uid, entry.pw_gid)  # as /var/lib/stunnel4
    backend_py = os.path.join(os.path.dirname(os.path.dirname(__file__)), "servers", "backend.py")
    backend = Proc([sys.executable, backend_py, "--echo", "--ready-file", "{ready}"])
    port = free_port()
    cert, key = cert_pair
    conf = tmp_path / "stunnel.conf"
    conf.write_text(
        STUNNEL_DAEMON.format(jail=jail, port=port, backend_port=int(backend.wait_ready(20)), cert=cert, key=key)
    )
    out = tmp_path / "stunnel.json"
    tool = subprocess.Popen(
        [*TLSPROF, "run", "-o", str(out), "--interval", "0.3", "--at", "last", "--", "stunnel4", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    held = None
    try:
        wait_for(lambda: tool.poll() is None and listening(port), 30, "stunnel's daemon to listen")
        held = clients.hold("tls", port, 50)
        time.sleep(2.0)  # the bridge links the jailed socket, then several snapshots
        assert os.listdir(jail) == [f"tlsprof-{entry.pw_uid}"], os.listdir(jail)
        stop_tlsprof(tool)
        err = tool.stderr.read()
    finally:
        if held is not None:
            held.close()
        _kill_tree(tool)
        backend.stop()
    assert tool.returncode == 0, err
    report = load_checked(out)
    assert report["per_connection"]["connections"] == 50, (report["per_connection"], err)
    print(f"stunnel daemon in its jail: {report['per_connection']['bytes']} B per connection")


def test_a_lent_limit_is_set_back_exactly():
    """task_room's mechanics on a real process (one of tlsprof's own uid, whose limits tlsprof may
    set without CAP_SYS_RESOURCE as long as it stays under the hard limit): raised to its uid's
    tasks plus ROOM, then the soft and hard limits it had, and a process gone meanwhile is no error."""
    from tlsprof.collect.inject.target_facts import uid_tasks

    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    hard_shown = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    p = subprocess.Popen(["prlimit", f"--nproc=0:{hard_shown}", "sleep", "30"])
    try:
        wait_for(lambda: p.poll() is not None or psutil.Process(p.pid).name() == "sleep", 10, "the sleep to start")
        assert _nproc(p.pid) == "0"
        room = task_room.LentRoom(p.pid)
        room.lend()
        lent = int(_nproc(p.pid))
        assert task_room.ROOM <= lent <= uid_tasks(os.getuid()) + task_room.ROOM + 50, lent
        room.give_back()
        with open(f"/proc/{p.pid}/limits") as f:
            assert next(ln.split()[2:4] for ln in f if ln.startswith("Max processes")) == ["0", hard_shown]
        gone = task_room.LentRoom(p.pid)
        gone.lend()
    finally:
        p.kill()
        p.wait()
    gone.give_back()  # ProcessLookupError is no error: nothing is left to set back
