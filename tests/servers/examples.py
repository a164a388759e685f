"""The repo's own example TLS servers (examples/), the seed's protocol (`welcome!` then echo):
Python asyncio (ssl.SSLObject over MemoryBIO), Python threads (ssl.SSLSocket, a thread per
connection), Twisted on Debian's pyOpenSSL (run by /usr/bin/python3: the system libssl), node's
`tls` (node links OpenSSL statically)."""

import os
import subprocess
import sys

from servers.base import Server, ServerUnavailable, copy_cert

import tlsenv

ECHO_SERVER = tlsenv.ECHO_SERVER
TWISTED_SERVER = os.path.join(tlsenv.EXAMPLES_DIR, "twisted_echo_server.py")
NODE_SERVER = os.path.join(tlsenv.EXAMPLES_DIR, "node_echo_server.js")


class _Example(Server):
    client = "echo"

    def certdir(self):
        copy = os.path.join(self.workdir, "certs")
        os.makedirs(copy, exist_ok=True)
        cert, key = copy_cert(copy, self.certfile, self.keyfile)
        os.replace(cert, os.path.join(copy, "localhost.crt"))  # the names examples/certs.py expects
        os.replace(key, os.path.join(copy, "localhost.key"))
        return copy


class AsyncioEcho(_Example):
    name = "python-asyncio"
    package = "python3"

    def command(self, port):
        return [sys.executable, ECHO_SERVER, "--host", "127.0.0.1", "--port", str(port), "--certdir", self.certdir()]


class ThreadedEcho(AsyncioEcho):
    name = "python-threads"

    def command(self, port):
        return [*super().command(port), "--threaded"]


class TwistedEcho(_Example):
    name = "twisted"
    package = "python3-twisted python3-openssl"
    python = "/usr/bin/python3"

    def check_available(self):
        probe = subprocess.run([self.python, "-c", "import twisted, OpenSSL"], capture_output=True)
        if probe.returncode != 0:
            raise ServerUnavailable("needs Debian's python3-twisted and python3-openssl")

    def command(self, port):
        return [self.python, TWISTED_SERVER, "--certdir", self.certdir(), "--port", str(port)]


class NodeEcho(_Example):
    name = "node"
    package = "nodejs"
    programs = ("node",)

    def command(self, port):
        certdir = self.certdir()
        return [
            "node",
            NODE_SERVER,
            os.path.join(certdir, "localhost.crt"),
            os.path.join(certdir, "localhost.key"),
            str(port),
        ]
