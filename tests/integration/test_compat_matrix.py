"""The compatibility matrix (docs/compatibility.md), kept current: every real third-party server
of the matrix (Debian packages, 127.0.0.1, configured in a temp dir, stopped by pid) runs under
`tlsprof run -o R.json` with N idle TLS connections (200; PostgreSQL 50; `openssl s_server` 1, it
serves one client at a time), and tlsprof's connection count must be within 5 % of N.

The count is checked against two things measured without tlsprof: the clients' own count (each
connection finished a real exchange) and the kernel's (established sockets on the server port
held by the server's processes). The bytes per connection get a sanity check against the memory
growth of the server's processes in the same run (`servers.hold_measured`).

A third test checks where the connections are: in the process the report is about, or, for a tree,
in the per-process sections, pid by pid as the kernel says.

Known gaps are marked where they are. node links OpenSSL statically: its connections are found by
the heap walk at tlsprof's last look (docs/openssl-copies.md). stunnel installs its own OpenSSL
allocator: its bytes are the sizes OpenSSL asked for (`tracker.byte_measure`: requested).
"""

import pytest

from reportcheck import check_report
from servers import SERVERS, hold_measured, start
from servers.base import ServerUnavailable

KiB = 1024
TOLERANCE = 0.05

# xfail marks by server: (reason, strict). Non-strict where other work will make the test pass.
COUNT_GAPS = {}
PROCESS_GAPS = {}
BYTES_GAPS = dict(COUNT_GAPS)


def _mark_known_gap(request, gaps, name):
    if name in gaps:
        reason, strict = gaps[name]
        request.applymarker(pytest.mark.xfail(reason=reason, strict=strict))


@pytest.fixture(scope="module", params=sorted(SERVERS))
def profiled(request, cert_pair):
    """One `tlsprof run` of a server with its N idle connections: (name, report, ground truth).
    tlsprof is stopped (its last look, then the server's stop signal) while they are still open."""
    name = request.param
    cls = SERVERS[name]
    try:
        with start(name, *cert_pair, profile=True) as running:
            with hold_measured(running, cls.connections) as truth:
                running.stop()
            report = running.report()
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    return name, check_report(report), truth


def test_connection_count_within_5_percent(request, profiled):
    name, report, truth = profiled
    _mark_known_gap(request, COUNT_GAPS, name)
    n = SERVERS[name].connections
    assert truth["held"] == n and truth["held_by_kernel"] == n, truth  # the ground truth itself
    # connections the Python agent found unreachable are closed ones waiting for the cyclic gc
    # (Twisted frees its warm-up connections' SSL objects only then): alive in OpenSSL, and named
    # by the python-leak finding, but not open any more
    garbage = sum(
        1
        for c in report["connections"]
        if isinstance(c.get("python"), dict) and c["python"].get("leak") == "unreachable"
    )
    seen = report["per_connection"]["connections"] - garbage
    assert abs(seen - n) <= TOLERANCE * n, (
        f"{name}: tlsprof saw {seen} connections ({garbage} more awaiting gc), {n} were open "
        f"(held by pids {sorted(truth['holders'])}; report about pid {report['target']['pid']})"
    )
    assert report["partial"] is False


def test_connections_are_where_the_kernel_says(request, profiled):
    """A single-process server: the report is about the process that holds the sockets. A tree
    (nginx, Apache, PostgreSQL): the report's per-process sections (`processes[]`: `pid`,
    `connections`, as issue 13 item 1 asks) give each process the connections the kernel says it
    holds, and the master is listed with none (PostgreSQL: 50 backends with one each)."""
    name, report, truth = profiled
    _mark_known_gap(request, PROCESS_GAPS, name)
    holders = truth["holders"]
    if len(truth["pids"]) == 1:
        assert list(holders) == [report["target"]["pid"]]
        return
    sections = {p["pid"]: p.get("connections") for p in report.get("processes") or []}
    for pid, held in holders.items():
        seen = sections.get(pid)
        assert seen is not None and abs(seen - held) <= max(1, TOLERANCE * held), (
            f"{name}: pid {pid} holds {held} connections (kernel), the report says {seen}"
        )
    assert sections.get(truth["root_pid"]) == 0, f"{name}: the master must be listed without connections"


def test_bytes_per_connection_are_sane(request, profiled):
    """Every established connection holds its SSL object and cipher contexts: at least 4 KiB of
    OpenSSL heap of its own. And tlsprof must not invent memory: its own bytes per connection stay
    under twice the private memory (USS) each connection added to the server's processes, plus
    16 KiB (allocated record buffers whose pages were never touched are heap, not yet RSS). That
    ceiling needs many connections: one (s_server) reuses the warm-up connection's freed heap and
    grows by a few pages at most."""
    name, report, truth = profiled
    _mark_known_gap(request, BYTES_GAPS, name)
    per = report["per_connection"]
    assert per["connections"] > 0
    assert per["own_bytes"] >= 4 * KiB, f"{name}: {per['own_bytes']:.0f} B per connection"
    assert per["by_cause"].get("cipher_state", 0) > 0
    if truth["held"] < 20 or truth["uss_per_conn"] <= 0:
        # one connection (s_server) reuses freed heap; and a server that handed pages back while the
        # clients connected (seen with Twisted under load) gives no growth to hold the bytes against
        return
    ceiling = 2 * max(truth["uss_per_conn"], 0) + 16 * KiB
    assert per["own_bytes"] <= ceiling, (
        f"{name}: tlsprof {per['own_bytes'] / KiB:.1f} KiB own per connection, the server's processes "
        f"grew {truth['uss_per_conn'] / KiB:.1f} KiB USS per connection"
    )


# Servers whose `other` share is not yet under the goal (issue 16): measured, named, marked.
OTHER_GAPS = {name: gap for name, gap in COUNT_GAPS.items()}


def test_other_is_at_most_a_tenth_of_a_connection(profiled, request):
    """Causes that name things (issue 16): `other` is at most 10 % of the bytes per connection on
    every server of the matrix, the SSL object and the context named instead."""
    name, report, _truth = profiled
    _mark_known_gap(request, OTHER_GAPS, name)
    per = report["per_connection"]
    assert per["connections"] > 0
    other = per["by_cause"].get("other", 0)
    assert other <= 0.10 * per["bytes"], (
        f"{name}: other {other / KiB:.1f} of {per['bytes'] / KiB:.1f} KiB per connection: {per['by_cause']}"
    )
