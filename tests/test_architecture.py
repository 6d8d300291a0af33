"""The package's import graph, read from the source with ``ast`` (nothing is imported).

Rules (issue 32): no import cycle in ``src/``; ``engine/`` and ``io.py`` never import Qt, napari or magicgui;
the widgets never import the CLI; the engine imports none of its callers; the engine's sub-packages form layers
(``ENGINE_LAYERS``): each imports only the ones below it, so inference never imports training. Imports are recorded in two kinds: *module-level* (run when the module is
imported: the module body, class bodies, ``if``/``try`` blocks at module level) and *function-level* (inside a
function, run when it is called). ``if TYPE_CHECKING:`` blocks never run and are ignored.

An edge goes to the most specific module of the package that the statement names, as import-linter's grimp
does: ``from .engine.model.loader import load_model`` is an edge to ``napari_medvae.engine.model.loader``;
``from . import kriging`` inside ``engine/classical`` to ``napari_medvae.engine.classical.kriging``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "napari_medvae"
GUI = ("qtpy", "napari", "magicgui", "superqt", "PyQt5", "PyQt6", "PySide2", "PySide6")


@dataclass
class Graph:
    """Modules of the package and their imports (module name -> set of imported names)."""

    modules: set[str] = field(default_factory=set)
    module_level: dict[str, set[str]] = field(default_factory=dict)
    function_level: dict[str, set[str]] = field(default_factory=dict)

    def edges(self, *, functions: bool) -> dict[str, set[str]]:
        """Internal edges only (targets inside the package); with ``functions`` both kinds together."""
        out = {m: {t for t in self.module_level[m] if t in self.modules} for m in self.modules}
        if functions:
            for m in self.modules:
                out[m] |= {t for t in self.function_level[m] if t in self.modules}
        return out


def _module_name(path: Path, src: Path) -> tuple[str, bool]:
    """(dotted name, is a package __init__) of a source file under ``src``."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts.pop()
    return ".".join(parts), is_pkg


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module) -> tuple[list[ast.stmt], list[ast.stmt]]:
    """(module-level, function-level) import statements of a module."""
    top: list[ast.stmt] = []
    inner: list[ast.stmt] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:  # the else branch does run
                    visit_stmt(sub, in_function)
                continue
            visit_stmt(child, in_function)

    def visit_stmt(child: ast.AST, in_function: bool) -> None:
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            (inner if in_function else top).append(child)
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            visit(child, True)
        else:
            visit(child, in_function)

    visit(tree, False)
    return top, inner


def _targets(stmt: ast.stmt, module: str, is_pkg: bool, modules: set[str]) -> set[str]:
    """The modules an import statement names (internal ones resolved to the most specific existing module)."""
    if isinstance(stmt, ast.Import):
        names = [a.name for a in stmt.names]
    else:
        assert isinstance(stmt, ast.ImportFrom)
        if stmt.level:
            base = module.split(".") if is_pkg else module.split(".")[:-1]
            base = base[:len(base) - (stmt.level - 1)]
            prefix = ".".join(base + ([stmt.module] if stmt.module else []))
        else:
            prefix = stmt.module or ""
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in stmt.names]
    out = set()
    for name in names:
        parts = name.split(".")
        while len(parts) > 1 and ".".join(parts) not in modules and parts[0] == PACKAGE:
            parts.pop()
        out.add(".".join(parts))
    return out


def build_graph(root: Path = SRC / PACKAGE) -> Graph:
    """The import graph of every ``.py`` file under ``root``."""
    files = sorted(root.rglob("*.py"))
    named = {p: _module_name(p, root.parent) for p in files}
    g = Graph(modules={name for name, _ in named.values()})
    for path, (name, is_pkg) in named.items():
        top, inner = _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        g.module_level[name] = set().union(*(_targets(s, name, is_pkg, g.modules) for s in top))
        g.function_level[name] = set().union(*(_targets(s, name, is_pkg, g.modules) for s in inner))
    return g


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:  # Tarjan; the graph is small, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
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
            if len(comp) > 1 or v in edges.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return sorted(out)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return build_graph()


