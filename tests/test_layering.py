"""The import graph of pinn_ng has no cycle and follows the layering of the README:
problems → residuals → optim → train → pipeline → cli (an arrow: "is imported by").

Every import counts, also those inside functions (a lazy import that dodges a cycle is still
one)."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "pinn_ng"

#: layer of each first-level module; a module may import only from its layer or below.
LAYERS = {
    "precision": 0, "blas": 0, "gram": 0, "metrics": 0, "models": 0, "operators": 0,
    "registry": 0, "memory": 0,
    "problems": 1, "channels": 1,
    "residuals": 2,
    "optim": 3,
    "train": 4,
    "pipeline": 5, "plugins": 5,
    "cli": 6,
    "__init__": 6,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the pinn_ng modules ``path`` imports (anywhere in the file)."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("pinn_ng")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("pinn_ng"):
                continue
            out.add(target)
            for alias in node.names:  # `from . import problems` imports a module
                candidate = f"{target}.{alias.name}"
                if (PKG.parent / candidate.replace(".", "/")).with_suffix(".py").exists() or (
                        PKG.parent / candidate.replace(".", "/")).is_dir():
                    out.add(candidate)
    out.discard(mod)
    return out


def _graph():
    return {_module_name(p): _imports(p) for p in PKG.rglob("*.py")}


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS["__init__"] if len(parts) == 1 else LAYERS[parts[1]]


def test_every_module_has_a_layer():
    for module in _graph():
        _layer(module)  # KeyError names a module missing from LAYERS


def test_no_import_cycle():
    graph = _graph()
    # package __init__ files import their children by design; a cycle through them is not one
    edges = {m: {t for t in ts if t in graph and not m.startswith(t + ".")}
             for m, ts in graph.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_layering():
    bad = [(m, t) for m, ts in _graph().items() for t in ts
           if t != "pinn_ng" and _layer(t) > _layer(m)]
    assert not bad, f"imports against the layering (module, imported): {bad}"
