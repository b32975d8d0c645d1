"""Every ✎ exercise of the chapters: its stub fails the check beside it, and the hidden solution
(notebooks/solutions/) passes it.

The chapters' check cells call ``solutions.mine_or_solution(NAME, "chXX")`` before the check: this test runs each such
cell's definitions and check twice, once with the stub itself bound to NAME and once with the solution, in a namespace
built from the chapter's first code cell (its imports), its stub cells and the definitions of the cells between them."""
import ast
import contextlib
import io
import json
import linecache
import os
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CHAPTERS = sorted(p for p in NOTEBOOKS.glob("*.ipynb") if "solutions.mine_or_solution(" in p.read_text())


def _code_cells(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def _definitions(source: str, name: str):
    """The imports, functions and classes of a cell (no statements that run the chapter), compiled under ``name`` with
    their source registered, so that inspect.getsource (which tells a stub) reads them."""
    tree = ast.parse(source)
    keep = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef))]
    text = ast.unparse(ast.Module(body=keep, type_ignores=[])) + "\n"
    linecache.cache[name] = (len(text), None, text.splitlines(True), name)
    return compile(text, name, "exec")


def _exercises(source: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(name, chapter) of every ``NAME = solutions.mine_or_solution(NAME, "chapter")`` of a cell, and its check calls
    (top-level calls of a function whose name starts with ``check``)."""
    bound, checks = [], []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                and ast.unparse(node.value.func) == "solutions.mine_or_solution":
            bound.append((node.targets[0].id, node.value.args[1].value))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) \
                and isinstance(node.value.func, ast.Name) and node.value.func.id.startswith("check"):
            checks.append(ast.unparse(node))
    return bound, checks


@pytest.fixture
def in_notebooks(monkeypatch):
    monkeypatch.chdir(NOTEBOOKS)
    monkeypatch.syspath_prepend(str(NOTEBOOKS))
    os.environ.setdefault("MPLBACKEND", "Agg")
    yield
    for name in [m for m in sys.modules if m == "solutions" or m.startswith("solutions.")]:
        del sys.modules[name]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_each_stub_fails_its_check_and_the_solution_passes(chapter, in_notebooks):
    import importlib

    cells = _code_cells(chapter)
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(_definitions(cells[0], f"<{chapter.stem} setup>"), namespace)
    namespace["solutions"] = importlib.import_module("solutions")
    tried = 0
    for i, source in enumerate(cells[1:], 1):
        bound, checks = _exercises(source)
        exec(_definitions(source, f"<{chapter.stem} cell {i}>"), namespace)
        if not bound:
            continue
        for name, _ in bound:
            assert namespace["solutions"].is_stub(namespace[name]), f"{chapter.name}: {name} is not a stub"
        for call in checks:
            with pytest.raises((AssertionError, NotImplementedError)), contextlib.redirect_stdout(io.StringIO()):
                exec(call, namespace)                               # the stubs: the check must fail
        for name, solved in bound:
            namespace[name] = getattr(importlib.import_module(f"solutions.{solved}"), name)
        with contextlib.redirect_stdout(io.StringIO()):
            for call in checks:
                exec(call, namespace)                               # the solutions: it must pass
        tried += 1
    assert tried, f"{chapter.name} has no exercise with a hidden solution"
