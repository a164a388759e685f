"""Under `tlsprof run`: a thread makes and frees bursts of connections (SSL_new's survivors counted at
once, then SSL_free's frees) with pauses between, while the main thread asks its own shim for
snapshots. Prints one JSON line: how many snapshots were taken and, of those, how many had owner
totals and site sums further apart than the report check allows (max(2 %, 64 KiB))."""

import json
import os
import ssl
import sys
import threading
import time

from tlsprof.collect import client

snapshots, burst_size = int(sys.argv[1]), int(sys.argv[2])
sock_path = os.path.join(os.environ["TLSPROF_DIR"], f"{os.getpid()}.sock")
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
stop = threading.Event()
bursts = 0


def churn():
    global bursts
    while not stop.is_set():
        objs = [ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO()) for _ in range(burst_size)]
        del objs
        bursts += 1
        time.sleep(0.008)


worker = threading.Thread(target=churn)
worker.start()
skewed, worst = 0, 0
try:
    for _ in range(snapshots):
        snap = client.snapshot(sock_path)
        owners = snap.live_bytes
        sites = sum(s.bytes for s in snap.sites)
        gap = abs(owners - sites)
        worst = max(worst, gap)
        if gap > max(0.02 * owners, 64 * 1024):
            skewed += 1
        time.sleep(0.001)
finally:
    stop.set()
    worker.join(30)
print(json.dumps({"snapshots": snapshots, "bursts": bursts, "skewed": skewed, "worst": worst}), flush=True)
