"""How the package imports: no cycles, the kernels import nothing above them, ``import dcspass`` is light.

The graph is read from the source with ``ast``: every import statement of every module of ``dcspass``
(``dcspass.kernels`` included), at module level or inside a function or an ``if TYPE_CHECKING:``
block, relative ones resolved. A cycle hidden by a function-level import is still a cycle.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dcspass
import dcspass.kernels

# Imports that ``import dcspass`` must not trigger: each loads on first use.
HEAVY = (
    "dcspass.data",
    "dcspass.evaluation",
    "dcspass.models",
    "dcspass.planning",
    "dcspass.training",
    "matplotlib",
    "networkx",
    "torchattacks",
    "torchvision",
    "triton",
)


def package_modules(package: str, folder: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file under ``folder``, the package ``package``."""
    modules = {}
    for path in sorted(folder.rglob("*.py")):
        parts = list(path.relative_to(folder).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join([package, *parts])] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: the modules in ``modules`` it imports}``, from every import statement in its source.

    ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module, else of ``pkg``.
    A package's own implicit import of its parents is not an edge (it always precedes the module).
    """

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = module if is_package else module.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{node.module}" if node.module else anchor
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                resolved = known(target)
                if resolved is not None and resolved != module:
                    edges.add(resolved)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None when the graph is acyclic."""
    state: dict[str, str] = {}  # "open" while on the DFS stack, "done" after
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def dcspass_modules() -> dict[str, Path]:
    return {
        **package_modules("dcspass", Path(dcspass.__file__).parent),
        **package_modules("dcspass.kernels", Path(dcspass.kernels.__file__).parent),
    }