def _in(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


# --- the checker itself -------------------------------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / PACKAGE / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / PACKAGE


def test_graph_separates_module_and_function_level_imports(tmp_path):
    pkg = _write(tmp_path, {
        "__init__.py": "",
        "a.py": "from . import b\nimport qtpy\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n"
                "def f():\n    from .sub.c import x\n",
        "sub/__init__.py": "from .c import x\n",
        "sub/c.py": "class K:\n    from .. import a\n",
    })
    g = build_graph(pkg)
    assert g.module_level["napari_medvae.a"] == {"napari_medvae.b", "qtpy"}
    assert g.module_level["napari_medvae.b"] == {"typing"}  # TYPE_CHECKING imports never run
    assert g.function_level["napari_medvae.b"] == {"napari_medvae.sub.c"}
    assert g.module_level["napari_medvae.sub"] == {"napari_medvae.sub.c"}
    assert g.module_level["napari_medvae.sub.c"] == {"napari_medvae.a"}  # a class body runs at import
    assert cycles(g.edges(functions=False)) == []
    assert cycles(g.edges(functions=True)) == [["napari_medvae.a", "napari_medvae.b", "napari_medvae.sub.c"]]


def test_cycles_finds_self_imports_and_separate_components():
    edges = {"a": {"a"}, "b": {"c"}, "c": {"b"}, "d": {"b"}}
    assert cycles(edges) == [["a"], ["b", "c"]]


# --- the rules ----------------------------------------------------------------------------------------------


def test_no_import_cycle_among_module_level_imports(graph):
    assert cycles(graph.edges(functions=False)) == []


def test_engine_has_no_import_cycle_even_through_function_level_imports(graph):
    """Deferred imports hide a cycle from Python but not from a reader: engine/ is one-way even with them."""
    edges = {m: {t for t in ts if _in(t, f"{PACKAGE}.engine")}
             for m, ts in graph.edges(functions=True).items() if _in(m, f"{PACKAGE}.engine")}
    assert cycles(edges) == []


def test_package_has_no_import_cycle_even_through_function_level_imports(graph):
    assert cycles(graph.edges(functions=True)) == []


@pytest.mark.parametrize("kind", ["module_level", "function_level"])
def test_engine_and_io_import_no_gui(graph, kind):
    bad = {m: sorted(t for t in getattr(graph, kind)[m] if _in(t, *GUI))
           for m in sorted(graph.modules) if _in(m, f"{PACKAGE}.engine", f"{PACKAGE}.io")}
    assert {m: ts for m, ts in bad.items() if ts} == {}
    assert f"{PACKAGE}.io" in bad and f"{PACKAGE}.engine.ops.anomaly" in bad  # the rule looked at them


def test_widgets_never_import_the_cli(graph):
    bad = {m: sorted(t for t in graph.module_level[m] | graph.function_level[m] if _in(t, f"{PACKAGE}.cli"))
           for m in sorted(graph.modules) if _in(m, f"{PACKAGE}.widgets")}
    assert {m: ts for m, ts in bad.items() if ts} == {}
    assert f"{PACKAGE}.widgets._inpaint" in bad


# engine/ bottom to top: input preparation, classical maths, the model, the operations, training and calibration
ENGINE_LAYERS = ("prep", "classical", "model", "ops", "training")


def _engine_layer(module: str) -> int | None:
    """The index in ENGINE_LAYERS of an engine sub-package's module (None outside them, e.g. engine/__init__)."""
    parts = module.split(".")
    if len(parts) > 2 and parts[1] == "engine" and parts[2] in ENGINE_LAYERS:
        return ENGINE_LAYERS.index(parts[2])
    return None


def test_engine_layers_import_only_downwards(graph):
    """Module- and function-level imports alike: ops never reaches into training, the model never into ops."""
    bad = {}
    for m in sorted(graph.modules):
        lm = _engine_layer(m)
        if lm is not None:
            up = sorted(t for t in graph.module_level[m] | graph.function_level[m]
                        if (lt := _engine_layer(t)) is not None and lt > lm)
            if up:
                bad[m] = up
    assert bad == {}
    assert {_engine_layer(m) for m in graph.modules} >= set(range(len(ENGINE_LAYERS)))  # every layer exists


def test_inference_never_imports_training(graph):
    inference = [m for m in sorted(graph.modules) if _in(m, f"{PACKAGE}.engine.model", f"{PACKAGE}.engine.ops")]
    bad = {m: sorted(t for t in graph.module_level[m] | graph.function_level[m] if _in(t, f"{PACKAGE}.engine.training"))
           for m in inference}
    assert {m: ts for m, ts in bad.items() if ts} == {}
    assert f"{PACKAGE}.engine.ops.anomaly" in bad and f"{PACKAGE}.engine.model.loader" in bad


def test_the_engine_imports_none_of_its_callers(graph):
    """engine -> nothing above it: not the service, the CLI, batch, the demo or the widgets."""
    callers = tuple(f"{PACKAGE}.{c}" for c in ("service", "cli", "batch", "demo", "widgets", "_writer", "_reader"))
    bad = {m: sorted(t for t in graph.module_level[m] | graph.function_level[m] if _in(t, *callers))
           for m in sorted(graph.modules) if _in(m, f"{PACKAGE}.engine")}
    assert {m: ts for m, ts in bad.items() if ts} == {}
    assert f"{PACKAGE}.engine.training.vae" in bad


def test_engine_functions_do_not_shadow_modules():
    """``engine.anomaly`` is the function and ``engine.ops.anomaly`` the module; the sub-packages re-export nothing."""
    import napari_medvae.engine as engine

    for name in engine.__all__:
        assert not isinstance(getattr(engine, name), type(engine)), name
    for sub in ENGINE_LAYERS:
        init = SRC / PACKAGE / "engine" / sub / "__init__.py"
        assert not [s for s in ast.parse(init.read_text()).body if not isinstance(s, ast.Expr)], sub  # docstring only


# --- only the service layer loads models and writes result files ---------------------------------------------

BENCHMARKS = SRC.parent / "benchmarks"
# what loads an inference model or writes a result file; the service wraps each (get_model, save, save_json)
LOADS_OR_WRITES = {"load_model", "write_volume", "_atomic_write_bytes"}
# allowed: the service itself; io and the engine define these functions (the engine also saves trained models)
OWNERS = (f"{PACKAGE}.service", f"{PACKAGE}.io", f"{PACKAGE}.engine")


def loads_or_writes(path: Path) -> list[str]:
    """``line: name`` for every use of a model loader or file writer in a file: an import of it, a call, or an
    attribute (``engine.load_model``, ``io.write_volume``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names = []
        if isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.Name):
            names = [node.id]
        found += [f"{node.lineno}: {n}" for n in names if n in LOADS_OR_WRITES]
    return sorted(set(found))


def _callers() -> dict[str, Path]:
    """Every module of the package outside the owners, and every benchmark script."""
    files = {_module_name(p, SRC)[0]: p for p in sorted((SRC / PACKAGE).rglob("*.py"))}
    out = {m: p for m, p in files.items() if not _in(m, *OWNERS)}
    out |= {f"benchmarks.{p.stem}": p for p in sorted(BENCHMARKS.glob("*.py"))}
    return out


def test_the_loader_and_writer_check_finds_imports_calls_and_attributes(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from napari_medvae.engine import load_model\nimport napari_medvae.io as mio\n"
                 "def g(x):\n    mio.write_volume('a.nii', x, None)\n    return engine.load_model(None)\n")
    assert loads_or_writes(f) == ["1: load_model", "4: write_volume", "5: load_model"]
    f.write_text("from napari_medvae.service import get_model, save\nsave('a.nii', get_model(), None)\n")
    assert loads_or_writes(f) == []


def test_only_the_service_loads_models_and_writes_result_files():
    """cli, batch, demo, the widgets, the napari writer and the benchmarks go through ``napari_medvae.service``."""
    callers = _callers()
    assert {f"{PACKAGE}.cli", f"{PACKAGE}.batch", f"{PACKAGE}.demo", f"{PACKAGE}.widgets._model",
            f"{PACKAGE}._writer", "benchmarks.quality", "benchmarks.speed"} <= set(callers)  # the rule looked at them
    bad = {m: loads_or_writes(p) for m, p in callers.items()}
    assert {m: uses for m, uses in bad.items() if uses} == {}


def test_the_service_imports_no_gui_and_no_caller(graph):
    """service -> engine/io one way: it never imports Qt/napari, the CLI, batch, demo or the widgets."""
    callers = (f"{PACKAGE}.cli", f"{PACKAGE}.batch", f"{PACKAGE}.demo", f"{PACKAGE}.widgets", *GUI)
    bad = {m: sorted(t for t in graph.module_level[m] | graph.function_level[m] if _in(t, *callers))
           for m in sorted(graph.modules) if _in(m, f"{PACKAGE}.service")}
    assert {m: ts for m, ts in bad.items() if ts} == {}
    assert f"{PACKAGE}.service.ops" in bad
