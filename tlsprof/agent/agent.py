"""The in-target Python agent: maps each SSL*/SSL_CTX* to its live Python object.

Runs inside the profiled Python process (started by tlsprof/agent/site/sitecustomize.py under
`tlsprof run`, or by `tlsprof.agent.start(dir)` from an attach payload). Stdlib only: the target's
interpreter may not have tlsprof installed, so this file is loaded by path as `_tlsprof_agent`.

A daemon thread serves `<dir>/<pid>.py.sock` (mode 0600, inside the private channel directory):
one request line (`PING` or `SNAPSHOT`), one JSON document back, then close. For SNAPSHOT it
walks gc-tracked objects for ssl.SSLSocket / ssl.SSLObject / ssl.SSLContext (and pyOpenSSL's
Connection / Context), reads their SSL* / SSL_CTX* from the C objects, and reports per object:
type, fd, peer, creating stack, Python-side bytes, reachability and, for leak suspects, the
referrer chain (the graph walks are in graph.py beside this file). The front end
(tlsprof/analysis/python_join.py) joins by exact pointer equality with the
shim's owners, so a wrong layout can only fail to join, never join wrongly.

Layout (CPython 3.11, Modules/_ssl.c): _ssl._SSLSocket = PyObject_HEAD; PyObject *Socket; SSL *ssl;
PySSLContext *ctx; ...  _ssl._SSLContext = PyObject_HEAD; SSL_CTX *ctx; ...  The agent checks the
layout on every object it reads: the `ctx` field of an _SSLSocket must be id() of its `.context`.
"""

import atexit
import ctypes
import gc
import os
import socket
import sys
import threading
import time
import tracemalloc as _tm

VERSION = 1
TRACEMALLOC_DOMAIN = 0x7715  # tracemalloc domain of OpenSSL blocks under `--tracemalloc`
REQUEST_BUDGET_S = 2.0  # Python work per request; beyond it the answer is marked partial
UNREACHABLE_MAX_OBJECTS = 400_000

_state = {"dir": None, "thread": None, "sock": None, "capture": False, "tm": None, "pid": None}
_lock = threading.Lock()
_AGENT_FILE = os.path.abspath(__file__)
_PTR = ctypes.c_void_p


