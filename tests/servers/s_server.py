"""`openssl s_server -rev`: OpenSSL's own test server. It serves one client at a time (the next
`accept` happens when the current client leaves), so the matrix holds ONE connection on it."""

from servers.base import Server, copy_cert


class OpenSSLSServer(Server):
    name = "openssl-s_server"
    package = "openssl"
    programs = ("openssl",)
    client = "tls"
    connections = 1

    def command(self, port):
        cert, key = copy_cert(self.workdir, self.certfile, self.keyfile)
        return ["openssl", "s_server", "-rev", "-quiet", "-accept", f"127.0.0.1:{port}", "-cert", cert, "-key", key]
