"""What ``pip install tsdfm`` gets: the ``tsdfm`` package and its console script, and nothing a
study needs (issue 34: study drivers, their ``studylib``, benchmarks, scripts and tests stay in
the repository). The slow test builds the real wheel from a copy of the tree and reads its file
list, so a change to package discovery that ships a study fails here, not on a user's machine.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_SHIPPED = ("studies", "studylib", "benchmarks", "scripts", "tests")


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_package_discovery_finds_only_tsdfm():
    from setuptools import find_packages

    find = _pyproject()["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(where=str(ROOT / find["where"][0]))
    assert find["where"] == ["src"], "only src/ is installed; studies/ must stay out"
    assert "tsdfm" in packages and "tsdfm.cli" in packages and "tsdfm.config" in packages
    assert [p for p in packages if p.split(".")[0] != "tsdfm"] == []
    assert [p for p in packages if set(p.split(".")) & set(NOT_SHIPPED)] == []


def test_console_script_resolves():
    target = _pyproject()["project"]["scripts"]["tsdfm"]
    module, func = target.split(":")
    assert callable(getattr(importlib.import_module(module), func))


@pytest.mark.slow
def test_built_wheel_holds_only_the_package(tmp_path):
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("building offline needs setuptools >= 77 (pyproject's build-system)")
    # Build from a copy of the checkout (less docs/ and runs/): a build writes build/ and
    # *.egg-info beside the sources, and the study folders must be there to be left out.
    src = tmp_path / "checkout"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "runs", "build", "dist")
    for name in ("src", "studies", "benchmarks", "scripts", "tests", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
           "-w", str(out), str(src)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("tsdfm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"tsdfm", wheel.name.split("-py")[0] + ".dist-info"}, tops
    assert [n for n in names if set(Path(n).parts) & set(NOT_SHIPPED)] == []
    for path in ("tsdfm/cli/__init__.py", "tsdfm/cli/__main__.py", "tsdfm/config/schema.py",
                 "tsdfm/serving/static/index.html"):  # fmt: skip
        assert path in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tsdfm = tsdfm.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