def _load_sibling(name):
    """A module beside this file, loaded by path as this one is (the target may lack tlsprof)."""
    import importlib.util

    full = f"_tlsprof_agent_{name}"
    mod = sys.modules.get(full)
    if mod is None:
        spec = importlib.util.spec_from_file_location(full, os.path.join(os.path.dirname(_AGENT_FILE), f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[full] = mod
        spec.loader.exec_module(mod)
    return mod


_graph = _load_sibling("graph")
_type_name, _python_bytes, _unreachable_ids, _chains = (
    _graph._type_name,
    _graph._python_bytes,
    _graph._unreachable_ids,
    _graph._chains,
)
_ssl_objects = _load_sibling("ssl_objects")
_read_ptr, _sslobj_ptrs, _checked_ptrs, _ctx_ptr, _peer = (
    _ssl_objects._read_ptr,
    _ssl_objects._sslobj_ptrs,
    _ssl_objects._checked_ptrs,
    _ssl_objects._ctx_ptr,
    _ssl_objects._peer,
)


# --- creation capture (under `run`): agent/capture.py -------------------------------------------

_capture = _load_sibling("capture")
_created = _capture.created


def _install_capture():
    _capture.install(_state, _load_sibling("pyopenssl_capture"))


def _uninstall_capture():
    _capture.uninstall(_state, _load_sibling("pyopenssl_capture"))
    _state["capture"] = False


def _created_by(obj, tm_on):
    return _capture.created_by(obj, tm_on, _state["capture"])


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


# references to an _SSLSocket in the c_socks loop that are our own: `objects`, `c_socks`, the loop
# name and getrefcount's argument. No more means its owner let go of it during this snapshot: it is
# freed when we drop `objects`, and calling it alive after its socket closed would be our doing.
_HELD_ONLY_BY_US = 4


def snapshot(want_leaks=True):
    started = time.monotonic()
    cpu_started = time.thread_time()  # what the look costs the target: not its waits for the GIL
    notes = [_capture.LATE_NOTE] if _state["capture"] == "late" else []
    ssl = sys.modules.get("ssl")
    tm = _state.get("tm") or {}
    tm_on = _tm.is_tracing()
    doc = {
        "agent": VERSION,
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "objects": [],
        "layout": {"ok": True, "message": None},
        "notes": notes,
        "partial": False,
        "tracemalloc": {
            "tracing": tm_on,
            "ext": bool(tm.get("enabled")),
            "domain": TRACEMALLOC_DOMAIN,
            "message": tm.get("message"),
        },
    }
    if ssl is None:
        doc["stats"] = {"elapsed_ms": 0}
        return doc
    if sys.version_info[:2] != (3, 11):
        notes.append(f"pointer layout checked on every object; written for CPython 3.11, this is {doc['python']}")
    c_sock_type = sys.modules["_ssl"]._SSLSocket  # loaded with ssl
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
        entries, roots, ctx_entries, peers = [], [], [], []
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
            e = {
                "kind": "connection",
                "ptr": ssl_ptr,
                "context_ptr": _ctx_ptr(ctx_obj),
                "type": _type_name(w),
                "fd": None,
                "peer": None,
                "fd_closed": False,
            }
            proto = proto_of.get(id(w))
            root = [w, c]
            if isinstance(w, ssl.SSLSocket):
                fd = w.fileno()
                e["fd"] = fd if fd >= 0 else None
                e["fd_closed"] = fd < 0
                if fd >= 0:
                    peers.append((e, w))
            elif proto is not None:
                root.append(proto)
                tr = getattr(proto, "_transport", None)
                sock = tr.get_extra_info("socket") if tr is not None else None
                if sock is not None:
                    fd = sock.fileno()
                    e["fd"] = fd if fd >= 0 else None
                    e["fd_closed"] = fd < 0
                    if fd >= 0:
                        peers.append((e, sock))
                elif tr is not None:
                    e["fd_closed"] = True
                e["holder"] = _type_name(proto)
            e["_obj"] = w
            entries.append(e)
            roots.append(root)
        for c in c_socks:  # an _SSLSocket whose wrapper is gone (dropped, or a third-party owner)
            if id(c) in owned_c:
                continue
            if sys.getrefcount(c) <= _HELD_ONLY_BY_US:
                continue  # closed as we looked (a thread switch): only our own lists keep it
            ssl_ptr, ctx_obj = _checked_ptrs(c)
            if not ssl_ptr:
                bad_layout += 1
                continue
            try:
                wrapper = c.owner  # the SSLSocket/SSLObject it was made for (held weakly)
            except Exception:
                wrapper = None
            fd = wrapper.fileno() if isinstance(wrapper, ssl.SSLSocket) else None
            entries.append(
                {
                    "kind": "connection",
                    "ptr": ssl_ptr,
                    "context_ptr": _ctx_ptr(ctx_obj),
                    "type": _type_name(c),
                    "fd": fd if fd is not None and fd >= 0 else None,
                    "peer": None,
                    "fd_closed": (fd is not None and fd < 0) or isinstance(wrapper, ssl.SSLSocket) and wrapper._closed,
                    "orphan": True,
                    "_obj": c,
                }
            )
            roots.append([c])
        for conn in py_conns:  # pyOpenSSL: cffi pointers
            try:
                ffi = sys.modules["OpenSSL._util"].ffi

                ptr = int(ffi.cast("uintptr_t", conn._ssl))
                ctx_ptr = int(ffi.cast("uintptr_t", conn._context._context))
                sock = getattr(conn, "_socket", None)
                fd = sock.fileno() if sock is not None else None
            except Exception:
                continue
            entries.append(
                {
                    "kind": "connection",
                    "ptr": ptr,
                    "context_ptr": ctx_ptr,
                    "type": _type_name(conn),
                    "fd": fd if fd is None or fd >= 0 else None,
                    "peer": None,
                    "fd_closed": fd is not None and fd < 0,
                    "_obj": conn,
                }
            )
            if sock:
                peers.append((entries[-1], sock))
            roots.append([conn])
        for ctx in contexts:
            ctx_entries.append({"kind": "context", "ptr": _ctx_ptr(ctx), "type": _type_name(ctx), "_obj": ctx})
        for ctx in py_ctxs:
            try:
                ffi = sys.modules["OpenSSL._util"].ffi

                ctx_entries.append(
                    {
                        "kind": "context",
                        "ptr": int(ffi.cast("uintptr_t", ctx._context)),
                        "type": _type_name(ctx),
                        "_obj": ctx,
                    }
                )
            except Exception:
                continue
        if bad_layout:
            doc["layout"] = {
                "ok": False,
                "message": f"{bad_layout} _ssl._SSLSocket object(s) did not match the CPython 3.11 layout: not joined",
            }
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
            for e, chain in zip(
                suspects, _chains([e["_obj"] for e in suspects], objects, unreachable, own=(_created,))
            ):
                e["referrers"] = chain
        elif suspects:
            doc["partial"] = True
            notes.append("referrer chains skipped: time budget spent")
        gc_count = len(objects)
        del objects, c_socks, roots, wrappers, protos
    finally:
        sys.setswitchinterval(old_switch)
    for e, sock in peers:  # only now: getpeername lets the target's threads run
        e["peer"] = _peer(sock)
    for e in entries + ctx_entries:
        e.pop("_obj", None)
    doc["objects"] = entries + ctx_entries
    elapsed_ms, cpu_ms = (time.monotonic() - started) * 1000, (time.thread_time() - cpu_started) * 1000
    doc["stats"] = {"gc_objects": gc_count, "elapsed_ms": round(elapsed_ms, 1), "cpu_ms": round(cpu_ms, 1)}
    tmi = _state.get("tm") or {}
    if tmi.get("enabled"):
        arr = (ctypes.c_int64 * 3)()
        tmi["lib"].tlsprof_pytrace_stats(arr)
        doc["tracemalloc"].update({"tracked_calls": arr[0], "pending": arr[1], "dropped": arr[2]})
    return doc


# --- the server -----------------------------------------------------------------------------------


def socket_path(directory, pid=None):
    # the twin of tlsprof.channel_paths.agent_socket_path: this file runs inside the target, where
    # tlsprof may not be importable (tests/unit/test_channel_paths.py keeps the two equal)
    return os.path.join(directory, f"{pid or os.getpid()}.py.sock")


_listener = _load_sibling("listener")
own_channel_dir = _listener.own_channel_dir  # sitecustomize asks it before start()


def _ours(sock):
    return _listener.is_ours(sock, _state.get("sock_id"))


def _bind(path):
    sock, _state["sock_id"] = _listener.bind(path)
    return sock


def _relisten():
    found = _listener.relisten(_state["dir"], socket_path, lambda: _state.get("stopped"))
    if found is None:
        return None
    sock, _state["sock_id"], directory = found
    if directory != _state["dir"]:  # the user changed: the new user's directory
        _state["dir"] = directory
        atexit.register(_cleanup, socket_path(directory), os.getpid())
    return sock


def _serve(listener):
    _listener.serve(listener, _state, _relisten, _answer)


def _answer(words):
    """(the JSON document for one request line, what to do once it is sent, or None)."""
    cmd = words[0].upper() if words else ""
    if cmd == "PING":
        return {"agent": VERSION, "pid": os.getpid()}, None
    if cmd != "SNAPSHOT":
        return {"error": f"unknown request {cmd!r}"}, None
    full = "noleaks" not in words
    try:
        with _lock:
            return snapshot(want_leaks=full), _give_heap_back if full else None
    except Exception as exc:  # never kill the thread
        return {"agent": VERSION, "pid": os.getpid(), "error": f"{type(exc).__name__}: {exc}"}, None


def _listen(directory):
    path = socket_path(directory)
    s = _bind(path)
    _state.update(sock=s, pid=os.getpid(), stopped=False)
    _state["thread"] = _listener.start_thread_deaf_to_signals(_serve, (s,), "tlsprof-agent")

    atexit.register(_cleanup, path, os.getpid())


def _cleanup(path, pid):
    if os.getpid() == pid:
        _tell_shim_exiting()
        try:
            os.unlink(path)
        except OSError:
            pass


def _tell_shim_exiting():
    """The interpreter's teardown starts after the atexit hooks (ours, registered first, runs
    last): it frees every context and connection, and a snapshot taken then would describe no
    working state. The shim marks its snapshots from now on so the collector keeps the one before."""
    try:
        lib = _load_sibling("tracemalloc_ext").shim_lib()
        if lib is not None:
            lib.tlsprof_mark_exiting()
    except Exception:
        pass  # never in the target's way


def _after_fork():
    global _lock
    _lock = threading.Lock()  # the parent's thread may have held it at the fork: never released here
    try:
        _state["thread"] = None
        if _state.get("conn") is not None:  # a request the parent was serving: its answer ends there
            _state.pop("conn").close()
        inherited = _state.get("sock")
        if inherited is not None:  # the parent's socket: closed here unless its number is another's now
            if _ours(inherited):
                inherited.close()
            else:
                _listener.let_go(inherited)
        _state["sock"] = None
        if _state["dir"]:
            _listen(_state["dir"])
    except Exception:
        pass


def stop():
    """Undo start() (tlsprof detach): close the socket, restore the ssl classes. Never raises."""
    try:
        sock, directory = _state.get("sock"), _state.get("dir")
        _state.update(sock=None, thread=None, stopped=True)
        if sock is not None and _ours(sock):
            sock.shutdown(socket.SHUT_RDWR)  # the serving thread's accept() returns and it ends
            sock.close()
        elif sock is not None:
            _listener.let_go(sock)
        if directory:
            _cleanup(socket_path(directory), os.getpid())
        _uninstall_capture()
    except Exception:
        pass


def start(channel_dir, tracemalloc_ext=False, capture=True):
    """Start the agent in this process (idempotent). `capture` records the creating stack of every
    SSL object made from now on ("late": under `run`, after the interpreter ran the program's own
    code without tlsprof's sitecustomize: hooks/pyagent.c); `tracemalloc_ext` (only before OpenSSL's first allocation) shows
    OpenSSL blocks to tracemalloc. Never raises for the target's sake: returns an error string or None."""
    try:
        if _state["thread"] is not None and _state["pid"] == os.getpid():
            return None
        _state["dir"] = channel_dir
        if tracemalloc_ext:
            try:
                _load_sibling("tracemalloc_ext").install(_state, TRACEMALLOC_DOMAIN)
            except Exception as exc:
                _state["tm"] = {"enabled": False, "message": f"{type(exc).__name__}: {exc}"}
        if capture:
            _install_capture()
            _state["capture"] = capture
        _listen(channel_dir)
        if not getattr(os, "_tlsprof_fork_hook", False):
            os.register_at_fork(after_in_child=_after_fork)
            os._tlsprof_fork_hook = True
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
