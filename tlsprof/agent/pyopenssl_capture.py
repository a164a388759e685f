"""Creation capture for pyOpenSSL (under `run`): the line that made each `OpenSSL.SSL.Connection`
and `Context`, as the ssl capture records it for `ssl`'s objects.

pyOpenSSL is never imported here (that would change the target's import order and load
cryptography's OpenSSL early): a finder on `sys.meta_path` waits for the target's own import of
`OpenSSL.SSL` and wraps the two `__init__` methods after the module has run; if it is imported
already (an attach), they are wrapped at once. `uninstall()` puts everything back.
"""

import sys

MODULE = "OpenSSL.SSL"
CLASSES = ("Connection", "Context")


class _PatchingLoader:
    """The loader that found OpenSSL.SSL, then `patch(module)` once the module body has run."""

    def __init__(self, loader, patch):
        self.loader, self.patch = loader, patch

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        self.patch(module)

    def __getattr__(self, name):  # get_source, get_data, is_package...: the real loader's
        return getattr(self.loader, name)


class _AfterImport:
    """A meta-path finder that finds nothing itself: it lets the other finders find OpenSSL.SSL
    and hands the module to `patch` right after its body has run."""

    def __init__(self, patch):
        self.patch = patch

    def find_spec(self, name, path=None, target=None):
        if name != MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is None:
                continue
            if hasattr(spec.loader, "exec_module"):
                spec.loader = _PatchingLoader(spec.loader, self.patch)
            return spec
        return None


def install(state: dict, remember) -> None:
    """Record `remember(obj)` for every Connection/Context made from now on. Idempotent."""
    if state.get("pyopenssl_finder") or state.get("pyopenssl_patched"):
        return

    def patch(module):
        if state.get("pyopenssl_patched"):
            return
        patched = []
        for name in CLASSES:
            klass = getattr(module, name, None)
            original = klass.__dict__.get("__init__") if isinstance(klass, type) else None
            if original is None:
                continue

            def __init__(self, *args, _original=original, **kwargs):
                _original(self, *args, **kwargs)
                remember(self)

            __init__.__wrapped__ = original
            klass.__init__ = __init__
            patched.append((klass, original))
        state["pyopenssl_patched"] = patched

    module = sys.modules.get(MODULE)
    if module is not None:
        patch(module)
        return
    finder = _AfterImport(patch)
    sys.meta_path.insert(0, finder)
    state["pyopenssl_finder"] = finder


def uninstall(state: dict) -> None:
    finder = state.pop("pyopenssl_finder", None)
    if finder is not None and finder in sys.meta_path:
        sys.meta_path.remove(finder)
    for klass, original in state.pop("pyopenssl_patched", None) or []:
        klass.__init__ = original
