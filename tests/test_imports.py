"""The package's import graph has no circle, and every module imports on its own, first.

The graph is read from the source (``ast``): every ``import`` and ``from … import``
statement of a heygem_ray module, at the top of the file or inside a function, is an edge
to the heygem_ray module it names (``from heygem_ray.backends import trt`` is an edge to
``heygem_ray.backends.trt``; ``from heygem_ray.config import RunConfig`` to
``heygem_ray.config``). The implicit import of a module's parent package is not an edge:
Python runs it first whatever the module says.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "heygem_ray"


def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name → its file, for every module of the package at ``root``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return {name: path for name, path in found.items() if name.split(".")[0] == package}


def imports(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The modules of ``known`` that module ``name`` (at ``path``) imports."""
    known = set(known)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            edges.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in known:
                    edges.add(target)  # a submodule
                elif base in known:
                    edges.add(base)  # a name defined in the module
    edges.discard(name)
    return edges


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
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
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    mods = modules(root, package)
    return {name: imports(name, path, mods) for name, path in mods.items()}


def test_the_package_has_no_import_circle() -> None:
    graph = import_graph(PACKAGE, "heygem_ray")
    assert len(graph) > 40  # the walk found the package
    assert graph["heygem_ray.backends.artifacts"] >= {"heygem_ray.backends.trt", "heygem_ray.engines"}
    assert cycles(graph) == []


def test_a_planted_circle_is_found(tmp_path: Path) -> None:
    pkg = tmp_path / "planted"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from planted.sub import b\n")
    (pkg / "a.py").write_text("def late():\n    from planted import c  # inside a function: still an edge\n")
    (pkg / "sub" / "b.py").write_text("from .. import a\n")  # relative
    (pkg / "c.py").write_text("import planted.sub.b\n")
    (pkg / "d.py").write_text("from planted.a import late\n")  # into the circle, not part of it
    graph = import_graph(pkg, "planted")
    assert cycles(graph) == [["planted.a", "planted.c", "planted.sub.b"]]


def test_each_module_imports_first() -> None:
    """Each module imported into an interpreter holding no heygem_ray module yet (the
    third-party libraries stay loaded, so the walk takes seconds, not minutes)."""
    names = sorted(modules(PACKAGE, "heygem_ray"))
    script = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m == 'heygem_ray' or m.startswith('heygem_ray.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, *names], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


# What the networks need; none of it is needed to run a job's recipe or to route its chunks.
NETWORK_LIBRARIES = ("torch", "onnx", "onnxruntime", "transformers", "diffusers", "tensorrt")
# Half a second of every process's start-up, for two steps the audio features write out.
SLOW_TO_IMPORT = ("scipy.signal",)
LIGHT = """
import sys
import heygem_ray.cli, heygem_ray.driver.run, heygem_ray.driver.actor
import heygem_ray.driver.task, heygem_ray.driver.router, heygem_ray.worker_io
from heygem_ray.packs import get_pack
for name in ("warp", "wav2lip", "musetalk"):
    get_pack(name).geometry
print(" ".join(sorted(m for m in sys.argv[1:] if m in sys.modules)))
"""


def test_the_driver_the_job_tasks_and_the_router_load_no_network_library_nor_scipy_signal() -> None:
    """The driver (the CLI, a run), a job task's process (driver/task.py: decode, analyse,
    features, compose) and the router import neither PyTorch nor a runtime, so each
    starts in about a second and without their memory. Each of them loads the model
    worker actor's class (driver/actor.py) with a handle to one, and unpickles a chunk's
    output (worker_io): both without them too; the actor imports its ``ModelWorker``."""
    proc = subprocess.run([sys.executable, "-c", LIGHT, *NETWORK_LIBRARIES, *SLOW_TO_IMPORT], cwd=REPO, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "", f"loaded: {proc.stdout.strip()}"
