"""The in-target Python agent: maps each SSL*/SSL_CTX* to its live Python object.

Runs inside the profiled Python process (started by tlsprof/agent/site/sitecustomize.py under
`tlsprof run`, or by `tlsprof.collect.agent.start(dir)` from an attach payload). Stdlib only: the target's
interpreter may not have tlsprof installed, so this file is loaded by path as `_tlsprof_agent`.

A daemon thread serves `<dir>/<pid>.py.sock` (mode 0600, inside the private channel directory):
one request line (`PING` or `SNAPSHOT`), one JSON document back, then close. For SNAPSHOT it
walks gc-tracked objects for ssl.SSLSocket / ssl.SSLObject / ssl.SSLContext (and pyOpenSSL's
Connection / Context), reads their SSL* / SSL_CTX* from the C objects, and reports per object:
type, fd, peer, creating stack, Python-side bytes, reachability and, for leak suspects, the
referrer chain. The front end (tlsprof/linkage.py) joins by exact pointer equality with the
shim's owners, so a wrong layout can only fail to join, never join wrongly.

Layout (CPython 3.11, Modules/_ssl.c): _ssl._SSLSocket = PyObject_HEAD; PyObject *Socket; SSL *ssl;
PySSLContext *ctx; ...  _ssl._SSLContext = PyObject_HEAD; SSL_CTX *ctx; ...  The agent checks the
layout on every object it reads: the `ctx` field of an _SSLSocket must be id() of its `.context`.
"""
import ctypes
import gc
import json
import os
import socket
import sys
import threading
import time
import weakref

VERSION = 1
TRACEMALLOC_DOMAIN = 0x7715  # tracemalloc domain of OpenSSL blocks under `--tracemalloc`
MAX_FRAMES = 16
REQUEST_BUDGET_S = 2.0        # Python work per request; beyond it the answer is marked partial
UNREACHABLE_MAX_OBJECTS = 400_000
CHAIN_MAX_DEPTH = 10
BYTES_MAX_DEPTH = 5
BYTES_MAX_OBJECTS = 400

_state = {"dir": None, "thread": None, "sock": None, "capture": False, "tm": None, "pid": None}
_created = weakref.WeakKeyDictionary()  # python wrapper object -> creating frames (innermost first)
_lock = threading.Lock()
_AGENT_FILE = os.path.abspath(__file__)
_PTR = ctypes.c_void_p


# --- creation capture (under `run`) -----------------------------------------------------------

def _frames(frame):
    out = []
    while frame is not None and len(out) < MAX_FRAMES:
        code = frame.f_code
        if os.path.abspath(code.co_filename) != _AGENT_FILE:
            out.append({"file": code.co_filename, "line": frame.f_lineno, "function": code.co_name})
        frame = frame.f_back
    return out


def _remember(obj):
    try:
        _created[obj] = _frames(sys._getframe(2))
    except Exception:
        pass


def _install_capture():
    import ssl
    if getattr(ssl, "_tlsprof_patched", False):
        return
    # what we replace, as it was in each class's __dict__, so that stop() can put it back
    _state["patched"] = [(ssl.SSLContext, "__new__", ssl.SSLContext.__dict__.get("__new__"))] + [
        (k, "_create", k.__dict__.get("_create")) for k in (ssl.SSLSocket, ssl.SSLObject)]
    orig_new = ssl.SSLContext.__new__

    def __new__(cls, *args, **kwargs):
        self = orig_new(cls, *args, **kwargs)
        _remember(self)
        return self
    ssl.SSLContext.__new__ = staticmethod(__new__)

    for klass in (ssl.SSLSocket, ssl.SSLObject):
        orig = klass.__dict__["_create"].__func__

        def _create(cls, *args, _orig=orig, **kwargs):
            obj = _orig(cls, *args, **kwargs)
            _remember(obj)
            return obj
        klass._create = classmethod(_create)
    ssl._tlsprof_patched = True


# --- tracemalloc-ext ----------------------------------------------------------------------------

def _shim_lib():
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if line.count(" ") >= 5 else ""
                if "/_shim" in path and path.endswith(".so"):
                    return ctypes.PyDLL(path)  # PyDLL: calls keep the GIL (flush needs it)
    except OSError:
        pass
    return None


_TM_ERRORS = {-1: "this Python has no tracemalloc C API", -2: "libcrypto.so.3 not found",
              -3: "OpenSSL had already allocated memory before the agent started (too late)",
              -4: "out of memory"}


