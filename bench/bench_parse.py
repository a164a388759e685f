"""How fast the front end reads a shim snapshot of N live connections (default 10,000).

    python bench/bench_parse.py [-n 10000] [--repeat 9] [--format 2] [--text SNAPSHOT_FILE]

Builds a snapshot text shaped like the one `bench_scale.py` gets from an echo server with N idle TLS
connections (one process owner, one context, N connections with six causes each and an F line each,
300 call sites; the connections' `causes=` values take 20 distinct forms, as a real server's 2,000
idle connections did: 19) and times `tlsprof.model.wire.parse_snapshot` on it, then `build_report`.
`--text FILE` parses a snapshot captured from a real shim instead (the SNAPSHOT answer, format 2).
`--format 1` writes the same content as the older positional text (before docs/snapshot-format.md):
run it with PYTHONPATH pointing at a checkout of that era to compare the two parsers.
No server, no shim: the numbers are the parser's alone.
"""

import argparse
import statistics
import time

CAUSES = (
    "ca_store own_certificate peer_certificate record_buffers compression handshake session "
    "cipher_state bio connection context thread_state library other"
).split()
SCOPES = (
    "none ctx_new ctx ca_store own_cert ssl_new handshake io shutdown ssl_ctrl ssl_free static library thread"
).split()
CONN_CAUSES = (
    (3, 34000, 33000, 4),
    (5, 2100, 1900, 31),
    (6, 1500, 1300, 12),
    (7, 2400, 2200, 9),
    (8, 640, 600, 8),
    (9, 9800, 9100, 41),
)
STATS = (
    ("untracked_bytes", 0),
    ("untracked_blocks", 0),
    ("io_calls_of_dead", 0),
    ("tracker_bytes", 9000144),
    ("blocks", 617227),
    ("slots_patched", 104),
    ("slots_foreign", 0),
    ("byte_measure", 0),
    ("malloc_in_use", 399673600),
    ("malloc_mmapped", 0),
    ("malloc_free", 709568),
)


def text_v1(n):
    out = [
        "tlsprof-snapshot 1",
        "pid 4242",
        "mono_ns 10659548779741",
        "openssl OpenSSL 3.0.19 27 Jan 2026",
        "vocab causes " + " ".join(CAUSES),
        "vocab scopes " + " ".join(SCOPES),
    ]
    out += [f"stat {k} {v}" for k, v in STATS]
    out.append("O 0 0 0 0 0 0 0 1 0 0 0 0 - 11:8272:7840:39 12:340544:273617:5798 13:416:368:4")
    out.append("O 1 1 1 56188c5d8b20 0 0 -1 1 0 38632630 10 1 - 0:846544:694469:11211 10:12416:8396:175")
    for i in range(n):
        causes = " ".join(f"{c}:{b + (i % 20) * 16 * (c == 9)}:{r}:{k}" for c, b, r, k in CONN_CAUSES)
        out.append(
            f"O {i + 2} {i + 2} 2 {0x7F0000001000 + i * 4096:x} 1 1 {i + 10} 1 0 {1000000 + i} 10 1 "
            f"127.0.0.1:{40000 + i % 20000} {causes}"
        )
    for i in range(n):
        out.append(f"F {i + 2} io={i % 7} fd_open=1 fd_ino={500000 + i} fd_sock=1")
    for i in range(300):
        out.append(f"S {i} {i % 14} {i % 14} {i + 10} 14352 12544 224 libcrypto.so.3 ../crypto/f{i}.c")
    out.append("END")
    return "\n".join(out) + "\n"


