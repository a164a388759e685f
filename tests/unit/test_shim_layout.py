"""The shim's layout (issue 17): every C file of hooks/ stays under 500 lines, headers include each
other without a circle, and no circle runs between the .c files through the functions and
variables one defines and another uses. Read from the sources with regular expressions: no compiler,
no server, a second or two. Calls made inside a header's static inline functions are
not followed (their callees sit below the header's own module anyway)."""

import functools
import os
import re

HOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "hooks")
MAX_LINES = 500

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
# a prototype or extern variable in a header: `int name(`, `extern T name;`, `extern T name[...]`
DECLARED = re.compile(r"^(?!\s*(?:#|static|typedef|return|/?\*))[\w \t\*]*?\b(\w+)\s*(?:\(|\[|;|,)", re.M)
COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
STRING = re.compile(r'"(?:\\.|[^"\\])*"')


def _source(path):
    with open(path) as f:
        return f.read()


def _code(text):
    return STRING.sub('""', COMMENT.sub(" ", text))


def _files(ext):
    return sorted(n for n in os.listdir(HOOKS) if n.endswith(ext))


def _shared_names():
    """Names declared at file level in a header, or by a prototype in a .c file: what one .c file
    may offer another."""
    names = set()
    for name in _files(".h") + _files(".c"):
        for line in _code(_source(os.path.join(HOOKS, name))).splitlines():
            if line.startswith((" ", "\t", "#", "}")) or re.match(r"(static|typedef)\b", line):
                continue
            if name.endswith(".c") and not re.search(r"\)\s*;\s*$|^extern\b", line):
                continue  # a .c file: only its prototypes and extern declarations
            pointers = re.findall(r"\(\*\s*(\w+)\)", line)  # `size_t (*usable_size_of)(void *);`
            m = DECLARED.match(line)
            if pointers:
                names.update(pointers)
            elif m:
                names.add(m.group(1))
            if line.startswith("extern"):  # `extern int64_t a, b;`
                names.update(re.findall(r",\s*(\w+)", line))
    return {n for n in names if not n.startswith("__")} - {"struct", "enum", "union", "HOOKED"}


def _definer(names):
    """name -> the .c file whose top level defines it: a function body, or a global variable."""
    where = {}
    for c in _files(".c"):
        code = _code(_source(os.path.join(HOOKS, c)))
        for name in names:
            n = re.escape(name)
            function = r"\b%s\s*\((?:[^;]*\)\s*\{|[^;{]*$)" % n
            variable = r"\b%s\s*(?:\[[^\]]*\]\s*)*(?:=|;|,)|,\s*%s\s*;|\(\*\s*%s\)\s*\(" % (n, n, n)
            if re.search(
                r"^(?!\s|static\b|extern\b|#|typedef\b|return\b)[^;(=\n]*?(?:%s|%s)" % (function, variable), code, re.M
            ):
                where.setdefault(name, c)
    return where


def _hooked_functions():
    """The X-macro list (hook_list.h): the names its users expand to hook_<name> and real_<name>."""
    return re.findall(r"^HOOKED\([^,]+,\s*(\w+),", _source(os.path.join(HOOKS, "hook_list.h")), re.M)


@functools.lru_cache(maxsize=None)
def _uses():
    """.c file -> set of other .c files whose shared names it uses."""
    names = _shared_names()
    where = _definer(names)
    graph = {}
    for c in _files(".c"):
        code = _code(_source(os.path.join(HOOKS, c)))
        used = {where[n] for n in where if where[n] != c and re.search(r"\b%s\b" % re.escape(n), code)}
        graph[c] = used
    # what the X-macro makes: real_<name> in the file expanding `real_##name`, hook_<name> in the
    # file whose HOOK body or *_SCOPED(...) line names it; the file expanding `hook_##name` uses all
    codes = {c: _code(_source(os.path.join(HOOKS, c))) for c in _files(".c")}
    real_file = next(c for c, code in codes.items() if "real_##name" in code and "hook_##name" not in code)
    table_file = next(
        c
        for c, code in codes.items()
        if "hook_##name" in code and '#include "hook_list.h"' in _source(os.path.join(HOOKS, c))
    )
    for name in _hooked_functions():
        hook_file = next(
            (
                c
                for c, code in codes.items()
                if c != table_file
                and re.search(r"\bhook_%s\s*\(|_SCOPED\((?:[^,()]+,\s*){0,2}%s," % (name, name), code)
            ),
            None,
        )
        assert hook_file, f"no hook body for {name}"
        graph[table_file].update({hook_file, real_file})
        for c, code in codes.items():
            if c != real_file and re.search(r"\breal_%s\b" % name, code):
                graph[c].add(real_file)
            if c != hook_file and re.search(r"\bhook_%s\b" % name, code):
                graph[c].add(hook_file)
    return graph


def _cycle(graph):
    """One circle of the directed graph as a list of nodes, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if not state.get(nxt):
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if not state.get(node):
            found = visit(node)
            if found:
                return found
    return None


def test_no_c_file_is_over_500_lines():
    long = {c: n for c in _files(".c") if (n := _source(os.path.join(HOOKS, c)).count("\n")) > MAX_LINES}
    assert not long, long


def test_c_files_include_only_headers_and_headers_form_no_circle():
    graph = {}
    for name in _files(".c") + _files(".h"):
        included = INCLUDE.findall(_source(os.path.join(HOOKS, name)))
        if name.endswith(".c"):
            assert all(i.endswith(".h") for i in included), (name, included)
        graph[name] = {i for i in included if os.path.exists(os.path.join(HOOKS, i))}
    assert _cycle(graph) is None, _cycle(graph)


def test_the_layout_check_sees_the_shim():
    """Guards the regexes: they must find the well-known cross-file uses, or the circle test is void."""
    graph = _uses()
    assert len(graph) >= 10
    assert sum(len(v) for v in graph.values()) >= 15


def test_no_circle_between_c_files():
    graph = _uses()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