def _install_tracemalloc_ext():
    """Before `import ssl`: put the shim's tracemalloc wrappers under CRYPTO_malloc."""
    lib = _shim_lib()
    if lib is None:
        _state["tm"] = {"enabled": False, "message": "the tlsprof shim is not loaded in this process"}
        return
    rc = lib.tlsprof_pytrace_install(ctypes.c_uint(TRACEMALLOC_DOMAIN))
    if rc != 0:
        _state["tm"] = {"enabled": False, "message": _TM_ERRORS.get(rc, f"error {rc}")}
        return
    import tracemalloc
    if not tracemalloc.is_tracing():
        tracemalloc.start(int(os.environ.get("TLSPROF_TRACEMALLOC_FRAMES", "25")))
    flush = lib.tlsprof_pytrace_flush
    flush.restype = ctypes.c_int
    _state["tm"] = {"enabled": True, "domain": TRACEMALLOC_DOMAIN, "lib": lib, "message": None}
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


# --- reading pointers -------------------------------------------------------------------------

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


# --- per-object facts -------------------------------------------------------------------------

def _type_name(obj):
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def _peer(sock):
    try:
        p = sock.getpeername()
    except Exception:
        return None
    if isinstance(p, tuple) and len(p) >= 2:
        host, port = p[0], p[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(p) if p else None


def _created_by(obj, tm_on):
    frames = _created.get(obj) if _is_weakrefable(obj) else None
    if frames:
        return frames, "run"
    if tm_on:
        import tracemalloc
        try:
            tb = tracemalloc.get_object_traceback(obj)
        except Exception:
            tb = None
        if tb:
            return [{"file": f.filename, "line": f.lineno, "function": None} for f in reversed(tb)], "tracemalloc"
    return None, "unknown (created before attach)" if not _state["capture"] else "unknown"


def _is_weakrefable(obj):
    try:
        weakref.ref(obj)
        return True
    except TypeError:
        return False


_STOP_TYPES = None


def _stop_types():
    global _STOP_TYPES
    if _STOP_TYPES is None:
        import types
        stops = [type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                 types.CodeType, types.FrameType, types.CoroutineType, types.GeneratorType, types.CellType,
                 weakref.ref, staticmethod, classmethod, property, threading.Thread]
        try:
            import ssl
            stops.append(ssl.SSLContext)
        except Exception:
            pass
        if "asyncio" in sys.modules:
            import asyncio
            stops += [asyncio.AbstractEventLoop, asyncio.Future, asyncio.AbstractServer]
        _STOP_TYPES = tuple(stops)
    return _STOP_TYPES


def _python_bytes(roots, exclude_ids):
    """sys.getsizeof over what each connection's Python objects hold (its buffers, BIOs, socket,
    transport, protocol...): a bounded walk over referents that stops at shared things (contexts,
    loops, servers, modules, types, functions, frames, coroutines) and at other connections. An
    object reached from two connections counts for neither. -> ([bytes per root], [largest object
    per root: {holder, type, bytes} or None]), the holder named as `Type.attribute` of its parent
    (asyncio's 256 KiB read buffer is `asyncio.sslproto.SSLProtocol._ssl_buffer`)."""
    stops = _stop_types()
    owner = {}      # id -> root index, or -1 when shared
    parent = {}     # id -> the object it was first reached from
    objs = {}
    frontier = []
    for i, r in enumerate(roots):
        for o in r:
            if id(o) not in owner:
                owner[id(o)] = i
                objs[id(o)] = o
                frontier.append((o, i))
    counts = [0] * len(roots)
    for _depth in range(BYTES_MAX_DEPTH):
        nxt = []
        for o, i in frontier:
            if counts[i] > BYTES_MAX_OBJECTS:
                continue
            try:
                refs = gc.get_referents(o)
            except Exception:
                continue
            for r in refs:
                rid = id(r)
                if rid in exclude_ids or isinstance(r, stops):
                    continue
                prev = owner.get(rid)
                if prev is None:
                    owner[rid] = i
                    objs[rid] = r
                    parent[rid] = o
                    counts[i] += 1
                    nxt.append((r, i))
                elif prev != i and prev != -1:
                    owner[rid] = -1
        frontier = nxt
    out = [0] * len(roots)
    largest = [None] * len(roots)  # (bytes, id)
    for rid, i in owner.items():
        if i >= 0:
            try:
                size = sys.getsizeof(objs[rid])
            except Exception:
                continue
            out[i] += size
            if largest[i] is None or size > largest[i][0]:
                largest[i] = (size, rid)
    named = []
    for big in largest:
        if big is None:
            named.append(None)
            continue
        size, rid = big
        obj = objs[rid]
        holder = parent.get(rid)
        named.append({"holder": _held_as(holder, parent.get(id(holder)), obj), "type": _type_name(obj),
                      "bytes": size})
    return out, named


def _held_as(holder, holders_parent, obj):
    """`module.Type.attribute` under which `holder` keeps `obj`. An instance's attributes live in
    its __dict__, which the walk reaches first: then the dict's own holder names the type."""
    if holder is None:
        return _type_name(obj)
    if isinstance(holder, dict):
        key = next((k for k, v in holder.items() if v is obj), None)
        owner = holders_parent
        if key is not None and owner is not None and getattr(owner, "__dict__", None) is holder:
            return f"{_type_name(owner)}.{key}"
        return f"{_type_name(holder)}[{key!r}]" if key is not None else _type_name(holder)
    try:
        attrs = vars(holder)
    except TypeError:
        attrs = {}
    key = next((k for k, v in attrs.items() if v is obj), None)
    return f"{_type_name(holder)}.{key}" if key is not None else _type_name(holder)


# --- reachability -------------------------------------------------------------------------------

def _unreachable_ids(objects):
    """ids of gc-tracked objects that no live root reaches: what the next full collection would free
    (reference-cycle garbage). The collector's own test: refcount minus references from other tracked
    objects > 0 means something outside holds it; everything reachable from those survives.
    Call it before taking any other reference to the objects (it counts every reference it does
    not know about as a root)."""
    probe = type("_probe", (), {})()
    objects.append(probe)
    ext = {}
    for o in objects:
        ext[id(o)] = sys.getrefcount(o)
    objects.pop()
    # what the list, the loop variable and the argument add (the probe's own name is one more)
    base = ext.pop(id(probe)) - 1
    del probe, o
    for rid in ext:
        ext[rid] -= base
    c_sock = getattr(sys.modules.get("_ssl"), "_SSLSocket", None)

    def referents(o):
        refs = gc.get_referents(o)
        if c_sock is not None and type(o) is c_sock:
            refs.append(o.context)  # a strong reference its tp_traverse does not report (3.11)
        return refs
    for o in objects:
        for r in referents(o):
            rid = id(r)
            if rid in ext:
                ext[rid] -= 1
    reach = set()
    stack = [o for o in objects if ext[id(o)] > 0]
    reach.update(id(o) for o in stack)
    while stack:
        o = stack.pop()
        for r in referents(o):
            rid = id(r)
            if rid in ext and rid not in reach:
                reach.add(rid)
                stack.append(r)
    return set(ext) - reach


def _describe(holder, held):
    """One link of a referrer chain: what `holder` is and under which name it holds `held`."""
    name = _type_name(holder)
    if isinstance(holder, dict):
        for k, v in holder.items():
            if v is held:
                return f"dict[{k!r}]"
        return "dict"
    if isinstance(holder, (list, tuple, set, frozenset)):
        return f"{name} of {len(holder)}"
    return name


def _chains(targets, objects, unreachable):
    """For each target: the referrer chain that keeps it alive, innermost holder first, ending at a
    module global, a running frame, or (for cycle garbage) back at the target itself."""
    rev = {}
    for o in objects:
        try:
            for r in gc.get_referents(o):
                rev.setdefault(id(r), []).append(o)
        except Exception:
            pass
    modules = {id(m.__dict__): name for name, m in list(sys.modules.items()) if getattr(m, "__dict__", None)}
    skip = {id(objects), id(rev), id(_created)}
    out = []
    for t in targets:
        parent = {id(t): None}
        queue = [t]
        found = None
        for _depth in range(CHAIN_MAX_DEPTH):
            nxt = []
            for o in queue:
                for h in rev.get(id(o), ()):
                    hid = id(h)
                    if hid in skip:
                        continue
                    if hid == id(t) or hid in modules or (unreachable and hid in unreachable and hid in parent):
                        found = (h, o)
                        break
                    if hid not in parent:
                        parent[hid] = o
                        nxt.append(h)
                if found:
                    break
            if found or not nxt:
                break
            queue = nxt
        if not found:
            out.append(None)
            continue
        holder, held = found
        chain = []
        if id(holder) in modules:
            key = next((k for k, v in holder.items() if v is held), None)
            chain.append(f"module {modules[id(holder)]} global {key!r}" if key else f"module {modules[id(holder)]}")
        else:
            chain.append(f"{_describe(holder, held)} (reference cycle: only the cyclic gc frees it)")
        o = held
        while o is not None and id(o) != id(t):
            nxt_held = parent.get(id(o))
            chain.append(_describe(o, nxt_held) if nxt_held is not None else _type_name(o))
            o = nxt_held
        chain.append(_type_name(t))
        out.append(list(reversed(chain)))
    return out


# --- the snapshot -------------------------------------------------------------------------------

_malloc_trim = []


def _give_heap_back():
    """A full snapshot's walk over every gc object builds large lists and dicts; freed, glibc keeps
    their pages (its mmap threshold rises after the first large free), and each attach would leave
    the target's RSS a step higher. Give the free pages back (glibc's malloc_trim, called without
    the GIL; absent elsewhere: nothing done)."""
    if not _malloc_trim:
        try:
            fn = ctypes.CDLL(None).malloc_trim
            fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):
            fn = None
        _malloc_trim.append(fn)
    if _malloc_trim[0] is not None:
        _malloc_trim[0](0)


