"""Ground truth for docs/compatibility.md ("Process trees"), measured without tlsprof: PostgreSQL 15
with ssl=on, 50 `sslmode=require` and 20 `sslmode=disable` psql sessions; pg_stat_ssl's count of
TLS sessions and the mean USS of a TLS backend against a plain one. Needs root and postgresql-15.

    .venv/bin/python bench/pg_tls_uss.py
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import test_process_trees as t  # noqa: E402
from tlsenv import ensure_cert  # noqa: E402

certs = ensure_cert(tempfile.mkdtemp(prefix="tlsprof-pg-certs-"))
root, data = t._pg_cluster(certs)
open(os.path.join(data, "pg_hba.conf"), "a").write("host all all 127.0.0.1/32 trust\n")
port = t.free_port()
pg = subprocess.Popen(
    ["runuser", "-u", "postgres", "--", f"{t.PG_BIN}/postgres", "-D", data, "-p", str(port)],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    start_new_session=True,
)
try:
    t.wait_for(
        lambda: subprocess.run([f"{t.PG_BIN}/pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode == 0,
        60,
        "pg",
    )

    def sessions(mode, n):
        procs = []
        for _ in range(n):
            p = subprocess.Popen(
                [
                    f"{t.PG_BIN}/psql",
                    f"host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode={mode}",
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            p.stdin.write("select coalesce((select ssl from pg_stat_ssl where pid = pg_backend_pid()), false);\n")
            p.stdin.flush()
            procs.append(p)
        for p in procs:
            p.stdout.readline()
        return procs

    tls = sessions("require", 50)
    plain = sessions("disable", 20)
    time.sleep(1)
    out = subprocess.run(
        [
            f"{t.PG_BIN}/psql",
            f"host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=disable",
            "-X",
            "-A",
            "-t",
            "-c",
            "select count(*) from pg_stat_ssl where ssl",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    uss = {"t": [], "f": []}
    for c in psutil.Process(pg.pid).children(recursive=True):
        cmd = " ".join(c.cmdline())
        if "postgres postgres 127.0.0.1" not in cmd:
            continue
        # which backend is TLS: pg_stat_ssl by pid, below
        uss.setdefault(c.pid, c.memory_full_info().uss)
    rows = subprocess.run(
        [
            f"{t.PG_BIN}/psql",
            f"host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=disable",
            "-X",
            "-A",
            "-t",
            "-c",
            "select pid, ssl from pg_stat_ssl",
        ],
        capture_output=True,
        text=True,
    ).stdout.split()
    by = {"t": [], "f": []}
    for r in rows:
        pid, ssl = r.split("|")
        if int(pid) in uss:
            by[ssl].append(uss[int(pid)])
    print(f"pg_stat_ssl with ssl: {out}")
    print(
        f"USS per backend: TLS mean {statistics.mean(by['t']) / 1024:.1f} KiB (n={len(by['t'])}), plain mean {statistics.mean(by['f']) / 1024:.1f} KiB (n={len(by['f'])}), TLS extra {(statistics.mean(by['t']) - statistics.mean(by['f'])) / 1024:.1f} KiB"
    )
    for p in tls + plain:
        p.kill()
        p.wait()
finally:
    for c in psutil.Process(pg.pid).children():
        c.send_signal(2)
    pg.wait(60)
    shutil.rmtree(root, ignore_errors=True)
