"""The package's structure, read from its source (docs/architecture.md): imports go one way,
`commands → render → analysis → model ← collect` (and `collect → agent`, the code that runs inside
a Python target), no module imports itself back through others,
and no module grows past 500 lines. Parses the files with ast: nothing is imported or run."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "tlsprof"
MAX_LINES = 500

# layer -> the layers its modules may import (besides their own and the shared `tlsprof.errors`)
MAY_IMPORT = {
    "agent": set(),  # runs inside the target's Python, loaded by path beside the shim: stdlib only
    "model": set(),
    "collect": {"model", "agent"},
    "analysis": {"model"},
    "render": {"analysis", "model"},
    "commands": {"render", "analysis", "model", "collect"},
    "top": {"commands", "render", "analysis", "model", "collect", "agent"},  # cli, __main__
}
SHARED = {"tlsprof", "tlsprof.errors"}


def _modules() -> dict:
    """{dotted name: path} of every Python module of the package, the in-target agent's site hook
    and the example programs left out (they run inside other processes, not in tlsprof)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if "site" in parts:
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in MAY_IMPORT:
        return parts[1]
    return "top"


def _imports(module: str, path: pathlib.Path, known: set) -> set:
    """Every tlsprof module `module` imports, at the top or inside a function."""
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `from tlsprof.x import function` -> tlsprof.x
                name = name.rpartition(".")[0]
            if name.startswith("tlsprof") and name != module:
                found.add(name)
    return found


MODULES = _modules()
GRAPH = {m: _imports(m, p, set(MODULES)) for m, p in MODULES.items()}


def test_every_import_goes_down_the_layers():
    wrong = []
    for module, imported in sorted(GRAPH.items()):
        layer = _layer(module)
        for other in sorted(imported - SHARED):
            other_layer = _layer(other)
            if other_layer != layer and other_layer not in MAY_IMPORT[layer]:
                wrong.append(f"{module} ({layer}) imports {other} ({other_layer})")
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_itself_back():
    # a package's __init__ importing its own submodules (and they it) is how a package is built
    def edges(module):
        return {o for o in GRAPH[module] if not module.startswith(o + ".")}

    cycles, state = [], {}

    def visit(module, stack):
        state[module] = "open"
        for other in sorted(edges(module)):
            if state.get(other) == "open":
                cycles.append(" -> ".join(stack[stack.index(other) :] + [other]))
            elif other not in state:
                visit(other, stack + [other])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_at_most_500_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module]}: {lines} lines"


def test_only_collect_touches_processes_and_sockets():
    """model, analysis and render read observations and reports only; commands wire the layers (the
    demo also starts its own load client)."""
    wrong = []
    for module, path in sorted(MODULES.items()):
        if _layer(module) not in ("model", "analysis", "render"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            wrong += [
                f"{module} imports {n}"
                for n in names
                if n.split(".")[0] in ("socket", "subprocess", "psutil", "signal")
            ]
    assert not wrong, "\n".join(wrong)
