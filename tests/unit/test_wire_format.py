"""The snapshot parser fed fixed text: every line type, the escaping, unknown keys and tags skipped,
optional keys missing, and one clear error for text it cannot read (docs/snapshot-format.md)."""

import pytest

from tlsprof.model.wire import FALLBACK_VOCAB, Counters, parse_owner_sites, parse_snapshot, unescape
from tlsprof.errors import ChannelError
from wire_text import CONN_A, CONN_B, PROCESS, SNAPSHOT, replace_line


def test_header_vocab_and_stats_are_read():
    snap = parse_snapshot(SNAPSHOT)
    assert snap.pid == 4242 and snap.mono_ns == 10935001529196
    assert snap.openssl == "OpenSSL 3.0.19 27 Jan 2026"  # unescaped
    assert snap.vocab == FALLBACK_VOCAB
    assert snap.stats == {
        "untracked_bytes": 16,
        "untracked_blocks": 1,
        "io_calls_of_dead": 5,
        "tracker_bytes": 900144,
        "blocks": 16238,
        "slots_patched": 104,
        "slots_foreign": 0,
        "byte_measure": 0,
        "malloc_in_use": 3924544,
        "malloc_mmapped": 0,
        "malloc_free": 773568,
    }


def test_owner_lines_are_read_with_their_counters():
    process, ctx, a, b = parse_snapshot(SNAPSHOT).owners
    assert (process.kind, process.serial, process.ptr, process.peer) == ("process", 0, 0, None)
    assert process.by_cause == {"thread_state": Counters(8000, 7000, 40), "library": Counters(300000, 250000, 5000)}
    assert (ctx.kind, ctx.ptr, ctx.mode, ctx.mode_known, ctx.fd, ctx.age_s) == (
        "context",
        0x5579ECA95B20,
        0x10,
        True,
        -1,
        2.0,
    )
    assert (a.index, a.serial, a.kind, a.ctx_serial, a.state, a.fd, a.alive, a.pre_attach, a.peer) == (
        2,
        7,
        "connection",
        1,
        "established",
        9,
        True,
        False,
        "127.0.0.1:40312",
    )
    assert a.by_cause == {
        "record_buffers": Counters(34000, 33000, 4),
        "handshake": Counters(900, 760, 12),
        "connection": Counters(8500, 8400, 7),
    }
    assert (a.live_bytes, a.requested_bytes, a.live_blocks) == (43400, 42160, 23)
    assert (b.state, b.pre_attach, b.mode_known, b.peer) == ("handshake", True, False, "[::1]:40313")


def test_owners_with_equal_counters_do_not_share_one_dict():
    _, _, a, b = parse_snapshot(SNAPSHOT).owners
    assert a.by_cause == b.by_cause and a.by_cause is not b.by_cause


def test_fact_site_and_copy_lines_are_read():
    snap = parse_snapshot(SNAPSHOT)
    a = snap.owners[2]
    assert a.facts == {"io": 3, "fd_open": 1, "fd_ino": 1234567, "fd_sock": 1}
    assert snap.io_calls == 5 + 3 + 0
    site = {s.id: s for s in snap.sites}
    assert (
        site[2].cause,
        site[2].scope,
        site[2].line,
        site[2].bytes,
        site[2].requested,
        site[2].blocks,
        site[2].library,
        site[2].file,
    ) == ("library", "library", 56, 300000, 250000, 5000, "libcrypto.so.3", "../crypto/threads_pthread.c")
    assert site[8].library is None and site[8].file == "my dir/ssl_lib.c"
    assert snap.copies == [{"path": "/opt/app x/libnode.so", "kind": "exported", "tracking": "mem-functions"}]


def test_unknown_keys_and_tags_are_skipped():
    text = replace_line(SNAPSHOT, CONN_A, CONN_A + " quic=1 weight=%20x")
    text = replace_line(text, "F idx=2 io=3", "F idx=2 io=3 label=a%20b")
    text = replace_line(text, "S id=2 cause=12", "S id=2 future=yes cause=12")
    text = replace_line(text, "END\n", "Z something=new\nEND\n")
    text = replace_line(text, "vocab causes=", "vocab colours=red,blue causes=")
    plain, grown = parse_snapshot(SNAPSHOT), parse_snapshot(text)
    assert grown.owners[2].facts.pop("label") == "a b"
    assert grown.owners == plain.owners
    assert grown.sites == plain.sites
    assert grown.vocab["colours"] == ("red", "blue")


def test_owner_keys_in_another_order_read_the_same():
    reordered = "O " + " ".join(reversed(CONN_B[2:].split(" ")))
    assert parse_snapshot(replace_line(SNAPSHOT, CONN_B, reordered)).owners == parse_snapshot(SNAPSHOT).owners