def snapshot(want_leaks=True):
    started = time.monotonic()
    notes = []
    ssl = sys.modules.get("ssl")
    tm = _state.get("tm") or {}
    import tracemalloc as _tm
    tm_on = _tm.is_tracing()
    doc = {"agent": VERSION, "pid": os.getpid(), "python": sys.version.split()[0], "objects": [],
           "layout": {"ok": True, "message": None}, "notes": notes, "partial": False,
           "tracemalloc": {"tracing": tm_on, "ext": bool(tm.get("enabled")), "domain": TRACEMALLOC_DOMAIN,
                           "message": tm.get("message")}}
    if ssl is None:
        doc["stats"] = {"elapsed_ms": 0}
        return doc
    if sys.version_info[:2] != (3, 11):
        notes.append(f"pointer layout checked on every object; written for CPython 3.11, this is {doc['python']}")
    import _ssl
    c_sock_type = _ssl._SSLSocket
    proto_type = None
    if "asyncio.sslproto" in sys.modules:
        proto_type = sys.modules["asyncio.sslproto"].SSLProtocol
    ossl = sys.modules.get("OpenSSL.SSL")

    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(max(old_switch, 30.0))  # one consistent view: keep the GIL while we look
    try:
        objects = gc.get_objects()
        unreachable = None
        if want_leaks and len(objects) <= UNREACHABLE_MAX_OBJECTS:
            try:
                unreachable = _unreachable_ids(objects)
            except Exception as exc:
                notes.append(f"reachability not computed: {exc}")
        elif want_leaks:
            notes.append(f"reachability not computed: {len(objects)} gc objects (limit {UNREACHABLE_MAX_OBJECTS})")
        wrappers, contexts, protos, c_socks, py_conns, py_ctxs = [], [], [], [], [], []
        for o in objects:
            t = type(o)
            if issubclass(t, (ssl.SSLSocket, ssl.SSLObject)):
                wrappers.append(o)
            elif issubclass(t, ssl.SSLContext):
                contexts.append(o)
            elif issubclass(t, c_sock_type):
                c_socks.append(o)
            elif proto_type is not None and issubclass(t, proto_type):
                protos.append(o)
            elif ossl is not None and issubclass(t, ossl.Connection):
                py_conns.append(o)
            elif ossl is not None and issubclass(t, ossl.Context):
                py_ctxs.append(o)
        proto_of = {}
        for p in protos:
            so = getattr(p, "_sslobj", None)
            if so is not None:
                proto_of[id(so)] = p
        owned_c = {}
        entries, roots, ctx_entries = [], [], []
        bad_layout = 0
        for w in wrappers:
            c = w.__dict__.get("_sslobj") if hasattr(w, "__dict__") else None
            if c is None or type(c) is not c_sock_type:
                continue  # closed or not yet wrapped: no SSL* behind it
            owned_c[id(c)] = w
            ssl_ptr, ctx_obj = _checked_ptrs(c)
            if not ssl_ptr:
                bad_layout += 1
                continue
            e = {"kind": "connection", "ptr": ssl_ptr, "context_ptr": _ctx_ptr(ctx_obj), "type": _type_name(w),
                 "fd": None, "peer": None, "fd_closed": False}
            proto = proto_of.get(id(w))
            root = [w, c]
            if isinstance(w, ssl.SSLSocket):
                fd = w.fileno()
                e["fd"] = fd if fd >= 0 else None
                e["fd_closed"] = fd < 0
                e["peer"] = _peer(w) if fd >= 0 else None
            elif proto is not None:
                root.append(proto)
                tr = getattr(proto, "_transport", None)
                sock = tr.get_extra_info("socket") if tr is not None else None
                if sock is not None:
                    fd = sock.fileno()
                    e["fd"] = fd if fd >= 0 else None
                    e["fd_closed"] = fd < 0
                    e["peer"] = _peer(sock) if fd >= 0 else None
                elif tr is not None:
                    e["fd_closed"] = True
                e["holder"] = _type_name(proto)
            e["_obj"] = w
            entries.append(e)
            roots.append(root)
        for c in c_socks:  # an _SSLSocket whose wrapper is gone (dropped, or a third-party owner)
            if id(c) in owned_c:
                continue
            ssl_ptr, ctx_obj = _checked_ptrs(c)
            if not ssl_ptr:
                bad_layout += 1
                continue
            try:
                wrapper = c.owner  # the SSLSocket/SSLObject it was made for (held weakly)
            except Exception:
                wrapper = None
            fd = wrapper.fileno() if isinstance(wrapper, ssl.SSLSocket) else None
            entries.append({"kind": "connection", "ptr": ssl_ptr, "context_ptr": _ctx_ptr(ctx_obj),
                            "type": _type_name(c), "fd": fd if fd is not None and fd >= 0 else None, "peer": None,
                            "fd_closed": (fd is not None and fd < 0) or isinstance(wrapper, ssl.SSLSocket) and
                            wrapper._closed, "orphan": True, "_obj": c})
            roots.append([c])
        for conn in py_conns:  # pyOpenSSL: cffi pointers
            try:
                from OpenSSL._util import ffi
                ptr = int(ffi.cast("uintptr_t", conn._ssl))
                ctx_ptr = int(ffi.cast("uintptr_t", conn._context._context))
                sock = getattr(conn, "_socket", None)
                fd = sock.fileno() if sock is not None else None
            except Exception:
                continue
            entries.append({"kind": "connection", "ptr": ptr, "context_ptr": ctx_ptr, "type": _type_name(conn),
                            "fd": fd if fd is None or fd >= 0 else None, "peer": _peer(sock) if sock else None,
                            "fd_closed": fd is not None and fd < 0, "_obj": conn})
            roots.append([conn])
        for ctx in contexts:
            ctx_entries.append({"kind": "context", "ptr": _ctx_ptr(ctx), "type": _type_name(ctx), "_obj": ctx})
        for ctx in py_ctxs:
            try:
                from OpenSSL._util import ffi
                ctx_entries.append({"kind": "context", "ptr": int(ffi.cast("uintptr_t", ctx._context)),
                                    "type": _type_name(ctx), "_obj": ctx})
            except Exception:
                continue
        if bad_layout:
            doc["layout"] = {"ok": False, "message": f"{bad_layout} _ssl._SSLSocket object(s) did not match the "
                             f"CPython 3.11 layout: not joined"}
        exclude = {id(objects)} | {id(e["_obj"]) for e in ctx_entries}
        pb, biggest = _python_bytes(roots, exclude)
        for e, b, big in zip(entries, pb, biggest):
            e["python_bytes"] = b
            e["python_largest"] = big
        for e in ctx_entries:
            o = e["_obj"]
            e["python_bytes"] = sys.getsizeof(o) + (sys.getsizeof(o.__dict__) if hasattr(o, "__dict__") else 0)
        suspects = []
        for e in entries + ctx_entries:
            o = e["_obj"]
            e["reachable"] = None if unreachable is None else id(o) not in unreachable
            leak = None
            if e["reachable"] is False:
                leak = "unreachable"
            elif e.get("fd_closed"):
                leak = "fd_closed"
            elif e.get("orphan"):
                leak = "no_wrapper"  # the C object outlived its SSLSocket/SSLObject
            e["leak"] = leak
            e["referrers"] = None
            if leak:
                suspects.append(e)
            frames, source = _created_by(o, tm_on)
            e["created_by"] = frames
            e["created_by_source"] = source
        if suspects and time.monotonic() - started < REQUEST_BUDGET_S:
            for e, chain in zip(suspects, _chains([e["_obj"] for e in suspects], objects, unreachable)):
                e["referrers"] = chain
        elif suspects:
            doc["partial"] = True
            notes.append("referrer chains skipped: time budget spent")
        gc_count = len(objects)
        del objects
    finally:
        sys.setswitchinterval(old_switch)
    for e in entries + ctx_entries:
        e.pop("_obj", None)
    doc["objects"] = entries + ctx_entries
    doc["stats"] = {"gc_objects": gc_count, "elapsed_ms": round((time.monotonic() - started) * 1000, 1)}
    tmi = _state.get("tm") or {}
    if tmi.get("enabled"):
        arr = (ctypes.c_int64 * 3)()
        tmi["lib"].tlsprof_pytrace_stats(arr)
        doc["tracemalloc"].update({"tracked_calls": arr[0], "pending": arr[1], "dropped": arr[2]})
    return doc


