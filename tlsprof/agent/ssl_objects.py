"""Reading Python ssl objects: the SSL* / SSL_CTX* inside _ssl._SSLSocket and _ssl._SSLContext
(CPython's Modules/_ssl.c layout, checked on every read) and a socket's peer. Stdlib only; loaded
by path beside agent.py."""

import ctypes

_PTR = ctypes.c_void_p


def _read_ptr(addr):
    return _PTR.from_address(addr).value or 0


def _sslobj_ptrs(c_obj):
    """(SSL*, PySSLContext* as id) of an _ssl._SSLSocket."""
    base = id(c_obj)
    return _read_ptr(base + 24), _read_ptr(base + 32)


def _checked_ptrs(c_obj):
    """(SSL* address, its context object) read from an _ssl._SSLSocket, or (0, None) when the layout
    does not check out: the context pointer read at the assumed offset must be that object's id."""
    ssl_ptr, ctx_id = _sslobj_ptrs(c_obj)
    try:
        ctx_obj = c_obj.context
    except Exception:
        return 0, None
    if ctx_obj is None or ctx_id != id(ctx_obj) or not ssl_ptr:
        return 0, None
    return ssl_ptr, ctx_obj


def _ctx_ptr(ctx):
    return _read_ptr(id(ctx) + 16)


def _peer(sock):
    try:
        p = sock.getpeername()
    except Exception:
        return None
    if isinstance(p, tuple) and len(p) >= 2:
        host, port = p[0], p[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(p) if p else None
