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


class StunnelChrooted(Stunnel):
    """As Debian's stunnel4 package prepares it (its sample recommends `setuid = stunnel4`, and it
    makes /var/lib/stunnel4 for a chroot): chrooted to an empty directory and running as
    `stunnel4`, both after the configuration (and OpenSSL's contexts) is loaded; the shim pauses its
    channel around setgid/setuid, inside the chroot."""

    name = "stunnel-chroot"

    def check_available(self):
        super().check_available()
        import pwd

        from servers.base import ServerUnavailable

        if os.geteuid() != 0:
            raise ServerUnavailable("chroot and the stunnel4 user need root")
        try:
            pwd.getpwnam("stunnel4")
        except KeyError:
            raise ServerUnavailable("no stunnel4 user: install the Debian package stunnel4") from None

    def command(self, port):
        argv = super().command(port)
        jail = os.path.join(self.workdir, "jail")
        os.makedirs(jail, exist_ok=True)
        conf = argv[-1]
        with open(conf) as f:
            text = "".join(line for line in f if not line.startswith("output"))  # no log outside the jail
        with open(conf, "w") as f:
            f.write(f"chroot = {jail}\nsetuid = stunnel4\nsetgid = stunnel4\n" + text)
        return argv
