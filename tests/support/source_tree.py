"""The project's own source files, for tests that read the source.

A checkout may hold anything besides the project: a `.venv` made as the README advises, build
output, a results directory. Tests that scan the source must see only files the project tracks,
so they ask git (`git ls-files`); an exported tree without `.git` falls back to the packages the
project installs (pyproject's `packages.find` include), never to a walk of the checkout.
"""

from __future__ import annotations

import fnmatch
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tracked(root: Path, pattern: str) -> list[Path] | None:
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", pattern], cwd=root, capture_output=True, check=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [root / p for p in out.decode().split("\0") if p and (root / p).is_file()]


def _installed_packages(root: Path) -> list[Path]:
    include = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = {pat.rstrip("*").rstrip(".") for pat in include}
    return [root / top for top in sorted(tops) if (root / top).is_dir()]


def project_files(pattern: str = "*.py", root: Path = ROOT) -> list[Path]:
    """Files the project at `root` holds whose name matches `pattern` (a glob such as "*.py")."""
    tracked = _tracked(root, pattern)
    if tracked:
        return sorted(tracked)
    found = [p for pkg in _installed_packages(root) for p in pkg.rglob("*") if p.is_file()
             and fnmatch.fnmatch(p.name, pattern)]
    return sorted(found)
