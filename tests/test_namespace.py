"""The installed distribution exposes one import name, ``worldplan``.

The repository keeps its subpackages as top-level folders (envs/, planners/, ...);
pyproject.toml maps them into ``worldplan``. These tests build the real distribution into a
folder and import it from elsewhere, as a user's ``pip install .`` would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("envs", "experiments", "filters", "planners", "worldmodels")

PROBE = """
import importlib.util, json, worldplan, worldplan.filters, worldplan.planners.path
from worldplan.filters import KalmanFilter
from worldplan.planners.path import astar
print(json.dumps({
    "worldplan": worldplan.__file__,
    "filters": worldplan.filters.__file__,
    "top_level": [n for n in SUBPACKAGES if importlib.util.find_spec(n) is not None],
}))
""".replace("SUBPACKAGES", repr(SUBPACKAGES))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install --target`` of this repository (not editable), without dependencies."""
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return target


def _run_elsewhere(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)  # ahead of any editable install of the checkout
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_installed_distribution_has_one_import_name(installed: Path, tmp_path: Path) -> None:
    proc = _run_elsewhere(installed, tmp_path, "-c", PROBE)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout)
    assert Path(found["worldplan"]).is_relative_to(installed)
    assert Path(found["filters"]).is_relative_to(installed / "worldplan")
    assert found["top_level"] == []  # envs, filters, ... are not importable on their own
    assert sorted(p.name for p in installed.iterdir() if p.suffix != ".dist-info"
                  and p.name != "bin") == ["worldplan"]
    assert (installed / "worldplan" / "planners" / "path" / "_astar.c").is_file()


def test_installed_command_runs(installed: Path, tmp_path: Path) -> None:
    proc = _run_elsewhere(installed, tmp_path, "-m", "worldplan", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: worldplan" in proc.stdout


def test_every_subpackage_is_packaged() -> None:
    """A new folder with an ``__init__.py`` must be listed in pyproject.toml's packages."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {"worldplan"}
    for top in SUBPACKAGES:
        assert config["package-dir"][f"worldplan.{top}"] == top
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT).parts
            on_disk.add(".".join(("worldplan", *parts)))
    assert listed == on_disk
