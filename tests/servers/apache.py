"""Apache httpd (Debian's apache2) with mod_ssl and the event MPM, in the foreground
(-DFOREGROUND) with a private config: own ServerRoot, PidFile, ErrorLog, mutex and runtime dirs.
The parent builds the SSL_CTX; 2 child processes (25 threads each, plus the event listener that
parks idle keep-alive connections) hold the connections."""

import os
import signal

from servers.base import Server, copy_cert

MODULES = "/usr/lib/apache2/modules"
CONFIG = """\
ServerRoot {dir}
ServerName localhost
DefaultRuntimeDir {dir}/run
PidFile {dir}/apache2.pid
Mutex file:{dir}/run default
ErrorLog {dir}/error.log
LogLevel warn
{user}
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule dir_module {modules}/mod_dir.so
LoadModule socache_shmcb_module {modules}/mod_socache_shmcb.so
LoadModule ssl_module {modules}/mod_ssl.so
StartServers 2
ServerLimit 4
ThreadsPerChild 25
MaxRequestWorkers 100
MinSpareThreads 25
MaxSpareThreads 100
AsyncRequestWorkerFactor 8
KeepAlive On
KeepAliveTimeout 600
MaxKeepAliveRequests 0
Timeout 600
Listen 127.0.0.1:{port} https
SSLSessionCache shmcb:{dir}/run/ssl_scache(512000)
<VirtualHost 127.0.0.1:{port}>
    SSLEngine on
    SSLCertificateFile {cert}
    SSLCertificateKeyFile {key}
    DocumentRoot {dir}/htdocs
    DirectoryIndex index.html
    <Directory {dir}/htdocs>
        Require all granted
    </Directory>
</VirtualHost>
"""


class Apache(Server):
    name = "apache"
    package = "apache2"
    programs = ("/usr/sbin/apache2",)
    client = "https"
    stop_signal = signal.SIGTERM  # stop now, children included
    children = 2

    def command(self, port):
        cert, key = copy_cert(self.workdir, self.certfile, self.keyfile, self.run_as)
        for sub in ("run", "htdocs"):
            os.makedirs(os.path.join(self.workdir, sub), exist_ok=True)
        with open(os.path.join(self.workdir, "htdocs", "index.html"), "w") as f:
            f.write("ok\n")
        os.chmod(self.workdir, 0o755)  # the children (www-data) serve htdocs; the key stays 0600 root
        user = "" if self.run_as else "User www-data\nGroup www-data"
        conf = os.path.join(self.workdir, "apache2.conf")
        with open(conf, "w") as f:
            f.write(CONFIG.format(dir=self.workdir, port=port, cert=cert, key=key, modules=MODULES, user=user))
        return ["/usr/sbin/apache2", "-d", self.workdir, "-f", conf, "-DFOREGROUND"]
