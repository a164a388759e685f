"""Where the built shim libraries live inside the installed package (setup.py builds two)."""

import importlib.machinery
import os

from tlsprof.errors import TlsprofError

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tlsprof/, where setup.py builds it


def _built(name):
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(_HERE, name + suffix)
        if os.path.exists(path):
            return path
    return None


def shim_path(preload: bool = False) -> str:
    """The shim. `preload`: the build for LD_PRELOAD (`run`), whose thread-local state is reached
    without a call per access; it may not load with dlopen into a running process, so `attach`
    takes the default one (which also loads preloaded, only slower)."""
    path = (_built("_shim_preload") if preload else None) or _built("_shim")
    if path is None:
        raise TlsprofError("the tlsprof shim library is not built; reinstall with `pip install .`")
    return path
