"""The architecture as a test: the layer contract, no cycles, no private cross-package names,
no module imports hidden inside functions, and no undeclared or unused dependency.

The contracts themselves live in pyproject.toml ([tool.importlinter], [tool.deptry]);
docs/architecture.md draws them.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from tests.support.source_tree import project_files

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "loadtest", "deploy", "scenarios", "analysis", "testdoubles")
# Modules allowed to import ridgeline modules inside functions: command-line entry points, whose
# lazy imports keep `ridgeline --help` and `python -m deploy.emulator --help` fast, and the
# analysis package's facade, which keeps `import analysis` cheap. Never to dodge a cycle: the
# contract below would catch the cycle once the import moved to the top.
LAZY_ENTRY_POINTS = ("loadtest/cli.py", "loadtest/cli_*.py", "*/__main__.py", "analysis/__init__.py")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _tool(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    assert path.exists(), f"{name} is not installed beside {sys.executable} (pip install -e '.[test]')"
    return str(path)


def _source() -> list[Path]:
    return [p for p in project_files("*.py") if p.relative_to(ROOT).parts[0] in PACKAGES]


def test_import_linter_contracts_are_kept():
    r = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout and "Layers: loadtest" in r.stdout


def test_every_import_is_declared_and_every_dependency_used():
    r = subprocess.run([_tool("deptry"), "."], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield node, a.name, []


def test_no_private_name_is_imported_across_packages():
    found = []
    for path in _source():
        rel = path.relative_to(ROOT)
        for node, module, names in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            top = module.split(".")[0]
            if top in PACKAGES and top != rel.parts[0]:
                private = [n for n in names if n.startswith("_")] + \
                          [p for p in module.split(".") if p.startswith("_") and not p.startswith("__")]
                if private:
                    found.append(f"{rel}:{node.lineno}: {module} {private}")
    assert not found, "private names imported from another package:\n" + "\n".join(found)


def test_no_module_import_inside_a_function_outside_the_entry_points():
    found = []
    for path in _source():
        rel = path.relative_to(ROOT)
        if any(rel.match(p) for p in LAZY_ENTRY_POINTS):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node, module, _ in _imports(fn):
                    if module.split(".")[0] in PACKAGES:
                        found.append(f"{rel}:{node.lineno}: {module}")
    assert not found, "ridgeline modules imported inside functions (import them at the top):\n" + "\n".join(found)


def test_the_checker_sees_a_broken_layer(tmp_path):
    """The layer contract fails when core imports upward (so a green run means something)."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "core" / "bad.py").write_text("import loadtest\n")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0 and "core.bad -> loadtest" in r.stdout, r.stdout + r.stderr
