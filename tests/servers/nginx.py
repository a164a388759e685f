"""nginx (Debian's nginx-light): a master and 2 workers, `daemon off`, TLS on 127.0.0.1 with
keep-alive. The master builds the SSL_CTX; the workers (forked) hold every connection. `reuseport`
gives each worker its own listening socket, so the kernel spreads connections over both."""

import os
import signal

from servers.base import Server, copy_cert

CONFIG = """\
daemon off;
master_process on;
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile 4096;
events {{ worker_connections 2048; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_timeout 600s;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port} ssl reuseport;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


class Nginx(Server):
    name = "nginx"
    package = "nginx-light"
    programs = ("nginx",)
    client = "https"
    stop_signal = signal.SIGTERM  # fast shutdown of master and workers
    workers = 2

    def command(self, port):
        cert, key = copy_cert(self.workdir, self.certfile, self.keyfile)
        conf = os.path.join(self.workdir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(CONFIG.format(dir=self.workdir, port=port, cert=cert, key=key))
        return ["nginx", "-p", self.workdir, "-c", conf, "-e", os.path.join(self.workdir, "error.log")]
