"""Targets of another user get a shim they can open, whatever directory tlsprof is installed in
(issue 22): with the package in a 0700 directory, `attach` to an nginx worker (www-data) and to a
PostgreSQL backend (postgres), and `run -- setpriv --reuid=nobody … SERVER`, are tracked; the copy
is content-named, not writable by others, and removed once nothing maps it; the channel stays
private."""

import os
import pwd
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from reportcheck import load_checked
from tlsenv import free_port
import tlsprof
from tlsprof.collect import shim_copy
from tlsprof.collect.channel_paths import channel_dir_for, socket_path
from tlsprof.errors import ShimNotLoadable

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.dirname(os.path.abspath(tlsprof.__file__))
needs_gdb = pytest.mark.skipif(not shutil.which("gdb"), reason="attach needs gdb (make test installs it)")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
PG_BIN = "/usr/lib/postgresql/15/bin"


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def private_tlsprof():
    """This checkout's built package (with its _shim*.so) copied into a 0700 directory, like a
    clone in a private home: -> (argv prefix for `python -m tlsprof`, env, cwd)."""
    top = tempfile.mkdtemp(prefix="tlsprof-private-")  # mode 0700, owned by us
    try:
        shutil.copytree(PACKAGE, os.path.join(top, "tlsprof"), ignore=shutil.ignore_patterns("__pycache__"))
        env = dict(os.environ, PYTHONPATH=top)
        env.pop("TLSPROF_DIR", None)
        where = subprocess.run(
            [sys.executable, "-c", "import tlsprof, tlsprof.collect.shim as s; print(s.shim_path())"],
            env=env,
            cwd=top,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert where.stdout.strip().startswith(top + "/tlsprof/_shim"), where.stderr
        assert stat.S_IMODE(os.stat(top).st_mode) == 0o700
        yield [sys.executable, "-m", "tlsprof"], env, top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def shim_answers(pid):
    try:
        uid = psutil.Process(pid).uids().effective
        from tlsprof.collect import client

        return client.ping(socket_path(channel_dir_for(uid), pid)) == pid
    except Exception:
        return False


def attach_in_background(tlsprof, env, cwd, pid, report, duration):
    proc = subprocess.Popen(
        [*tlsprof, "attach", str(pid), "--duration", str(duration), "--interval", "0.3", "-o", str(report)],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: shim_answers(pid) or proc.poll() is not None, 60, "the shim to answer")
    if proc.poll() is not None:
        raise AssertionError(f"attach failed: {proc.communicate()[1]}")
    return proc


def finish(proc, pid, report):
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert "detached" in err
    assert not shim_answers(pid)
    return load_checked(report)


def mapped_copy(pid):
    """The tlsprof shim path mapped in `pid` (None if none)."""
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            path = line.split(None, 5)[-1].strip()
            if "/_shim" in path and "tlsprof" in path:
                return path
    return None


# ----------------------------------------------------------------------------- the copy itself


def test_copy_is_content_named_readonly_and_reused(tmp_path):
    first = shim_copy.make(shim_copy.installed()[0])
    try:
        again = shim_copy.make(shim_copy.installed()[0])
        assert again.root == first.root  # same content, same bundle
        again.release()
        base = os.path.dirname(first.root)
        st = os.stat(base)
        assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o022 == 0
        assert stat.S_IMODE(st.st_mode) & 0o005 == 0o005  # anyone can enter and list
        for rel in (
            os.path.basename(first.shim),
            "agent/agent.py",
            "agent/graph.py",
            "agent/ssl_objects.py",
            "agent/tracemalloc_ext.py",
            "agent/listener.py",
            "agent/site/sitecustomize.py",
        ):
            path = os.path.join(first.root, rel)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o444
            with (
                open(path, "rb") as a,
                open(os.path.join(PACKAGE, rel) if "/" in rel else shim_copy.installed()[0], "rb") as b,
            ):
                assert a.read() == b.read()
        assert shim_copy.readable_by(first.shim, shim_copy.ANYONE)
        assert shim_copy.readable_by(os.path.join(first.site_dir, "sitecustomize.py"), shim_copy.ANYONE)
        # a rebuilt shim gets another bundle; the first one is not touched while held
        fake = tmp_path / os.path.basename(first.shim)
        fake.write_bytes(open(first.shim, "rb").read() + b"\0rebuilt")
        other = shim_copy.make(str(fake))
        assert other.root != first.root and os.path.isdir(first.root)
        other.release()  # nothing maps it, nobody holds it: removed
        assert not os.path.exists(other.root)
    finally:
        first.release()


def test_copy_mapped_by_a_process_is_kept_until_it_exits(tmp_path):
    bundle = shim_copy.make(shim_copy.installed()[0])
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import ctypes, sys, time; ctypes.CDLL(sys.argv[1]); print('up', flush=True); time.sleep(60)",
            bundle.shim,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "up"
        bundle.release()
        assert os.path.isdir(bundle.root), "removed while a process maps it"
        holder.kill()
        holder.wait(10)
        assert bundle.root in shim_copy.remove_unused(os.path.dirname(bundle.root))
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


MAKE_AND_HOLD = """
import sys, time
from tlsprof.collect import shim_copy
shim_copy.BASE = sys.argv[1]
bundle = shim_copy.make(shim_copy.installed()[0])
print(bundle.root, flush=True)
time.sleep(1.0)
bundle.release()
"""


def test_concurrent_sessions_share_one_bundle(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    os.chmod(base, 0o755)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MAKE_AND_HOLD, str(base)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _out, err in outs]
    roots = {out.strip() for out, _err in outs}
    assert len(roots) == 1
    lib = os.path.dirname(roots.pop())
    assert [n for n in os.listdir(lib) if n.startswith(".")] == []  # no half-made bundle left
    assert os.listdir(lib) == []  # the last one out removed it: nothing maps it


def test_a_lib_dir_writable_by_others_is_refused(monkeypatch, tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    monkeypatch.setattr(shim_copy, "BASE", str(base))
    squatted = base / f"tlsprof-lib-{os.geteuid()}"
    squatted.mkdir(mode=0o777)
    os.chmod(squatted, 0o777)
    with pytest.raises(ShimNotLoadable, match="writable by others"):
        shim_copy.make(shim_copy.installed()[0])


@pytest.fixture(scope="module")
def public_cert():
    """A certificate and key any user can read (servers below run as nobody): -> (cert, key)."""
    d = tempfile.mkdtemp(prefix="tlsprof-certs-")
    os.chmod(d, 0o755)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-keyout",
            f"{d}/k.pem",
            "-out",
            f"{d}/c.pem",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    for name in ("k.pem", "c.pem"):
        os.chmod(f"{d}/{name}", 0o644)
    yield f"{d}/c.pem", f"{d}/k.pem"
    shutil.rmtree(d, ignore_errors=True)


def _unshare_works():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return (
        subprocess.run(
            ["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True, timeout=30
        ).returncode
        == 0
    )


needs_unshare = pytest.mark.skipif(not _unshare_works(), reason="needs root allowed to make mount namespaces")


def _loads_libssl(pid):
    try:
        return any("libssl" in m.path for m in psutil.Process(pid).memory_maps())
    except psutil.Error:
        return False


@needs_gdb
@needs_unshare
def test_read_only_tmp_is_one_line_exit_9(private_tlsprof, public_cert):
    """tlsprof where /tmp is read-only cannot make what a target of another uid needs (its
    channel directory, a readable shim): one line, exit code 9, the target untouched."""
    tlsprof, env, cwd = private_tlsprof
    cert, key = public_cert
    uid = 47011  # a uid nothing else uses: its channel directory does not exist yet
    shutil.rmtree(f"/tmp/tlsprof-{uid}", ignore_errors=True)
    target = subprocess.Popen(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "openssl",
            "s_server",
            "-accept",
            f"127.0.0.1:{free_port()}",
            "-cert",
            cert,
            "-key",
            key,
            "-quiet",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",
    )
    try:
        wait_for(lambda: _loads_libssl(target.pid), 20, "the target to load libssl")
        r = subprocess.run(
            [
                "unshare",
                "-m",
                "sh",
                "-c",
                'mount --bind /tmp /tmp && mount -o remount,bind,ro /tmp && exec "$@"',
                "sh",
                *tlsprof,
                "attach",
                str(target.pid),
                "--duration",
                "1",
            ],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=90,
        )
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 9, r.stderr
        assert len(lines) == 1 and "read-only" in lines[0], r.stderr
        assert target.poll() is None and mapped_copy(target.pid) is None
    finally:
        target.kill()
        target.wait()


@needs_gdb
@needs_unshare
def test_target_in_another_mount_namespace_is_one_line_exit_9(private_tlsprof):
    """A target whose /tmp is not ours (a container, PrivateTmp=) would not find the shim at the
    path we give it: one line says so, exit code 9, the target untouched."""
    tlsprof, env, cwd = private_tlsprof
    # the interpreter itself, not the virtualenv's link to it: a clone under /tmp (CI's) is hidden
    # behind the fresh /tmp of the namespace
    python = os.path.realpath(sys.executable)
    target = subprocess.Popen(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            'mount -t tmpfs tmpfs /tmp && exec "$@"',
            "sh",
            python,
            "-c",
            "import ssl, time; time.sleep(120)",
        ],
        cwd="/",
    )
    try:
        wait_for(lambda: _loads_libssl(target.pid), 20, "the target to load libssl")
        r = subprocess.run(
            [*tlsprof, "attach", str(target.pid), "--duration", "1"],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=90,
        )
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 9, r.stderr
        assert len(lines) == 1 and "another mount namespace" in lines[0], r.stderr
        assert target.poll() is None and mapped_copy(target.pid) is None
    finally:
        target.kill()
        target.wait()


# ----------------------------------------------------------------------------- real targets

NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
user www-data;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;
    uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 "hello\\n"; }}
    }}
}}
"""


def _client_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@needs_gdb
@needs_root
@pytest.mark.skipif(
    not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"),
    reason="needs Debian's nginx (make test installs nginx-light)",
)
def test_attach_to_nginx_worker_from_a_private_directory(private_tlsprof, cert_pair, tmp_path):
    from test_attach import _http_keepalive, nginx_worker

    tlsprof, env, cwd = private_tlsprof
    with nginx_worker(cert_pair, tmp_path, NGINX_CONF) as (worker, port, socks):
        assert psutil.Process(worker).username() == "www-data"
        attach = attach_in_background(tlsprof, env, cwd, worker, tmp_path / "nginx.json", 4)
        shim = mapped_copy(worker)
        assert shim and not shim.startswith(cwd) and shim_copy.is_copy(shim), shim
        socks += _http_keepalive(port, 20)
        report = finish(attach, worker, tmp_path / "nginx.json")
        assert report["per_connection"]["connections"] >= 20
        peers = {c["peer"] for c in report["connections"]}
        assert {f"127.0.0.1:{s.getsockname()[1]}" for s in socks} <= peers
        # the channel stayed private: www-data's 0700 directory, a 0600 socket
        chan = channel_dir_for(pwd.getpwnam("www-data").pw_uid)
        assert stat.S_IMODE(os.stat(chan).st_mode) == 0o700
        socks += _http_keepalive(port, 5)  # still serving after detach
        assert os.path.exists(shim), "the copy a live worker maps was removed"


def _as_postgres(*argv, **kw):
    return ["runuser", "-u", "postgres", "--", *argv]


@pytest.fixture
def postgres_tls(tmp_path):
    """A throwaway PostgreSQL 15 cluster (runs as postgres) with ssl=on, on 127.0.0.1:<free port>:
    -> (port, data dir). Stopped by pid."""
    if not os.path.exists(f"{PG_BIN}/initdb") or os.geteuid() != 0:
        pytest.skip("needs postgresql-15 (make test installs it) and root")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user")
    top = tempfile.mkdtemp(prefix="tlsprof-pg-")
    os.chmod(top, 0o755)
    data = os.path.join(top, "data")
    os.mkdir(data, 0o700)
    pg = pwd.getpwnam("postgres")
    os.chown(data, pg.pw_uid, pg.pw_gid)
    server = None
    try:
        subprocess.run(
            _as_postgres(
                f"{PG_BIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "--no-instructions"
            ),
            check=True,
            capture_output=True,
            timeout=120,
            cwd="/",
        )
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-keyout",
                f"{data}/server.key",
                "-out",
                f"{data}/server.crt",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for name in ("server.key", "server.crt"):
            os.chown(f"{data}/{name}", pg.pw_uid, pg.pw_gid)
            os.chmod(f"{data}/{name}", 0o600)
        port = free_port()
        with open(f"{data}/postgresql.conf", "a") as f:
            f.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {port}\nssl = on\n"
                f"unix_socket_directories = '{data}'\nfsync = off\n"
            )
        server = subprocess.Popen(
            _as_postgres(f"{PG_BIN}/postgres", "-D", data), cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait_for(
            lambda: (
                subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", str(port)], capture_output=True).returncode == 0
                or server.poll() is not None
            ),
            60,
            "postgres to accept connections",
        )
        assert server.poll() is None, server.stderr.read().decode()[-500:]
        yield port, data
    finally:
        if server is not None and server.poll() is None:
            try:
                for postmaster in psutil.Process(server.pid).children():  # runuser's child
                    postmaster.send_signal(signal.SIGINT)  # fast shutdown
            except psutil.Error:
                pass
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(top, ignore_errors=True)


class Psql:
    """psql over TLS (sslmode=require), fed one query at a time."""

    def __init__(self, port):
        self.proc = subprocess.Popen(
            [
                "psql",
                f"host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=require",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd="/",
        )

    def query(self, sql):
        self.proc.stdin.write(sql + "\n\\echo __done\n")
        self.proc.stdin.flush()
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"psql ended: {self.proc.stderr.read()[-300:]}")
            if line.strip() == "__done":
                return lines
            lines.append(line.strip())
        raise AssertionError("psql did not answer in 30 s")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@needs_gdb
def test_attach_to_postgres_backend_from_a_private_directory(private_tlsprof, postgres_tls, tmp_path):
    tlsprof, env, cwd = private_tlsprof
    port, _data = postgres_tls
    psql = Psql(port)
    try:
        assert psql.query("select ssl from pg_stat_ssl where pid = pg_backend_pid();") == ["t"]
        backend = int(psql.query("select pg_backend_pid();")[0])
        assert psutil.Process(backend).username() == "postgres"
        attach = attach_in_background(tlsprof, env, cwd, backend, tmp_path / "pg.json", 4)
        shim = mapped_copy(backend)
        assert shim and shim_copy.is_copy(shim), shim
        for i in range(5):  # traffic on the pre-attach TLS session while attached
            assert psql.query(f"select {i} + 1;") == [str(i + 1)]
        report = finish(attach, backend, tmp_path / "pg.json")
        assert report["per_connection"]["connections"] >= 1
        assert psql.query("select 'still served';") == ["still served"]
    finally:
        psql.close()


SWITCH_TO_NOBODY = {
    "setpriv": ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"],  # execs the server
    "runuser": ["runuser", "-u", "nobody", "--"],  # forks it and stays its parent (PAM session)
}


@needs_root
@pytest.mark.parametrize("switch", sorted(SWITCH_TO_NOBODY))
def test_run_switched_user_server_from_a_private_directory_is_tracked(switch, private_tlsprof, public_cert, tmp_path):
    """`tlsprof run -- setpriv --reuid=nobody … openssl s_server` (or runuser): the server (nobody)
    loads the copy, serves its channel in nobody's private directory, and its connection is
    reported."""
    tlsprof, env, cwd = private_tlsprof
    cert, key = public_cert
    port = free_port()
    report = tmp_path / "run.json"
    run = subprocess.Popen(
        [
            *tlsprof,
            "run",
            "--interval",
            "0.3",
            "-o",
            str(report),
            "--",
            *SWITCH_TO_NOBODY[switch],
            "openssl",
            "s_server",
            "-rev",
            "-accept",
            f"127.0.0.1:{port}",
            "-cert",
            cert,
            "-key",
            key,
            "-quiet",
        ],
        env=env,
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def listening():
            return any(c.laddr.port == port for c in psutil.net_connections("tcp") if c.status == "LISTEN")

        wait_for(lambda: listening() or run.poll() is not None, 30, "s_server to listen")
        assert run.poll() is None, run.communicate()[1]
        server = next(p for p in psutil.Process(run.pid).children(recursive=True) if p.name() == "openssl")
        assert server.username() == "nobody"
        assert shim_copy.is_copy(mapped_copy(server.pid))
        with _client_ctx().wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10)) as s:
            s.sendall(b"hello\n")
            assert s.recv(64) == b"olleh\n"
            # snapshots with the connection open; the session looks at processes other than the
            # command itself (runuser's child) every 10th snapshot only
            time.sleep(4.5)
        run.send_signal(signal.SIGTERM)
        _out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    doc = load_checked(report)
    assert doc["target"]["pid"] == server.pid, err
    assert doc["per_connection"]["connections"] >= 1, err
    assert any(c["peer"].startswith("127.0.0.1:") for c in doc["connections"])


SYSTEM_PYTHON = "/usr/bin/python3"  # readable by nobody (this venv's interpreter may live in /root)
ECHO_SERVER = os.path.join(os.path.dirname(HERE), "examples", "echo_server.py")


def _nobody_echo_server(port):
    return [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        SYSTEM_PYTHON,
        ECHO_SERVER,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threaded",
    ]


def _welcomed(port, n):
    socks = []
    for _ in range(n):
        s = _client_ctx().wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
        assert s.recv(64) == b"welcome!\n"
        socks.append(s)
    return socks


def _listening(port):
    return any(c.laddr.port == port for c in psutil.net_connections("tcp") if c.status == "LISTEN")


@needs_root
@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="needs Debian's python3")
def test_run_python_server_as_nobody_gets_the_agent_from_the_copy(private_tlsprof, tmp_path):
    """The agent files (sitecustomize, agent.py) come from the copy too: the Python objects of a
    server that switched to nobody are joined to its connections."""
    tlsprof, env, cwd = private_tlsprof
    port = free_port()
    report = tmp_path / "py.json"
    run = subprocess.Popen(
        [*tlsprof, "run", "--interval", "0.3", "-o", str(report), "--", *_nobody_echo_server(port)],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    socks = []
    try:
        wait_for(lambda: _listening(port) or run.poll() is not None, 60, "the server to listen")
        assert run.poll() is None, run.communicate()[1]
        server = psutil.Process(run.pid).children()[0]
        assert server.username() == "nobody" and shim_copy.is_copy(mapped_copy(server.pid))
        socks = _welcomed(port, 5)
        time.sleep(2.5)  # snapshots and an agent answer with the connections open
        run.send_signal(signal.SIGTERM)
        _out, err = run.communicate(timeout=60)
    finally:
        for s in socks:
            s.close()
        if run.poll() is None:
            run.kill()
            run.wait()
    doc = load_checked(report)
    assert doc["per_connection"]["connections"] >= 5, err
    assert doc["python"]["join"] == "on", err
    assert len([c for c in doc["connections"] if c.get("python")]) >= 5


@needs_gdb
@needs_root
@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="needs Debian's python3")
def test_attach_to_python_server_of_nobody_starts_the_agent_from_the_copy(private_tlsprof, tmp_path):
    tlsprof, env, cwd = private_tlsprof
    port = free_port()
    server = subprocess.Popen(_nobody_echo_server(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
    socks = []
    try:
        wait_for(lambda: _listening(port) or server.poll() is not None, 60, "the server to listen")
        assert server.poll() is None
        attach = attach_in_background(tlsprof, env, cwd, server.pid, tmp_path / "py.json", 4)
        assert shim_copy.is_copy(mapped_copy(server.pid))
        socks = _welcomed(port, 5)
        doc = finish(attach, server.pid, tmp_path / "py.json")
        assert doc["per_connection"]["connections"] >= 5
        assert doc["python"]["join"] == "on"
        assert len([c for c in doc["connections"] if c.get("python")]) >= 5
        socks += _welcomed(port, 2)  # still serving after detach
    finally:
        for s in socks:
            s.close()
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
