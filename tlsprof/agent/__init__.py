"""The in-target Python agent (see agent.py) and how a launcher or injector starts it.

`tlsprof run` puts `site_dir()` on the target's PYTHONPATH: its sitecustomize starts the agent
before the target's own code. Attach calls `start(channel_dir)` inside the target (or runs
`bootstrap_source(channel_dir)` with PyRun_SimpleString when tlsprof is not importable there).
"""

import os

_HERE = os.path.dirname(os.path.abspath(__file__))
AGENT_FILE = os.path.join(_HERE, "agent.py")


def site_dir() -> str:
    """The directory holding tlsprof's sitecustomize.py (prepend it to PYTHONPATH)."""
    return os.path.join(_HERE, "site")


def _load():
    import importlib.util
    import sys

    mod = sys.modules.get("_tlsprof_agent")
    if mod is None:
        spec = importlib.util.spec_from_file_location("_tlsprof_agent", AGENT_FILE)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["_tlsprof_agent"] = mod
        spec.loader.exec_module(mod)
    return mod


def start(channel_dir: str, tracemalloc_ext: bool = False, capture: bool = True):
    """Start the agent in this process: serves `<channel_dir>/<pid>.py.sock`. Idempotent; returns
    None, or a one-line reason it could not start. After attach, `capture` only sees objects made
    from now on; older ones are reported "unknown (created before attach)" unless tracemalloc was on."""
    return _load().start(channel_dir, tracemalloc_ext=tracemalloc_ext, capture=capture)


def bootstrap_source(channel_dir: str) -> str:
    """Python source that starts the agent from its file path, for an injector's PyRun_SimpleString
    (runs with the GIL; swallows every error)."""
    return (
        "def _tlsprof_boot():\n"
        "    try:\n"
        "        import importlib.util, sys\n"
        "        m = sys.modules.get('_tlsprof_agent')\n"
        "        if m is None:\n"
        f"            s = importlib.util.spec_from_file_location('_tlsprof_agent', {AGENT_FILE!r})\n"
        "            m = importlib.util.module_from_spec(s)\n"
        "            sys.modules['_tlsprof_agent'] = m\n"
        "            s.loader.exec_module(m)\n"
        f"        m.start({channel_dir!r}, capture=True)\n"
        "    except BaseException:\n"
        "        pass\n"
        "_tlsprof_boot()\n"
        "del _tlsprof_boot\n"
    )
