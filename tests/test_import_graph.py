"""The import graph of the edgeft package: no circular imports, layers in order, no private names across subpackages.

Two checks, in the spirit of pip-tools' ``tests/test_circular_imports.py``:

* every module of the package is imported FIRST in a fresh interpreter (one ``python -c`` per
  module, several at a time), so a circle that only bites when a module is the entry point shows;
* a static check on the graph between subpackages, read with ``ast`` (function-level imports
  included, since they are circles waiting for a caller): no cycle, the layers below import
  nothing from the layers above, and no module imports a private ``_name`` from another subpackage.

``python tests/test_import_graph.py [REPO]`` prints the static report for a checkout.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Lower layers never import higher ones (same rank: either way, the cycle check still applies).
# Subpackages not named here (data, finetune, merge, models, chat, ...) are held only to "no cycle".
LAYERS = {
    "errors": 0, "registry": 0, "config": 0, "fileio": 0, "_callable": 0, "artifacts": 0,
    "runtime": 1,
    "metrics": 2,  # scores any runtime's model; exporters, quantize and validate score and gate with it
    "exporters": 3, "quantize": 3,
    "validate": 4, "recipe": 4,
    "pipeline": 5, "release": 5, "serve": 5, "monitor": 5,
    "cli": 6,
}

# Private names imported across subpackages that are known and not yet made public: (importer, "module:name").
KNOWN_PRIVATE: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Edge:
    src: str  # importing module
    dst: str  # imported module (a submodule when ``from pkg import submodule``)
    names: tuple[str, ...]
    line: int


def package_modules(repo: Path = REPO) -> dict[str, Path]:
    """Dotted module name -> file for every .py file under ``repo/edgeft``."""
    out = {}
    for f in sorted((repo / "edgeft").rglob("*.py")):
        parts = list(f.relative_to(repo).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def subpackage(module: str) -> str:
    """``edgeft.runtime.lm`` -> ``runtime``; ``edgeft.errors`` -> ``errors``; ``edgeft`` -> ``edgeft``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def edges(repo: Path = REPO) -> list[Edge]:
    """Every ``import edgeft...`` / ``from edgeft... import`` in the package, at any depth (functions too)."""
    mods = package_modules(repo)
    out = []
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out += [Edge(mod, a.name, (), node.lineno) for a in node.names if a.name.split(".")[0] == "edgeft"]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[:len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                if base.split(".")[0] != "edgeft":
                    continue
                subs = [a.name for a in node.names if f"{base}.{a.name}" in mods]  # from pkg import submodule
                plain = [a.name for a in node.names if a.name not in subs]
                out += [Edge(mod, f"{base}.{name}", (), node.lineno) for name in subs]
                if plain:
                    out.append(Edge(mod, base, tuple(plain), node.lineno))
    return out


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one node (each one a set of import cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the ~100 modules of the package
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def subpackage_graph(es: list[Edge]) -> dict[str, set[str]]:
    g: dict[str, set[str]] = defaultdict(set)
    for e in es:
        a, b = subpackage(e.src), subpackage(e.dst)
        if a != b and "edgeft" not in (a, b):
            g[a].add(b)
    return g


def module_graph(es: list[Edge]) -> dict[str, set[str]]:
    g: dict[str, set[str]] = defaultdict(set)
    for e in es:
        if e.src != e.dst:
            g[e.src].add(e.dst)
    return g


def layer_violations(es: list[Edge]) -> list[str]:
    out = []
    for e in es:
        a, b = subpackage(e.src), subpackage(e.dst)
        if a in LAYERS and b in LAYERS and LAYERS[b] > LAYERS[a]:
            out.append(f"{e.src}:{e.line} imports {e.dst} ({a} is below {b})")
    return sorted(set(out))


def private_imports(es: list[Edge]) -> list[tuple[str, str, int]]:
    """(importer, "module:_name", line) for private names imported from another subpackage."""
    return sorted({(e.src, f"{e.dst}:{n}", e.line) for e in es for n in e.names
                   if n.startswith("_") and subpackage(e.src) != subpackage(e.dst)})


def report(repo: Path = REPO) -> str:
    es = edges(repo)
    sub_cycles = strongly_connected(subpackage_graph(es))
    mod_cycles = strongly_connected(module_graph(es))
    lines = [f"{repo}: {len(package_modules(repo))} modules, {len(es)} edgeft imports"]
    lines.append(f"subpackage cycles: {len(sub_cycles)}")
    g = subpackage_graph(es)
    for comp in sub_cycles:
        inner = sorted(f"{a}->{b}" for a in comp for b in g[a] if b in comp)
        lines.append(f"  {' '.join(comp)}   ({', '.join(inner)})")
    lines.append(f"module cycles (strongly connected sets): {len(mod_cycles)}")
    lines += [f"  [{len(c)}] {' '.join(c)}" for c in mod_cycles]
    viol = layer_violations(es)
    lines.append(f"layer violations: {len(viol)}")
    lines += [f"  {v}" for v in viol]
    priv = private_imports(es)
    lines.append(f"private names imported across subpackages: {len(priv)}")
    lines += [f"  {src}:{line} imports {name}" for src, name, line in priv]
    return "\n".join(lines)


# --------------------------------------------------------------------------- static checks


def test_no_cycle_between_subpackages():
    es = edges()
    cycles = strongly_connected(subpackage_graph(es))
    detail = []
    for comp in cycles:  # one example import per subpackage edge inside the cycle
        first: dict[tuple[str, str], str] = {}
        for e in es:
            a, b = subpackage(e.src), subpackage(e.dst)
            if a != b and a in comp and b in comp:
                first.setdefault((a, b), f"{a}->{b} ({e.src}:{e.line} imports {e.dst})")
        detail.append(" ".join(comp) + ":\n  " + "\n  ".join(first[k] for k in sorted(first)))
    assert not cycles, "import cycles between edgeft subpackages:\n" + "\n".join(detail)


def test_runtime_and_exporters_have_no_module_cycle():
    cycles = [c for c in strongly_connected(module_graph(edges()))
              if any(subpackage(m) in ("runtime", "exporters") for m in c)]
    assert not cycles, f"module import cycles in runtime/ or exporters/: {cycles}"


def test_layers_import_only_downwards():
    es = edges()
    assert not layer_violations(es), "\n".join(layer_violations(es))
    runtime_up = [e for e in es if subpackage(e.src) == "runtime"
                  and subpackage(e.dst) in ("metrics", "exporters", "quantize", "validate", "pipeline", "release", "cli")]
    assert not runtime_up, [f"{e.src}:{e.line} -> {e.dst}" for e in runtime_up]


def test_no_new_private_imports_across_subpackages():
    found = {(src, name) for src, name, _ in private_imports(edges())}
    new = sorted(f for f in found if f not in KNOWN_PRIVATE)
    assert not new, f"private names imported from another subpackage (make them public or move them): {new}"
    stale = sorted(KNOWN_PRIVATE - found)
    assert not stale, f"KNOWN_PRIVATE lists imports that are gone; remove them: {stale}"


def test_static_check_finds_a_planted_cycle(tmp_path):
    """The checker itself: a two-module circle through a function-level import, and a private import."""
    pkg = tmp_path / "edgeft"
    for sub in ("runtime", "exporters"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "runtime" / "a.py").write_text("def f():\n    from edgeft.exporters.b import _g\n")
    (pkg / "exporters" / "b.py").write_text("from ..runtime import a\n\ndef _g():\n    pass\n")
    es = edges(tmp_path)
    assert strongly_connected(subpackage_graph(es)) == [["exporters", "runtime"]]
    assert strongly_connected(module_graph(es)) == [["edgeft.exporters.b", "edgeft.runtime.a"]]
    assert layer_violations(es) == ["edgeft.runtime.a:2 imports edgeft.exporters.b (runtime is below exporters)"]
    assert private_imports(es) == [("edgeft.runtime.a", "edgeft.exporters.b:_g", 2)]


# --------------------------------------------------------------------------- every module first, fresh process

_CHILD = """
import importlib, sys
name = sys.argv[1]
try:
    importlib.import_module(name)
except ModuleNotFoundError as e:
    if e.name and e.name.split('.')[0] != 'edgeft':
        print(f'optional package {e.name!r} is not installed'); sys.exit(75)
    raise
"""


def _import_fresh(module: str) -> tuple[str, int, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _CHILD, module], capture_output=True, text=True, timeout=120,
                          env=env, cwd=REPO)
    return module, proc.returncode, (proc.stdout + proc.stderr).strip()


@pytest.fixture(scope="module")
def fresh_imports() -> dict[str, tuple[int, str]]:
    """module -> (exit code, output) of importing it first in its own interpreter, several at a time."""
    with ThreadPoolExecutor(max_workers=max(2, min(8, 2 * (os.cpu_count() or 1)))) as pool:
        return {m: (rc, out) for m, rc, out in pool.map(_import_fresh, sorted(package_modules()))}


@pytest.mark.parametrize("module", sorted(package_modules()))
def test_module_imports_first_in_a_fresh_process(module, fresh_imports):
    rc, out = fresh_imports[module]
    if rc == 75:
        pytest.skip(out)
    assert rc == 0, f"`import {module}` as the first import of a fresh process failed:\n{out[-2000:]}"


if __name__ == "__main__":
    print(report(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else REPO))
