"""Fixed snapshot texts for the unit tests (tests/unit/): a small process with one context and two
connections, written as the shim writes them (docs/snapshot-format.md)."""

VOCAB = (
    "vocab causes=ca_store,own_certificate,peer_certificate,record_buffers,compression,handshake,"
    "session,cipher_state,bio,connection,context,thread_state,library,other "
    "scopes=none,ctx_new,ctx,ca_store,own_cert,ssl_new,handshake,io,shutdown,ssl_ctrl,ssl_free,static,"
    "library,thread kinds=process,context,connection states=handshake,established,shutdown "
    "measures=glibc_footprint,usable_size,requested"
)

PROCESS = (
    "O idx=0 serial=0 kind=0 ptr=0 ctx=0 state=0 fd=0 alive=1 pre_attach=0 age_ns=0 mode=0 "
    "mode_known=0 peer=- causes=11:8000:7000:40,12:300000:250000:5000"
)
CONTEXT = (
    "O idx=1 serial=1 kind=1 ptr=5579eca95b20 ctx=0 state=0 fd=-1 alive=1 pre_attach=0 "
    "age_ns=2000000000 mode=10 mode_known=1 peer=- causes=0:800000:700000:11000,10:12000:8000:170"
)
CONN_A = (
    "O idx=2 serial=7 kind=2 ptr=5579ecb01230 ctx=1 state=1 fd=9 alive=1 pre_attach=0 age_ns=1500000000 "
    "mode=10 mode_known=1 peer=127.0.0.1:40312 causes=3:34000:33000:4,5:900:760:12,9:8500:8400:7"
)
CONN_B = (
    "O idx=3 serial=8 kind=2 ptr=5579ecb05670 ctx=1 state=0 fd=10 alive=1 pre_attach=1 age_ns=500000000 "
    "mode=0 mode_known=0 peer=[::1]:40313 causes=3:34000:33000:4,5:900:760:12,9:8500:8400:7"
)

SNAPSHOT = "\n".join(
    [
        "tlsprof-snapshot 2",
        "header pid=4242 mono_ns=10935001529196 openssl=OpenSSL%203.0.19%2027%20Jan%202026",
        VOCAB,
        "stat untracked_bytes=16 untracked_blocks=1 io_calls_of_dead=5",
        "stat tracker_bytes=900144 blocks=16238 slots_patched=104 slots_foreign=0",
        "stat byte_measure=0",
        "stat malloc_in_use=3924544 malloc_mmapped=0 malloc_free=773568",
        PROCESS,
        CONTEXT,
        CONN_A,
        CONN_B,
        "F idx=2 io=3 fd_open=1 fd_ino=1234567 fd_sock=1",
        "F idx=3 io=0 fd_open=1 fd_ino=1234568 fd_sock=1",
        "S id=2 cause=12 scope=12 line=56 bytes=300000 requested=250000 blocks=5000 library=libcrypto.so.3 "
        "file=../crypto/threads_pthread.c",
        "S id=3 cause=11 scope=13 line=100 bytes=8000 requested=7000 blocks=40 library=libcrypto.so.3 "
        "file=../crypto/initthread.c",
        "S id=4 cause=0 scope=3 line=181 bytes=800000 requested=700000 blocks=11000 library=libcrypto.so.3 "
        "file=../crypto/x509/x509_lu.c",
        "S id=5 cause=10 scope=1 line=3214 bytes=12000 requested=8000 blocks=170 library=libssl.so.3 "
        "file=../ssl/ssl_lib.c",
        "S id=6 cause=3 scope=6 line=200 bytes=68000 requested=66000 blocks=8 library=libssl.so.3 "
        "file=../ssl/record/ssl3_buffer.c",
        "S id=7 cause=5 scope=6 line=50 bytes=1800 requested=1520 blocks=24 library=libssl.so.3 "
        "file=../ssl/statem/statem_lib.c",
        "S id=8 cause=9 scope=5 line=700 bytes=17000 requested=16800 blocks=14 library=- file=my%20dir/ssl_lib.c",
        "C kind=exported tracking=mem-functions path=/opt/app%20x/libnode.so",
        "END",
        "",
    ]
)


def replace_line(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)
