"""lighttpd (Debian's lighttpd 1.4 with lighttpd-mod-openssl): one process, an event loop, TLS
on 127.0.0.1 with keep-alive. Started as root it stays root unless told a user; its idle
keep-alive connections are kept for 10 minutes here (the default drops them after 5 s)."""

import os
import signal

from servers.base import Server, ServerUnavailable, copy_cert

MOD_OPENSSL = "/usr/lib/lighttpd/mod_openssl.so"

CONFIG = """\
server.document-root = "{dir}/www"
server.bind = "127.0.0.1"
server.port = {port}
server.modules = ("mod_openssl")
index-file.names = ("index.html")
server.errorlog = "{dir}/error.log"
server.max-keep-alive-idle = 600
server.max-keep-alive-requests = 100000
server.max-fds = 4096
server.max-connections = 2048
ssl.engine = "enable"
ssl.pemfile = "{cert}"
ssl.privkey = "{key}"
"""


class Lighttpd(Server):
    name = "lighttpd"
    package = "lighttpd lighttpd-mod-openssl"
    programs = ("/usr/sbin/lighttpd",)
    client = "https"
    stop_signal = signal.SIGTERM

    def check_available(self):
        super().check_available()
        if not os.path.exists(MOD_OPENSSL):
            raise ServerUnavailable(f"{MOD_OPENSSL} not found: install the Debian package lighttpd-mod-openssl")

    def command(self, port):
        cert, key = copy_cert(self.workdir, self.certfile, self.keyfile)
        os.makedirs(os.path.join(self.workdir, "www"), exist_ok=True)
        with open(os.path.join(self.workdir, "www", "index.html"), "w") as f:
            f.write("ok\n")
        conf = os.path.join(self.workdir, "lighttpd.conf")
        with open(conf, "w") as f:
            f.write(CONFIG.format(dir=self.workdir, port=port, cert=cert, key=key))
        return ["/usr/sbin/lighttpd", "-D", "-f", conf]
