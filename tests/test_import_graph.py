"""The import graph of the package (with kernels/ and train/ as iqlut_gpu.kernels and
iqlut_gpu.train) and of bench/: no cycles, the CLI on top. Read from the source with
``ast``, so imports inside functions (lazy ones) count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"iqlut_gpu": ROOT / "iqlut_gpu", "iqlut_gpu.kernels": ROOT / "kernels",
            "iqlut_gpu.train": ROOT / "train", "bench": ROOT / "bench"}

KNOWN: list = []  # cycles tolerated (none)


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for f in folder.rglob("*.py"):
            parts = list(f.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([pkg, *parts])] = f
    return mods


def _imports(name: str, path: Path, mods: dict) -> tuple[set, set]:
    """(every module of ``mods`` that ``name`` imports, those imported at module level)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def known(target: str) -> str | None:
        while target and target not in mods:
            target = target.rpartition(".")[0]
        return target or None

    every, module_level = set(), set()

    def visit(node, in_function: bool):
        found = []
        if isinstance(node, ast.Import):
            found = [known(a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            found = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else known(base)
                     for a in node.names]
        # a submodule importing from its own package (``from . import CLIError``) is not a cycle
        found = {t for t in found if t and t != name and not name.startswith(t + ".")}
        every.update(found)
        if not in_function:  # runs when the module is imported
            module_level.update(found)
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(ast.parse(path.read_text()), False)
    return every, module_level


def _graph():
    mods = _modules()
    every, top = {}, {}
    for name, path in mods.items():
        every[name], top[name] = _imports(name, path, mods)
    return every, top


def _cycles(edges: dict) -> list[set]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_graph_reads_what_it_should():
    every, top = _graph()
    assert "iqlut_gpu.train.trainer" in every and "bench.runner" in every
    assert "iqlut_gpu.train.config" in top["iqlut_gpu.cli.train_cmd"]
    assert "iqlut_gpu.train.trainer" in every["iqlut_gpu.cli.train_cmd"]  # lazily
    assert "iqlut_gpu.train.trainer" not in top["iqlut_gpu.cli.train_cmd"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_cycles():
    every, _ = _graph()
    new = [sorted(c) for c in _cycles(every) if c not in KNOWN]
    assert new == [], f"import cycles: {new}"


@pytest.mark.parametrize("module", ["iqlut_gpu.train.trainer", "iqlut_gpu.train.config",
                                    "iqlut_gpu.train.validate", "bench.runner"])
def test_the_cli_is_on_top(module):
    """Nothing below the command line imports it: the options of training live in
    iqlut_gpu.train.config, those of the benchmarks in bench.runner."""
    every, _ = _graph()
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(every[m])
    assert not [m for m in seen if m.startswith("iqlut_gpu.cli")], sorted(seen)


def test_bench_is_found_at_run_time_not_imported_with_the_cli():
    every, top = _graph()
    assert not [m for m in top["iqlut_gpu.cli.bench_cmd"] if m.startswith("bench")]
    assert "bench.runner" in every["iqlut_gpu.cli.bench_cmd"]
    assert not [m for m in every if m.startswith("bench")
                for t in every[m] if t.startswith("iqlut_gpu.cli")]
