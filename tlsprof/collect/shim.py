"""Where the built shim library lives inside the installed package."""

import importlib.machinery
import os

from tlsprof.errors import TlsprofError

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tlsprof/, where setup.py builds it


def shim_path() -> str:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(_HERE, "_shim" + suffix)
        if os.path.exists(path):
            return path
    raise TlsprofError("the tlsprof shim library is not built; reinstall with `pip install .`")