def test_missing_optional_keys_take_their_defaults():
    text = replace_line(SNAPSHOT, CONN_B, "O idx=3 serial=8 kind=2")
    text = replace_line(text, " library=- file=my%20dir/ssl_lib.c", "")
    b = parse_snapshot(text).owners[3]
    assert (b.kind, b.ptr, b.ctx_serial, b.state, b.fd, b.alive, b.peer, b.by_cause, b.live_bytes) == (
        "connection",
        0,
        0,
        "handshake",
        -1,
        True,
        None,
        {},
        0,
    )
    site = {s.id: s for s in parse_snapshot(text).sites}[8]
    assert (site.library, site.file) == (None, "?")


def test_a_negative_counter_reads_as_zero():
    text = replace_line(
        SNAPSHOT,
        "causes=3:34000:33000:4,5:900:760:12,9:8500:8400:7\nO idx=3",
        "causes=3:34000:33000:4,5:-16:760:12,9:8500:8400:7\nO idx=3",
    )
    a = parse_snapshot(text).owners[2]
    assert a.by_cause["handshake"] == Counters(0, 760, 12) and a.live_bytes == 34000 + 8500


def test_the_stated_vocabulary_decides_the_names():
    """A newer shim's cause this front end does not know folds into `other`; kinds and states come
    from the vocab line, not from Python's copy of the enum."""
    text = replace_line(
        SNAPSHOT,
        "kinds=process,context,connection states=handshake,established,shutdown",
        "kinds=process,connection,context states=established,handshake,shutdown",
    )
    text = replace_line(text, "causes=ca_store,own_certificate,", "causes=quic_state,own_certificate,")
    text = replace_line(
        text, "causes=0:800000:700000:11000,10:12000:8000:170", "causes=0:800000:700000:11000,13:12000:8000:170"
    )
    _, ctx, a, _ = parse_snapshot(text).owners
    assert ctx.kind == "connection" and a.kind == "context" and a.state == "handshake"
    assert ctx.by_cause == {"other": Counters(812000, 708000, 11170)}


@pytest.mark.parametrize(
    "text, says",
    [
        ("", "not a snapshot"),
        ("ERR out of memory\n", "'ERR out of memory', not a snapshot"),
        ("tlsprof-snapshot 1\npid 4\nEND\n", "speaks 'tlsprof-snapshot 1'"),
        (SNAPSHOT.replace("END\n", ""), "cut short"),
        (replace_line(SNAPSHOT, "stat byte_measure=0", "stat byte_measure"), "'stat byte_measure'"),
        (replace_line(SNAPSHOT, "stat byte_measure=0", "stat byte_measure=zero"), "'stat byte_measure=zero'"),
        (replace_line(SNAPSHOT, CONN_B, "O serial=8 kind=2"), "no idx="),
        (replace_line(SNAPSHOT, CONN_B, CONN_B.replace("fd=10", "fd=ten")), "fd=ten"),
        (replace_line(SNAPSHOT, CONN_B, CONN_B.replace("9:8500:8400:7", "9:8500")), "9:8500"),
        (replace_line(SNAPSHOT, "F idx=3 io=0", "F 3 io=0"), "'F 3 io=0"),
        (replace_line(SNAPSHOT, "S id=2 cause=12", "S cause=12"), "'S cause=12"),
    ],
)
def test_unreadable_text_is_one_clear_error(text, says):
    with pytest.raises(ChannelError) as err:
        parse_snapshot(text)
    message = str(err.value)
    assert says in message and "\n" not in message


def test_fast_and_line_by_line_paths_agree():
    """One O line the fast path does not know sends every O line down the path by name."""
    slow = parse_snapshot(replace_line(SNAPSHOT, PROCESS, PROCESS + " extra=1"))
    assert len(slow.owners) == 4 and slow.owners == parse_snapshot(SNAPSHOT).owners


def test_unescape():
    assert unescape("a%20b%25c%2Cd%3De") == "a b%c,d=e"
    assert unescape("plain") == "plain"


def test_owner_answer():
    assert parse_owner_sites("tlsprof-owner 2\nW site=4 blocks=12\nW site=9 blocks=1 later=x\nEND\n") == [
        (4, 12),
        (9, 1),
    ]
    with pytest.raises(ChannelError, match="no such owner"):
        parse_owner_sites("ERR no such owner\n")
    with pytest.raises(ChannelError, match="W site=4"):
        parse_owner_sites("tlsprof-owner 2\nW site=4\nEND\n")
