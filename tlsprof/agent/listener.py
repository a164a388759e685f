"""The agent's listening socket, kept apart from the target's descriptors.

A daemon closes every inherited descriptor (close_range) and its own sockets then get the same
numbers: from then on such a number is the target's, never accepted on or closed by the agent
(hooks/listener.c does the same for the shim). Our socket is known by its inode; when it is gone
the agent serves again on a new one, in the new user's directory if the daemon dropped privileges.
Stdlib only, loaded by path beside agent.py (the target may lack tlsprof).
"""

import fcntl
import json
import os
import signal
import socket
import stat
import threading
import time


def bind(path):
    """(a listening socket at `path`, mode 0600, never on fds 0-2; its identity)."""
    try:
        os.unlink(path)
    except OSError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if s.fileno() < 3:  # stdin/out/err were closed: those numbers stay the target's to reopen
        high = fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 3)
        s.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=high)
    old = os.umask(0o177)
    try:
        s.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    s.listen(8)
    st = os.fstat(s.fileno())
    return s, (st.st_dev, st.st_ino)


def is_ours(sock, identity):
    """Our socket (the listener or an accepted connection) is still behind the descriptor `sock` holds."""
    return identity is not None and _identity(sock) == identity


def _identity(sock):
    try:
        st = os.fstat(sock.fileno())
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def let_go(sock):
    """Forget a descriptor without closing it: not ours any more."""
    try:
        sock.detach()
    except (OSError, ValueError):
        pass


def own_channel_dir(directory):
    """`directory` when it is ours; after a switch of users (setpriv, runuser, a daemon's setuid)
    this user's private directory under TLSPROF_UID_DIRS, as the shim does (hooks/main.c); None when
    neither is a 0700 directory owned by us."""
    for candidate in (directory, None):
        if candidate is None:
            base = os.environ.get("TLSPROF_UID_DIRS", "")
            if not base.startswith("/"):
                return None
            candidate = os.path.join(base, "tlsprof-%d" % os.geteuid())
            try:
                os.mkdir(candidate, 0o700)
            except OSError:
                pass
        try:
            st = os.lstat(candidate)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077:
            return candidate
    return None


def relisten(directory, path_in, stopped):
    """(socket, identity, directory) to serve on again, or None: once half a second has passed and
    the target has its standard descriptors back (a daemon that closed them reopens them at once,
    expecting the lowest numbers), or after five seconds without them; within a minute."""
    patience, deadline = time.monotonic() + 5, time.monotonic() + 60
    time.sleep(0.5)
    while not stopped() and time.monotonic() < deadline:
        try:
            if time.monotonic() < patience:
                for std in (0, 1, 2):
                    os.fstat(std)
            mine = own_channel_dir(directory)
            if mine is None:
                return None
            sock, identity = bind(path_in(mine))
            return sock, identity, mine
        except OSError:
            time.sleep(0.05)
    return None


RELISTEN_MAX = 8


def serve(sock, state, relisten_in_state, answer):
    """The agent's thread: accept on `sock` (state["sock"]) until state["stopped"] or another socket
    replaced it; each connection sends one request line and gets answer(words) as one JSON line.
    answer(words) -> (document, a callable to run once it is sent, or None). When the target took
    our descriptor, relisten_in_state() gives the socket to go on with."""
    relistens = 0
    while not state.get("stopped") and state.get("sock") is sock:
        if not is_ours(sock, state.get("sock_id")):
            let_go(sock)
            relistens += 1
            fresh = relisten_in_state() if relistens <= RELISTEN_MAX else None
            if fresh is None or state.get("stopped"):
                if fresh is not None:
                    fresh.close()
                return
            state["sock"] = sock = fresh
            continue
        try:
            conn, _ = sock.accept()
        except OSError:
            if is_ours(sock, state.get("sock_id")) and not state.get("stopped"):
                time.sleep(0.1)  # out of descriptors or memory: wait it out
            continue
        state["conn"] = conn  # a fork meanwhile: the child closes its copy (agent._after_fork)
        conn_id = _identity(conn)
        try:
            conn.settimeout(10)
            data = b""
            while b"\n" not in data and len(data) < 256:
                chunk = conn.recv(256)
                if not chunk:
                    break
                data += chunk
            doc, then = answer(data.decode("ascii", "replace").split())
            conn.sendall(json.dumps(doc, separators=(",", ":")).encode() + b"\n")
            if then is not None:
                then()
        except Exception:
            pass
        finally:
            if is_ours(conn, conn_id):
                try:
                    conn.close()
                except OSError:
                    pass
            else:  # a close_range took it while we answered and the number may be the target's now
                let_go(conn)
            state["conn"] = None


def start_thread_deaf_to_signals(target, args, name):
    """A daemon thread that blocks every signal, as the shim's do: a signal sent to the process (a
    supervisor's SIGTERM) must reach one of the target's own threads. Taken by ours, Python would
    only flag it for the main thread, and a main thread blocked in a call (time.sleep, accept) would
    not wake to run its handler."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        thread.start()  # the new thread inherits this thread's mask
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return thread
