"""Mosquitto (Debian's mosquitto 2.0), an MQTT broker: one process, one thread, a TLS listener on
127.0.0.1. Started as root it drops to the `mosquitto` user (its default), so the cert and key are
handed to that user. Clients connect with MQTT keep-alive 0: the broker never times them out."""

import os
import pwd
import shutil

from servers.base import Server, copy_cert

CONFIG = """\
per_listener_settings false
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
max_connections -1
listener {port} 127.0.0.1
certfile {cert}
keyfile {key}
"""


class Mosquitto(Server):
    name = "mosquitto"
    package = "mosquitto"
    programs = ("/usr/sbin/mosquitto",)
    client = "mqtt"

    def command(self, port):
        user = "mosquitto" if _has_user("mosquitto") else None
        cert, key = copy_cert(self.workdir, self.certfile, self.keyfile, user)
        os.chmod(self.workdir, 0o755)  # the broker reads its cert and key after dropping root
        conf = os.path.join(self.workdir, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(CONFIG.format(port=port, cert=cert, key=key))
        if user:
            shutil.chown(conf, user, user)
        return ["/usr/sbin/mosquitto", "-c", conf]


def _has_user(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
