"""The package's layering, enforced: no import cycles (imports inside functions counted), no import up the layers,
no private name imported across modules, and importing alignkit imports no heavy library.

Layers, bottom to top (a module may import its own layer and those below):

0. ``errors``, ``types``, ``io``, ``validate``, ``progress``, ``structured``, ``sharding``, ``records``, ``version``,
   ``resumable`` (the one resumable generate loop, over any model), ``_fault`` -- plain data and files
1. ``models`` -- the model interface, backends, the stepper
2. ``scoring`` -- the scorer protocol only
3. ``methods`` -- the nodes of a route tree and the tree itself
4. ``analysis``, ``evaluation``, ``training`` -- each its own package: they do not import one another
5. ``api``, ``generation``, ``sweep`` and the package root -- the public Python API and the jobs it runs
6. ``server``, ``cli`` (and ``__main__``) -- thin: parse, call the API, print
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import alignkit

ROOT = Path(alignkit.__file__).parent
LAYERS = {
    **dict.fromkeys(("errors", "types", "io", "validate", "progress", "structured", "sharding", "records", "version",
                     "resumable", "_fault"), 0),
    "models": 1, "scoring": 2, "methods": 3, "analysis": 4, "evaluation": 4, "training": 4,
    "api": 5, "generation": 5, "sweep": 5, "": 5, "server": 6, "cli": 6, "__main__": 6,
}
#: the third-party libraries importing alignkit must not pull in
HEAVY = ("torch", "transformers", "peft", "trl", "datasets", "vllm", "llama_cpp", "sentence_transformers",
         "matplotlib", "pandas", "fastapi", "uvicorn", "openai")


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _graph():
    """``(edges, imports, inside_functions, private_names)`` of alignkit's own imports."""
    mods = _modules()
    edges: dict[str, set[str]] = defaultdict(set)
    counts = {"all": 0, "inside": 0}
    private: list[tuple[str, str]] = []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]

        def visit(node, in_function: bool, name=name, package=package) -> None:
            for child in ast.iter_child_nodes(node):
                inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    continue  # annotations only: not an import at run time
                targets: list[str] = []
                if isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                        base = ".".join(parts + ([base] if base else []))
                    if base.split(".")[0] == "alignkit":
                        for a in child.names:
                            full = f"{base}.{a.name}"
                            if full in mods:
                                targets.append(full)
                            else:
                                targets.append(base)
                                if a.name.startswith("_") and not a.name.startswith("__"):
                                    private.append((name, full))
                elif isinstance(child, ast.Import):
                    targets = [a.name for a in child.names if a.name.split(".")[0] == "alignkit"]
                for t in targets:
                    while t not in mods and "." in t:
                        t = t.rpartition(".")[0]
                    if t != name:
                        edges[name].add(t)
                        counts["all"] += 1
                        counts["inside"] += inside
                visit(child, inside)

        visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return edges, counts, private


def _layer(module: str) -> tuple[int, str]:
    parts = module.split(".")
    sub = parts[1] if len(parts) > 1 else ""
    assert sub in LAYERS, f"module {module} is in no layer: add it to LAYERS in tests/test_layers.py"
    return LAYERS[sub], sub


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            strong(v)
    return out


#: libraries a module is "heavy" for importing at its top level (directly or through alignkit modules it imports)
LAZY_FOR = HEAVY + ("numpy", "scipy", "statsmodels", "llguidance", "rich", "httpx", "gguf", "pydantic", "jsonschema")


def _top_level(path: Path) -> tuple[set[str], set[str]]:
    """``(third-party roots, alignkit modules)`` a module imports at its top level (TYPE_CHECKING blocks aside)."""
    third, internal = set(), set()
    for st in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(st, ast.Import):
            for a in st.names:
                (internal if a.name.split(".")[0] == "alignkit" else third).add(a.name if a.name.startswith("alignkit")
                                                                                  else a.name.split(".")[0])
        elif isinstance(st, ast.ImportFrom) and not st.level:
            base = st.module or ""
            if base.split(".")[0] == "alignkit":
                internal.update(f"{base}.{a.name}" for a in st.names)
                internal.add(base)
            else:
                third.add(base.split(".")[0])
    return third, internal


def _heavy_modules() -> set[str]:
    """alignkit modules whose import pulls in a heavy library (torch, transformers, fastapi ...)."""
    mods = _modules()
    tops = {m: _top_level(p) for m, p in mods.items()}
    heavy = {m for m, (third, _) in tops.items() if third & set(LAZY_FOR)}
    changed = True
    while changed:  # importing a module imports what it imports, and its parent packages
        changed = False
        for m, (_, internal) in tops.items():
            parents = {".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)}
            if m not in heavy and (internal | parents) & heavy:
                heavy.add(m)
                changed = True
    return heavy


def test_imports_inside_functions_only_keep_heavy_libraries_lazy():
    """An alignkit import inside a function is there for a reason: it reaches a module that imports a heavy
    library, or it is in ``api.py``, which imports its layers when a function runs so that ``import alignkit``
    stays at a handful of modules. Everything else is imported at the top of its module."""
    mods, heavy = _modules(), _heavy_modules()
    needless = []
    for name, path in mods.items():
        if name == "alignkit.api":
            continue
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for st in ast.walk(fn):
                if isinstance(st, ast.ImportFrom) and (st.module or "").split(".")[0] == "alignkit":
                    targets = {f"{st.module}.{a.name}" for a in st.names} | {st.module}
                    if not targets & heavy:
                        needless.append(f"{name}: from {st.module} import {', '.join(a.name for a in st.names)}")
    assert needless == []


def test_no_import_cycles():
    edges, counts, _ = _graph()
    assert _cycles(edges) == []
    print(f"alignkit's internal imports: {counts['all']}, {counts['inside']} inside functions")


def test_no_import_up_the_layers_or_across_siblings():
    edges, _, _ = _graph()
    bad = []
    for a, targets in edges.items():
        (la, sa) = _layer(a)
        for b in targets:
            (lb, sb) = _layer(b)
            if lb > la or (lb == la == 4 and sa != sb):
                bad.append(f"{a} -> {b}")
    assert bad == []


def test_no_private_name_crosses_modules():
    _, _, private = _graph()
    assert private == []


def test_the_contract_catches_what_it_forbids(tmp_path, monkeypatch):
    """The checks are not vacuous: a cycle and an upward import planted in a copy are found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _layer("alignkit.scoring")[0] < _layer("alignkit.methods.tree")[0] < _layer("alignkit.api")[0]


def test_importing_alignkit_imports_no_heavy_library():
    code = f"import sys, alignkit; heavy = {HEAVY!r}; print(sorted(m for m in heavy if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
