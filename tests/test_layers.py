"""The package's imports run one way (ARCHITECTURE.md): read from the source, every import in every module,
including those inside functions, must go to the same part of the package or to a lower layer, and no chain
of imports may come back to where it started."""
import ast
from pathlib import Path

import apot_utils

PACKAGE = Path(apot_utils.__file__).parent
LAYERS = {"core": 0, "files": 1, "fast": 2, "fakequant": 3, "integer": 4, "deploy": 5, "commands": 6, "notebook": 6,
          "cli": 7, "__main__": 8}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(("apot_utils",) + (parts[:-1] if parts[-1] == "__init__" else parts))
        found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that module ``name`` imports (``from X import y`` counts X.y when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            targets.add(module)
            targets |= {f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in modules}
    return {t for t in targets if t in modules and t != name}


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def test_every_part_has_a_layer():
    assert {_part(m) for m in _modules()} - {"__init__"} == set(LAYERS)


def test_imports_never_run_up_the_layers_or_across_parts():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        if name == "apot_utils":          # the package's front door re-exports from below; nothing imports it
            continue
        mine = _part(name)
        for target in _imports(name, path, modules):
            theirs = _part(target)
            if theirs == "__init__" or (theirs != mine and LAYERS[theirs] >= LAYERS[mine]):
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    state: dict[str, int] = {}          # 1: on the current path, 2: done

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_modules_stay_small():
    # one job a module: none over about 350 lines, except the chapters' plotting (one function per figure)
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text().splitlines())) > 350 and name != "apot_utils.notebook.plots"}
    assert not long, f"split these modules: {long}"


def test_the_checker_sees_an_import_that_runs_up(tmp_path):
    """The rule above would catch a lower layer importing a higher one (so the test can fail)."""
    fake = tmp_path / "mod.py"
    fake.write_text("def f():\n    from ..commands.train import train\n")
    modules = _modules() | {"apot_utils.core.mod": fake}
    assert "apot_utils.commands.train" in _imports("apot_utils.core.mod", fake, modules)
    assert LAYERS["commands"] > LAYERS["core"]


def test_environment_yml_installs_what_the_test_command_installs():
    """environment.yml is checked against the README's test command and pyproject.toml's extras: the same pins of
    torch and torchvision, the same extras, each of them defined."""
    import re
    import tomllib

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    command = readme.split("<!-- test-command -->", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    env = (root / "environment.yml").read_text()
    extras = set(tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    asked = set(re.search(r"-e '\.\[([\w,]+)\]'", command).group(1).split(","))
    assert set(re.search(r"-e \.\[([\w,]+)\]", env).group(1).split(",")) == asked <= extras
    for pin in re.findall(r"(torch(?:vision)?==[\d.]+)", command):
        assert pin in env, pin
    floor = re.search(r'"torch>=([\d.]+)"', (root / "pyproject.toml").read_text()).group(1)
    pinned = re.search(r"torch==([\d.]+)", command).group(1)
    assert (2, 13) <= tuple(map(int, floor.split("."))) <= tuple(map(int, pinned.split("."))), (floor, pinned)


def test_the_library_imports_without_the_notebook_stack():
    """A fresh interpreter that cannot import matplotlib, ipywidgets or jupyterlab still imports the package and
    its command line (the notebook stack is the `notebooks` extra)."""
    import subprocess
    import sys

    script = ("import sys\nclass Block:\n def find_spec(self, name, path=None, target=None):\n"
              "  if name.split('.')[0] in ('matplotlib', 'ipywidgets', 'jupyterlab'): raise ImportError(name)\n"
              "sys.meta_path.insert(0, Block())\nimport apot_utils, apot_utils.cli, apot_utils.commands.validate\n"
              "print(apot_utils.__version__)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_the_front_door_loads_only_what_is_used():
    """``import apot_utils`` loads the version alone; the level sets load no file, training or command code; every
    name of the front door resolves to the object its module defines."""
    import subprocess
    import sys

    script = ("import sys, json\nimport apot_utils as apot\nafter_import = sorted(m for m in sys.modules if m.startswith('apot_utils'))\n"
              "apot.level_set(3); apot.project\nafter_levels = sorted(m for m in sys.modules if m.startswith('apot_utils'))\n"
              "print(json.dumps([after_import, after_levels]))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    after_import, after_levels = __import__("json").loads(out.stdout)
    assert after_import == ["apot_utils", "apot_utils.core", "apot_utils.core.version"]
    loaded = set(after_levels)
    for heavy in ("apot_utils.files.checkpoints", "apot_utils.files.data", "apot_utils.fakequant.training",
                  "apot_utils.commands", "apot_utils.integer", "apot_utils.notebook"):
        assert heavy not in loaded, heavy
    import importlib

    for name, module in apot_utils._MODULE_OF.items():
        assert getattr(apot_utils, name) is getattr(importlib.import_module(f"apot_utils.{module}"), name), name
