"""stunnel4: a TLS server on 127.0.0.1 in front of a tiny line-echo backend
(tests/servers/backend.py); one process, a thread per connection (Debian's build: PTHREAD)."""

import os

from servers.base import Server, copy_cert

CONFIG = """\
foreground = yes
pid =
output = {dir}/stunnel.log
debug = warning
[echo]
accept = 127.0.0.1:{port}
connect = 127.0.0.1:{backend_port}
cert = {cert}
key = {key}
"""


class Stunnel(Server):
    name = "stunnel"
    package = "stunnel4"
    programs = ("stunnel4",)
    client = "tls"
    backend = "--echo"

    def command(self, port):
        cert, key = copy_cert(self.workdir, self.certfile, self.keyfile)
        conf = os.path.join(self.workdir, "stunnel.conf")
        with open(conf, "w") as f:
            f.write(CONFIG.format(dir=self.workdir, port=port, backend_port=self.backend_port, cert=cert, key=key))
        return ["stunnel4", conf]
