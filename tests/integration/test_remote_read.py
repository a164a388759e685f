"""Snapshots read out of the target's memory (tlsprof/collect/remote.py, issue 18's first layer of a
channel without a listener thread) against the channel's own SNAPSHOT of the same idle server: every
owner's counters by cause and every site's must be the same. The echo server holds real TLS
connections on 127.0.0.1 with the shim preloaded (both builds: `run`'s and the one `attach`
injects) and is stopped by pid."""

import os
import subprocess
import sys
import tempfile
import time

import pytest

from servers import clients
from tlsenv import start_echo_server
from tlsprof.collect import client, remote
from tlsprof.collect.shim import shim_path
from tlsprof.errors import ChannelError

CONNECTIONS = 24


def _owners(snap):
    return {
        o.serial: (o.kind, o.alive, o.ptr, o.state, o.fd, {c: tuple(v) for c, v in o.by_cause.items()})
        for o in snap.owners
    }


def _sites(snap):
    return {(s.file, s.line, s.scope): (s.cause, s.library, s.bytes, s.requested, s.blocks) for s in snap.sites}


def _agree(path, reader, tries=5):
    """The two reads of one moment: the idle server's counters may still move right after a
    handshake's last bytes (the client's close_notify), so a pair that differs is read again."""
    for _ in range(tries):
        channel = client.snapshot(path)
        read = reader.snapshot()
        if _owners(channel) == _owners(read) and _sites(channel) == _sites(read):
            return channel, read
        time.sleep(0.2)
    return channel, read


@pytest.mark.parametrize("preload", [True, False], ids=["run-build", "attach-build"])
def test_a_remote_read_says_what_the_channel_says(tmp_path, preload):
    so = shim_path(preload=preload)
    channel_dir = tempfile.mkdtemp(dir=str(tmp_path))
    os.chmod(channel_dir, 0o700)
    server = start_echo_server(env={"LD_PRELOAD": so, "TLSPROF_DIR": channel_dir})
    held = None
    try:
        pid = server.target_pid()
        held = clients.hold("echo", server.port, CONNECTIONS)
        reader = remote.Reader(pid, so)
        assert remote.loaded_shim(pid)[1] == so
        channel, read = _agree(os.path.join(channel_dir, f"{pid}.sock"), reader)
        assert _owners(read) == _owners(channel)
        assert _sites(read) == _sites(channel)
        connections = [o for o in read.owners if o.kind == "connection" and o.alive]
        assert len(connections) >= CONNECTIONS
        assert all(o.live_bytes > 0 and o.ctx_serial for o in connections)
        assert any(o.kind == "context" for o in read.owners)
        assert sum(o.live_bytes for o in read.owners) == sum(o.live_bytes for o in channel.owners)
        # what the reader leaves to the channel for now: the kernel's view of the sockets
        assert all(o.peer is None for o in read.owners) and read.stats["read"] == "remote"
        assert {o.serial: o.facts["io"] for o in connections} == {
            o.serial: o.facts["io"] for o in channel.owners if o.kind == "connection" and o.alive
        }
    finally:
        if held is not None:
            held.close()
        server.stop()


def test_a_process_without_the_shim_is_one_clear_error():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(ChannelError, match="has not loaded"):
            remote.Reader(sleeper.pid, shim_path(preload=True))
        with pytest.raises(ChannelError, match="has not loaded the tlsprof shim"):
            remote.Reader(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)
    with pytest.raises(ChannelError, match="cannot read /proc"):
        remote.Reader(sleeper.pid, shim_path(preload=True))


def test_both_builds_export_the_layout_record():
    for preload in (True, False):
        assert remote.symbol_offset(shim_path(preload=preload)) > 0
    with pytest.raises(ChannelError, match="does not export"):
        remote.symbol_offset(sys.executable)