def test_the_checker_sees_function_level_relative_and_type_checking_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import thing\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    graph = import_graph(package_modules("pkg", pkg))
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.sub.b"},
        "pkg.sub": set(),
        "pkg.sub.b": {"pkg.a"},
        "pkg.c": {"pkg.a"},
    }
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    del graph["pkg.sub.b"]
    assert find_cycle(graph) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph(dcspass_modules())
    assert {"dcspass.layers", "dcspass.kernels.op", "dcspass.evaluation.protocols"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_kernels_import_nothing_from_the_layers_above_them():
    graph = import_graph(dcspass_modules())
    kernels = {m for m in graph if m == "dcspass.kernels" or m.startswith("dcspass.kernels.")}
    upward = {(m, t) for m in kernels for t in graph[m] if t not in kernels}
    assert upward == set(), f"dcspass.kernels must stay a leaf; it imports {sorted(upward)}"


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_dcspass_loads_the_pass_and_the_layer_only():
    code = f"""
import json, sys, torch, dcspass
heavy = {HEAVY!r}
loaded_by_import = sorted(m for m in heavy if m in sys.modules)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU())
dcs = dcspass.transform(model, policy="downsample", n=2)
dcs(torch.rand(2, 3, 16, 16)).sum().backward()  # the CPU path, forward and backward
# The first call of any torch.library op imports torch._dynamo, which imports triton itself; ours is
# the backend module (and its kernels), which the CPU path must never load.
on_use = [m for m in heavy if m != "triton"] + ["dcspass.kernels.triton_backend"]
loaded_by_use = sorted(m for m in on_use if m in sys.modules)
lazy = dcspass.evaluate, dcspass.plan
print(json.dumps({{"import": loaded_by_import, "cpu use": loaded_by_use,
                  "after lazy names": sorted(m for m in heavy if m in sys.modules)}}))
"""
    loaded = _run(code)
    assert loaded["import"] == [], f"import dcspass loaded {loaded['import']}"
    assert loaded["cpu use"] == [], f"transform and a CPU forward/backward loaded {loaded['cpu use']}"
    # The check can fail: the lazy names do load their modules.
    assert {"dcspass.evaluation", "dcspass.planning", "torchattacks"} <= set(loaded["after lazy names"])


LAZY_NAMES = {
    "Plan": "dcspass.planning",
    "Report": "dcspass.evaluation",
    "build_model": "dcspass.models",
    "evaluate": "dcspass.evaluation",
    "load_dataset": "dcspass.data",
    "plan": "dcspass.planning",
}


def test_lazy_names_resolve_to_their_definitions():
    # A fresh interpreter, where the first access is what loads each module.
    code = f"""
import importlib, json, dcspass
same = {{n: getattr(dcspass, n) is getattr(importlib.import_module(m), n) for n, m in {LAZY_NAMES!r}.items()}}
print(json.dumps(same))
"""
    assert _run(code) == dict.fromkeys(LAZY_NAMES, True)
    assert set(LAZY_NAMES) <= set(dir(dcspass)) & set(dcspass.__all__)


def test_lazy_subpackages_and_unknown_names():
    assert dcspass.training is importlib.import_module("dcspass.training")
    assert {"training", "evaluation", "transform"} <= set(dir(dcspass))
    with pytest.raises(AttributeError, match="has no attribute 'transfrom'"):
        _ = dcspass.transfrom


def test_a_cuda_tensor_loads_the_triton_backend_even_when_traced_first():
    """A model compiled before any eager CUDA call must still trace through the Triton backend's rules:
    the op's fake implementation loads the backend (run here on fake CUDA tensors, no GPU needed)."""
    pytest.importorskip("triton")
    code = """
import json, sys, torch, dcspass
from torch._subclasses.fake_tensor import FakeTensorMode
before = "dcspass.kernels.triton_backend" in sys.modules
with FakeTensorMode():
    x, w = torch.empty(1, 4, 5, 5, device="cuda"), torch.empty(4, 4, 3, 3, device="cuda")
    torch.ops.dcspass.dcs_conv2d(x, w, None, torch.tensor([0, 4], device="cuda"), [1, 1], [1] * 4, [1, 1], 1)
from dcspass.kernels import op, triton_backend
print(json.dumps({"before": before, "registered": any(b is triton_backend for _, b in op._BACKENDS)}))
"""
    assert _run(code) == {"before": False, "registered": True}


def test_a_backend_loader_runs_once_on_the_first_call_it_wants():
    from dcspass.kernels import op

    loads = []
    wants = lambda t: t.dtype == torch.float64  # stands for `t.is_cuda`, which needs a GPU
    op.register_backend_loader(wants, lambda: loads.append(1))
    try:
        w, taps = torch.rand(4, 2, 3, 3, dtype=torch.float64), torch.tensor([0, 4])
        geometry = ([1, 1], [1, 1, 1, 1], [1, 1], 2)
        op.dcs_conv2d(torch.rand(1, 4, 5, 5), w.float(), None, taps, *geometry)
        assert loads == []
        for _ in range(2):
            op.dcs_conv2d(torch.rand(1, 4, 5, 5, dtype=torch.float64), w, None, taps, *geometry)
        assert loads == [1]
    finally:
        op._PENDING_LOADERS[:] = [entry for entry in op._PENDING_LOADERS if entry[0] is not wants]


def test_version_is_the_installed_distributions_read_on_first_use():
    code = """
import json, sys, dcspass
before = "dcspass.provenance" in sys.modules
listed = "__version__" in dir(dcspass)
print(json.dumps({"read at import": before, "version": dcspass.__version__, "listed": listed}))
"""
    got = _run(code)
    assert got["read at import"] is False  # import dcspass does not look the metadata up
    assert got["version"] == importlib.metadata.version("dcspass")
    assert got["listed"] is True


def test_version_falls_back_when_dcspass_is_not_installed(monkeypatch):
    import dcspass.provenance

    calls = []

    def not_installed(distribution: str) -> None:
        calls.append(distribution)

    monkeypatch.setattr(dcspass.provenance, "distribution_version", not_installed)
    cached = dcspass.__dict__.pop("__version__", None)
    try:
        assert dcspass.__version__ == "0+unknown"
        assert calls == ["dcspass"]
    finally:  # the lookup caches its answer in the module: put the real one back
        dcspass.__dict__.pop("__version__", None)
        if cached is not None:
            dcspass.__dict__["__version__"] = cached