# --- the server -----------------------------------------------------------------------------------

def socket_path(directory, pid=None):
    return os.path.join(directory, f"{pid or os.getpid()}.py.sock")


def _serve(listener):
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        try:
            conn.settimeout(10)
            data = b""
            while b"\n" not in data and len(data) < 256:
                chunk = conn.recv(256)
                if not chunk:
                    break
                data += chunk
            words = data.decode("ascii", "replace").split()
            cmd = words[0].upper() if words else ""
            if cmd == "PING":
                answer = {"agent": VERSION, "pid": os.getpid()}
            elif cmd == "SNAPSHOT":
                try:
                    with _lock:
                        answer = snapshot(want_leaks="noleaks" not in words)
                except Exception as exc:  # never kill the thread
                    answer = {"agent": VERSION, "pid": os.getpid(), "error": f"{type(exc).__name__}: {exc}"}
            else:
                answer = {"error": f"unknown request {cmd!r}"}
            conn.sendall(json.dumps(answer, separators=(",", ":")).encode() + b"\n")
            if cmd == "SNAPSHOT" and "noleaks" not in words:
                _give_heap_back()
        except Exception:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass


def _listen(directory):
    path = socket_path(directory)
    try:
        os.unlink(path)
    except OSError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        s.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    s.listen(8)
    t = threading.Thread(target=_serve, args=(s,), name="tlsprof-agent", daemon=True)
    t.start()
    _state.update(sock=s, thread=t, pid=os.getpid())
    import atexit
    atexit.register(_cleanup, path, os.getpid())


