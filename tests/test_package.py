"""The package's shape: one namespace, no import cycles, no project imports hidden in functions,
entry points that only parse the command line, and the console script."""
import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
# repository folder -> the package it installs as
PACKAGES = {"interpbench": "interpbench", "zoo": "interpbench.zoo", "explainers": "interpbench.explainers",
            "metrics": "interpbench.metrics", "data": "interpbench.data"}


def project_modules() -> Dict[str, Path]:
    """Installed module name -> source file, for every module of the package."""
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if folder == "interpbench" and len(parts) and parts[0] in {"zoo", "explainers", "metrics", "data"}:
                continue  # never the case: the mapped folders live outside interpbench/
            modules[name] = path
    return modules


def imported_modules(node: ast.AST, known: Set[str]) -> List[str]:
    """The project modules an import statement names (``from a import b`` with ``a.b`` a module
    counts as ``a.b``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "interpbench"]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
            node.module.split(".")[0] == "interpbench":
        names = []
        for alias in node.names:
            sub = f"{node.module}.{alias.name}"
            names.append(sub if sub in known else node.module)
        return names
    return []


def import_graph() -> Dict[str, Set[str]]:
    modules = project_modules()
    known = set(modules)
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        edges = set()
        for node in ast.walk(tree):
            for target in imported_modules(node, known):
                if target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as a list of modules (first = last), or []."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target in graph and not state.get(target):
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if not state.get(node):
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_covers_the_package():
    graph = import_graph()
    assert {"interpbench.cli", "interpbench.core", "interpbench.engine.train", "interpbench.report.figures",
            "interpbench.zoo.fa_cnn", "interpbench.metrics.pixel_removal", "interpbench.data.cifar"} <= set(graph)
    assert "interpbench.core" in graph["interpbench.engine.evaluate"]


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_no_project_imports_inside_functions():
    offenders = []
    known = set(project_modules())
    for name, path in project_modules().items():
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    if imported_modules(node, known):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, "project imports inside functions: " + ", ".join(offenders)


def test_runners_hold_entry_points_only():
    scripts = sorted((ROOT / "runners").glob("*.py"))
    assert {p.name for p in scripts} == {"sweep.py", "train.py", "report.py", "status.py"}
    for path in scripts:
        tree = ast.parse(path.read_text())
        imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        assert [node.module for node in imports] == ["interpbench.cli"], path.name
        functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
        assert not functions, f"{path.name} defines {[f.name for f in functions]}"
    assert "sys.path" not in "".join(p.read_text() for p in ROOT.rglob("*.py")
                                     if ".venv" not in p.parts and p.name != "test_package.py")


def test_a_users_own_metrics_and_data_do_not_clash(tmp_path):
    """A notebook folder with its own ``metrics.py`` and ``data/`` imports both beside the package."""
    (tmp_path / "metrics.py").write_text("MINE = 'metrics'\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "__init__.py").write_text("MINE = 'data'\n")
    code = ("import metrics, data; from interpbench.metrics import METRICS; from interpbench.data import DATASETS; "
            "print(metrics.MINE, data.MINE, 'pixel_removal' in METRICS.list(), 'synthetic' in DATASETS.list())")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["metrics", "data", "True", "True"]


def console_script() -> Path:
    script = Path(sys.executable).parent / "interpbench"
    if not script.exists():
        pytest.skip(f"no console script at {script}: install the package (pip install -e .)")
    return script


def test_console_script_lists_its_commands_and_rejects_an_unknown_one():
    script = console_script()
    shown = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0
    assert all(command in shown.stdout for command in ("sweep", "train", "report", "status"))
    wrong = subprocess.run([str(script), "sweeep"], capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines() == [
        "error: unknown command 'sweeep'; valid commands: sweep, train, report, status"]


def test_console_report_names_a_missing_folder(tmp_path):
    result = subprocess.run([str(console_script()), "report", str(tmp_path / "nothing")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nothing is not a folder" in lines[0]


def test_the_wheel_installs_one_namespace_with_its_config(tmp_path):
    """A plain (non-editable) install: everything under interpbench/, the hydra config included,
    nothing at the top of site-packages but interpbench."""
    import shutil
    import zipfile

    source = tmp_path / "source"  # a copy, so that the build's own folders stay out of the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "results", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            str(source), "-w", str(tmp_path)], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(tmp_path.glob("interpbench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"interpbench"}
    for expected in ("interpbench/conf/config.yaml", "interpbench/conf/profile/cpu.yaml",
                     "interpbench/conf/launcher/slurm.yaml", "interpbench/zoo/fa_cnn.py",
                     "interpbench/metrics/pixel_removal.py", "interpbench/explainers/rise.py",
                     "interpbench/data/cifar.py", "interpbench/report/figures.py", "interpbench/cli.py"):
        assert expected in names, expected
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "interpbench = interpbench.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
