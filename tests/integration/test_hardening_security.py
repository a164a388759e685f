"""Hardening: what tlsprof writes never contains payload bytes, keys or session secrets, and attach
never widens permissions.

A known secret crosses the echo server in both directions; the client logs the session secrets
(SSLKEYLOGFILE format); the server's private key is on disk. Every output is then grepped for each
of them: raw channel snapshots, the JSON report, the text and JSON renderings, tlsprof's stderr.
"""

import base64
import gzip
import json
import os
import re
import ssl
import stat
import subprocess
import sys

import pytest

from tlsenv import recv_exactly, start_echo_server
from tlsprof.collect.channel_paths import channel_dir_path
from tlsprof.collect.client import ask

from shim_harness.hardening_util import echo_once

TLSPROF = [sys.executable, "-m", "tlsprof"]
SECRET = "S3cr3t-" + os.urandom(12).hex()


def needles(keyfile, keylog):
    """Byte strings that must appear in no output."""
    out = {SECRET.encode(), SECRET.encode().hex().encode()}
    pem = open(keyfile).read()
    body = "".join(l for l in pem.splitlines() if not l.startswith("-----"))
    der = base64.b64decode(body)
    out.add(der.hex().encode())
    out.update(l.encode() for l in pem.splitlines() if not l.startswith("-----") and len(l) >= 16)
    out.add(der[-32:].hex().encode())  # the tail of the DER (public/private key material)
    for line in open(keylog).read().splitlines():  # LABEL CLIENT_RANDOM SECRET
        parts = line.split()
        if len(parts) == 3:
            out.add(parts[2].encode())
            out.add(parts[2].upper().encode())
    return out


def client_traffic(port, keylog, n=5):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.keylog_filename = keylog
    import socket

    socks = []
    for _ in range(n):
        t = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
        recv_exactly(t, 9)
        payload = (SECRET + "\n").encode() * 50
        t.sendall(payload)
        assert recv_exactly(t, len(payload)) == payload
        socks.append(t)
    return socks


def test_no_payload_key_or_session_secret_in_any_output(cert_pair, tmp_path):
    cert_dir = os.path.dirname(cert_pair[0])
    keylog = str(tmp_path / "keylog.txt")
    out = tmp_path / "report.json"
    server = start_echo_server(
        "--threaded",
        certdir=cert_dir,
        wrapper=[*TLSPROF, "run", "-o", str(out), "--interval", "0.2", "--pprof", str(tmp_path / "profiles"), "--"],
    )
    outputs = {}
    try:
        target = server.target_pid()
        env = dict(kv.split(b"=", 1) for kv in open(f"/proc/{target}/environ", "rb").read().split(b"\0") if b"=" in kv)
        sock = os.path.join(env[b"TLSPROF_DIR"].decode(), f"{target}.sock")
        socks = client_traffic(server.port, keylog)
        outputs["snapshot-live"] = ask(sock, "SNAPSHOT").encode()
        for s in socks:
            s.close()
        outputs["snapshot-after"] = ask(sock, "SNAPSHOT").encode()
    finally:
        server.stop_target()
    outputs["tlsprof-stderr"] = open(server.stderr_path, "rb").read() if hasattr(server, "stderr_path") else b""
    outputs["report.json"] = out.read_bytes()
    for fmt in (["--format", "text"], ["--format", "json"], []):
        r = subprocess.run([*TLSPROF, "report", str(out), *fmt], capture_output=True, timeout=60)
        outputs[f"report {' '.join(fmt)}"] = r.stdout + r.stderr
    pb = tmp_path / "report.pb.gz"
    r = subprocess.run(
        [*TLSPROF, "report", str(out), "--format", "pprof", "-o", str(pb)], capture_output=True, timeout=60
    )
    outputs["report --format pprof"] = gzip.decompress(pb.read_bytes()) + r.stderr
    assert os.listdir(tmp_path / "profiles")
    for name in os.listdir(tmp_path / "profiles"):  # what --pprof wrote while the secrets were live
        outputs[f"--pprof {name}"] = gzip.decompress((tmp_path / "profiles" / name).read_bytes())
    assert json.loads(outputs["report.json"])["connections"] is not None
    secrets = needles(cert_pair[1], keylog)
    assert sum(1 for l in open(keylog) if len(l.split()) == 3) >= 5  # session secrets were logged
    assert len(secrets) > 10
    found = [(name, n[:24]) for name, blob in outputs.items() for n in secrets if n and n.lower() in blob.lower()]
    assert not found, f"secret material in outputs: {found}"
    # and what they do contain: sizes, sites, addresses
    assert re.search(rb"\.\./ssl/", outputs["snapshot-live"])


def test_attach_never_widens_permissions(cert_pair, tmp_path):
    if not os.path.exists("/usr/bin/gdb"):
        pytest.skip("gdb needed for attach")
    cert_dir = os.path.dirname(cert_pair[0])
    server = start_echo_server(certdir=cert_dir)

    def perms():
        paths = [cert_dir, *cert_pair, channel_dir_path(os.geteuid()), f"/proc/{server.pid}/cwd"]
        modes = {p: (stat.S_IMODE(os.stat(p).st_mode), os.stat(p).st_uid) for p in paths if os.path.exists(p)}
        for p in ("/proc/sys/kernel/yama/ptrace_scope", "/proc/sys/kernel/perf_event_paranoid"):
            if os.path.exists(p):
                modes[p] = open(p).read().strip()
        modes["dumpable"] = open(f"/proc/{server.pid}/status").read().count("NoNewPrivs")
        return modes

    try:
        # the channel directory may not exist before the first attach: create it the way attach does
        from tlsprof.collect.channel_paths import channel_dir_for

        channel_dir_for(os.geteuid())
        before = perms()
        r = subprocess.run(
            [
                *TLSPROF,
                "attach",
                str(server.pid),
                "--duration",
                "1",
                "--interval",
                "0.3",
                "-o",
                str(tmp_path / "a.json"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert perms() == before
        assert stat.S_IMODE(os.stat(channel_dir_path(os.geteuid())).st_mode) == 0o700
        assert echo_once(server.port)
    finally:
        server.stop()
