"""HAProxy (Debian 12: 2.6): one process, 2 threads, an HTTP frontend that terminates TLS on
127.0.0.1 and forwards to a tiny keep-alive HTTP backend (tests/servers/backend.py)."""

import os
import signal

from servers.base import Server, copy_cert

CONFIG = """\
global
    maxconn 4096
    nbthread 2
    log stderr format short local0 warning
defaults
    mode http
    log global
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-keep-alive 600s
frontend tls_in
    bind 127.0.0.1:{port} ssl crt {pem}
    default_backend plain
backend plain
    http-reuse always
    server app 127.0.0.1:{backend_port}
"""


class HAProxy(Server):
    name = "haproxy"
    package = "haproxy"
    programs = ("haproxy",)
    client = "https"
    stop_signal = signal.SIGTERM  # hard stop
    backend = "--http"

    def command(self, port):
        cert, key = copy_cert(self.workdir, self.certfile, self.keyfile)
        pem = os.path.join(self.workdir, "server.pem")  # HAProxy wants the cert and key in one file
        with open(pem, "w") as out:
            for path in (cert, key):
                with open(path) as f:
                    out.write(f.read())
        os.chmod(pem, 0o600)
        conf = os.path.join(self.workdir, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(CONFIG.format(port=port, pem=pem, backend_port=self.backend_port))
        return ["haproxy", "-db", "-f", conf]


class HAProxyChrooted(HAProxy):
    """As Debian's haproxy.cfg and systemd unit run it: master-worker (`-Ws`), the worker chrooted
    to an empty directory and running as the `haproxy` user; the shim pauses its channel around
    each change of credentials, inside the chroot."""

    name = "haproxy-chroot"

    def check_available(self):
        super().check_available()
        import pwd

        from servers.base import ServerUnavailable

        if os.geteuid() != 0:
            raise ServerUnavailable("chroot and the haproxy user need root")
        try:
            pwd.getpwnam("haproxy")
        except KeyError:
            raise ServerUnavailable("no haproxy user: install the Debian package haproxy") from None

    def command(self, port):
        argv = super().command(port)
        jail = os.path.join(self.workdir, "jail")
        os.makedirs(jail, exist_ok=True)
        conf = argv[-1]
        with open(conf) as f:
            text = f.read()
        with open(conf, "w") as f:
            f.write(text.replace("global\n", f"global\n    chroot {jail}\n    user haproxy\n    group haproxy\n", 1))
        return ["haproxy", "-Ws", "-f", conf]
