"""The seed's Twisted service shape: a TLS echo server ("welcome!" then echo) on pyOpenSSL.

Installed from PyPI, pyOpenSSL runs on the `cryptography` wheel, which links its own OpenSSL
statically; Debian's python3-openssl uses the system libssl instead. Same program, both cases.
usage: python twisted_echo_server.py --certdir DIR [--port 0] [--ready-file F] [--ctx-per-conn]
"""

import argparse
import os
import sys

from OpenSSL import SSL
from twisted.internet import protocol, reactor, ssl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from certs import ensure_cert  # noqa: E402
from echo_server import announce  # noqa: E402


class Echo(protocol.Protocol):
    def connectionMade(self):
        self.transport.write(b"welcome!\n")

    def dataReceived(self, data):
        self.transport.write(data)


class ContextPerConnection(ssl.ContextFactory):
    """The known-bad pattern: a new context, with the system CA store, for every connection."""

    def __init__(self, cert, key):
        self.cert, self.key = cert, key

    def getContext(self):
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.use_certificate_file(self.cert)
        ctx.use_privatekey_file(self.key)
        ctx.set_default_verify_paths()
        return ctx


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--certdir", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ready-file")
    p.add_argument("--ctx-per-conn", action="store_true")
    args = p.parse_args()
    cert, key = ensure_cert(args.certdir)
    factory = protocol.Factory.forProtocol(Echo)
    contexts = ContextPerConnection(cert, key) if args.ctx_per_conn else ssl.DefaultOpenSSLContextFactory(key, cert)
    port = reactor.listenSSL(args.port, factory, contexts, interface="127.0.0.1").getHost().port
    announce("127.0.0.1", port, args.ready_file)
    reactor.run()


if __name__ == "__main__":
    main()