def _cleanup(path, pid):
    if os.getpid() == pid:
        try:
            os.unlink(path)
        except OSError:
            pass


def _after_fork():
    try:
        _state["thread"] = None
        if _state["dir"]:
            _listen(_state["dir"])
    except Exception:
        pass


def _uninstall_capture():
    import ssl
    for klass, name, original in _state.pop("patched", None) or []:
        if original is None:
            delattr(klass, name)
        else:
            setattr(klass, name, original)
    ssl._tlsprof_patched = False
    _state["capture"] = False


def stop():
    """Undo start() (tlsprof detach): close the socket, restore the ssl classes. Never raises."""
    try:
        sock, directory = _state.get("sock"), _state.get("dir")
        _state.update(sock=None, thread=None)
        if sock is not None:
            sock.close()  # the serving thread's accept() fails and it ends
        if directory:
            _cleanup(socket_path(directory), os.getpid())
        _uninstall_capture()
    except Exception:
        pass


def start(channel_dir, tracemalloc_ext=False, capture=True):
    """Start the agent in this process (idempotent). `capture` records the creating stack of every
    SSL object made from now on; `tracemalloc_ext` (only before OpenSSL's first allocation) shows
    OpenSSL blocks to tracemalloc. Never raises for the target's sake: returns an error string or None."""
    try:
        if _state["thread"] is not None and _state["pid"] == os.getpid():
            return None
        _state["dir"] = channel_dir
        if tracemalloc_ext:
            try:
                _install_tracemalloc_ext()
            except Exception as exc:
                _state["tm"] = {"enabled": False, "message": f"{type(exc).__name__}: {exc}"}
        if capture:
            _install_capture()
            _state["capture"] = True
        _listen(channel_dir)
        if not getattr(os, "_tlsprof_fork_hook", False):
            os.register_at_fork(after_in_child=_after_fork)
            os._tlsprof_fork_hook = True
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
