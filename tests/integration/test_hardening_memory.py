"""Hardening: the shim's own memory is bounded; past its cap it degrades, the target never fails.

TLSPROF_MAX_BLOCKS=N (read by hooks/table_wide.c) caps the live blocks the shim tracks: past it an
insert fails exactly like a table that cannot grow, and the hooks count the block as untracked
(`stat untracked_bytes/untracked_blocks`) while OpenSSL's allocation itself succeeds.
"""

from shim_harness.hardening_util import Tracked, echo_once
from tlsenv import start_clients

CAP = 3000  # below one CA store (~11k blocks): the cap is hit while the context is made


def test_capped_table_counts_untracked_bytes_and_target_keeps_working(cert_dir):
    with Tracked(certdir=cert_dir, env_extra={"TLSPROF_MAX_BLOCKS": str(CAP)}) as t:
        first = t.snapshot()
        assert first.stats["blocks"] <= CAP
        assert first.stats["untracked_blocks"] > 0 and first.stats["untracked_bytes"] > 0
        clients = start_clients(t.server.port, 30, interval=0.2)
        try:
            for _ in range(10):
                assert echo_once(t.server.port)
            second = t.snapshot()
        finally:
            clients.stop()
        assert t.server.alive()
        assert second.stats["blocks"] <= CAP
        # the shim's table stayed bounded while untracked bytes kept growing
        assert second.stats["untracked_bytes"] > first.stats["untracked_bytes"]
        # what is tracked is still consistent: every tracked block is in one owner
        assert sum(o.live_blocks for o in second.owners) == second.stats["blocks"]


def test_uncapped_tracks_everything(cert_dir):
    with Tracked(certdir=cert_dir) as t:
        assert echo_once(t.server.port)
        snap = t.snapshot()
        assert snap.stats["untracked_blocks"] == 0
        assert snap.stats["blocks"] > CAP
