"""tlsprof: starts the in-target Python agent, then chains to the sitecustomize this one shadows.

Put on PYTHONPATH by `tlsprof run` (tlsprof/collect/launch.py). It must never break the target: every
failure is swallowed and the agent simply stays off. Stdlib only (the target's Python may not have
tlsprof installed): the agent module is loaded from its file next to this directory.
"""


def _tlsprof_start():
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    directory = os.environ.get("TLSPROF_DIR")
    if not directory or os.environ.get("TLSPROF_AGENT", "1") == "0":
        return
    try:
        import importlib.util

        path = os.path.join(os.path.dirname(here), "agent.py")
        mod = sys.modules.get("_tlsprof_agent")
        if mod is None:
            spec = importlib.util.spec_from_file_location("_tlsprof_agent", path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules["_tlsprof_agent"] = mod
            spec.loader.exec_module(mod)
        directory = mod.own_channel_dir(directory)
        if directory is None:
            return
        mod.start(directory, tracemalloc_ext=os.environ.get("TLSPROF_TRACEMALLOC") == "1", capture=True)
    except BaseException:  # noqa: BLE001 - the target comes first
        pass


def _tlsprof_chain():
    """Run the sitecustomize that would have run without us (e.g. Debian's /etc/python3.x one)."""
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        import importlib.machinery
        import importlib.util

        others = [p for p in sys.path if os.path.abspath(p or ".") != here]
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
        if spec is None or not spec.origin or os.path.dirname(os.path.abspath(spec.origin)) == here:
            return
        mod = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = mod
        spec.loader.exec_module(mod)
    except Exception:
        import traceback

        sys.stderr.write("Error in sitecustomize (chained by tlsprof):\n")
        traceback.print_exc()


_tlsprof_start()
_tlsprof_chain()
