"""PostgreSQL 15 (Debian's postgresql-15) with ssl=on: initdb as user postgres in a temp dir,
TCP on 127.0.0.1 only, `hostssl ... trust` for the matrix's sessions (plain TCP refused), the
Unix socket in the temp dir. Each client session gets its own backend process (fork), which does
the TLS handshake and holds the connection."""

import glob
import os
import signal
import subprocess

from servers.base import Server, ServerUnavailable, copy_cert, drop_to
from servers.clients import open_postgres


def _bindir():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return os.path.dirname(found[-1]) if found else None


class PostgreSQL(Server):
    name = "postgresql"
    package = "postgresql-15"
    client = "postgres"
    connections = 50
    run_as = "postgres"
    stop_signal = signal.SIGINT  # fast shutdown (SIGTERM waits for every session to end)

    def check_available(self):
        if _bindir() is None:
            raise ServerUnavailable("postgres not found: install the Debian package postgresql-15")

    @property
    def datadir(self):
        return os.path.join(self.workdir, "data")

    def prepare(self):
        bindir = _bindir()
        proc = subprocess.run(
            [
                *drop_to(self.run_as),
                os.path.join(bindir, "initdb"),
                "-D",
                self.datadir,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.workdir,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        cert, key = copy_cert(self.datadir, self.certfile, self.keyfile, self.run_as)
        with open(os.path.join(self.datadir, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n")
        with open(os.path.join(self.datadir, "postgresql.auto.conf"), "a") as f:
            f.write(
                f"ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n"
                f"listen_addresses = '127.0.0.1'\nunix_socket_directories = '{self.workdir}'\n"
                "max_connections = 120\nshared_buffers = 16MB\nfsync = off\n"
                "logging_collector = off\n"
            )

    def ready(self, port):
        try:
            open_postgres(port, timeout=2.0).close()
            return True
        except OSError:  # ssl.SSLError and ConnectionError are OSErrors
            return False

    def command(self, port):
        return [os.path.join(_bindir(), "postgres"), "-D", self.datadir, "-p", str(port)]