def text_v2(n):
    out = [
        "tlsprof-snapshot 2",
        "header pid=4242 mono_ns=10659548779741 openssl=OpenSSL%203.0.19%2027%20Jan%202026",
        "vocab causes="
        + ",".join(CAUSES)
        + " scopes="
        + ",".join(SCOPES)
        + " kinds=process,context,connection states=handshake,established,shutdown"
        " measures=glibc_footprint,usable_size,requested",
    ]
    out += [f"stat {k}={v}" for k, v in STATS]
    out.append(
        "O idx=0 serial=0 kind=0 ptr=0 ctx=0 state=0 fd=0 alive=1 pre_attach=0 age_ns=0 mode=0 "
        "mode_known=0 peer=- causes=11:8272:7840:39,12:340544:273617:5798,13:416:368:4"
    )
    out.append(
        "O idx=1 serial=1 kind=1 ptr=56188c5d8b20 ctx=0 state=0 fd=-1 alive=1 pre_attach=0 age_ns=38632630 "
        "mode=10 mode_known=1 peer=- causes=0:846544:694469:11211,10:12416:8396:175"
    )
    for i in range(n):
        causes = ",".join(f"{c}:{b + (i % 20) * 16 * (c == 9)}:{r}:{k}" for c, b, r, k in CONN_CAUSES)
        out.append(
            f"O idx={i + 2} serial={i + 2} kind=2 ptr={0x7F0000001000 + i * 4096:x} ctx=1 state=1 "
            f"fd={i + 10} alive=1 pre_attach=0 age_ns={1000000 + i} mode=10 mode_known=1 "
            f"peer=127.0.0.1:{40000 + i % 20000} causes={causes}"
        )
    for i in range(n):
        out.append(f"F idx={i + 2} io={i % 7} fd_open=1 fd_ino={500000 + i} fd_sock=1")
    for i in range(300):
        out.append(
            f"S id={i} cause={i % 14} scope={i % 14} line={i + 10} bytes=14352 requested=12544 "
            f"blocks=224 library=libcrypto.so.3 file=../crypto/f{i}.c"
        )
    out.append("END")
    return "\n".join(out) + "\n"


def v2_to_v1(text):
    """A format-2 snapshot -> the same content as format 1 (the positional text older parsers read)."""
    from urllib.parse import unquote

    out = []
    for line in text.split("\n"):
        tag, _, rest = line.partition(" ")
        kv = dict(item.split("=", 1) for item in rest.split(" ") if "=" in item)
        if tag == "tlsprof-snapshot":
            out.append("tlsprof-snapshot 1")
        elif tag == "header":
            out += [f"pid {kv['pid']}", f"mono_ns {kv['mono_ns']}", f"openssl {unquote(kv['openssl'])}"]
        elif tag == "vocab":
            out += [f"vocab causes {kv['causes'].replace(',', ' ')}", f"vocab scopes {kv['scopes'].replace(',', ' ')}"]
        elif tag == "stat":
            out += [f"stat {k} {v}" for k, v in kv.items()]
        elif tag == "O":
            keys = ("idx serial kind ptr ctx state fd alive pre_attach age_ns mode mode_known peer").split()
            causes = kv["causes"].replace(",", " ")
            out.append("O " + " ".join(kv[k] for k in keys) + (" " + causes if causes else ""))
        elif tag == "F":
            out.append(f"F {kv.pop('idx')} " + " ".join(f"{k}={v}" for k, v in kv.items()))
        elif tag == "S":
            keys = "id cause scope line bytes requested blocks library".split()
            out.append("S " + " ".join(unquote(kv[k]) for k in keys) + " " + unquote(kv["file"]))
        elif tag == "C":
            out.append(f"C {kv['kind']} {kv['tracking']} {unquote(kv['path'])}")
        else:
            out.append(line)
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--format", type=int, choices=(1, 2), default=2)
    ap.add_argument("--text", help="a captured SNAPSHOT answer (format 2) to parse instead")
    args = ap.parse_args()
    from tlsprof.collect.client import parse_snapshot
    from tlsprof.analysis.report import build_report

    if args.text:
        with open(args.text) as f:
            text = f.read()
        if args.format == 1:
            text = v2_to_v1(text)
    else:
        text = (text_v1 if args.format == 1 else text_v2)(args.n)
    times = []
    snap = None
    for _ in range(args.repeat):
        snap = None  # the previous result is freed outside the timed part
        t0 = time.perf_counter()
        snap = parse_snapshot(text)
        times.append(time.perf_counter() - t0)
    args.n = len(snap.connections)
    t0 = time.perf_counter()
    build_report(snap, command=["bench"], mode="run")
    build_s = time.perf_counter() - t0
    print(
        f"format {args.format}: {args.n} connections, {len(text) / 1e6:.2f} MB of text: parse median "
        f"{statistics.median(times) * 1000:.1f} ms (min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}, "
        f"{args.repeat} runs); build_report {build_s * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
