"""The in-target agent's walks over the object graph: what a connection's Python side holds
(bytes), which objects only a reference cycle keeps alive, and the referrer chain that holds a
leak suspect. Stdlib only; loaded by path beside agent.py (as `_tlsprof_agent_graph`)."""

import gc
import sys
import threading
import types
import weakref

CHAIN_MAX_DEPTH = 10
BYTES_MAX_DEPTH = 5
BYTES_MAX_OBJECTS = 400


def _type_name(obj):
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


_STOP_TYPES = None


def _stop_types():
    global _STOP_TYPES
    if _STOP_TYPES is None:
        stops = [
            type,
            types.ModuleType,
            types.FunctionType,
            types.BuiltinFunctionType,
            types.MethodType,
            types.CodeType,
            types.FrameType,
            types.CoroutineType,
            types.GeneratorType,
            types.CellType,
            weakref.ref,
            staticmethod,
            classmethod,
            property,
            threading.Thread,
        ]
        ssl, asyncio = sys.modules.get("ssl"), sys.modules.get("asyncio")  # never imported here
        if ssl is not None:
            stops.append(ssl.SSLContext)
        if asyncio is not None:
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
    owner = {}  # id -> root index, or -1 when shared
    parent = {}  # id -> the object it was first reached from
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
        named.append({"holder": _held_as(holder, parent.get(id(holder)), obj), "type": _type_name(obj), "bytes": size})
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


def _chains(targets, objects, unreachable, own=()):
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
    skip = {id(objects), id(rev), *(id(o) for o in own)}
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
