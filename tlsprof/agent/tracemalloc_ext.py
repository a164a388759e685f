"""`--tracemalloc` in the target: the shim registers OpenSSL's blocks with tracemalloc (its own
domain), and ssl's blocking calls flush them with the Python stack that caused them. Stdlib only;
loaded by path beside agent.py."""

import ctypes
import os


def shim_lib():
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if line.count(" ") >= 5 else ""
                if "/_shim" in path and path.endswith(".so"):
                    return ctypes.PyDLL(path)  # PyDLL: calls keep the GIL (flush needs it)
    except OSError:
        pass
    return None


_TM_ERRORS = {
    -1: "this Python has no tracemalloc C API",
    -2: "libcrypto.so.3 not found",
    -3: "OpenSSL had already allocated memory before the agent started (too late)",
    -4: "out of memory",
}


def install(state, domain):
    """Before `import ssl`: put the shim's tracemalloc wrappers under CRYPTO_malloc; the outcome
    goes to state["tm"]."""
    lib = shim_lib()
    if lib is None:
        state["tm"] = {"enabled": False, "message": "the tlsprof shim is not loaded in this process"}
        return
    rc = lib.tlsprof_pytrace_install(ctypes.c_uint(domain))
    if rc != 0:
        state["tm"] = {"enabled": False, "message": _TM_ERRORS.get(rc, f"error {rc}")}
        return
    import tracemalloc

    if not tracemalloc.is_tracing():
        tracemalloc.start(int(os.environ.get("TLSPROF_TRACEMALLOC_FRAMES", "25")))
    flush = lib.tlsprof_pytrace_flush
    flush.restype = ctypes.c_int
    state["tm"] = {"enabled": True, "domain": domain, "lib": lib, "message": None}
    import atexit

    atexit.register(lib.tlsprof_pytrace_disable)
    import ssl
    import _ssl

    def flushing(name, base):
        orig = getattr(base, name)

        def wrapper(self, *args, **kwargs):
            try:
                return orig(self, *args, **kwargs)
            finally:
                flush()  # blocks made while _ssl released the GIL: this stack is their cause

        wrapper.__name__ = name
        wrapper.__doc__ = getattr(orig, "__doc__", None)
        return wrapper

    for name in ("set_default_verify_paths", "load_verify_locations", "load_cert_chain", "load_dh_params"):
        if hasattr(_ssl._SSLContext, name) and name not in ssl.SSLContext.__dict__:
            setattr(ssl.SSLContext, name, flushing(name, _ssl._SSLContext))
    for klass in (ssl.SSLSocket, ssl.SSLObject):
        for name in ("do_handshake", "read", "write", "unwrap", "recv", "recv_into", "send", "sendall"):
            if name in klass.__dict__:
                setattr(klass, name, flushing(name, klass))
