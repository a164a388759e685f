"""A tiny plain-TCP backend for the TLS-terminating proxies of the matrix (HAProxy, stunnel):
`--http`: HTTP/1.1 with keep-alive, answers every request `200 ok`; `--echo`: echoes lines.

    python backend.py --http|--echo --ready-file PATH     # listens on 127.0.0.1:0
"""

import argparse
import http.server
import os
import signal
import socketserver
import sys


class KeepAliveHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class EchoHandler(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)


class Threading(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def main():
    p = argparse.ArgumentParser()
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--http", action="store_true")
    mode.add_argument("--echo", action="store_true")
    p.add_argument("--ready-file", required=True)
    args = p.parse_args()
    server = Threading(("127.0.0.1", 0), KeepAliveHandler if args.http else EchoHandler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{server.server_address[1]}\n")
    os.replace(tmp, args.ready_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
