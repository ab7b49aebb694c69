"""Tests that read the source see the project's files only, never a virtual environment in the checkout."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.source_tree import ROOT, project_files

PYPROJECT = '[tool.setuptools.packages.find]\ninclude = ["pkg*"]\n'


def _checkout(root: Path) -> None:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("x = 1\n")
    (root / "pyproject.toml").write_text(PYPROJECT)
    venv = root / ".venv" / "lib" / "site-packages" / "other"
    venv.mkdir(parents=True)
    (venv / "spawn.py").write_text("import os\nos.system('true')\n")
    (root / "build").mkdir()
    (root / "build" / "junk.py").write_text("y = 2\n")


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_checkout_lists_tracked_files_only(tmp_path):
    _checkout(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "pkg", "pyproject.toml"], cwd=tmp_path, check=True)
    assert project_files("*.py", root=tmp_path) == [tmp_path / "pkg" / "mod.py"]


def test_tree_without_git_lists_the_installed_packages_only(tmp_path):
    _checkout(tmp_path)
    assert project_files("*.py", root=tmp_path) == [tmp_path / "pkg" / "mod.py"]


def test_this_checkout_lists_its_packages_and_no_venv():
    files = {p.relative_to(ROOT).as_posix() for p in project_files("*.py")}
    assert "loadtest/cli.py" in files
    assert not any(f.startswith((".venv/", "venv/")) or "site-packages" in f for f in files)
