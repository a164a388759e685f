"""A gunicorn-style pre-fork TLS echo server: the parent makes the context and the listening socket,
forked workers accept. Says b"welcome!\\n" then echoes, like examples/echo_server.py.

    python prefork_server.py CERT KEY --workers 2 --ready-file F [--busy] [--forks N]

--busy: before forking, the parent starts a thread doing TLS handshakes in a loop (memory BIOs), so
the forks happen while another thread is inside OpenSSL and the shim (its locks may be held).
--forks N: after the workers are up, the parent also forks N short-lived children, one after the
other, each doing one TLS handshake pair and exiting 0; a child that deadlocks is killed after 20 s.
Before that, gdb reads its stacks: a child waiting in one of OpenSSL's own locks (CRYPTO_THREAD_*_lock)
is counted apart. OpenSSL 3.0 takes no lock before a fork, so a lock another thread held at the fork
(the random generator's, in a handshake) stays held in the child, with or without tlsprof: the
workload tests/workloads/fork_during_rand.c hangs 22 of 300 children bare. Ready file:
"PORT WORKER_PID... forks_ok=K hung=H hung_in_openssl_lock=L" (written once all is done).
SIGTERM: the parent stops its workers and exits 0.
"""

import argparse
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

from workload import contexts, memory_pair  # run as a script: its own directory is on sys.path

WELCOME = b"welcome!\n"


def serve_worker(lsock, ctx):
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))

    def handle(conn):
        try:
            with ctx.wrap_socket(conn, server_side=True) as t:
                t.sendall(WELCOME)
                while data := t.recv(65536):
                    t.sendall(data)
        except (OSError, ssl.SSLError):
            pass

    while True:
        try:
            conn, _ = lsock.accept()
        except OSError:
            continue
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def waits_in_openssl_lock(pid) -> bool:
    """True if a thread of `pid` waits in CRYPTO_THREAD_read_lock/write_lock (gdb's backtrace)."""
    if not shutil.which("gdb"):
        return False
    try:
        out = subprocess.run(
            ["gdb", "-p", str(pid), "-batch", "-nx", "-ex", "thread apply all bt 8"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    except subprocess.TimeoutExpired:
        return False
    return any(f"CRYPTO_THREAD_{kind}_lock" in out for kind in ("read", "write"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cert")
    ap.add_argument("key")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--busy", action="store_true")
    ap.add_argument("--forks", type=int, default=0)
    args = ap.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    stop = threading.Event()
    if args.busy:
        sctx, cctx = contexts(args.cert, args.key)

        def busy():
            while not stop.is_set():
                memory_pair(sctx, cctx)

        threading.Thread(target=busy, daemon=True).start()
        time.sleep(0.2)
    workers = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            stop.set()
            serve_worker(lsock, ctx)
            os._exit(0)
        workers.append(pid)
    ok = hung = in_openssl_lock = 0
    for _ in range(args.forks):
        pid = os.fork()
        if pid == 0:
            try:
                s2, c2 = contexts(args.cert, args.key)
                memory_pair(s2, c2)
                memory_pair(ctx if False else s2, c2)
            finally:
                os._exit(0)
        deadline = time.monotonic() + 20
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                ok += os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
                break
            if time.monotonic() > deadline:
                if waits_in_openssl_lock(pid):
                    in_openssl_lock += 1
                else:
                    hung += 1
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.01)
    stop.set()

    def terminate(*a):
        for w in workers:
            try:
                os.kill(w, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for w in workers:
            try:
                os.waitpid(w, 0)
            except ChildProcessError:
                pass
        os._exit(0)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(
            f"{lsock.getsockname()[1]} {' '.join(map(str, workers))} forks_ok={ok} hung={hung} hung_in_openssl_lock={in_openssl_lock}\n"
        )
    os.replace(tmp, args.ready_file)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
