"""Self-signed certificate for the examples: CN=localhost, SAN DNS:localhost + IP:127.0.0.1.

    python3 examples/certs.py DIR      # prints "CERTFILE KEYFILE"

Made with /usr/bin/openssl (P-256 key, 10 years); left alone when both files already exist.
"""

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile

CERT_NAME = "localhost.crt"
KEY_NAME = "localhost.key"


def ensure_cert(directory):
    """Return (certfile, keyfile) in `directory`, creating them if either is missing."""
    os.makedirs(directory, exist_ok=True)
    cert = os.path.join(directory, CERT_NAME)
    key = os.path.join(directory, KEY_NAME)
    if os.path.exists(cert) and os.path.exists(key):
        return cert, key
    # A lock, so that concurrent callers (parallel tests, several servers) never mix two pairs.
    with open(os.path.join(directory, ".certs.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (os.path.exists(cert) and os.path.exists(key)):
            _make(cert, key)
    return cert, key


def _make(cert, key):
    openssl = shutil.which("openssl") or "/usr/bin/openssl"
    with tempfile.TemporaryDirectory(dir=os.path.dirname(cert)) as tmp:
        tcert, tkey = os.path.join(tmp, CERT_NAME), os.path.join(tmp, KEY_NAME)
        subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "3650",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout",
                tkey,
                "-out",
                tcert,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        os.replace(tkey, key)
        os.replace(tcert, cert)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: certs.py DIR")
    print(*ensure_cert(sys.argv[1]))
