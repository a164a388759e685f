"""One place builds every socket path (tlsprof.channel_paths); the agent's twin, which runs inside
the target without tlsprof, builds the same name."""

import importlib.util
import os

from tlsprof import agent
from tlsprof.collect import jail
from tlsprof.collect.channel_paths import agent_socket_path, socket_path, socket_pid


def test_shim_and_agent_sockets_are_named_by_pid():
    assert socket_path("/tmp/tlsprof-1000", 42) == "/tmp/tlsprof-1000/42.sock"
    assert agent_socket_path("/tmp/tlsprof-1000", 42) == "/tmp/tlsprof-1000/42.py.sock"


def test_socket_names_read_back_to_their_pid():
    assert socket_pid(socket_path("/d", 42)) == (42, "shim")
    assert socket_pid(agent_socket_path("/d", 42)) == (42, "agent")
    for other in ("/d/x.sock", "/d/42.sockx", "/d/42", "/d/.link-42.sock", "/d/42.tmp.sock", "/d/-1.sock"):
        assert socket_pid(other) is None, other


def test_the_agents_own_path_is_the_same():
    spec = importlib.util.spec_from_file_location("_tlsprof_agent_path_check", agent.AGENT_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defining only: the agent starts when start() is called
    assert module.socket_path("/tmp/tlsprof-1000", 42) == agent_socket_path("/tmp/tlsprof-1000", 42)
    assert module.socket_path("/d") == agent_socket_path("/d", os.getpid())


def test_a_jailed_process_names_our_paths_from_its_own_root():
    assert jail.inside("/var/lib/haproxy", "/var/lib/haproxy/tlsprof-103") == "/tlsprof-103"
    assert jail.inside("/var/lib/haproxy", "/var/lib/haproxy") == "/"
    assert jail.inside(None, "/tmp/tlsprof-103") == "/tmp/tlsprof-103"
    # a deep jail is reached through the process's root; the process names the same directory
    assert jail.target_view(4242, "/proc/4242/root/tlsprof-103") == "/tlsprof-103"
    assert jail.root_of(os.getpid()) is None  # not chrooted: our own paths
    assert jail.channel_dir(os.getpid(), 1000, create=False) == "/tmp/tlsprof-1000"
